#!/usr/bin/env bash
# Shared MLflow tracking server: PostgreSQL backend store, S3 artifact store proxied by the server
# (--serve-artifacts: clients and Ray workers need no S3 credentials for artifacts), Host-header allow-list.
#
# Configuration, all from the environment (nothing secret on the command line or in logs):
#   MLFLOW_BACKEND_STORE_URI       postgresql://USER@HOST:5432/DB      required; NO password in it:
#   PGPASSWORD (or ~/.pgpass)      the database password, read by libpq
#   MLFLOW_ARTIFACTS_DESTINATION   s3://BUCKET/PREFIX                   required
#   AWS credentials                instance role / IRSA (preferred) or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY
#   AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL   only for a non-AWS S3 (MinIO, Ceph, moto)
#   MLFLOW_HOST       bind address, default 127.0.0.1 (put a TLS proxy in front; 0.0.0.0 only in a container
#                     or pod whose port is published/exposed deliberately)
#   MLFLOW_PORT       default 5000
#   MLFLOW_WORKERS    default 4
#   MLFLOW_ALLOWED_HOSTS  Host headers accepted (comma-separated, wildcards allowed), default
#                     localhost:PORT,127.0.0.1:PORT. Add the name clients use, e.g. mlflow.internal:5000 or
#                     mlflow.aim.svc.cluster.local:5000.
#
# Usage: infra/mlflow/server.sh [--print-command]   (--print-command: show the command, run nothing)
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER@HOST:5432/DB (password in PGPASSWORD)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/PREFIX}"

# A password inside the URI would show in `ps` and in MLflow's logs: refuse it.
if [[ "$MLFLOW_BACKEND_STORE_URI" =~ ^[a-z0-9+]+://[^/@:]+:[^/@]+@ ]]; then
  echo "error: MLFLOW_BACKEND_STORE_URI contains a password; remove it and set PGPASSWORD (or ~/.pgpass)" >&2
  exit 2
fi

host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-4}"
allowed="${MLFLOW_ALLOWED_HOSTS:-localhost:${port},127.0.0.1:${port}}"
mlflow_bin="${MLFLOW_BIN:-mlflow}"

export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# MLflow's S3 client honours MLFLOW_S3_ENDPOINT_URL; mirror AWS_ENDPOINT_URL into it for non-AWS S3.
if [[ -n "${AWS_ENDPOINT_URL:-}" && -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]]; then
  export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
fi

cmd=("$mlflow_bin" server
     --host "$host" --port "$port" --workers "$workers"
     --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
     --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
     --default-artifact-root mlflow-artifacts:/
     --allowed-hosts "$allowed")

if [[ "${1:-}" == "--print-command" ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
echo "mlflow server on http://${host}:${port} (backend: ${MLFLOW_BACKEND_STORE_URI%%\?*}, artifacts: ${MLFLOW_ARTIFACTS_DESTINATION}, allowed hosts: ${allowed})" >&2
exec "${cmd[@]}"
