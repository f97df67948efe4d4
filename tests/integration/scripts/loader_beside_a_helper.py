"""A loop loading in its own process (num_workers 0 or N, from argv) beside a helper
child of its own (a metrics uploader, idle), for a few seconds of sampling."""

import multiprocessing
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def helper(done: Any) -> None:
    done.wait(60)  # (idle until the job is done)


if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    done = spawn.Event()
    uploader = spawn.Process(target=helper, args=(done,), daemon=True)
    uploader.start()
    data = DataLoader(TensorDataset(torch.randn(4096, 8)), batch_size=8,
                      num_workers=int(sys.argv[1]), persistent_workers=int(sys.argv[1]) > 0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for (x,) in data:
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
            if time.monotonic() >= deadline:
                break
    done.set()
    uploader.join(30)
    print("done")
