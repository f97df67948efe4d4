"""A healthy run: a small transformer on CPU with a cheap in-memory dataset and one
checkpoint at the end. gpuwatch should find nothing to fix and nothing to buy.

    gpuwatch run -- python examples/healthy.py --seconds 20
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
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, batch_first=True)
    model = nn.Sequential(nn.Embedding(1000, 128), nn.TransformerEncoder(layer, num_layers=2),
                          nn.Linear(128, 1000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = TensorDataset(torch.randint(0, 1000, (2048, 33)))
    loader = DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for (tokens,) in loader:
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 1000), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if time.monotonic() >= deadline:
                break
    torch.save(model.state_dict(), os.path.join(tempfile.mkdtemp(), "final.pt"))


if __name__ == "__main__":
    main()
