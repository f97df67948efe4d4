"""Step assembly from marks: phase split, implicit and explicit steps, events."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpuwatch.instrument import ring
from gpuwatch.instrument.sizes import QUICK_ENTRIES, saved_at, size_on_disk
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.monitor import CheckpointSpan
from gpuwatch.records import Event, Record, Step

OFFSET = 1_000.0


def assemble(marks: list[tuple[int, float, object]]) -> list[Record]:
    asm = StepAssembler(rank=3, clock_offset=OFFSET)
    out: list[Record] = []
    asm.feed(marks, out)
    return out


def steps(records: list[Record]) -> list[Step]:
    return [r for r in records if isinstance(r, Step)]


def events(records: list[Record], name: str) -> list[Event]:
    return [r for r in records if isinstance(r, Event) and r.name == name]


def test_explicit_step_splits_wall_time_into_phases() -> None:
    marks = [
        (ring.STEP_BEGIN, 0.0, None),
        (ring.DATA, 0.0, None), (-ring.DATA, 0.2, None),
        (ring.COMPUTE, 0.2, None), (-ring.COMPUTE, 0.7, None),
        (ring.OPTIMIZER, 0.7, None), (-ring.OPTIMIZER, 0.9, None),
        (ring.STEP_END, 1.0, None),
    ]
    (s,) = steps(assemble(marks))
    assert s.rank == 3 and s.step == 1
    assert s.t == pytest.approx(OFFSET + 1.0)
    assert s.wall_s == pytest.approx(1.0)
    assert (s.data_s, s.compute_s, s.optimizer_s) == pytest.approx((0.2, 0.5, 0.2))
    assert s.other_s == pytest.approx(0.1)


def test_implicit_steps_are_contiguous_and_compute_is_the_remainder() -> None:
    marks = []
    for k in range(3):
        t = k * 1.0
        marks += [(ring.DATA, t, None), (-ring.DATA, t + 0.1, None), (ring.SAMPLES, t + 0.1, 32),
                  (ring.OPTIMIZER, t + 0.8, None), (-ring.OPTIMIZER, t + 1.0, None),
                  (ring.STEP_BOUNDARY, t + 1.0, None)]
    out = steps(assemble(marks))
    assert [s.step for s in out] == [1, 2, 3]
    for s in out:
        assert s.wall_s == pytest.approx(1.0)
        assert (s.data_s, s.optimizer_s) == pytest.approx((0.1, 0.2))  # as marked
        assert s.compute_s == pytest.approx(0.7)  # the rest of the step
        assert s.samples == 32


def test_explicit_steps_ignore_optimizer_boundaries() -> None:
    marks = [(ring.STEP_BEGIN, 0.0, None), (ring.STEP_BOUNDARY, 0.5, None),
             (ring.STEP_END, 1.0, None)]
    out = steps(assemble(marks))
    assert len(out) == 1 and out[0].wall_s == pytest.approx(1.0)


def test_checkpoint_phase_reports_save_with_bytes_and_nested_saves_once() -> None:
    marks = [
        (ring.STEP_BEGIN, 0.0, None),
        (ring.CHECKPOINT, 0.1, None),
        (ring.CHECKPOINT, 0.2, None), (ring.CHECKPOINT_TARGET, 0.3, 111),  # inner torch.save
        (-ring.CHECKPOINT, 0.3, None),
        (ring.CHECKPOINT_TARGET, 0.5, 4096), (-ring.CHECKPOINT, 0.5, None),
        (ring.STEP_END, 1.0, None),
    ]
    out = assemble(marks)
    (save,) = events(out, "checkpoint_save")
    assert save.data["seconds"] == pytest.approx(0.4)
    assert save.data["bytes"] == 4096
    (s,) = steps(out)
    assert s.checkpoint_s == pytest.approx(0.4) and s.checkpoint_bytes == 4096


def test_phase_open_across_a_step_end_is_split_between_steps() -> None:
    marks = [(ring.STEP_BEGIN, 0.0, None), (ring.DATA, 0.5, None), (ring.STEP_END, 1.0, None),
             (-ring.DATA, 1.25, None), (ring.STEP_END, 2.0, None)]
    a, b = steps(assemble(marks))
    assert a.data_s == pytest.approx(0.5)
    assert b.data_s == pytest.approx(0.25)


def test_close_without_open_is_ignored() -> None:
    out = steps(assemble([(-ring.DATA, 0.1, None), (ring.STEP_END, 1.0, None)]))
    assert out[0].data_s == 0.0


def training(sizes: list[int], eval_size: int | None = None) -> list[tuple[int, float, object]]:
    """One batch then an optimizer step per size, 0.1 s apart; with ``eval_size``, 30
    eval batches of that size (0.1 s each) before every third step."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for i, n in enumerate(sizes):
        if eval_size and i % 3 == 2:
            for _ in range(30):
                t += 0.1
                marks.append((ring.SAMPLES, t, eval_size))
        marks += [(ring.SAMPLES, t + 0.05, n), (ring.STEP_BOUNDARY, t + 0.1, None)]
        t += 0.1
    return marks


