"""A plain PyTorch training loop with no gpuwatch in it: run it under `gpuwatch run`.

    gpuwatch run --out runs/plain -- python examples/plain_train.py --steps 60

It trains a small MLP on synthetic data, with a DataLoader, an optimizer and a
checkpoint every --ckpt-every steps, on CPU (or the GPU when there is one).
"""

import argparse
import os
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seconds", type=float, default=0.0, help="train this long instead")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--exit-code", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = TensorDataset(torch.randn(4096, 256), torch.randint(0, 10, (4096,)))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        drop_last=True)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt_dir = tempfile.mkdtemp(prefix="plain-ckpt-")
    step = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    while step < args.steps or (deadline and time.monotonic() < deadline):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if args.ckpt_every and step % args.ckpt_every == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()},
                           os.path.join(ckpt_dir, "last.pt"))
            if (deadline and time.monotonic() >= deadline) or (not deadline and step >= args.steps):
                break
    raise SystemExit(args.exit_code)


if __name__ == "__main__":
    main()
