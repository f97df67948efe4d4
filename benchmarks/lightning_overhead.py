"""gpuwatch's Lightning callback against Lightning's own DeviceStatsMonitor, on the same
CPU run: per-step cost over a bare Trainer, in paired, interleaved fits.

    python benchmarks/lightning_overhead.py [--pairs 10] [--steps 400]

Each round fits a small MLP for --steps steps three times (bare, with gpuwatch,
with DeviceStatsMonitor logging every step to a CSV logger), in an order that
rotates each round. The cost of a callback is its mean step time minus the
bare run's in the same round; reported with the ratio of the two costs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, DeviceStatsMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from gpuwatch.integrations.lightning import GpuWatchCallback


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                       torch.nn.Linear(256, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepClock(Callback):
    """Wall time of the training loop proper (first batch start to train end)."""

    def on_train_batch_start(self, *args: object) -> None:
        if not hasattr(self, "start"):
            self.start = time.perf_counter()

    def on_train_end(self, *args: object) -> None:
        self.end = time.perf_counter()


def fit(kind: str, steps: int, data: TensorDataset) -> float:
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    with tempfile.TemporaryDirectory() as tmp:
        logger = CSVLogger(tmp)  # all three log alike; DeviceStatsMonitor needs a logger
        if kind == "gpuwatch":
            callbacks.append(GpuWatchCallback(out_dir=f"{tmp}/run", exporter={"enabled": False}))
        elif kind == "devicestats":
            callbacks.append(DeviceStatsMonitor())
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger,
                            log_every_n_steps=1, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False,
                            callbacks=callbacks)
        trainer.fit(Tiny(), DataLoader(data, batch_size=32))
    return (clock.end - clock.start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("gpuwatch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    data = TensorDataset(torch.randn(args.steps * 32, 64), torch.randn(args.steps * 32, 1))
    kinds = ["bare", "gpuwatch", "devicestats"]
    fit("bare", 50, data)  # warm-up
    cost: dict[str, list[float]] = {"gpuwatch": [], "devicestats": []}
    bare: list[float] = []
    for i in range(args.pairs):
        order = kinds[i % 3:] + kinds[: i % 3]
        times = {kind: fit(kind, args.steps, data) for kind in order}
        bare.append(times["bare"])
        for kind in cost:
            cost[kind].append(times[kind] - times["bare"])
    print(f"bare step {statistics.fmean(bare) * 1e6:.0f} us over {args.pairs} rounds")
    for kind, values in cost.items():
        m = statistics.fmean(values)
        half = 1.96 * statistics.stdev(values) / len(values) ** 0.5
        print(f"{kind:12} +{m * 1e6:.1f} us/step (95% CI {(m - half) * 1e6:.1f} .. "
              f"{(m + half) * 1e6:.1f})")
    ratio = statistics.fmean(cost["gpuwatch"]) / statistics.fmean(cost["devicestats"])
    print(f"gpuwatch cost / DeviceStatsMonitor cost = {ratio:.3f}")


if __name__ == "__main__":
    main()