def test_batch_cut_is_reported_once_it_persists_and_not_for_a_short_last_batch() -> None:
    sizes = [64, 64, 64, 40, 64, 64, 32, 32, 32]
    (cut,) = events(assemble(training(sizes)), "batch_size_changed")
    assert cut.data == {"from": 64, "to": 32}
    assert cut.t == pytest.approx(OFFSET + 0.8)  # when the new size repeated


def test_a_short_last_batch_fetched_ahead_is_no_batch_cut() -> None:
    """A loop that fetches its next batch before the step ends (accelerate's prefetch):
    an epoch's short last batch arrives in one step and trains in the next, which
    fetches none. A step without a fetch says no batch size: no cut, epoch after epoch."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for _ in range(3):  # epochs of 8, 8, 8 and a last batch of 4
        for n in (8, 8, 8, 4):
            marks += [(ring.SAMPLES, t + 0.05, n), (ring.STEP_BOUNDARY, t + 0.1, None)]
            t += 0.1
        marks += [(ring.STEP_BOUNDARY, t + 0.1, None)]  # trains the prefetched 4
        t += 0.1
    out = assemble(marks)
    assert events(out, "batch_size_changed") == []
    assert len(steps(out)) == 15


def test_an_eval_loaders_batches_are_progress_not_a_batch_change() -> None:
    out = assemble(training([64] * 9, eval_size=256))
    assert events(out, "batch_size_changed") == []
    progress = events(out, "progress")
    # 3 s of eval batches between steps, three times: a progress event a second
    assert 6 <= len(progress) <= 9
    assert all(e.data["loader_batches"] >= 9 for e in progress)
    assert len(steps(out)) == 9


def test_an_eval_loaders_batches_and_waits_are_not_the_training_steps() -> None:
    """A zero-code run: every DataLoader's fetch is timed. An eval loop between two
    steps fetches from another loader: its samples and its waits belong to no training
    step, which counts its own loader's (the one whose batch came last before it ended)."""
    train, evals = 1, 2  # loader keys
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for k in range(4):
        if k == 2:  # an eval loop: 30 batches of 256, each fetched in 0.05 s
            for _ in range(30):
                marks += [(ring.DATA, t, None), (-ring.DATA, t + 0.05, None),
                          (ring.LOADER_BATCH, t + 0.05, (evals, 256))]
                t += 0.1
        marks += [(ring.DATA, t, None), (-ring.DATA, t + 0.2, None),
                  (ring.LOADER_BATCH, t + 0.2, (train, 64)),
                  (ring.STEP_BOUNDARY, t + 1.0, None)]
        t += 1.0
    records = assemble(marks)
    out = steps(records)
    assert [s.samples for s in out] == [64] * 4
    assert [s.data_s for s in out] == pytest.approx([0.2] * 4)
    assert out[2].wall_s == pytest.approx(4.0)  # the eval is in the step's wall time
    # the progress it makes is an eval's: batches of a loader that fed no step, told as
    # the step ends (until then, a training loader made anew looks the same)
    evals_seen = [e.data["eval_batches"] for e in events(records, "progress")]
    assert sum(evals_seen) == 30
    # the eval loop is no training compute: from its first fetch to the next training
    # fetch, 3 s of the step are other time; the training step itself still computes
    assert out[2].other_s == pytest.approx(3.0)
    assert out[2].compute_s == pytest.approx(0.8)
    assert [s.other_s for s in out[:2]] == [0.0, 0.0]


