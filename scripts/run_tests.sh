#!/usr/bin/env bash
# Set up, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tools the tests use besides the venv: openssl (the local GCS server's TLS
# front, tests/gcs_emulator.py) and chattr (a read-only workdir even for root).
missing=""
command -v openssl >/dev/null || missing="$missing openssl"
command -v chattr >/dev/null || missing="$missing e2fsprogs"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
exec .venv/bin/python -m pytest -q --durations=25 "$@"
