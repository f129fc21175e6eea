"""The launch scripts: Cloud TPU VM (dry run), SLURM (with a local srun), local N-process."""

import os
import subprocess
import sys
import time

import pytest

from big_vision_like.tools import launch_local
from tests.helpers import free_port, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tpu(*args, **env):
  env = dict(os.environ, DRY_RUN="1", NAME="vm1", ZONE="us-central2-b", **env)
  return subprocess.run(["bash", "scripts/launch_tpu_vm.sh", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)


def test_tpu_vm_train_runs_on_every_worker_with_a_gs_workdir():
  r = tpu("train", "configs/vit_i1k.py:variant=B/16", "gs://bucket/run1", "--config.lr=0.001",
          PROJECT="proj")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 1
  line = lines[0]
  assert line.startswith("gcloud compute tpus tpu-vm ssh vm1 --worker=all --command ")
  assert "--zone us-central2-b --project proj" in line
  for part in ("-m big_vision_like.train", "--distributed", "gs://bucket/run1",
               "configs/vit_i1k.py:variant=B/16", "--config.lr=0.001", "train.log"):
    assert part in line


def test_tpu_vm_all_steps_in_order_and_bad_input():
  r = tpu("all", "configs/fashion_vit.py", "gs://b/w", SPOT="1", TYPE="v5p-16")
  assert r.returncode == 0, r.stderr
  verbs = [line.split()[4] for line in r.stdout.strip().splitlines()]
  assert verbs == ["create", "scp", "ssh", "ssh", "ssh"]  # create, setup x2, train, logs
  assert "--accelerator-type v5p-16" in r.stdout and "--spot" in r.stdout
  # setup.sh installs the TPU build of the pinned JAX (requirements-tpu.txt) on every worker.
  assert "ACCELERATOR=tpu SKIP_APT=1 bash scripts/setup.sh" in r.stdout.splitlines()[2]
  assert "BVL_PLATFORM=tpu" in r.stdout.splitlines()[3]
  assert "tail -n 100 -F" in r.stdout.splitlines()[-1]

  r = tpu("train", "configs/fashion_vit.py", "/local/dir")
  assert r.returncode == 2 and "WORKDIR must be on gs://" in r.stderr
  r = tpu("fly")
  assert r.returncode == 2 and "unknown step fly" in r.stderr
  r = subprocess.run(["bash", "scripts/launch_tpu_vm.sh", "create"], cwd=REPO,
                     env=dict(os.environ, DRY_RUN="1", ZONE="z"), capture_output=True,
                     text=True)
  assert r.returncode != 0 and "set NAME" in r.stderr


def test_launch_local_env_prefixes_and_exit_code(tmp_path):
  code = ("import os; print(os.environ['BVL_PROCESS_ID'], os.environ['BVL_NUM_PROCESSES'], "
          "os.environ['BVL_COORDINATOR_ADDRESS'].startswith('localhost:'), "
          "os.environ['XLA_FLAGS'])")
  r = subprocess.run([sys.executable, "-m", "big_vision_like.tools.launch_local",
                      "--num_processes", "3", "--devices_per_process", "4",
                      "--log_dir", str(tmp_path), "--", sys.executable, "-c", code],
                     cwd=REPO, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                              "--xla_force_host_platform_device_count=8"))
  assert r.returncode == 0, r.stdout + r.stderr
  lines = sorted(r.stdout.strip().splitlines())
  flags = "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=4"
  assert lines == [f"p{i}| {i} 3 True {flags}" for i in range(3)]
  assert open(tmp_path / "p2.log").read() == f"2 3 True {flags}\n"


def test_launch_local_stops_the_job_when_one_process_fails():
  # Process 1 fails at once; process 0 would wait forever (like a peer stuck
  # in a collective) and is killed after the grace period.
  code = ("import os, sys, time\n"
          "if os.environ['BVL_PROCESS_ID'] == '1': sys.exit(3)\n"
          "time.sleep(600)\n")
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, "-m", "big_vision_like.tools.launch_local",
                      "--num_processes", "2", "--grace_s", "2", "--", sys.executable, "-c",
                      code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 3
  assert time.monotonic() - t0 < 60
  assert "process 1 exited with exit code 3" in r.stdout
  assert "killing process 0" in r.stdout


def test_launch_local_usage_errors():
  with pytest.raises(ValueError, match="num_processes must be >= 1"):
    launch_local.launch(["true"], 0)
  with pytest.raises(ValueError, match="no command"):
    launch_local.launch([], 2)
  assert launch_local.main(["--num_processes", "2"]) == 2  # no `--`


def test_slurm_script_trains_with_jax_slurm_detection(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, SRUN=f"{sys.executable} {REPO}/tests/fake_srun.py",
             PYTHON=sys.executable, SLURM_NTASKS="2", SLURM_JOB_ID="77",
             JAX_COORDINATOR_PORT=str(free_port()), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             BVL_PLATFORM="cpu")  # the script asks for gpu unless told otherwise
  overrides = [f"--config.{o}" for o in tiny_overrides(
      fashion_mnist_data_dir, total_steps=3, log_training_steps=1, ckpt_steps=3)]
  r = subprocess.run(["bash", "scripts/launch_slurm.sbatch", "configs/fashion_vit.py:runlocal",
                      workdir, *overrides], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=600)
  log = r.stdout + r.stderr
  assert r.returncode == 0, log[-4000:]
  assert "Devices: 4 (cpu), mesh {'data': 4}, 2 processes" in log
  assert "Platform: cpu, 4 devices (cpu), 2 in this process; BVL_PLATFORM asks for cpu." in log
  assert "[p1]" in log
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]
