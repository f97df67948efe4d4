"""The README's pattern, ``monitor = gpuwatch.watch()`` at the module's top level, with
the loop under a main guard, in a program whose children run that module again:

    python top_level_watch.py loader   # DataLoader workers started with "spawn", 2 epochs
    python top_level_watch.py ranks    # 2 gloo ranks started by torch.multiprocessing.spawn

Each child of "spawn" runs this module's top level again (``watch()`` included) before
its own work. Prints the steps each training process took (``steps RANK N``).
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import gpuwatch

monitor = gpuwatch.watch(job="toplevel")


def train(rank: int, world: int, loader_workers: int, port: int = 0) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(128, 8))
    done = 0
    for _ in range(2):  # epochs: non-persistent workers start again in each
        loader = DataLoader(data, batch_size=8, num_workers=loader_workers,
                            multiprocessing_context="spawn" if loader_workers else None)
        for batch in loader:
            with monitor.step(samples=8):
                with monitor.phase("compute"):
                    model(batch[0]).sum().backward()
                    if world > 1:
                        for p in model.parameters():
                            dist.all_reduce(p.grad)
                with monitor.phase("optimizer"):
                    opt.step()
                    opt.zero_grad()
            done += 1
    print(f"steps {rank} {done}", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "loader":
        train(0, 1, loader_workers=2)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        mp.spawn(train, args=(2, 0, free), nprocs=2)
    monitor.stop()
    print("pid", os.getpid())
