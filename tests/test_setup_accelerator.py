"""Accelerator installs: scripts/setup.sh's choice of JAX build (DRY_RUN), the
requirement files' pins, and the start-up platform check of a training run."""

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from big_vision_like import config as config_lib
from big_vision_like import distributed
from tests.helpers import tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATOR_FILES = {"cuda": "requirements-cuda.txt", "tpu": "requirements-tpu.txt"}
H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-6f1e2a3b-9c4d-4e5f-8a7b-0c1d2e3f4a5b)"


def pins(path) -> dict[str, Requirement]:
  """The requirements of a requirement file by name (`-r` lines and comments skipped)."""
  out = {}
  with open(os.path.join(REPO, path)) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line and not line.startswith("-"):
        req = Requirement(line)
        out[req.name if not req.extras else f"{req.name}[{','.join(sorted(req.extras))}]"] = req
  return out


def pinned_version(req: Requirement) -> str:
  (spec,) = req.specifier
  assert spec.operator == "==", req
  return spec.version


JAX_VERSION = pinned_version(pins("requirements.txt")["jax"])


def fake_bin(tmp_path, **scripts) -> str:
  """A directory of executable shell scripts (name -> body), for the front of PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name, body in scripts.items():
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
  return str(bin_dir)


def forbidden_tools(tmp_path) -> str:
  """pip, apt-get and sudo that record being called and fail loudly."""
  marker = tmp_path / "forbidden_calls"
  body = f'echo "$0 $*" >> {marker}; echo "DRY_RUN ran $0" >&2; exit 97'
  return fake_bin(tmp_path, pip=body, pip3=body, **{"apt-get": body, "sudo": body})


def setup_sh(tmp_path, repo=REPO, path_front=None, **env):
  """`DRY_RUN=1 bash scripts/setup.sh` with a clean environment: no GPU or TPU
  signal unless `env`/`path_front` add one (SETUP_DEV_DIR: an empty directory)."""
  dev = tmp_path / "dev"
  dev.mkdir(exist_ok=True)
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("TPU_", "ACCELERATOR", "SETUP_", "DRY_RUN", "SKIP_APT"))}
  front = [forbidden_tools(tmp_path)] + ([path_front] if path_front else [])
  base.update(PATH=os.pathsep.join(front + ["/usr/local/bin", "/usr/bin", "/bin"]),
              SETUP_DEV_DIR=str(dev), DRY_RUN="1")
  base.update(env)
  r = subprocess.run(["bash", os.path.join(repo, "scripts", "setup.sh")], check=False, env=base,
                     capture_output=True, text=True, timeout=60)
  assert not (tmp_path / "forbidden_calls").exists(), \
      (tmp_path / "forbidden_calls").read_text()
  return r


def choice(r) -> tuple[str, str, str]:
  """(accelerator, reason, requirement file) from setup.sh's first line."""
  assert r.returncode == 0, r.stdout + r.stderr
  m = re.search(r"^setup\.sh: accelerator (\w+) \((.*)\); installs (\S+), JAX (\S+)$",
                r.stdout, re.MULTILINE)
  assert m, r.stdout
  assert m.group(4) == JAX_VERSION
  return m.group(1), m.group(2), m.group(3)


def test_cuda_installs_the_cuda_file_with_the_pinned_jax(tmp_path):
  r = setup_sh(tmp_path, ACCELERATOR="cuda")
  assert choice(r) == ("cuda", "ACCELERATOR=cuda", "requirements-cuda.txt")
  assert ".venv/bin/python -m pip install -q -r requirements-cuda.txt\n" in r.stdout
  assert "-r requirements.txt\n" not in r.stdout  # not the CPU file on its own
  assert (f".venv/bin/python scripts/check_jax.py {JAX_VERSION} cuda requirements-cuda.txt\n"
          in r.stdout)
  cuda = pins("requirements-cuda.txt")
  assert {"jax[cuda12]", "jax-cuda12-plugin[with-cuda]", "jax-cuda12-pjrt"} <= set(cuda)
  assert {name: pinned_version(req) for name, req in cuda.items()} == dict.fromkeys(
      cuda, JAX_VERSION)
  with open(os.path.join(REPO, "requirements-cuda.txt")) as f:
    assert "-r requirements.txt" in f.read().splitlines()


