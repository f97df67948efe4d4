"""Multi-rank CPU jobs on gloo that show the cross-rank bottlenecks. Run under torchrun:

    gpuwatch run -- torchrun --nproc-per-node 2 examples/distributed.py --scenario comm
    gpuwatch run -- torchrun --nproc-per-node 3 examples/distributed.py --scenario straggler
    gpuwatch run -- torchrun --nproc-per-node 2 examples/distributed.py --scenario stall
    gpuwatch run -- torchrun --nproc-per-node 3 examples/distributed.py --scenario rotating

comm:      gradients dwarf compute: every rank waits in all-reduce (symmetric).
straggler: the last rank does extra work each step; the others wait for it.
balanced:  small gradients, even ranks: nothing to report.
rotating:  each step a different rank gets the long batch; the others wait for it
           (every rank waits about alike on average, but no link would help).
stall:     the last rank stops inside a step for --stall-seconds, the others
           block in the all-reduce, then all carry on.

Gradients are averaged with explicit torch.distributed.all_reduce calls, or by
DistributedDataParallel with --ddp.
"""

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn

SCENARIOS = ("comm", "straggler", "balanced", "stall", "rotating")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--stall-seconds", type=float, default=20.0)
    p.add_argument("--ddp", action="store_true", help="DistributedDataParallel, not explicit "
                   "all-reduce calls")
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    width = 2048 if args.scenario == "comm" else 256  # comm: 4M params = 16 MB of gradients
    model: nn.Module = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 16))
    if args.ddp:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    last = rank == world - 1
    deadline = time.monotonic() + args.seconds
    step = 0
    while True:
        x = torch.randn(8, width)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        if args.scenario != "comm":
            time.sleep(0.02)  # stands in for real compute
        if args.scenario == "straggler" and last:
            time.sleep(0.05)  # this rank's extra work: a slow host, a throttled GPU
        if args.scenario == "rotating" and step % world == rank:
            time.sleep(0.05)  # this step's long batch landed on this rank
        if args.scenario == "stall" and last and step == 30:
            print(f"rank {rank} stalls for {args.stall_seconds:g} s", flush=True)
            time.sleep(args.stall_seconds)
        if not args.ddp:  # DDP all-reduces during backward
            for param in model.parameters():
                dist.all_reduce(param.grad)
                param.grad /= world
        opt.step()
        step += 1
        done = torch.tensor([float(time.monotonic() >= deadline)])
        dist.all_reduce(done, op=dist.ReduceOp.MAX)  # all ranks stop at the same step
        if done.item():
            break
    if rank == 0:
        print(f"{step} steps on {world} ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
