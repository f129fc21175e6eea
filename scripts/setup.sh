#!/usr/bin/env bash
# Installs everything the main job and the tests need, idempotently:
# Debian's Fashion-MNIST package (the embedded default dataset), a virtualenv
# in .venv with the pinned requirements, and this package in editable mode.
#
# The JAX build matches the machine; its version is always the jax pin of
# requirements.txt (the accelerator files pin the same version):
#   cpu   requirements.txt       the CPU jaxlib
#   cuda  requirements-cuda.txt  + JAX's CUDA 12 plugin, with CUDA/cuDNN/NCCL wheels
#   tpu   requirements-tpu.txt   + libtpu
# ACCELERATOR=cpu|cuda|tpu chooses; unset, the first signal found decides:
#   cuda  `nvidia-smi -L` lists a GPU ("GPU 0: ..."): the NVIDIA driver is
#         installed and sees a GPU;
#   tpu   a Cloud TPU VM's device files, /dev/accel<N> (TPU v2-v4) or
#         /dev/vfio/<N> (v5e, v5p, v6e), or TPU_ACCELERATOR_TYPE set (GKE TPU
#         nodes). Not used: TPU_NAME (also set on hosts that only talk to a
#         remote TPU) and the metadata server (a network wait off Google Cloud);
#   cpu   otherwise.
# After installing, scripts/check_jax.py imports JAX: its version must be the
# pinned one and, for cuda/tpu, jax.devices() must be GPUs/TPUs, else it fails
# naming what it found (CHECK_DEVICES=0 skips the device part, e.g. on a login
# node without GPUs). The stamp .venv/.requirements.sha covers the requirement
# files and the choice, so a changed choice re-installs (and removes the
# other accelerator's plugin packages); cpu keeps the stamp it always had.
#
# DRY_RUN=1: print the choice, the signal behind it and the commands, and
# install nothing (no apt-get, no venv, no pip).
# SKIP_APT=1: skip the Fashion-MNIST apt step (cluster nodes without root).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN="${DRY_RUN:-}"
[ "$DRY_RUN" = 0 ] && DRY_RUN=""
say() { echo "setup.sh: $*"; }
fail() { echo "setup.sh: $*" >&2; exit 2; }
# Installers' output goes to a log, shown only when a step fails: a first run
# should print one line per set-up step, not pages of pip and apt progress.
SETUP_LOG="${SETUP_LOG:-${TMPDIR:-/tmp}/bvl_setup.$$.log}"
logged() {
  if ! "$@" >>"$SETUP_LOG" 2>&1; then
    tail -n 40 "$SETUP_LOG" >&2
    fail "failed: $* (full output: $SETUP_LOG)"
  fi
}

if [ -z "${SKIP_APT:-}" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  if [ -n "$DRY_RUN" ]; then
    say "would install Debian's Fashion-MNIST:"
    echo "${SUDO:+$SUDO }apt-get update -qq"
    echo "DEBIAN_FRONTEND=noninteractive ${SUDO:+$SUDO }apt-get install -y -qq dataset-fashion-mnist"
  else
    say "installing Debian's dataset-fashion-mnist (apt-get)"
    logged $SUDO apt-get update -qq
    logged env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
  fi
fi

# --- Which JAX build: sets ACCEL and REASON (the signal that decided).
if [ -n "${ACCELERATOR:-}" ]; then
  ACCEL="${ACCELERATOR,,}"
  case "$ACCEL" in
    cpu|cuda|tpu) REASON="ACCELERATOR=$ACCELERATOR" ;;
    *) fail "ACCELERATOR=$ACCELERATOR is not one of cpu|cuda|tpu (unset: detect the machine's)" ;;
  esac
else
  ACCEL=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus="$(timeout 60 nvidia-smi -L 2>/dev/null | grep -E '^GPU [0-9]+:' || true)"
    if [ -n "$gpus" ]; then
      ACCEL=cuda
      REASON="nvidia-smi -L lists $(wc -l <<<"$gpus") GPU(s), the first: $(head -n 1 <<<"$gpus")"
    fi
  fi
  if [ -z "$ACCEL" ]; then
    # SETUP_DEV_DIR: where the device files are looked for (tests point it elsewhere).
    for f in "${SETUP_DEV_DIR:-/dev}"/accel[0-9]* "${SETUP_DEV_DIR:-/dev}"/vfio/[0-9]*; do
      if [ -e "$f" ]; then ACCEL=tpu; REASON="TPU device file $f"; break; fi
    done
  fi
  if [ -z "$ACCEL" ] && [ -n "${TPU_ACCELERATOR_TYPE:-}" ]; then
    ACCEL=tpu; REASON="TPU_ACCELERATOR_TYPE=$TPU_ACCELERATOR_TYPE"
  fi
  if [ -z "$ACCEL" ]; then
    ACCEL=cpu
    REASON="no GPU listed by nvidia-smi -L, no TPU device files or TPU_ACCELERATOR_TYPE"
  fi
