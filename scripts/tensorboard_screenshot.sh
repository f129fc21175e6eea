#!/usr/bin/env bash
# Screenshots of a run's real TensorBoard page, as a user's browser shows it:
# starts the pinned TensorBoard (from .venv) on a free local port against
# WORKDIR/tensorboard, loads two views in Debian's headless Chromium and
# writes OUT_PREFIX-scalars.png (time series of the test metrics) and
# OUT_PREFIX-images.png (the pictures: first batch, confusions, reliability).
#
#   bash scripts/tensorboard_screenshot.sh workdirs/fashion_vit docs/tensorboard
#
# Installs chromium-headless-shell with apt-get if it is missing. The README's
# pictures of the main job were made with exactly this command.
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:?usage: $0 WORKDIR OUT_PREFIX}"
out="${2:?usage: $0 WORKDIR OUT_PREFIX}"
[ -d "$workdir/tensorboard" ] || { echo "$0: no $workdir/tensorboard (train first)" >&2; exit 2; }

if ! command -v chromium-headless-shell >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium-headless-shell \
    fonts-dejavu-core >/dev/null
fi

port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/tensorboard --logdir "$workdir/tensorboard" --port "$port" \
  --host localhost >"$log" 2>&1 &
tb=$!
trap 'kill $tb 2>/dev/null || true; rm -f "$log"' EXIT
# Ready when the run is listed (the page would be empty before that).
for _ in $(seq 240); do
  if curl -sf "http://localhost:$port/data/runs" | grep -q '"'; then break; fi
  kill -0 $tb 2>/dev/null || { cat "$log" >&2; echo "$0: TensorBoard exited" >&2; exit 1; }
  sleep 0.5
done

shot() {  # URL FILE HEIGHT
  # --virtual-time-budget lets the page's scripts fetch and draw before the shot.
  chromium-headless-shell --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="1600,$3" --virtual-time-budget=30000 --screenshot="$2" "$1" >/dev/null 2>&1
  [ -s "$2" ] || { echo "$0: no screenshot written to $2" >&2; exit 1; }
  echo "wrote $2"
}
mkdir -p "$(dirname "$out")"
shot "http://localhost:$port/?tagFilter=test%2F(prec%401%7Cece%7Cworst)#timeseries" \
  "$out-scalars.png" 900
shot "http://localhost:$port/#images" "$out-images.png" 1500
