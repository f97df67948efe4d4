"""A loop loading in its own process (num_workers 0 or N, from argv) beside a helper
child of its own (a metrics uploader, idle), for a few seconds of sampling."""

import multiprocessing
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset


def helper() -> None:
    time.sleep(60)


if __name__ == "__main__":
    uploader = multiprocessing.get_context("spawn").Process(target=helper, daemon=True)
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
            time.sleep(0.005)
            if time.monotonic() >= deadline:
                break
    uploader.terminate()
    print("done")
