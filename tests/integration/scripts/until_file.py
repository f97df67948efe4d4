"""A plain single-process loop that trains until a file exists (or 120 s pass).

    python until_file.py STOP_FILE
"""

import os
import sys
import time

import torch
from torch import nn

stop = sys.argv[1]
model = nn.Linear(64, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    loss = model(torch.randn(16, 64)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(0.01)