def test_a_training_loader_made_anew_each_epoch_is_no_eval() -> None:
    """``for epoch ...: for batch in DataLoader(...)``: each epoch's loader is a new one
    (a new sampler), its first batch a 2 s wait for its workers to start. That batch was
    counted as an eval's (a loader that fed no step yet), and the stall was told as
    "mostly evaluations" (info) instead of the loader starting over (fix here)."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for epoch in range(3):
        loader = (7, 100 + epoch)  # (its dataset, a new sampler every epoch)
        for k in range(5):
            wait = 2.0 if k == 0 else 0.01
            marks += [(ring.DATA, t, None), (-ring.DATA, t + wait, None),
                      (ring.LOADER_BATCH, t + wait, (*loader, 32)),
                      (ring.STEP_BOUNDARY, t + wait + 0.1, None)]
            t += wait + 0.1
    records = assemble(marks)
    told = [e.data["eval_batches"] for e in events(records, "progress")]
    assert told and all(n == 0 for n in told)
    assert [s.data_s for s in steps(records) if s.data_s > 1] == pytest.approx([2.0] * 3)
    assert all(s.samples == 32 for s in steps(records))


def test_a_training_loader_made_anew_each_epoch_with_micro_batches_is_no_eval() -> None:
    """The same with gradient accumulation: four micro-batches of the new loader before
    the step ends looked like an eval loop's."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for epoch in range(3):
        loader = (7, 100 + epoch)
        for k in range(3):
            for micro in range(4):
                wait = 2.0 if (k, micro) == (0, 1) else 0.01  # (its workers start)
                marks += [(ring.DATA, t, None), (-ring.DATA, t + wait, None),
                          (ring.LOADER_BATCH, t + wait, (*loader, 8))]
                t += wait + 0.05
            marks.append((ring.STEP_BOUNDARY, t, None))
    records = assemble(marks)
    assert sum(e.data["eval_batches"] for e in events(records, "progress")) == 0
    assert all(s.samples == 32 for s in steps(records))


def test_a_collective_a_writer_thread_opened_before_the_data_wait_counts_its_overlap() -> None:
    """An async save's writer thread gathers from 0 to 0.55 s; the loop waits for data
    from 0.5 to 0.6 s: only the 0.05 s inside the wait is not the loader's (the whole
    collective was taken off it: data -0.45 s, compute more than the step)."""
    marks = [(ring.STEP_BEGIN, 0.0, None),
             (ring.COLLECTIVE, 0.0, None),
             (ring.COMPUTE, 0.0, None), (-ring.COMPUTE, 0.5, None),
             (ring.DATA, 0.5, None), (-ring.COLLECTIVE, 0.55, None), (-ring.DATA, 0.6, None),
             (ring.COMPUTE, 0.6, None), (-ring.COMPUTE, 1.0, None),
             (ring.STEP_END, 1.0, None)]
    (s,) = steps(assemble(marks))
    assert s.data_s == pytest.approx(0.05) and 0 <= s.compute_s <= s.wall_s


def test_an_eval_shorter_than_a_progress_interval_is_told_as_its_step_ends() -> None:
    """A 0.2 s eval (10 batches of its own loader) between two 30 ms steps: too short for
    a progress event a second, so its step read as a stall ("work between steps") and
    never as an eval. Its batches are told as the step ends, once; steps without an
    eval tell nothing."""
    train, evals = 1, 2
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for k in range(6):
        if k == 3:
            for _ in range(10):
                marks += [(ring.LOADER_BATCH, t + 0.02, (evals, 4))]
                t += 0.02
        marks += [(ring.LOADER_BATCH, t + 0.01, (train, 4)),
                  (ring.STEP_BOUNDARY, t + 0.03, None)]
        t += 0.03
    records = assemble(marks)
    progress = events(records, "progress")
    assert [e.data["eval_batches"] for e in progress] == [10]
    eval_step = steps(records)[3]
    assert progress[0].t == eval_step.t and records.index(progress[0]) < records.index(
        eval_step)  # (told before its step: the step is then judged an eval's)


