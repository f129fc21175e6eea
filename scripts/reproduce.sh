#!/usr/bin/env bash
# Re-measure every headline number of README.md and BENCHMARKS.md and print
# them beside the recorded values (about 45 minutes on a 2-core CPU; the
# machine should be otherwise idle for the times to mean anything).
# Arguments go to the tool, e.g. `--only main,vit_s16` or `--list`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m big_vision_like.tools.reproduce "$@"
