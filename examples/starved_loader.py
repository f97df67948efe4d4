"""A DataLoader that cannot keep up: a CPU-heavy transform in the training process
(num_workers=0; --workers N for N worker processes). With --healthy-seconds it first
trains on cheap data, then switches and prints "onset <unix time>", so detection
latency can be measured. With --eval-every K, a short evaluation pass every K steps
over an eval loader of --eval-workers persistent workers, idle between evaluations.

    gpuwatch run -- python examples/starved_loader.py --seconds 25
"""

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Images(Dataset):
    """Synthetic 64x64 images; the slow variant runs an expensive augmentation."""

    def __init__(self, slow: bool) -> None:
        self.slow = slow

    def __len__(self) -> int:
        return 100_000

    def __getitem__(self, i: int):
        x = torch.randn(3, 64, 64)
        if self.slow:
            for _ in range(6):  # a CPU-heavy "augmentation"
                x = torch.nn.functional.avg_pool2d(x[None], 3, 1, 1)[0] + 0.01 * torch.randn_like(x)
        return x, i % 10


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--healthy-seconds", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--eval-workers", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    evals = DataLoader(Images(slow=False), batch_size=32, num_workers=args.eval_workers,
                       sampler=range(128), persistent_workers=args.eval_workers > 0)
    start = time.monotonic()
    steps = 0
    phases = [(False, args.healthy_seconds), (True, args.seconds - args.healthy_seconds)]
    for slow, seconds in phases:
        if seconds <= 0:
            continue
        if slow:
            print(f"onset {time.time():.3f}", flush=True)
        loader = DataLoader(Images(slow), batch_size=32, num_workers=args.workers)
        end = time.monotonic() + seconds
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if args.eval_every and steps % args.eval_every == 0:
                with torch.no_grad():
                    for x, _ in evals:
                        model(x)
            if time.monotonic() >= end:
                break
    print(f"trained for {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