def test_loaders_a_loop_takes_turns_with_are_no_evals() -> None:
    """Multi-task training fetching from loader A, then B, step by step: each feeds the
    steps it fetches in, so none of their batches is an eval's (every step's end told
    them as eval batches, and a stall then read as an eval)."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for k in range(40):
        marks += [(ring.LOADER_BATCH, t + 0.01, (1 + k % 2, 8)),
                  (ring.STEP_BOUNDARY, t + 0.1, None)]
        t += 0.1
    records = assemble(marks)
    assert events(records, "progress") == [] and len(steps(records)) == 40


def test_an_eval_inside_a_step_or_before_the_first_is_not_the_training_loaders() -> None:
    """``for batch in train: if step % N == 0: evaluate(); train(batch)``: the eval loader
    is iterated after the training batch came and before the optimizer steps, so its
    batch is the last before the step ends; and a baseline eval before step 1 fetches
    many batches before the first training one. Neither counts as training (5,080
    samples were logged for 1,688, the eval's time as data wait)."""
    train, evals = 1, 2
    marks: list[tuple[int, float, object]] = []
    t = 0.0

    def eval_loop() -> None:
        nonlocal t
        for _ in range(10):
            marks.extend([(ring.DATA, t, None), (-ring.DATA, t + 0.05, None),
                          (ring.LOADER_BATCH, t + 0.05, (evals, 100))])
            t += 0.1

    eval_loop()  # a baseline eval before the first step
    for k in range(4):
        marks += [(ring.DATA, t, None), (-ring.DATA, t + 0.01, None),
                  (ring.LOADER_BATCH, t + 0.01, (train, 8))]
        t += 0.01
        if k == 2:
            eval_loop()  # inside the step, after its batch came
        marks.append((ring.STEP_BOUNDARY, t + 0.2, None))
        t += 0.2
    out = steps(assemble(marks))
    assert [s.samples for s in out] == [8] * 4
    assert [s.data_s for s in out] == pytest.approx([0.01] * 4)


def test_loaders_zipped_together_all_feed_the_step() -> None:
    """Multi-task training zips two loaders: both feed every step (their samples and
    waits count), unlike an eval loader's burst between two steps."""
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for _ in range(4):
        for key, wait in ((1, 0.3), (2, 0.1)):  # loader 1 is the slow one
            marks += [(ring.DATA, t, None), (-ring.DATA, t + wait, None),
                      (ring.LOADER_BATCH, t + wait, (key, 8))]
            t += wait
        marks.append((ring.STEP_BOUNDARY, t + 0.6, None))
        t += 0.6
    out = steps(assemble(marks))
    assert [s.samples for s in out] == [16] * 4
    assert [s.data_s for s in out] == pytest.approx([0.4] * 4)


def test_samples_the_loop_counts_come_before_the_loaders() -> None:
    """A framework's callback counts the step's samples itself; under ``gpuwatch run``
    the DataLoader is timed too: the samples are counted once."""
    marks: list[tuple[int, float, object]] = []
    for k in range(3):
        t = float(k)
        marks += [(ring.SAMPLES, t, 32), (ring.DATA, t, None), (-ring.DATA, t + 0.1, None),
                  (ring.LOADER_BATCH, t + 0.1, (1, 32)), (ring.STEP_BOUNDARY, t + 1.0, None)]
    assert [s.samples for s in steps(assemble(marks))] == [32] * 3


def test_a_save_on_a_writer_thread_is_timed_but_not_blocking() -> None:
    marks = [(ring.SAMPLES, 0.05, 8), (ring.BACKGROUND_SAVE, 0.08, (4.0, 1000)),
             (ring.STEP_BOUNDARY, 0.1, None)]
    out = assemble(marks)
    (save,) = events(out, "checkpoint_save")
    assert save.data == {"seconds": 4.0, "bytes": 1000, "blocking": False}
    assert steps(out)[0].checkpoint_s == 0.0


def test_oom_leaving_a_step_becomes_an_oom_event_other_errors_step_error() -> None:
    out = assemble([(ring.ERROR, 0.5, "OutOfMemoryError"), (ring.ERROR, 0.6, "ValueError")])
    assert events(out, "oom")[0].data == {"type": "OutOfMemoryError"}
    assert events(out, "step_error")[0].data == {"type": "ValueError"}


def test_recompute_and_collective_are_parts_of_compute_not_extra_time() -> None:
    marks = [(ring.STEP_BEGIN, 0.0, None), (ring.ACT_CKPT, 0.1, None), (ring.ACT_CKPT, 0.2, None),
             (ring.RECOMPUTE, 0.5, None), (-ring.RECOMPUTE, 0.7, None),
             (ring.COLLECTIVE, 0.8, None), (-ring.COLLECTIVE, 0.9, None),
             (ring.STEP_END, 1.0, None)]
    (s,) = steps(assemble(marks))
    assert s.act_ckpt_calls == 2
    assert s.recompute_s == pytest.approx(0.2) and s.collective_s == pytest.approx(0.1)
    assert s.compute_s == pytest.approx(1.0)


def test_a_collective_waited_in_between_batches_is_no_data_wait() -> None:
    """Lightning with gradient accumulation: between two micro-batches the rank waits
    0.2 s in a collective for a slower peer while the data span (batch end to batch
    start) is open: it read as a data wait (a false data_starvation) and as a collective
    wait both, the rank's own compute gone."""
    marks = [(ring.STEP_BEGIN, 0.0, None),
             (ring.DATA, 0.0, None),
             (ring.COLLECTIVE, 0.01, None), (-ring.COLLECTIVE, 0.21, None),
             (-ring.DATA, 0.22, None),
             (ring.COMPUTE, 0.22, None), (-ring.COMPUTE, 0.32, None),
             (ring.STEP_END, 0.32, None)]
    (s,) = steps(assemble(marks))
    assert s.data_s == pytest.approx(0.02) and s.collective_s == pytest.approx(0.2)
    assert s.compute_s == pytest.approx(0.3)  # the collective is part of it
    assert s.wall_s == pytest.approx(s.data_s + s.compute_s + s.other_s)


def test_a_saves_own_collectives_are_the_saves_time_not_a_wait() -> None:
    """A distributed checkpoint's save waits 0.42 s in its own collectives for the rank
    that pickles: it counted as checkpoint time and as collective wait both (the report
    summed to more than the step, and a straggler was said to be "computing")."""
    marks = [(ring.STEP_BEGIN, 0.0, None),
             (ring.COMPUTE, 0.0, None), (-ring.COMPUTE, 0.09, None),
             (ring.CHECKPOINT, 0.09, None),
             (ring.COLLECTIVE, 0.09, None), (-ring.COLLECTIVE, 0.51, None),
             (-ring.CHECKPOINT, 0.514, None),
             (ring.STEP_END, 0.514, None)]
    (s,) = steps(assemble(marks))
    assert s.checkpoint_s == pytest.approx(0.424) and s.collective_s == 0.0
    assert s.compute_s == pytest.approx(0.09)


def test_point_to_point_bytes_are_collective_bytes_and_kept_apart() -> None:
    marks = [(ring.STEP_BEGIN, 0.0, None), (ring.COLLECTIVE_BYTES, 0.1, 1000),
             (ring.P2P_BYTES, 0.2, 300), (ring.P2P_BYTES, 0.3, 200), (ring.STEP_END, 1.0, None),
             (ring.STEP_BEGIN, 1.0, None), (ring.STEP_END, 2.0, None)]
    first, second = steps(assemble(marks))
    assert (first.collective_bytes, first.p2p_bytes) == (1500, 500)
    assert (second.collective_bytes, second.p2p_bytes) == (0, 0)  # each step its own


def test_size_on_disk_of_file_directory_and_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 5)
    (tmp_path / "d" / "c").write_bytes(b"z" * 7)
    assert size_on_disk(str(tmp_path / "a.bin")) == 10
    assert size_on_disk(tmp_path / "d") == 12
    assert size_on_disk(str(tmp_path / "missing")) == 0
    os.utime(tmp_path / "d" / "b", (1_000.0, 1_000.0))  # an older checkpoint beside the save
    assert size_on_disk(tmp_path / "d", since=2_000.0) == 7
    (tmp_path / "d" / "e").mkdir()
    (tmp_path / "d" / "e" / "f").write_bytes(b"w" * 3)
    assert size_on_disk(tmp_path / "d", since=2_000.0) == 10  # nested directories too


