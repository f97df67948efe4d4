"""Real Lightning and Hugging Face trainers on CPU with the one-line callback: every
step in the run log, its measured phases fitting inside it, checkpoint saves seen,
the plan known."""

from __future__ import annotations

import logging
import signal
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.records import Event, Meta, Sample, Step
from tests.integration.conftest import ROOT, gpuwatch_cmd, read, run

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")


def phases_fit_in_step(s: Step) -> bool:
    """The measured phases (all marked here) do not overlap beyond the step's wall time.
    ``other_s`` is derived (what they leave), so adding it in would prove nothing."""
    measured = s.data_s + s.compute_s + s.optimizer_s + s.checkpoint_s
    return measured <= 1e-6 + 1.05 * s.wall_s


def test_lightning_fit_with_the_callback(tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import TinyWithEval

    data = TensorDataset(torch.randn(1600, 32), torch.randn(1600, 1))
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False},
                                sample_interval_s=0.25)
    trainer = L.Trainer(max_steps=300, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback, ModelCheckpoint(dirpath=tmp_path / "ckpt",
                                                             every_n_train_steps=100,
                                                             save_top_k=-1)],
                        val_check_interval=50, limit_val_batches=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(TinyWithEval(), DataLoader(data, batch_size=16, num_workers=1,
                                               persistent_workers=True),
                    DataLoader(data, batch_size=16, num_workers=2, persistent_workers=True))
    records = read(tmp_path / "run" / "run.jsonl")
    steps = [r for r in records if isinstance(r, Step)]
    assert len(steps) == 300
    assert all(phases_fit_in_step(s) for s in steps)
    assert all(s.samples == 16 and s.compute_s > 0 and s.optimizer_s > 0 for s in steps)
    assert sum(s.data_s > 0 for s in steps) == 300
    # a validation pass (20 batches, 10 ms each) between steps 50 and 51: no data wait
    after_eval = steps[50]
    assert after_eval.wall_s > 0.2 and after_eval.data_s < 0.1 * after_eval.wall_s
    saves = [e for e in records if isinstance(e, Event) and e.name == "checkpoint_save"]
    assert len(saves) == 3 and all(e.data["bytes"] > 5_000 for e in saves)
    assert sum(s.checkpoint_s > 0 for s in steps) == 2  # the save after the last step: no step
    plans = [e.data["steps"] for e in records if isinstance(e, Event) and e.name == "total_steps"]
    assert plans == [300]
    assert isinstance(records[0], Meta) and records[0].rank == 0
    # the training loader's 1 worker, not the validation loader's 2 (idle between passes)
    workers = sorted(r.values["workers"] for r in records
                     if isinstance(r, Sample) and r.source == "host" and r.t > steps[60].t)
    assert len(workers) >= 4 and workers[len(workers) // 2] == 1


def test_lightning_ddp_saves_are_closed_on_ranks_that_write_nothing(tmp_path: Path) -> None:
    """DDP writes a checkpoint on rank 0 alone, yet every rank's ``on_save_checkpoint``
    opens the save: on rank 1 it must close with the strategy's save, taking no time of
    its steps and no bytes of rank 0's files (an open save would also hide a hang)."""
    pytest.importorskip("lightning")
    out = tmp_path / "run"
    proc = run([sys.executable, str(ROOT / "tests/integration/scripts/lightning_ddp_checkpoint.py"),
                str(out), "--steps", "40"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        records = read(out / f"run-rank{rank}.jsonl")
        logged = [r for r in records if isinstance(r, Step)]
        saves = [r for r in records if isinstance(r, Event) and r.name == "checkpoint_save"]
        assert len(logged) == 40 and all(phases_fit_in_step(s) for s in logged), rank
        assert len(saves) == 4, rank
        written = sum(e.data.get("bytes", 0) for e in saves)
        if rank == 0:
            assert written > 0
        else:
            assert written == 0
            assert sum(s.checkpoint_s for s in logged) < 0.1 * sum(s.wall_s for s in logged)


def test_lightning_steps_are_optimizer_steps_when_gradients_accumulate(tmp_path: Path) -> None:
    """accumulate_grad_batches=4: a step is the optimizer's (as in a plain loop and the
    Hugging Face callback), its four micro-batches' samples together."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import TinyWithEval

    data = TensorDataset(torch.randn(640, 32), torch.randn(640, 1))
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False})
    trainer = L.Trainer(max_steps=20, accumulate_grad_batches=4, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(TinyWithEval(), DataLoader(data, batch_size=8))
    records = read(tmp_path / "run" / "run.jsonl")
    steps = [r for r in records if isinstance(r, Step)]
    assert trainer.global_step == 20 and len(steps) == 20
    assert all(s.samples == 32 and s.optimizer_s > 0 for s in steps)
    plans = [e.data["steps"] for e in records if isinstance(e, Event) and e.name == "total_steps"]
    assert plans == [20]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_manual_optimization_s_steps_are_the_batches_its_optimizers_step_in(
        tmp_path: Path, accumulate: int) -> None:
    """A GAN stepping two optimizers by hand: Lightning's ``max_steps`` counts each
    optimizer's steps, so 60 of them are 30 steps of the job (the plan says so); where the
    job accumulates gradients itself, a step is a batch its optimizers step in."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import TinyGan

    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False})
    trainer = L.Trainer(max_steps=60, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(TinyGan(accumulate), DataLoader(TensorDataset(torch.randn(2000, 32)),
                                                    batch_size=10))
    records = read(tmp_path / "run" / "run.jsonl")
    steps = [r for r in records if isinstance(r, Step)]
    plans = [e.data["steps"] for e in records if isinstance(e, Event) and e.name == "total_steps"]
    assert plans[-1] == 30
    # (the first batches wait for a first optimizer step: they counted as a step alone)
    assert len(steps) == 30
    assert {s.samples for s in steps} == {accumulate * 10}


def test_a_lightning_fit_ended_by_ctrl_c_does_not_wait_for_a_last_scrape(
        tmp_path: Path) -> None:
    """Lightning catches a KeyboardInterrupt and exits through ``sys.exit(1)``, which
    looks like a normal end at exit: its ``on_exception`` stops the agent at once, so a
    scraped endpoint does not hold the dying job for ``final_scrape_s``."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import Tiny

    class Interrupted(Tiny):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            if batch_idx == 20:
                port = callback.monitor.agent.exporter.port  # type: ignore[union-attr]
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    data = TensorDataset(torch.randn(1600, 32), torch.randn(1600, 1))
    callback = GpuWatchCallback(out_dir=tmp_path / "run",
                                exporter={"port": 0, "final_scrape_s": 60})
    trainer = L.Trainer(max_steps=300, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    handler = signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit):
            warnings.simplefilter("ignore")
            logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
            trainer.fit(Interrupted(), DataLoader(data, batch_size=16))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores a second Ctrl-C
    assert time.monotonic() - started < 30  # not the 60 s it would wait for a scrape
    assert callback.monitor is not None and callback.monitor.agent.stopped
    assert len([r for r in read(tmp_path / "run" / "run.jsonl") if isinstance(r, Step)]) == 20


def test_huggingface_trainer_with_the_callback(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gpuwatch.integrations.huggingface import GpuWatchCallback

    torch.manual_seed(0)
    # a tiny model built from a config: random weights, nothing downloaded
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 128, (256, 32))
    dataset = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=60,
                             per_device_train_batch_size=8, save_steps=20, logging_steps=10,
                             report_to=[], use_cpu=True, disable_tqdm=True)
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    records = read(tmp_path / "run" / "run.jsonl")
    steps = [r for r in records if isinstance(r, Step)]
    assert len(steps) == 60
    assert all(phases_fit_in_step(s) for s in steps)
    assert all(s.compute_s > 0 and s.optimizer_s > 0 and s.data_s > 0 for s in steps)
    assert all(s.samples == 8 for s in steps)  # the micro-batch x 1 accumulated
    saves = [e for e in records if isinstance(e, Event) and e.name == "checkpoint_save"]
    assert len(saves) == 3 and all(e.data["bytes"] > 50_000 and e.data["seconds"] > 0
                                   for e in saves)
    assert sum(s.checkpoint_s > 0 for s in steps) == 2  # the save after the last step: no step
    plans = [e.data["steps"] for e in records if isinstance(e, Event) and e.name == "total_steps"]
    assert plans == [60]


def test_hf_ddp_saves_are_sized_on_the_rank_that_writes_them(tmp_path: Path) -> None:
    """Every rank's ``on_save`` comes once the checkpoint is written, into one shared
    directory; rank 0 writes it (``should_save``): rank 1's saves carry none of its bytes."""
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--standalone", str(ROOT / "tests/integration/scripts/hf_ddp_save.py"),
                str(out)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {}
    for rank in (0, 1):
        records = read(out / f"run-rank{rank}.jsonl")
        saves = [e for e in records if isinstance(e, Event) and e.name == "checkpoint_save"]
        assert len(saves) == 3, rank
        written[rank] = sum(e.data.get("bytes", 0) for e in saves)
    assert written[0] > 3 * 50_000 and written[1] == 0


def test_a_zero_code_hf_checkpoint_is_one_save_of_its_whole_directory(tmp_path: Path) -> None:
    """Under ``gpuwatch run`` a Trainer's checkpoint writes five files (weights, optimizer,
    scheduler, RNG, state) through ``torch.save`` and ``save_file``: one save each time,
    sized as the directory it wrote, not five small ones."""
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(ROOT / "tests/integration/scripts/hf_ddp_save.py"), str(out),
                            "--zero-code"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saves = [e for e in read(out / "run.jsonl")
             if isinstance(e, Event) and e.name == "checkpoint_save"]
    written = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
               for d in (tmp_path / "run-hf").glob("checkpoint-*")}
    assert len(written) == 3 and len(saves) == 3
    assert sorted(e.data["bytes"] for e in saves) == sorted(written.values())


def test_a_second_lightning_fit_is_recorded_as_the_next_attempt(tmp_path: Path) -> None:
    """fit() twice with one callback (a fine-tune after pre-training): the first fit's
    end stopped the agent and the second fit went unrecorded (40 of 80 steps)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gpuwatch.integrations.lightning import GpuWatchCallback
    from tests.tiny_lightning import TinyWithEval

    data = TensorDataset(torch.randn(320, 32), torch.randn(320, 1))
    callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False})
    for _ in range(2):
        trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, limit_val_batches=0,
                            callbacks=[callback])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
            trainer.fit(TinyWithEval(), DataLoader(data, batch_size=8))
    logs = sorted((tmp_path / "run").glob("run*.jsonl"))
    assert [p.name for p in logs] == ["run.attempt1.jsonl", "run.jsonl"]
    assert [sum(isinstance(r, Step) for r in read(p)) for p in logs] == [20, 20]


def test_a_second_hf_train_goes_on_in_an_agent_the_callback_did_not_start(
        tmp_path: Path) -> None:
    """Under gpuwatch run the process's agent is the zero-code hooks': the callback's
    train end stopped it, and the second train() went unrecorded. Now the callback
    stops only an agent it started; the process's goes on."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gpuwatch.integrations.huggingface import GpuWatchCallback
    from gpuwatch.monitor import watch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=128,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 128, (64, 32))
    dataset = [{"input_ids": t, "labels": t} for t in tokens]
    process = watch(out_dir=tmp_path / "run", exporter={"enabled": False})
    try:
        for _ in range(2):
            args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=10,
                                     per_device_train_batch_size=8, save_strategy="no",
                                     report_to=[], use_cpu=True, disable_tqdm=True)
            callback = GpuWatchCallback(exporter={"enabled": False})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Trainer(model=model, args=args, train_dataset=dataset,
                        callbacks=[callback]).train()
            assert not process.agent.stopped
    finally:
        process.stop()
    steps = [r for r in read(tmp_path / "run" / "run.jsonl") if isinstance(r, Step)]
    assert len(steps) == 20