fi
case "$ACCEL" in
  cpu) REQ=requirements.txt ;;
  cuda) REQ=requirements-cuda.txt ;;
  tpu) REQ=requirements-tpu.txt ;;
esac

JAX_VERSION="$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' requirements.txt)"
[ -n "$JAX_VERSION" ] || fail "requirements.txt has no jax==VERSION line"
# Every jax* pin of the chosen file must be that version (a plugin of another
# version would fail only at run time).
mismatch="$(grep -E '^jax[^=]*==' "$REQ" | grep -vE "==${JAX_VERSION//./\\.}([[:space:]#]|$)" || true)"
[ -z "$mismatch" ] || fail "$REQ pins $(tr '\n' ' ' <<<"$mismatch")but requirements.txt pins jax==$JAX_VERSION: make them equal"
choice="accelerator $ACCEL ($REASON); installs $REQ, JAX $JAX_VERSION"

PYTHON="${PYTHON:-python3}"
if [ -n "$DRY_RUN" ]; then
  say "$choice"
  say "DRY_RUN=1: nothing is installed; the commands:"
  [ -x .venv/bin/python ] || echo "$PYTHON -m venv .venv"
elif [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Re-install only when the requirements or the choice changed since the last
# successful install.
stamp=.venv/.requirements.sha
if [ "$ACCEL" = cpu ]; then
  want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
else
  want="$({ cat requirements.txt pyproject.toml "$REQ"; echo "ACCELERATOR=$ACCEL"; } \
    | sha256sum | cut -d' ' -f1)"
fi
up_to_date=""
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && up_to_date=1
[ -n "$up_to_date" ] && [ -z "$DRY_RUN" ] && exit 0

# Plugin packages of the other accelerators (a CUDA plugin left in a CPU venv
# would still be loaded by JAX).
others=()
for f in requirements-cuda.txt requirements-tpu.txt; do
  [ "$f" = "$REQ" ] && continue
  while read -r name; do others+=("$name"); done < <(
    sed -n 's/^\([A-Za-z0-9][A-Za-z0-9_.-]*\).*==.*/\1/p' "$f" | grep -vx 'jax' || true)
done
stale=""
if [ -x .venv/bin/python ] && [ "${#others[@]}" -gt 0 ]; then
  stale="$(.venv/bin/python - "${others[@]}" <<'EOF'
import importlib.metadata, sys
def installed(name):
  try:
    importlib.metadata.distribution(name)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False
print(" ".join(n for n in sys.argv[1:] if installed(n)))
EOF
)"
fi

if [ -n "$DRY_RUN" ]; then
  echo ".venv/bin/python -m pip install -q --upgrade pip"
  [ -z "$stale" ] || echo ".venv/bin/python -m pip uninstall -q -y $stale"
  echo ".venv/bin/python -m pip install -q -r $REQ"
  echo ".venv/bin/python -m pip install -q --no-deps -e ."
  echo ".venv/bin/python scripts/check_jax.py $JAX_VERSION $ACCEL $REQ"
  if [ -n "$up_to_date" ]; then
    say "(.venv is up to date for $ACCEL: a real run would install nothing now)"
  fi
  exit 0
fi

say "$choice"
say "installing into .venv with pip (a few minutes the first time)"
start=$SECONDS
logged .venv/bin/python -m pip install -q --upgrade pip
[ -z "$stale" ] || logged .venv/bin/python -m pip uninstall -q -y $stale
logged .venv/bin/python -m pip install -q -r "$REQ"
logged .venv/bin/python -m pip install -q --no-deps -e .
# The check; no stamp unless it passes, so the next run tries again.
.venv/bin/python scripts/check_jax.py "$JAX_VERSION" "$ACCEL" "$REQ"
echo "$want" > "$stamp"
rm -f "$SETUP_LOG"
say "installed in $((SECONDS - start)) s"