def test_a_checkpoint_is_sized_by_the_agent_not_the_training_thread(tmp_path: Path) -> None:
    """A checkpoint directory among many old files: the training thread hands over where
    and when the save began; the assembler (the agent's thread) reads the bytes, only
    what the save wrote. A small directory (a checkpoint's shards) is sized at once: it
    may be renamed next."""
    for k in range(QUICK_ENTRIES + 1):
        (tmp_path / f"old{k}.bin").write_bytes(b"o" * 100)
        os.utime(tmp_path / f"old{k}.bin", (1_000.0, 1_000.0))
    pushed: list[tuple[int, object]] = []
    span = CheckpointSpan(lambda code, value=None: pushed.append((code, value)), tmp_path)
    with span:
        (tmp_path / "new.bin").write_bytes(b"n" * 40)
    target = next(v for code, v in pushed if code == ring.CHECKPOINT_TARGET)
    assert isinstance(target, tuple) and target[0] == str(tmp_path)
    marks = [(ring.STEP_BEGIN, 0.0, None), (ring.CHECKPOINT, 0.1, None),
             (ring.CHECKPOINT_TARGET, 0.2, target), (-ring.CHECKPOINT, 0.3, None),
             (ring.STEP_END, 1.0, None)]
    (s,) = steps(assemble(marks))
    assert s.checkpoint_bytes == 40
    shards = tmp_path / "step10"
    shards.mkdir()
    (shards / "__0_0.distcp").write_bytes(b"s" * 30)
    assert saved_at(shards, time.time() - 1) == 30