def test_a_listed_nvidia_gpu_chooses_cuda(tmp_path):
  smi = fake_bin(tmp_path / "gpu", **{"nvidia-smi": f'[ "$1" = -L ] && echo "{H100}"'})
  accel, reason, req = choice(setup_sh(tmp_path, path_front=smi))
  assert (accel, req) == ("cuda", "requirements-cuda.txt")
  assert "nvidia-smi -L lists 1 GPU(s)" in reason and "NVIDIA H100 80GB HBM3" in reason
  # nvidia-smi without a working driver lists no GPU: not a GPU machine.
  broken = fake_bin(tmp_path / "nodriver", **{"nvidia-smi": (
      "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
      "driver.\"; exit 9")})
  assert choice(setup_sh(tmp_path, path_front=broken))[0] == "cpu"


def test_no_gpu_or_tpu_signal_chooses_cpu_and_tpu_signals_choose_tpu(tmp_path):
  accel, reason, req = choice(setup_sh(tmp_path))
  assert (accel, req) == ("cpu", "requirements.txt")
  assert "no GPU listed by nvidia-smi -L" in reason
  assert ".venv/bin/python -m pip install -q -r requirements.txt\n" in setup_sh(tmp_path).stdout

  assert choice(setup_sh(tmp_path, TPU_ACCELERATOR_TYPE="v5litepod-8"))[:2] == (
      "tpu", "TPU_ACCELERATOR_TYPE=v5litepod-8")
  for device in ("accel0", "vfio/0"):
    dev = tmp_path / device.replace("/", "_")
    (dev / device).parent.mkdir(parents=True, exist_ok=True)
    (dev / device).touch()
    accel, reason, req = choice(setup_sh(tmp_path, SETUP_DEV_DIR=str(dev)))
    assert (accel, req) == ("tpu", "requirements-tpu.txt")
    assert reason == f"TPU device file {dev / device}"
  # The explicit choice wins over any signal.
  assert choice(setup_sh(tmp_path, ACCELERATOR="cpu", TPU_ACCELERATOR_TYPE="v4-8"))[0] == "cpu"


def test_unknown_accelerator_is_refused_with_the_choices(tmp_path):
  r = setup_sh(tmp_path, ACCELERATOR="rocm")
  assert r.returncode == 2
  assert "ACCELERATOR=rocm is not one of cpu|cuda|tpu" in r.stderr
  assert "pip install" not in r.stdout


def test_requirement_files_pin_the_jax_of_requirements_txt():
  # One JAX version: requirements.txt's; jaxlib and every accelerator pin agree.
  base = pins("requirements.txt")
  assert pinned_version(base["jaxlib"]) == JAX_VERSION
  tpu = pins("requirements-tpu.txt")
  assert pinned_version(tpu["jax[tpu]"]) == JAX_VERSION
  # The installed jax is the pinned one, and its own extras accept our pins
  # (jax 0.10.2: jax-cuda12-plugin==0.10.2, libtpu==0.0.42.*).
  assert importlib.metadata.version("jax") == JAX_VERSION
  extras = {}
  for line in importlib.metadata.requires("jax"):
    req = Requirement(line)
    for extra in ("cuda12", "tpu"):
      if req.marker is not None and req.marker.evaluate({"extra": extra}):
        extras.setdefault(extra, {})[req.name] = req
  ours = {"cuda12": pins("requirements-cuda.txt"), "tpu": tpu}
  ours["cuda12"]["jax-cuda12-plugin"] = ours["cuda12"].pop("jax-cuda12-plugin[with-cuda]")
  for extra, wanted in extras.items():
    for name, req in wanted.items():
      if name == "jaxlib":
        assert req.specifier.contains(pinned_version(base["jaxlib"])), (extra, req)
      elif name in ours[extra]:
        assert req.specifier.contains(pinned_version(ours[extra][name])), (extra, req)
  assert "libtpu" in extras["tpu"] and "jax-cuda12-plugin" in extras["cuda12"]
  # setup.sh refuses a file whose pins drifted (checked before any pip).


