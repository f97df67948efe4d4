"""Trains 20 steps, then forks two processes (multiprocessing, fork) that train 30 steps
each, one after the other: under ``gpuwatch run`` every process's steps are logged.

    python fork_after_training.py
"""

import multiprocessing

import torch


def train(steps: int) -> None:
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        opt.zero_grad()


if __name__ == "__main__":
    train(20)
    context = multiprocessing.get_context("fork")
    for _ in range(2):
        child = context.Process(target=train, args=(30,))
        child.start()
        child.join()
        assert child.exitcode == 0