def test_a_distributed_checkpoint_counts_only_the_saving_ranks_own_shards(
        tmp_path: Path) -> None:
    """Every rank of a torch.distributed.checkpoint save writes its shards (named by its
    rank) into one directory: each rank logged the whole directory (2x the bytes on 2
    ranks). Its own shards count, and the files no rank names (.metadata) for rank 0."""
    shards = tmp_path / "step10"
    shards.mkdir()
    for name, size in (("__0_0.distcp", 300), ("__1_0.distcp", 200), ("__1_1.distcp", 50),
                       (".metadata", 10)):
        (shards / name).write_bytes(b"s" * size)
    since = time.time() - 1
    assert saved_at(shards, since) == 560  # no group: the whole directory
    assert [saved_at(shards, since, rank) for rank in (0, 1)] == [310, 250]  # .metadata: 0's
    assert size_on_disk(shards, since, 1) == 250  # a large directory, sized later
    plain = tmp_path / "hf"  # a rank saving a directory of its own: every file its own
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"m" * 70)
    assert saved_at(plain, since, 1) == 70


def test_marks_lost_in_a_lap_leave_missing_step_numbers_never_renumbered() -> None:
    """Steps 1-2 whole, marks of steps 3-5 lost mid-step 3, then 6-7 whole: step 6 was
    cut into by the loss and is dropped, 7 keeps its number."""
    marks: list[tuple[int, float, object]] = []
    for n in (1, 2):
        marks += [(ring.STEP_BEGIN, n - 1.0, None), (ring.DATA, n - 1.0, None),
                  (-ring.DATA, n - 0.5, None), (ring.STEP_END, float(n), n)]
    marks += [(ring.LOST, 5.5, 14), (-ring.DATA, 5.6, None), (ring.STEP_END, 6.0, 6),
              (ring.STEP_BEGIN, 6.0, None), (ring.DATA, 6.0, None), (-ring.DATA, 6.25, None),
              (ring.STEP_END, 7.0, 7)]
    out = steps(assemble(marks))
    assert [s.step for s in out] == [1, 2, 7]
    assert out[-1].wall_s == pytest.approx(1.0) and out[-1].data_s == pytest.approx(0.25)


def test_implicit_step_numbers_follow_the_optimizer_boundary_ordinals() -> None:
    marks = [(ring.STEP_BOUNDARY, 1.0, 1), (ring.LOST, 1.5, 40), (ring.STEP_BOUNDARY, 4.0, 4),
             (ring.STEP_BOUNDARY, 5.0, 5)]
    assert [s.step for s in steps(assemble(marks))] == [1, 5]


