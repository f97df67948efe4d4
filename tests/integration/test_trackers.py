"""gpuwatch's figures reach the trackers people already use: Lightning's CSVLogger
through ``trainer.logger``, and the Hugging Face Trainer's logging callbacks
through ``on_log`` (a callback that runs before ours, as ``report_to`` ones do)."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")

PHASE_SHARES = ("gpuwatch/data_share_ratio", "gpuwatch/compute_share_ratio",
                "gpuwatch/optimizer_share_ratio")


def shares_add_up(row: dict[str, Any]) -> bool:
    total = sum(float(v) for k, v in row.items()
                if k.startswith("gpuwatch/") and k.endswith("_share_ratio") and v not in ("", None))
    return abs(total - 1.0) < 1e-6


def test_lightning_csv_logger_gets_gpuwatch_columns_at_its_cadence(tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import Tiny


    data = TensorDataset(torch.randn(1600, 32), torch.randn(1600, 1))
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False},
                                sample_interval_s=0.1)
    logger = CSVLogger(tmp_path / "logs", name="tiny")
    trainer = L.Trainer(max_steps=400, accelerator="cpu", devices=1, logger=logger,
                        log_every_n_steps=50, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(Tiny(log_loss=True), DataLoader(data, batch_size=16))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ours = [r for r in rows if r.get("gpuwatch/steps_total")]
    # every 50 steps and once at the end: never per step
    assert 2 <= len(ours) <= 400 // 50 + 1, len(ours)
    assert {int(r["step"]) for r in ours} <= {*range(0, 401, 50), 400}
    timed = [r for r in ours if r.get("gpuwatch/step_seconds")]
    assert timed, "no row carried the step time"
    for row in timed:
        assert float(row["gpuwatch/step_seconds"]) > 0
        assert all(0 <= float(row[k]) <= 1 for k in PHASE_SHARES)
        assert shares_add_up(row)
        assert float(row["gpuwatch/samples_per_second"]) > 0
        assert float(row["gpuwatch/findings_active"]) >= 0
    assert any(r.get("train_loss") for r in rows)  # Lightning's own metrics still there


def test_huggingface_logs_carry_the_figures_to_callbacks_before_ours(tmp_path: Path) -> None:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from gpuwatch.integrations.huggingface import GpuWatchCallback

    class Reporter(TrainerCallback):  # what a report_to integration sees: the logs dict
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            self.logs.append(dict(logs or {}))

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 128, (256, 32))
    dataset = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=60,
                             per_device_train_batch_size=8, save_strategy="no",
                             logging_steps=10, report_to=[], use_cpu=True, disable_tqdm=True)
    reporter = Reporter()
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False},
                                sample_interval_s=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args, train_dataset=dataset,
                          callbacks=[reporter, callback])  # the reporter is called first
        trainer.train()
    step_logs = [log for log in reporter.logs if "loss" in log]
    assert len(step_logs) == 6  # logging_steps=10 over 60 steps: the Trainer's cadence
    with_figures = [log for log in step_logs if "gpuwatch/step_seconds" in log]
    assert len(with_figures) >= 5, step_logs  # the first log may come before a refresh
    for log in with_figures:
        assert log["gpuwatch/step_seconds"] > 0
        assert all(0 <= log[k] <= 1 for k in PHASE_SHARES)
        assert shares_add_up(log)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert sum("gpuwatch/step_seconds" in h for h in history) == len(with_figures)
