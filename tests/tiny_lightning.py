"""The tiny regression model the real-Lightning tests train (import inside a test: it
imports lightning)."""

from __future__ import annotations

import lightning as L
import torch


class Tiny(L.LightningModule):
    """32 -> 64 -> 1 MLP on MSE; ``log_loss`` logs ``train_loss`` every step (so a logger
    has a column of the model's own beside gpuwatch's)."""

    def __init__(self, log_loss: bool = False) -> None:
        super().__init__()
        self.log_loss = log_loss
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.log_loss:
            self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyWithEval(Tiny):
    """``Tiny`` with a validation step that computes for 10 ms a batch (model time, no
    data): a wide layer applied until that much CPU time has passed."""

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        import time

        x, y = batch
        wide = torch.ones(256, 256)
        until = time.thread_time() + 0.01
        while time.thread_time() < until:
            wide = torch.tanh(wide @ wide)
        return torch.nn.functional.mse_loss(self.net(x), y)


class TinyGan(L.LightningModule):
    """A GAN with manual optimization: two optimizers, each stepped every ``accumulate``
    batches (gradients the job accumulates itself)."""

    def __init__(self, accumulate: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.accumulate = accumulate
        self.generator = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                             torch.nn.Linear(32, 32))
        self.critic = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                          torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        (real,) = batch
        critic_opt, generator_opt = self.optimizers()
        fake = self.generator(torch.randn(len(real), 16))
        soft = torch.nn.functional.softplus
        self.manual_backward((soft(self.critic(fake.detach())).mean()
                              + soft(-self.critic(real)).mean()) / self.accumulate)
        self.manual_backward(soft(-self.critic(fake)).mean() / self.accumulate)
        if (batch_idx + 1) % self.accumulate == 0:
            for opt in (critic_opt, generator_opt):
                opt.step()
                opt.zero_grad()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return (torch.optim.Adam(self.critic.parameters(), 1e-3),
                torch.optim.Adam(self.generator.parameters(), 1e-3))
