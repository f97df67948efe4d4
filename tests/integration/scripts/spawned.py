"""A gloo job started the way the PyTorch DDP tutorial starts one: torch.multiprocessing.spawn,
the ranks passed to init_process_group, no RANK/LOCAL_RANK/WORLD_SIZE in the environment.

    python spawned.py --world 3 --seconds 20 --slow 0.1

The last rank does ``--slow`` seconds of extra work each step (the others wait for it in
the all-reduce). The job ends after ``--seconds`` or, with ``--until FILE``, once FILE
exists; all ranks stop at the same step. ``--fork``: ranks started as forked
multiprocessing.Process children instead (they end in os._exit); ``--count DIR``: each
rank writes its number of steps to DIR/rank<r>.
"""

import argparse
import multiprocessing
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def train(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + args.seconds
    done_steps = 0
    while True:
        loss = model(torch.randn(8, 256)).square().mean()
        opt.zero_grad()
        loss.backward()
        time.sleep(0.02)  # stands in for real compute
        if rank == world - 1:
            time.sleep(args.slow)  # this rank's extra work
        for param in model.parameters():
            dist.all_reduce(param.grad)
            param.grad /= world
        opt.step()
        done_steps += 1
        over = time.monotonic() >= deadline or bool(args.until and os.path.exists(args.until))
        done = torch.tensor([float(over)])
        dist.all_reduce(done, op=dist.ReduceOp.MAX)
        if done.item():
            break
    dist.destroy_process_group()
    if args.count:
        with open(os.path.join(args.count, f"rank{rank}"), "w") as f:
            f.write(str(done_steps))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--slow", type=float, default=0.1)
    p.add_argument("--until", default="")
    p.add_argument("--fork", action="store_true")
    p.add_argument("--count", default="")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if not args.fork:
        mp.spawn(train, args=(args.world, port, args), nprocs=args.world, join=True)
        return
    ranks = [multiprocessing.get_context("fork").Process(
        target=train, args=(rank, args.world, port, args)) for rank in range(args.world)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join()


if __name__ == "__main__":
    main()
