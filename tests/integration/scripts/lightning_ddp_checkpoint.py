"""A Lightning fit with the ``ddp`` strategy on 2 CPU processes (Lightning re-launches rank
1), the gpuwatch callback and a ``ModelCheckpoint`` every 10 steps: every rank's
``on_save_checkpoint`` runs, rank 0 alone writes.

    python lightning_ddp_checkpoint.py OUT --steps 40
"""

import argparse
import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from gpuwatch.integrations.lightning import GpuWatchCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # (the repository: tests.*)
from tests.tiny_lightning import Tiny


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = TensorDataset(torch.randn(2048, 32), torch.randn(2048, 1))
    callback = GpuWatchCallback(out_dir=args.out, exporter={"enabled": False})
    saves = ModelCheckpoint(dirpath=args.out + "-ckpt", every_n_train_steps=10, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=args.steps,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback, saves])
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))


if __name__ == "__main__":
    main()