def test_dry_run_touches_nothing_and_a_new_choice_reinstalls(tmp_path):
  # A copy of the repository's install files with a real (pip-less) venv whose
  # stamp says "installed for cpu", and a stray TPU runtime in it.
  repo = tmp_path / "repo"
  (repo / "scripts").mkdir(parents=True)
  for name in ("scripts/setup.sh", "requirements.txt", "pyproject.toml",
               *ACCELERATOR_FILES.values()):
    shutil.copy(os.path.join(REPO, name), repo / name)
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")],
                 check=True, timeout=120)
  cpu_stamp = hashlib.sha256(b"".join(
      (repo / n).read_bytes() for n in ("requirements.txt", "pyproject.toml"))).hexdigest()
  (repo / ".venv" / ".requirements.sha").write_text(cpu_stamp + "\n")
  site = next((repo / ".venv" / "lib").glob("python*/site-packages"))
  info = site / "libtpu-0.0.42.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: libtpu\nVersion: 0.0.42.1\n")

  def snapshot():
    return sorted((str(p.relative_to(repo)), p.stat().st_mtime_ns) for p in repo.rglob("*"))

  before = snapshot()
  r = setup_sh(tmp_path, repo=str(repo), ACCELERATOR="cpu")
  assert choice(r)[0] == "cpu"
  assert "(.venv is up to date for cpu: a real run would install nothing now)" in r.stdout
  r = setup_sh(tmp_path, repo=str(repo), ACCELERATOR="cuda")
  assert choice(r)[0] == "cuda"
  assert "up to date" not in r.stdout
  lines = r.stdout.splitlines()
  start = lines.index("setup.sh: DRY_RUN=1: nothing is installed; the commands:") + 1
  assert lines[start:start + 5] == [
      ".venv/bin/python -m pip install -q --upgrade pip",
      ".venv/bin/python -m pip uninstall -q -y libtpu",  # the other accelerator's plugin
      ".venv/bin/python -m pip install -q -r requirements-cuda.txt",
      ".venv/bin/python -m pip install -q --no-deps -e .",
      f".venv/bin/python scripts/check_jax.py {JAX_VERSION} cuda requirements-cuda.txt"]
  assert snapshot() == before

  # A drifted plugin pin fails before anything runs, naming both versions.
  cuda = repo / "requirements-cuda.txt"
  cuda.write_text(cuda.read_text().replace(f"jax-cuda12-pjrt=={JAX_VERSION}",
                                           "jax-cuda12-pjrt==0.0.1"))
  r = setup_sh(tmp_path, repo=str(repo), ACCELERATOR="cuda")
  assert r.returncode == 2 and "pip" not in r.stdout
  assert (f"requirements-cuda.txt pins jax-cuda12-pjrt==0.0.1 but requirements.txt pins "
          f"jax=={JAX_VERSION}") in r.stderr


def test_the_install_check_wants_the_pinned_jax_on_the_chosen_devices(monkeypatch):
  # scripts/check_jax.py, which setup.sh runs after pip (here in this CPU venv).
  spec = importlib.util.spec_from_file_location(
      "check_jax", os.path.join(REPO, "scripts", "check_jax.py"))
  check_jax = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(check_jax)
  monkeypatch.delenv("CHECK_DEVICES", raising=False)
  assert check_jax.main([JAX_VERSION, "cpu", "requirements.txt"]) is None
  error = check_jax.main(["0.0.1", "cpu", "requirements.txt"])
  assert error.startswith(f"setup.sh: .venv has jax {JAX_VERSION}, but requirements.txt pins "
                          "0.0.1: pip install -r requirements.txt did not install it")
  error = check_jax.main([JAX_VERSION, "cuda", "requirements-cuda.txt"])
  assert "installed JAX's cuda build (requirements-cuda.txt), but JAX finds" in error
  assert "cpu device(s) (cpu), no gpu" in error and "ACCELERATOR=cpu" in error
  assert "no tpu" in check_jax.main([JAX_VERSION, "tpu", "requirements-tpu.txt"])
  monkeypatch.setenv("CHECK_DEVICES", "0")  # the version is still checked
  assert check_jax.main([JAX_VERSION, "cuda", "requirements-cuda.txt"]) is None
  assert "pins 0.0.1" in check_jax.main(["0.0.1", "cuda", "requirements-cuda.txt"])


