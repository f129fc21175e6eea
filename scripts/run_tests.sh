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
# One pytest worker per core, at most 4 (pytest-xdist). Much of the suite is
# single-threaded (imports, tracing, XLA compiles, subprocess start-up), so two
# workers on 2 cores roughly halve its wall time. Whole files go to one worker
# (--dist loadfile), so an expensive module fixture is built once.
# BVL_TEST_WORKERS=0 runs everything in this process.
workers="${BVL_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
exec .venv/bin/python -m pytest -q --durations=25 -n "$workers" --dist loadfile "$@"
