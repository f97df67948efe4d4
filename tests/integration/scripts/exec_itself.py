"""Trains 300 steps, then replaces itself (os.execv) with a second image that trains 10
more: the first image's steps must all be in its log."""

import os
import sys

import torch

model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
steps = 10 if "--again" in sys.argv else 300
for _ in range(steps):
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    opt.zero_grad()
if "--again" not in sys.argv:
    os.execv(sys.executable, [sys.executable, *sys.argv, "--again"])
print("done")