LIGHTNING_THEN_PLAIN = """
import sys, torch, lightning as L
from torch.utils.data import DataLoader, TensorDataset
from gpuwatch.integrations.lightning import GpuWatchCallback
sys.path.insert(0, sys.argv[1])
from tests.tiny_lightning import TinyWithEval

data = TensorDataset(torch.randn(160, 32), torch.randn(160, 1))
L.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
          callbacks=[GpuWatchCallback()]).fit(TinyWithEval(), DataLoader(data, batch_size=8))
model = torch.nn.Linear(32, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in DataLoader(data, batch_size=8):
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()
"""


def test_under_gpuwatch_run_a_callback_leaves_the_process_agent_running(
        tmp_path: Path) -> None:
    """gpuwatch run's hooks own the process's agent even where a callback's fit starts it
    (no mark came before): the fit's end stopped it, and the plain loop after the fit
    went unrecorded (10 of 30 steps)."""
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable, "-c",
                            LIGHTNING_THEN_PLAIN, str(ROOT)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in out.glob("run*.jsonl")] == ["run.jsonl"]
    assert len([r for r in read(out / "run.jsonl") if isinstance(r, Step)]) == 30


def test_a_resumed_hf_run_plans_the_steps_it_has_left(tmp_path: Path) -> None:
    """resume_from_checkpoint at step 6 of 12: the new attempt's log counts its steps from
    1, so its plan is the 6 left (it said 12: time to finish counted done steps again)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gpuwatch.integrations.huggingface import GpuWatchCallback

    torch.manual_seed(0)
    tokens = torch.randint(0, 128, (96, 32))
    dataset = [{"input_ids": t, "labels": t} for t in tokens]

    def trainer() -> Any:
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=128,
                                           n_positions=32, bos_token_id=0, eos_token_id=0))
        args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=12,
                                 per_device_train_batch_size=8, save_steps=6,
                                 report_to=[], use_cpu=True, disable_tqdm=True)
        callback = GpuWatchCallback(out_dir=tmp_path / "run", exporter={"enabled": False})
        return Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer().train()
        trainer().train(resume_from_checkpoint=str(tmp_path / "hf" / "checkpoint-6"))
    resumed = read(tmp_path / "run" / "run.attempt1.jsonl")
    plans = [e.data["steps"] for e in resumed if isinstance(e, Event) and e.name == "total_steps"]
    assert plans == [6] and len([r for r in resumed if isinstance(r, Step)]) == 6


def test_a_callback_that_trained_copies_and_pickles_as_its_settings(tmp_path: Path) -> None:
    """A hyperparameter search deep-copies its callbacks between trials; a spawn
    launcher pickles them: once training had begun the copy raised (the agent's locks,
    the environment). The copy carries the settings and attaches its own agent; the
    running one stays where it is."""
    import copy
    import pickle

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from gpuwatch.integrations.huggingface import GpuWatchCallback as HFCallback
    from gpuwatch.integrations.lightning import GpuWatchCallback as LightningCallback

    settings: dict[str, Any] = {"exporter": {"enabled": False}, "out_dir": str(tmp_path)}
    hf = HFCallback(**settings)
    state = TrainerState()
    state.max_steps = 5
    hf.on_train_begin(TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=5,
                                        report_to=[]), state, TrainerControl())
    try:
        assert hf.monitor is not None and hf.monitor.agent.started
        for copied in (copy.deepcopy(hf), pickle.loads(pickle.dumps(hf))):
            assert type(copied) is HFCallback and copied.monitor is None
            assert copied._settings == settings
        lightning = pickle.loads(pickle.dumps(LightningCallback(**settings)))
        assert lightning._settings == settings and lightning.monitor is None
    finally:
        hf.monitor.stop()
