#!/usr/bin/env bash
# A laptop MLflow server: SQLite backend, local proxied artifacts, bound to 127.0.0.1, one worker.
#
#   infra/mlflow/local_server.sh [PORT] [DIR]      (defaults: 5000, the repository root)
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# Store: DIR/mlflow.db and DIR/mlartifacts/ (both gitignored). With the default DIR that is the same
# SQLite file aimctl writes to when MLFLOW_TRACKING_URI is unset, so earlier laptop runs show up too.
# Runs in the foreground (Ctrl-C stops it); MLFLOW_HOST overrides the bind address.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
port="${1:-${MLFLOW_PORT:-5000}}"
dir="${2:-$root}"
mkdir -p "$dir/mlartifacts"
dir="$(cd "$dir" && pwd)"
mlflow_bin="${MLFLOW_BIN:-}"
if [[ -z "$mlflow_bin" ]]; then
  if [[ -x "$root/.venv/bin/mlflow" ]]; then mlflow_bin="$root/.venv/bin/mlflow"; else mlflow_bin=mlflow; fi
fi
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
echo "MLflow on http://127.0.0.1:${port}  (store: $dir)   export MLFLOW_TRACKING_URI=http://127.0.0.1:${port}" >&2
exec "$mlflow_bin" server --host "${MLFLOW_HOST:-127.0.0.1}" --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --serve-artifacts --artifacts-destination "$dir/mlartifacts" --default-artifact-root mlflow-artifacts:/
