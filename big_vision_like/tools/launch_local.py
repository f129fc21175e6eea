"""Start N processes of one command on this machine, wired for jax.distributed.

What a cluster manager (SLURM, the Cloud TPU runtime) does for a multi-host
job, done locally so that multi-process code paths can run and be tested on a
single machine:

  python -m big_vision_like.tools.launch_local --num_processes 2 \
      --devices_per_process 4 -- \
      python -m big_vision_like.train --config configs/fashion_vit.py --workdir /tmp/r

Every process gets the coordinator address (localhost and a free port), the
process count and its own id through the environment variables that
`big_vision_like.distributed` reads (`BVL_COORDINATOR_ADDRESS`,
`BVL_NUM_PROCESSES`, `BVL_PROCESS_ID`), and `--devices_per_process` fake CPU
devices through `XLA_FLAGS`. Output lines are prefixed with the process id
(`p1| ...`) and optionally also written to `{log_dir}/p{i}.log`.

A job is only as alive as all of its processes: when one exits with an
error, the launcher gives the others `--grace_s` seconds to notice and exit
on their own (they should, see `distributed.py`), then kills them, and exits
with the first failing process's code. SIGTERM and SIGINT sent to the
launcher are forwarded to every process (a preemption notice for all).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

COORDINATOR_ENV = "BVL_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "BVL_NUM_PROCESSES"
PROCESS_ID_ENV = "BVL_PROCESS_ID"


def free_port() -> int:
  """A TCP port nobody listens on right now (the coordinator binds it)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], *, coordinator: str, num_processes: int,
                process_id: int, devices_per_process: int | None) -> dict[str, str]:
  """The environment of process `process_id` of the job."""
  env = dict(base)
  env[COORDINATOR_ENV] = coordinator
  env[NUM_PROCESSES_ENV] = str(num_processes)
  env[PROCESS_ID_ENV] = str(process_id)
  if devices_per_process is not None:
    # Replace any device count already in XLA_FLAGS, keep the other flags.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _pump(stream: IO[str], prefix: str, out: IO[str], log: IO[str] | None,
          lock: threading.Lock) -> None:
  for line in stream:
    with lock:
      out.write(prefix + line)
      out.flush()
      if log is not None:
        log.write(line)
        log.flush()


def launch(command: Sequence[str], num_processes: int, *,
           devices_per_process: int | None = None, log_dir: str | None = None,
           grace_s: float = 60.0, port: int | None = None,
           out: IO[str] = sys.stdout) -> int:
  """Runs `command` as `num_processes` processes; returns the job's exit code.

  0 if every process exited 0; otherwise the exit code of the first process
  that failed (a process killed by a signal counts as 128 + signal number).
  """
  if num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  if not command:
    raise ValueError("no command given (put it after `--`)")
  coordinator = f"localhost:{port or free_port()}"
  lock = threading.Lock()
  logs = []
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
    logs = [open(os.path.join(log_dir, f"p{i}.log"), "w") for i in range(num_processes)]
  procs, pumps = [], []
  for i in range(num_processes):
    env = process_env(os.environ, coordinator=coordinator, num_processes=num_processes,
                      process_id=i, devices_per_process=devices_per_process)
    p = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    procs.append(p)
    t = threading.Thread(target=_pump, daemon=True,
                         args=(p.stdout, f"p{i}| ", out, logs[i] if logs else None, lock))
    t.start()
    pumps.append(t)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}

  first_failure: int | None = None
  deadline = None
  try:
    while any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        code = p.poll()
        if code not in (None, 0) and first_failure is None:
          first_failure = 128 - code if code < 0 else code
          deadline = time.monotonic() + grace_s
          with lock:
            out.write(f"launch_local: process {i} exited with "
                      f"{_describe(code)}; giving the others {grace_s:.0f}s to stop\n")
      if deadline is not None and time.monotonic() > deadline:
        for i, p in enumerate(procs):
          if p.poll() is None:
            with lock:
              out.write(f"launch_local: killing process {i} (still running "
                        f"{grace_s:.0f}s after a peer failed)\n")
            p.kill()
        deadline = None
      time.sleep(0.2)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for t in pumps:
      t.join(timeout=5)
    for f in logs:
      f.close()
  if first_failure is None:
    # Several processes may have failed "at once"; report the first non-zero.
    codes = [p.returncode for p in procs]
    bad = [c for c in codes if c != 0]
    first_failure = (128 - bad[0] if bad[0] < 0 else bad[0]) if bad else 0
  return first_failure


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"signal {signal.Signals(-code).name}"
    except ValueError:
      return f"signal {-code}"
  return f"exit code {code}"


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    print("usage: launch_local --num_processes N [options] -- COMMAND ...", file=sys.stderr)
    return 2
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="fake CPU devices per process (sets XLA_FLAGS)")
  parser.add_argument("--log_dir", default=None, help="also write p{i}.log here")
  parser.add_argument("--grace_s", type=float, default=60.0,
                      help="seconds the others get to exit after one fails")
  parser.add_argument("--port", type=int, default=None, help="coordinator port")
  args = parser.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], args.num_processes,
                  devices_per_process=args.devices_per_process, log_dir=args.log_dir,
                  grace_s=args.grace_s, port=args.port)
  except ValueError as e:
    parser.error(str(e))
    return 2


if __name__ == "__main__":
  sys.exit(main())
