"""A healthy loop whose host's wall clock steps two hours forward a third of the way
in (an NTP step, a VM resumed), as the process sees it: ``time.time`` jumps."""

import time

import torch

real = time.time
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(300):
    if step == 100:
        time.time = lambda: real() + 7200.0
    model(torch.randn(32, 64)).sum().backward()
    opt.step()
    opt.zero_grad()
print("done")
