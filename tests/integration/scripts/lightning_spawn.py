"""A Lightning fit with the ``ddp_spawn`` strategy on 2 CPU processes, no gpuwatch in it:
the spawned ranks learn their place only from Lightning's init_process_group call.

    python lightning_spawn.py --steps 30
"""

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    data = TensorDataset(torch.randn(2048, 32), torch.randn(2048, 1))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn",
                        max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), DataLoader(data, batch_size=16))


if __name__ == "__main__":
    main()
