"""A stand-in for SLURM's `srun` on one machine, for tests of launch_slurm.sbatch.

Starts $SLURM_NTASKS copies of the command with the variables a real srun
sets for each task (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, ...),
all on localhost, and exits with the first non-zero exit code. The
coordinator port comes from JAX_COORDINATOR_PORT (which JAX's SLURM
detection honours) so that parallel tests do not collide.
"""

import os
import subprocess
import sys


def main() -> int:
  args = [a for a in sys.argv[1:] if not a.startswith("--kill-on-bad-exit")]
  n = int(os.environ["SLURM_NTASKS"])
  procs = []
  for i in range(n):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
               SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES="1",
               SLURM_JOB_ID=os.environ.get("SLURM_JOB_ID", "4242"))
    procs.append(subprocess.Popen(args, env=env))
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