def test_platform_key_and_check(tmp_path):
  config = tiny_config(str(tmp_path))
  with config.ignore_type():
    config.platform = "cuda"
  with pytest.raises(config_lib.ConfigError, match=r"config.platform='cuda' is not one of"):
    config_lib.validate(config)
  line = distributed.check_platform(None, environ={"BVL_PLATFORM": "cpu"})
  assert line.startswith("Platform: cpu, ") and "BVL_PLATFORM asks for cpu" in line
  assert "any platform" in distributed.check_platform(None, environ={})
  with pytest.raises(distributed.PlatformError, match="ACCELERATOR=tpu bash scripts/setup.sh"):
    distributed.check_platform("tpu", environ={})
  with pytest.raises(distributed.PlatformError, match="they disagree"):
    distributed.check_platform("cpu", environ={"BVL_PLATFORM": "gpu"})


def test_a_gpu_run_on_the_cpu_build_fails_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  overrides = [f"--config.{o}" for o in tiny_overrides(str(tmp_path / "no_data"),
                                                       total_steps=2, ckpt_steps=1)]
  env = {k: v for k, v in os.environ.items() if k != "BVL_PLATFORM"}
  r = subprocess.run([sys.executable, "-m", "big_vision_like.train",
                      "--config", "configs/fashion_vit.py:runlocal", "--workdir", str(workdir),
                      *overrides, "--config.platform=gpu"], check=False, cwd=REPO,
                     capture_output=True, text=True, timeout=300, env=dict(env, JAX_PLATFORMS="cpu"))
  assert r.returncode != 0
  assert "PlatformError: config.platform='gpu', but JAX" in r.stderr, r.stderr[-3000:]
  assert "found platform 'cpu'" in r.stderr
  assert "`ACCELERATOR=cuda bash scripts/setup.sh`" in r.stderr
  assert not workdir.exists()  # no checkpoint, no config.json, nothing


def test_slurm_job_asks_for_gpus_and_sets_up_cuda(tmp_path):
  # A fake srun shows what the job would start each task with: BVL_PLATFORM=gpu
  # (so a task on JAX's CPU build stops at start-up, as the test above shows)
  # and the GPU XLA flags in front of the user's. Without PYTHON the job runs
  # setup.sh for cuda first (here DRY_RUN=1: it only prints its commands).
  srun = fake_bin(tmp_path / "slurm", srun=(
      'echo "BVL_PLATFORM=$BVL_PLATFORM"; echo "XLA_FLAGS=$XLA_FLAGS"; echo "ARGS=$*"'))
  env = {k: v for k, v in os.environ.items()
         if k not in ("BVL_PLATFORM", "PYTHON", "ACCELERATOR")}
  env.update(SRUN=os.path.join(srun, "srun"), XLA_FLAGS="--xla_dump_to=/tmp/x", DRY_RUN="1")
  r = subprocess.run(["bash", "scripts/launch_slurm.sbatch", "configs/vit_i1k.py:variant=B/16",
                      str(tmp_path / "run"), "--config.lr=0.001"], check=False, cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "setup.sh: accelerator cuda (ACCELERATOR=cuda); installs requirements-cuda.txt" \
      in r.stdout
  assert "BVL_PLATFORM=gpu\n" in r.stdout
  assert ("XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/x\n"
          in r.stdout)
  assert (f"ARGS=--kill-on-bad-exit=1 {REPO}/.venv/bin/python -m big_vision_like.train "
          "--distributed --config configs/vit_i1k.py:variant=B/16") in r.stdout
  assert not (tmp_path / "run").exists()
