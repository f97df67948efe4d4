"""gpuwatch's Lightning callback against Lightning's own DeviceStatsMonitor, on the same
CPU run: per-step cost over a bare Trainer, in interleaved fits.

    python benchmarks/lightning_overhead.py [--rounds 5] [--steps 3000]

Each round fits a small MLP (under 1 ms steps, one thread, so that tens of
microseconds show) for --steps steps four times,
in an order that rotates each round:

- ``bare``: no monitoring callback;
- ``gpuwatch``: GpuWatchCallback (every step's phases; 1 Hz NVML/host/allocator);
- ``devicestats@50``: DeviceStatsMonitor at Lightning's default
  ``log_every_n_steps=50``, as users get it: a device-stats read (psutil CPU and
  memory on a CPU run, ``torch.cuda.memory_stats`` on a GPU) at the start and end
  of every 50th step, logged to the CSV logger;
- ``devicestats@1Hz``: the same at equal sampling with gpuwatch: every N steps,
  N = steps per second of the bare run.

Every run uses the same logger at the same ``log_every_n_steps``. The cost of a
callback is its mean step time minus the bare run's in the same round: median and
spread (min-max) over the rounds.
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


def fit(kind: str, steps: int, data: TensorDataset, every: int) -> float:
    """Mean step seconds of one fit; DeviceStatsMonitor logs every ``every`` steps."""
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    log_every = every if kind == "devicestats@1Hz" else 50
    with tempfile.TemporaryDirectory() as tmp:
        logger = CSVLogger(tmp)
        if kind == "gpuwatch":
            callbacks.append(GpuWatchCallback(out_dir=f"{tmp}/run", exporter={"enabled": False}))
        elif kind.startswith("devicestats"):
            callbacks.append(DeviceStatsMonitor())
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger,
                            log_every_n_steps=log_every, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False,
                            callbacks=callbacks)
        trainer.fit(Tiny(), DataLoader(data, batch_size=32))
    return (clock.end - clock.start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("gpuwatch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    data = TensorDataset(torch.randn(args.steps * 32, 64), torch.randn(args.steps * 32, 1))
    bare_step = fit("bare", 100, data, 50)  # warm-up, and the step time for 1 Hz
    every = max(1, round(1.0 / bare_step))
    kinds = ["bare", "gpuwatch", "devicestats@50", "devicestats@1Hz"]
    cost: dict[str, list[float]] = {k: [] for k in kinds[1:]}
    bare: list[float] = []
    for i in range(args.rounds):
        order = kinds[i % 4:] + kinds[: i % 4]
        times = {kind: fit(kind, args.steps, data, every) for kind in order}
        bare.append(times["bare"])
        for kind in cost:
            cost[kind].append(times[kind] - times["bare"])
    print(f"bare step median {statistics.median(bare) * 1e3:.2f} ms "
          f"[{min(bare) * 1e3:.2f}-{max(bare) * 1e3:.2f}] over {args.rounds} rounds; "
          f"1 Hz = every {every} steps")
    for kind, values in cost.items():
        print(f"{kind:16} {statistics.median(values) * 1e6:+8.1f} us/step "
              f"[{min(values) * 1e6:+.1f} .. {max(values) * 1e6:+.1f}]")


if __name__ == "__main__":
    main()
