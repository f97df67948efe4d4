"""What ``srun --ntasks N CMD`` does to a command, on one machine: N copies of CMD, each
with SLURM's task environment (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_JOB_ID).

    python fake_srun.py 2 python train.py

Exits with the first non-zero status of its tasks.
"""

import os
import subprocess
import sys


def main() -> None:
    ntasks, cmd = int(sys.argv[1]), sys.argv[2:]
    tasks = []
    for task in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task),
                   SLURM_NTASKS=str(ntasks), SLURM_NNODES="1", SLURM_JOB_ID="4242",
                   SLURM_STEP_ID="0")
        tasks.append(subprocess.Popen(cmd, env=env))
    codes = [t.wait() for t in tasks]
    raise SystemExit(next((c for c in codes if c), 0))


if __name__ == "__main__":
    main()
