"""A loop loading in its own process (num_workers 0 or N, from argv) beside a helper
child of its own, idle, for a few seconds of sampling. The helper is a process
multiprocessing spawned (a metrics uploader); with ``--watch DIR``, a program the job
runs (a logger's service), and the loop is monitored by ``gpuwatch.watch`` logging to
DIR (no DataLoader hook: no loader is known)."""

import argparse
import contextlib
import multiprocessing
import subprocess
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def helper(done: Any) -> None:
    done.wait(60)  # (idle until the job is done)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("workers", type=int)
    p.add_argument("--watch", default="")
    args = p.parse_args()
    spawn = multiprocessing.get_context("spawn")
    done = spawn.Event()
    if args.watch:
        import gpuwatch

        service: Any = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                        stdin=subprocess.PIPE)
        monitor = gpuwatch.watch(out_dir=args.watch, sample_interval_s=0.25)
    else:
        service = spawn.Process(target=helper, args=(done,), daemon=True)
        service.start()
    data = DataLoader(TensorDataset(torch.randn(4096, 8)), batch_size=8,
                      num_workers=args.workers, persistent_workers=args.workers > 0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for (x,) in data:
            with monitor.step(samples=len(x)) if args.watch else contextlib.nullcontext():
                model(x).sum().backward()
                opt.step()
                opt.zero_grad()
            if time.monotonic() >= deadline:
                break
    if args.watch:
        monitor.stop()
        service.kill()
        service.wait(30)
    else:
        done.set()
        service.join(30)
    print("done")
