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
# One pytest worker per core (pytest-xdist), at most 4 and at most one per 8 GB
# of memory (a worker and the processes its tests start can peak at ~7 GB).
# Much of the suite is single-threaded (imports, tracing, XLA compiles,
# subprocess start-up): two workers on 2 cores cut its wall time by ~30%
# (BENCHMARKS.md, "Test suite"). Whole files go to one worker (--dist
# loadfile), so an expensive module fixture is built once; files go out
# slowest first (tests/conftest.py), not by their number of tests.
# BVL_TEST_WORKERS=0 runs everything in this process.
mem_gb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1048576 ))
workers=$(nproc)
[ "$workers" -gt 4 ] && workers=4
[ "$workers" -gt $(( mem_gb / 8 )) ] && workers=$(( mem_gb / 8 ))
[ "$workers" -lt 1 ] && workers=1
workers="${BVL_TEST_WORKERS:-$workers}"
exec .venv/bin/python -m pytest -q --durations=25 -n "$workers" --dist loadfile \
  --no-loadscope-reorder "$@"
