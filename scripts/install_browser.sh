#!/usr/bin/env bash
# Headless Chromium for the `browser` tests (MLflow UI checks). A no-op when a Chromium is already on PATH.
# Debian/Ubuntu, as root (CI containers): apt-get install chromium. Elsewhere, install one yourself or point
# AIM_BROWSER at it; without one the browser tests are skipped.
set -euo pipefail
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then
    echo "browser: $(command -v "$b")"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no Chromium and no root apt-get: install chromium yourself (the browser tests will be skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "browser: $(command -v chromium)"
