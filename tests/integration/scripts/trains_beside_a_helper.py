"""Trains 60 steps; after step 20 runs a helper script that trains 30 steps of its own
(an eval or export a job starts, inheriting its environment): the helper is no attempt
of this process's rank, and its steps are not the job's."""

import subprocess
import sys

import torch


def train(steps: int, width: int) -> None:
    model = torch.nn.Linear(width, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        model(torch.randn(2, width)).sum().backward()
        opt.step()
        opt.zero_grad()
        if step == 20 and "--helper" not in sys.argv:
            subprocess.run([sys.executable, __file__, "--helper"], check=True)


if __name__ == "__main__":
    if "--helper" in sys.argv:
        train(30, 4)
    else:
        train(60, 8)
        print("done")
