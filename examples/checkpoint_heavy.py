"""Blocking checkpoints: the full model and optimizer state saved every few steps.

    gpuwatch run -- python examples/checkpoint_heavy.py --seconds 20
"""

import argparse
import os
import tempfile
import time

import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--every", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))  # ~8M params
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ckpt = os.path.join(tempfile.mkdtemp(prefix="ckpt-"), "state.pt")
    deadline = time.monotonic() + args.seconds
    step = 0
    while time.monotonic() < deadline:
        x = torch.randn(32, 1024)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.every == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    print(f"{step} steps, checkpoint {os.path.getsize(ckpt) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