@pytest.mark.parametrize("bad", [None, "32", -4, float("nan"), float("inf"), True, [1], {}])
def test_a_bad_count_from_the_training_code_is_ignored_and_counted(bad: object) -> None:
    asm = StepAssembler(rank=0, clock_offset=0.0)
    out: list[Record] = []
    asm.feed([(ring.STEP_BEGIN, 0.0, None), (ring.SAMPLES, 0.1, bad), (ring.TOKENS, 0.1, bad),
              (ring.SAMPLES, 0.2, 8), (ring.PHASE_SECONDS, 0.3, bad),
              (ring.STEP_END, 1.0, 1)], out)
    (s,) = steps(out)
    assert s.samples == 8 and s.tokens == 0
    assert asm.bad_values == 3


def test_an_adapters_time_stands_only_where_the_patches_timed_none() -> None:
    """The Hugging Face callback times data wait and saves between the Trainer's hooks;
    under ``gpuwatch run`` the DataLoader and save patches time the same things closer.
    Their figure stands; the adapter's counts only where they timed none."""
    both = [(ring.STEP_BEGIN, 0.0, None), (ring.DATA, 0.05, None), (-ring.DATA, 0.25, None),
            (ring.ADAPTER_SECONDS, 0.3, (ring.DATA, 0.3, None)),
            (ring.CHECKPOINT, 0.4, None), (-ring.CHECKPOINT, 0.6, None),
            (ring.ADAPTER_SECONDS, 0.7, (ring.CHECKPOINT, 0.3, None)),
            (ring.STEP_END, 1.0, None),
            (ring.STEP_BEGIN, 1.0, None), (ring.ADAPTER_SECONDS, 1.3, (ring.DATA, 0.3, None)),
            (ring.ADAPTER_SECONDS, 1.6, (ring.CHECKPOINT, 0.2, None)),
            (ring.STEP_END, 2.0, None)]
    out = assemble(both)
    first, second = steps(out)
    assert first.data_s == pytest.approx(0.2) and first.checkpoint_s == pytest.approx(0.2)
    assert second.data_s == pytest.approx(0.3) and second.checkpoint_s == pytest.approx(0.2)
    assert [e.data["seconds"] for e in events(out, "checkpoint_save")] == pytest.approx(
        [0.2, 0.2])  # one save each, never the same one twice


def test_a_second_loop_s_plan_goes_on_from_the_steps_before_it() -> None:
    """Two fits in one process (one agent, as under gpuwatch run): each plans its own
    steps, counted from its first, while the log's steps go on counting. The second
    fit's 900 planned after 350 steps done are 1250 (it read 350: the job was done); a
    plan made again within a loop (a GAN's optimizers) keeps that loop's base."""
    marks: list[tuple[int, float, object]] = [(ring.TOTAL_STEPS, 0.0, 350)]
    t = 0.0
    for k in range(1, 351):
        t = float(k)
        marks += [(ring.STEP_BEGIN, t - 1, None), (ring.STEP_END, t, None)]
        if k == 1:
            marks.append((ring.TOTAL_STEPS, t, 175))  # (re-planned: two optimizers a batch)
    marks += [(ring.LOOP_END, t, None), (ring.TOTAL_STEPS, t, 900),
              (ring.STEP_BEGIN, t, None), (ring.STEP_END, t + 1, None)]
    out = assemble(marks)
    assert [e.data["steps"] for e in events(out, "total_steps")] == [350, 175, 1250]
    assert steps(out)[-1].step == 351


def test_a_small_collective_s_duration_is_no_measure_of_the_link() -> None:
    """A step's 4-byte flag all-reduce, mostly waiting for the other rank, beside 8 MiB
    of gradients: only the large one's duration measures bandwidth (the flag's made the
    achieved bus bandwidth 2.5 kB/s on a link moving 1 GB/s)."""
    marks = [(ring.STEP_BEGIN, 0.0, None),
             (ring.COLLECTIVE_DURATION, 0.2, (0.05, 8 << 20)),
             (ring.COLLECTIVE_DURATION, 0.3, (0.02, 4)),
             (ring.STEP_END, 1.0, None)]
    (s,) = steps(assemble(marks))
    assert (s.collective_timed_s, s.collective_timed_bytes) == (0.05, 8 << 20)


