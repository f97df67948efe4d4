"""A torchrun gloo job whose last rank fails once: run with ``--max-restarts 1``.

    torchrun --nproc-per-node 2 --max-restarts 1 fails_once.py --marker /tmp/failed

In the first attempt (no marker yet) the last rank creates the marker and exits with
status 1 after ``--fail-after`` steps; torchrun restarts every rank and the second
attempt trains ``--steps`` steps to the end.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--marker", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--fail-after", type=int, default=20)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fail = rank == world - 1 and not os.path.exists(args.marker)
    for step in range(1, args.steps + 1):
        loss = model(torch.randn(8, 128)).square().mean()
        opt.zero_grad()
        loss.backward()
        for param in model.parameters():
            dist.all_reduce(param.grad)
        opt.step()
        if fail and step == args.fail_after:
            open(args.marker, "w").close()
            print(f"rank {rank} fails at step {step}", flush=True)
            raise SystemExit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
