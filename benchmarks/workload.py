"""The small CPU training step the benchmarks share: an MLP, one thread, SGD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cpu_mlp(monitor: Any | None = None) -> Callable[[], None]:
    """One training step of a 512-1024-512 MLP on a batch of 64, marked on ``monitor``
    (compute and optimizer phases) when one is given."""
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 512))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 512)

    def step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    if monitor is None:
        return step

    def marked() -> None:
        with monitor.step(samples=64), monitor.phase("compute"):
            step()

    return marked
