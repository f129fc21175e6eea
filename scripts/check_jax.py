"""The check scripts/setup.sh runs after installing: the right JAX, on the right devices.

  python scripts/check_jax.py JAX_VERSION cpu|cuda|tpu REQUIREMENT_FILE

Fails (exit 1, one message naming what it found) unless jax and jaxlib are
JAX_VERSION and, for cuda/tpu, jax.devices() are GPUs/TPUs; CHECK_DEVICES=0
skips the device part (e.g. a login node without GPUs preparing a shared
virtualenv). Nothing is written: setup.sh writes its stamp only after this
passes, so a failed install is retried on the next run.
"""

import os
import sys


def main(argv: list[str]) -> str | None:
  """The error message, or None when the install is as asked."""
  want_version, accel, req = argv
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  for name, got in (("jax", jax.__version__), ("jaxlib", jaxlib.__version__)):
    if got != want_version:
      return (f"setup.sh: .venv has {name} {got}, but requirements.txt pins {want_version}: "
              f"pip install -r {req} did not install it (see pip's messages above)")
  want = {"cuda": "gpu", "tpu": "tpu"}.get(accel)
  if want is None or os.environ.get("CHECK_DEVICES", "1") == "0":
    return None
  devices = jax.devices()
  found = jax.default_backend()
  if found != want:
    hint = ("the NVIDIA driver (nvidia-smi), CUDA_VISIBLE_DEVICES" if accel == "cuda"
            else "that this is a TPU VM and no other process holds the TPU")
    return (f"setup.sh: installed JAX's {accel} build ({req}), but JAX finds "
            f"{len(devices)} {found} device(s) ({devices[0].device_kind}), no {want}. "
            f"Check {hint}, JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r} and JAX's "
            "warnings above; on a machine without one use ACCELERATOR=cpu, or "
            "CHECK_DEVICES=0 to install without this check.")
  print(f"setup.sh: JAX {jax.__version__} sees {len(devices)} {want} device(s): "
        f"{devices[0].device_kind}")
  return None


if __name__ == "__main__":
  if len(sys.argv) != 4:
    sys.exit(__doc__.split("\n\n")[1])
  sys.exit(main(sys.argv[1:]))
