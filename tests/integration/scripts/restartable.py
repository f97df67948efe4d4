"""A small training job, alone or under torchrun (gloo), that can fail once and starts slowly.

    torchrun --standalone --nproc-per-node 2 --max-restarts 1 restartable.py --fail-once M
    python restartable.py --startup-seconds 6

``--startup-seconds``: time before training starts (a job loading its data or checkpoint),
in every start; with ``--fail-once MARKER`` the last rank, while MARKER does not exist,
creates it and exits with status 1 after ``--fail-after`` steps, so torchrun restarts
every rank once.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--startup-seconds", type=float, default=0.0)
    p.add_argument("--fail-once", default="", metavar="MARKER")
    p.add_argument("--fail-after", type=int, default=20)
    args = p.parse_args()
    time.sleep(args.startup_seconds)
    distributed = "RANK" in os.environ
    if distributed:
        # A namespace of its own per attempt: torchrun's agent store outlives a restart,
        # and gloo could otherwise read a dead worker's address from the attempt before.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt{attempt}", store),
                                rank=rank, world_size=world)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fail = bool(args.fail_once) and rank == world - 1 and not os.path.exists(args.fail_once)
    for step in range(1, args.steps + 1):
        loss = model(torch.randn(8, 128)).square().mean()
        opt.zero_grad()
        loss.backward()
        if distributed:
            for param in model.parameters():
                dist.all_reduce(param.grad)
        opt.step()
        if fail and step == args.fail_after:
            open(args.fail_once, "w").close()
            print(f"rank {rank} fails at step {step}", flush=True)
            raise SystemExit(1)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
