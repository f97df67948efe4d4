"""``gpuwatch demo``: a real small training job under the agent.

A tiny GPT-style model (2 layers, d=128, causal attention) learns a synthetic
token stream on the CPU, or on the GPU when there is one, for a set number of
seconds. The loop is marked with the plain-PyTorch API, the status line is
live, and the run log is written as in any monitored job.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

VOCAB, SEQ, D_MODEL, LAYERS, HEADS, BATCH = 256, 64, 128, 2, 4, 16
CHECKPOINT_EVERY = 100


def run_demo(seconds: float, out_dir: Path | None = None) -> int:
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        raise SystemExit("gpuwatch demo needs torch: pip install torch") from None
    from gpuwatch.monitor import attach
    from gpuwatch.runlog import create_run_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = _tiny_gpt(torch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=device == "cuda")
    loader = _loader(torch)
    out = out_dir or create_run_dir(Path("runs"), "demo")
    # one process, and it says so: the agent need not wait for a first step to know it
    monitor = attach({"job": "demo", "console": True, "out_dir": out}, rank=0, local_rank=0,
                     world_size=1)
    ckpt = out / "demo-checkpoint.pt"
    print(f"gpuwatch demo: training a {_params(model) / 1e6:.1f}M-parameter GPT on {device} "
          f"for {seconds:g} s; run directory: {out}", flush=True)
    deadline = time.monotonic() + seconds
    step, loss_value = 0, float("nan")
    batches = iter(loader)
    while time.monotonic() < deadline:
        with monitor.step(samples=BATCH, tokens=BATCH * SEQ):
            with monitor.phase("data"):
                try:
                    tokens = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    tokens = next(batches)
                tokens = tokens.to(device, non_blocking=True)
            with monitor.phase("compute"):
                logits = model(tokens[:, :-1])
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with monitor.phase("optimizer"):
                opt.step()
            step += 1
            if step % CHECKPOINT_EVERY == 0:
                with monitor.checkpoint(ckpt):
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
                loss_value = loss.item()  # once per checkpoint, off the per-step path
    monitor.stop()
    loss_text = (f"last checkpointed loss {loss_value:.3f}" if step >= CHECKPOINT_EVERY else
                 f"no checkpoint yet (one every {CHECKPOINT_EVERY} steps)")
    print(f"gpuwatch demo: {step} steps, {loss_text}; run log: {monitor.agent.runlog_path}")
    return 0


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _loader(torch: Any) -> Any:
    """Synthetic "text": a noisy repeating pattern the model can learn."""
    from torch.utils.data import DataLoader, Dataset

    class Tokens(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4096

        def __getitem__(self, i: int) -> Any:
            base = (torch.arange(SEQ + 1) * (i % 7 + 1) + i) % VOCAB
            noise = torch.randint(0, VOCAB, (SEQ + 1,))
            keep = torch.rand(SEQ + 1) < 0.9
            return torch.where(keep, base, noise)

    return DataLoader(Tokens(), batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)


def _tiny_gpt(torch: Any) -> Any:
    nn = torch.nn

    class Block(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
            self.attn = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(),
                                     nn.Linear(4 * D_MODEL, D_MODEL))
            self.register_buffer("mask", torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1))

        def forward(self, x: Any) -> Any:
            h = self.ln1(x)
            n = x.shape[1]
            x = x + self.attn(h, h, h, attn_mask=self.mask[:n, :n], need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class TinyGPT(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(VOCAB, D_MODEL)
            self.pos = nn.Parameter(torch.zeros(1, SEQ, D_MODEL))
            self.blocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
            self.ln = nn.LayerNorm(D_MODEL)
            self.head = nn.Linear(D_MODEL, VOCAB, bias=False)

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos[:, : idx.shape[1]]
            return self.head(self.ln(self.blocks(x)))

    return TinyGPT()
