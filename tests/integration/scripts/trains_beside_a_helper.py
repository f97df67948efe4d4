"""Trains 60 steps; after step 20 runs a helper script that trains 30 steps of its own
(an eval or export a job starts, inheriting its environment): the helper is no attempt
of this process's rank, and its steps are not the job's."""

import subprocess
import sys

import torch

HELPER = """
import torch
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(30):
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
"""

model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(60):
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    opt.zero_grad()
    if step == 20:
        subprocess.run([sys.executable, "-c", HELPER], check=True)
print("done")
