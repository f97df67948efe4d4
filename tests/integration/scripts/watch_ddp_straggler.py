"""DDP on gloo under torchrun, attached with ``gpuwatch.watch()`` (no ``gpuwatch run``):
each step marked by the job; rank 1 computes 25 ms more per step, so rank 0 waits in
DDP's all-reduce. argv: the run directory."""

import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gpuwatch

dist.init_process_group("gloo")
rank = dist.get_rank()
monitor = gpuwatch.watch(job="watchddp", out_dir=sys.argv[1], exporter={"enabled": False})
model = DistributedDataParallel(torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(320):
    with monitor.step(samples=8):
        with monitor.phase("compute"):
            time.sleep(0.01 + (0.025 if rank == 1 else 0.0))
            model(torch.randn(8, 64)).sum().backward()
        with monitor.phase("optimizer"):
            opt.step()
            opt.zero_grad()
monitor.stop()
dist.barrier()  # (neither rank tears the group down while the other still uses it)
dist.destroy_process_group()