def test_a_loop_that_times_its_own_data_wait_gives_its_batches_none() -> None:
    """watch() with the batch fetched inside the step's "data" phase, as the README
    advises, and an evaluation inside a step after its update: the loader hook marks
    each batch's loader but times no wait (the loop does). The eval batch took the
    step's data wait as its own, and that step's data read 0 (-0.051 s where the wait
    came in an earlier step)."""
    train, evals = (1, 2), (1, 3)
    marks: list[tuple[int, float, object]] = []
    t = 0.0
    for k in range(1, 4):
        marks += [(ring.STEP_BEGIN, t, None), (ring.DATA, t, None),
                  (ring.LOADER_BATCH_UNTIMED, t + 0.05, (*train, 8)), (-ring.DATA, t + 0.05, None),
                  (ring.COMPUTE, t + 0.05, None), (-ring.COMPUTE, t + 0.1, None)]
        t += 0.1
        if k == 2:  # an evaluation at the step's end: two batches of its loader
            marks += [(ring.LOADER_BATCH_UNTIMED, t + 0.01, (*evals, 8)),
                      (ring.LOADER_BATCH_UNTIMED, t + 0.02, (*evals, 8))]
            t += 0.03
        marks.append((ring.STEP_END, t, None))
    out = steps(assemble(marks))
    assert [s.data_s for s in out] == pytest.approx([0.05, 0.05, 0.05])
    assert out[1].other_s == pytest.approx(0.03)  # (the evaluation's time)


def test_a_step_counts_its_loader_s_token_ids_where_the_loop_counts_none() -> None:
    """Batches bucketed by length (8 sequences of 64 to 1024 tokens), under `gpuwatch
    run` or a framework's callback, which count no tokens: a batch of 1024-token
    sequences took 20x the median step and, with the same samples as the others, read
    as a stall. Each step now carries its training loader's token ids (an eval loader's
    are not its); a loop that counts its own keeps them."""
    import torch
    from torch.utils.data import DataLoader

    from gpuwatch.instrument.patches import timed_loader_next
    from tests.unit.test_save_patches import recorder

    lengths = [64, 1024, 128]
    train = DataLoader([torch.zeros(8, n, dtype=torch.long) for n in lengths],
                       batch_size=None)
    evals = DataLoader([torch.zeros(4, 512, dtype=torch.long)], batch_size=None)
    lazy, pushed = recorder()
    iterator, other = iter(train), iter(evals)
    fetch = timed_loader_next(type(iterator).__next__, lazy)
    marks: list[tuple[int, float, object]] = []
    for k in range(len(lengths)):
        fetch(iterator)
        if k == 1:
            fetch(other)  # an eval batch between two training steps
        marks += [(code, float(k), value) for code, value in pushed]
        pushed.clear()
        marks.append((ring.STEP_BOUNDARY, k + 0.5, None))
    assert [s.tokens for s in steps(assemble(marks))] == [8 * n for n in lengths]
    counted = [(ring.TOKENS, 0.1, 100), *marks]  # the loop's own count comes first
    assert steps(assemble(counted))[0].tokens == 100


def test_token_ids_are_counted_in_hugging_face_batches_and_nowhere_else() -> None:
    """A Hugging Face collator's BatchEncoding (a UserDict, no dict) gave no samples and
    no tokens; masks of bools, bytes of a flattened image and floats were counted as
    tokens. Only signed integer ids of two dimensions are."""
    from collections import UserDict

    import numpy as np
    import torch

    from gpuwatch.instrument.sizes import batch_size, first_tensor, token_ids

    def batch_tokens(batch: object) -> int:  # (what the loader patch counts of a batch)
        return token_ids(first_tensor(batch))

    encoding = UserDict({"input_ids": torch.zeros(4, 64, dtype=torch.long),
                         "attention_mask": torch.ones(4, 64, dtype=torch.long)})
    assert (batch_size(encoding), batch_tokens(encoding)) == (4, 256)
    assert batch_tokens((np.zeros((3, 7), dtype=np.int32), "label")) == 21
    for other in (torch.ones(4, 64, dtype=torch.bool), torch.zeros(4, 784, dtype=torch.uint8),
                  torch.zeros(4, 64), torch.zeros(4, 3, 32, 32, dtype=torch.long),
                  np.zeros((3, 7), dtype=np.uint8), {"x": None}, None):
        assert batch_tokens(other) == 0, other
