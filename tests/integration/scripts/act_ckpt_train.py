"""Activation checkpointing in a plain loop (no gpuwatch in it)."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

torch.manual_seed(0)
blocks = nn.ModuleList(nn.Sequential(nn.Linear(128, 128), nn.GELU()) for _ in range(4))
opt = torch.optim.SGD(blocks.parameters(), lr=0.01)
for _ in range(20):
    x = torch.randn(32, 128)
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    x.sum().backward()
    opt.step()
    opt.zero_grad()
