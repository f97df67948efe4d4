"""Checkpoint saves as the patches see them, with real torch and safetensors: a save on
the training thread is a blocking checkpoint phase, one on a writer thread is timed as
a background save that blocks nothing."""

from __future__ import annotations

import gc
import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.instrument import ring
from gpuwatch.instrument.patches import (
    TAKEOVER_STEPS,
    LazyPush,
    _closure_outside_the_update,
    _writer_path,
    patch_activation_checkpoint,
    patch_lightning_save,
    patch_safetensors,
    timed_checkpoint_save,
    timed_loader_next,
)
from gpuwatch.instrument.sizes import saved_bytes
from tests.wait import wait_for

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def recorder() -> tuple[LazyPush, list[tuple[int, Any]]]:
    marks: list[tuple[int, Any]] = []

    def push(code: int, value: Any = None) -> None:
        marks.append((code, value))

    return LazyPush(lambda: push, lambda: False), marks


def saved_size(marks: list[tuple[int, Any]]) -> int:
    """The bytes of the save the marks hand over: a file's, stat'ed at once (it may be
    renamed away next), as the agent reads them."""
    (target,) = [v for c, v in marks if c == ring.CHECKPOINT_TARGET]
    assert isinstance(target, int)
    return saved_bytes(target)


def test_a_file_saved_under_a_temporary_name_keeps_its_size(tmp_path: Path) -> None:
    """The atomic-save pattern: torch.save to a temporary name, then os.replace. The
    bytes are read before the loop renames the file away."""
    lazy, marks = recorder()
    save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    save({"w": torch.zeros(1000)}, tmp_path / "ckpt.pt.tmp")
    os.replace(tmp_path / "ckpt.pt.tmp", tmp_path / "ckpt.pt")
    assert saved_size(marks) == (tmp_path / "ckpt.pt").stat().st_size


def test_a_save_on_the_training_thread_is_a_blocking_checkpoint(tmp_path: Path) -> None:
    lazy, marks = recorder()
    save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    save({"w": torch.zeros(1000)}, tmp_path / "a.pt")
    codes = [c for c, _ in marks]
    assert codes[0] == ring.CHECKPOINT and codes[-1] == -ring.CHECKPOINT
    assert saved_size(marks) == (tmp_path / "a.pt").stat().st_size


@pytest.mark.parametrize("to", ["path", "file"])
def test_a_save_on_a_writer_thread_is_a_background_save(tmp_path: Path, to: str) -> None:
    """Sized as a blocking save is: a path's file, or what a file object was written
    (a writer thread's save to an open file read 0 bytes)."""
    lazy, marks = recorder()
    save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    lazy.push(ring.STEP_BOUNDARY, 1)  # the loop has marked: this thread is its
    path = tmp_path / "b.pt"
    with path.open("wb") as f:
        writer = threading.Thread(target=save, args=({"w": torch.zeros(1000)},
                                                     path if to == "path" else f))
        writer.start()
        writer.join(timeout=60)
    assert not writer.is_alive()
    ((code, (seconds, nbytes)),) = marks[1:]
    assert code == ring.BACKGROUND_SAVE
    assert seconds > 0 and nbytes == path.stat().st_size > 4000


def test_safetensors_saves_are_timed(tmp_path: Path) -> None:
    lazy, marks = recorder()
    module = types.SimpleNamespace(save_file=safetensors_torch.save_file)
    patch_safetensors(lazy, module)
    module.save_file({"w": torch.ones(256)}, str(tmp_path / "m.safetensors"))
    assert marks[0][0] == ring.CHECKPOINT
    assert saved_size(marks) == (tmp_path / "m.safetensors").stat().st_size


def test_forward_and_backward_in_an_optimizer_closure_are_not_the_update() -> None:
    """Lightning (and LBFGS) run forward and backward inside ``optimizer.step(closure)``:
    the step's pre-hook wraps the closure so the optimizer phase is closed while it
    runs, and the closure's loss still comes back to the caller."""
    torch = pytest.importorskip("torch")
    lazy, marks = recorder()
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def before(opt: Any, args: Any, kwargs: Any) -> Any:
        lazy.push(ring.OPTIMIZER)
        return _closure_outside_the_update(lazy, opt, args, kwargs)

    optimizer.register_step_pre_hook(before)

    def closure() -> Any:
        marks.append((0, "closure"))
        optimizer.zero_grad()
        loss = (weight * 2).sum()
        loss.backward()
        return loss

    assert float(optimizer.step(closure)) == 6.0
    assert float(optimizer.step(closure=closure)) == pytest.approx(4.8)  # after one update
    assert optimizer.step() is None  # no closure: nothing wrapped
    opened = [ring.OPTIMIZER, -ring.OPTIMIZER, 0, ring.OPTIMIZER]
    assert [code for code, _ in marks] == [*opened, *opened, ring.OPTIMIZER]


def test_a_callable_object_passed_to_a_custom_step_is_no_closure() -> None:
    """A custom optimizer whose ``step(model)`` takes the module (callable, yet no
    closure) gets the module itself: replacing it broke the job
    (``'function' object has no attribute 'parameters'``)."""
    torch = pytest.importorskip("torch")
    lazy, marks = recorder()
    model = torch.nn.Linear(2, 1)

    class ByModel(torch.optim.SGD):
        def step(self, model: Any = None) -> Any:  # type: ignore[override]
            return sum(p.numel() for p in model.parameters())

    optimizer = ByModel(model.parameters(), lr=0.1)
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: _closure_outside_the_update(lazy, opt, args, kwargs))
    assert optimizer.step(model) == 3
    assert marks == []


def test_a_replaced_optimizer_takes_over_ending_steps() -> None:
    """The first optimizer to step ends the steps, one per iteration however often the
    others step in it (a GAN's critic, twice); a new one takes over once the first is
    gone (a second phase of a fine-tune, a new Trainer), or has been idle while the new
    one stepped TAKEOVER_STEPS times (put aside, still referenced)."""
    lazy, _ = recorder()

    def sgd() -> Any:
        return torch.optim.SGD([torch.nn.Parameter(torch.ones(1))])

    g, critic = sgd(), sgd()
    assert [lazy.ends_step(o) for o in (g, critic, critic) * 3] == [True, False, False] * 3
    put_aside = sgd()
    steps = [lazy.ends_step(put_aside) for _ in range(TAKEOVER_STEPS + 2)]
    assert steps == [False] * (TAKEOVER_STEPS - 1) + [True] * 3
    assert lazy.ends_step(g) is False  # the old one, stepping once more, does not take back
    del put_aside, steps
    gc.collect()
    replaced = sgd()  # the one before is gone: its successor ends the very next step
    assert [lazy.ends_step(replaced) for _ in range(3)] == [True] * 3


def test_a_save_on_the_training_loops_own_thread_blocks_it(tmp_path: Path) -> None:
    """A loop run in a thread of its own: its saves block its steps (a checkpoint
    phase), while a writer thread beside it writes in the background, and so does the
    main thread once the loop has stepped."""
    lazy, marks = recorder()
    save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))])

    def loop() -> None:
        lazy.ends_step(optimizer)  # (what the optimizer's post-hook does on this thread)
        save({"w": torch.zeros(10)}, tmp_path / "loop.pt")
        writer = threading.Thread(target=save, args=({"w": torch.zeros(10)}, tmp_path / "w.pt"))
        writer.start()
        writer.join(timeout=60)

    trainer = threading.Thread(target=loop)
    trainer.start()
    trainer.join(timeout=60)
    assert not trainer.is_alive()
    codes = [code for code, _ in marks]
    assert codes[0] == ring.CHECKPOINT and ring.BACKGROUND_SAVE in codes
    assert codes.index(-ring.CHECKPOINT) < codes.index(ring.BACKGROUND_SAVE)
    save({"w": torch.zeros(10)}, tmp_path / "main.pt")  # the main thread, beside the loop
    assert marks[-1][0] == ring.BACKGROUND_SAVE


def test_checkpointed_regions_count_only_where_a_graph_is_built() -> None:
    """Training forwards through torch.utils.checkpoint are counted and their re-run in
    backward timed as recompute; an eval's forward under no_grad checkpoints nothing."""
    import torch.utils.checkpoint as ckpt

    lazy, marks = recorder()
    module = types.SimpleNamespace(checkpoint=ckpt.checkpoint)
    patch_activation_checkpoint(lazy, module)
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    module.checkpoint(layer, x, use_reentrant=False).sum().backward()
    with torch.no_grad():
        for _ in range(5):
            module.checkpoint(layer, x, use_reentrant=False)
    codes = [code for code, _ in marks]
    assert codes.count(ring.ACT_CKPT) == 1
    assert codes.count(ring.RECOMPUTE) == 1 == codes.count(-ring.RECOMPUTE)


def test_marks_of_other_threads_wait_for_the_agent_to_start() -> None:
    """The first mark starts the agent (imports, settings: ~0.2 s); a loop on another
    thread marking meanwhile waits for it, its marks kept, not dropped."""
    marks: list[tuple[int, Any]] = []
    started, release = threading.Event(), threading.Event()

    def push(code: int, value: Any = None) -> None:
        marks.append((code, value))

    def start() -> Any:
        started.set()
        assert release.wait(30)
        return push

    lazy = LazyPush(start, lambda: False)
    first = threading.Thread(target=lazy.push, args=(ring.DATA,))
    first.start()
    assert started.wait(30)
    loop = threading.Thread(target=lazy.push, args=(ring.STEP_BOUNDARY, 1))
    loop.start()
    release.set()
    first.join(30)
    loop.join(30)
    assert sorted(code for code, _ in marks) == [ring.DATA, ring.STEP_BOUNDARY]


def test_a_batch_fetched_ahead_on_another_thread_is_no_wait_of_the_loops() -> None:
    """A prefetching thread (BackgroundGenerator style) calls the loader's __next__ while
    the loop computes: that wait is the prefetcher's, not the step's data wait (it read
    as 34% data-starved where the loop waited 3%). Its batches still count samples."""
    from torch.utils.data import DataLoader

    lazy, marks = recorder()
    iterator = iter(DataLoader(torch.zeros(64, 4), batch_size=8))
    fetch = timed_loader_next(type(iterator).__next__, lazy)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))])
    lazy.push(ring.OPTIMIZER)  # the loop (this thread) steps the optimizer
    lazy.ends_step(optimizer)
    ahead: list[Any] = []
    prefetcher = threading.Thread(target=lambda: ahead.extend(fetch(iterator)
                                                              for _ in range(3)))
    prefetcher.start()
    prefetcher.join(timeout=60)
    assert not prefetcher.is_alive() and len(ahead) == 3
    codes = [code for code, _ in marks[1:]]
    assert ring.DATA not in codes and codes.count(ring.LOADER_BATCH) == 3
    fetch(iterator)  # the loop fetching for itself: its wait
    assert [code for code, _ in marks][-3:] == [ring.DATA, -ring.DATA, ring.LOADER_BATCH]


def test_loaders_over_one_dataset_split_by_samplers_are_two_loaders() -> None:
    """One dataset, a train and an eval loader split by SubsetRandomSampler (the usual
    split): keyed by the dataset alone the eval batches counted as training (52,000
    samples logged for 16,000). Each loader keeps its key from epoch to epoch."""
    from torch.utils.data import DataLoader, SubsetRandomSampler

    lazy, marks = recorder()
    data = torch.zeros(40, 4)
    train = DataLoader(data, batch_size=4, sampler=SubsetRandomSampler(range(32)))
    evals = DataLoader(data, batch_size=4, sampler=SubsetRandomSampler(range(32, 40)))
    keys = []
    for loader in (train, train, evals):  # two epochs of training, then an eval pass
        iterator = iter(loader)
        timed_loader_next(type(iterator).__next__, lazy)(iterator)
        keys.append(marks[-1][1][:-1])
    assert keys[0] == keys[1] != keys[2]


def test_a_distributed_checkpoints_writer_threads_are_part_of_its_save(tmp_path: Path) -> None:
    """dcp.save with FileSystemWriter(path, thread_count=4): its writer threads' per-tensor
    torch.save calls were logged as background saves of their own (54 for 3 saves), and
    with no checkpoint_id the save had no path (0 bytes). The writer's path sizes it."""
    lazy, marks = recorder()
    torch_save = timed_checkpoint_save(torch.save, lazy, target_arg=1)

    class Writer:  # what a storage writer tells of itself: where it writes
        path = tmp_path / "step10"

    def dcp_save(state: dict[str, Any], *, storage_writer: Writer) -> None:
        storage_writer.path.mkdir()
        writers = [threading.Thread(target=torch_save, args=(
            state, storage_writer.path / f"__0_{k}.distcp")) for k in range(4)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=60)

    save = timed_checkpoint_save(dcp_save, lazy, target_kwarg="checkpoint_id",
                                 target_of=_writer_path)
    lazy.push(ring.STEP_BOUNDARY, 1)  # the loop has marked: this thread is its
    save({"w": torch.zeros(100)}, storage_writer=Writer())
    codes = [code for code, _ in marks]
    assert ring.BACKGROUND_SAVE not in codes
    assert codes[1:] == [ring.CHECKPOINT, ring.CHECKPOINT_TARGET, -ring.CHECKPOINT]
    written = sum(p.stat().st_size for p in Writer.path.iterdir())
    assert saved_bytes(marks[2][1]) == written > 0


def test_an_async_save_is_its_staging_then_one_background_save_of_its_checkpoint(
        tmp_path: Path) -> None:
    """dcp.async_save returns a future while its writer thread goes on with a torch.save
    per item: each was a background save of its own (2,672 for 76 checkpoints, ~1 kB
    each), and the staging call was sized by the writer's first files, so a staging
    share was told to "use async_save". Now: the call is the blocking part, unsized, and
    the writing one background save sized by the checkpoint once the future is done."""
    from concurrent.futures import Future

    lazy, marks = recorder()
    torch_save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    writing = threading.Event()

    def async_save(state: dict[str, Any], *, checkpoint_id: Path) -> Future[None]:
        checkpoint_id.mkdir()
        future: Future[None] = Future()

        def write() -> None:
            writing.wait(60)  # (after the call returned, as DCP's writer thread runs)
            for k, tensor in state.items():
                torch_save(tensor, checkpoint_id / f"__0_{k}.distcp")
            future.set_result(None)

        threading.Thread(target=write).start()
        return future

    save = timed_checkpoint_save(async_save, lazy, target_kwarg="checkpoint_id")
    lazy.push(ring.STEP_BOUNDARY, 1)  # the loop has marked: this thread is its
    future = save({f"w{k}": torch.zeros(1000) for k in range(6)},
                  checkpoint_id=tmp_path / "step10")
    assert [code for code, _ in marks][1:] == [ring.CHECKPOINT, -ring.CHECKPOINT]
    writing.set()
    future.result(timeout=60)  # (its callbacks run just after: waited for)
    background = wait_for(lambda: [v for c, v in marks if c == ring.BACKGROUND_SAVE], 60,
                          "the async save's background save")
    assert len(background) == 1
    written = sum(p.stat().st_size for p in (tmp_path / "step10").iterdir())
    assert saved_bytes(background[0][1]) == written > 6 * 4000
    later = threading.Thread(target=torch_save, args=(torch.zeros(1), tmp_path / "later.pt"))
    later.start()  # (a writer thread's own save, once the async one is done: its own)
    later.join(timeout=60)
    assert [c for c, _ in marks].count(ring.BACKGROUND_SAVE) == 2


def test_lightning_s_whole_checkpoint_write_is_one_save_sized_by_its_file(
        tmp_path: Path) -> None:
    """Lightning and Fabric serialise a checkpoint into memory with torch.save, then
    write the file through fsspec: with torch.save alone timed, the write (half the
    save and more) was counted as compute. Lightning's own ``_atomic_save``, patched
    on a module of its own here, is one save of the file it writes."""
    cloud_io = pytest.importorskip("lightning.fabric.utilities.cloud_io")
    lazy, marks = recorder()
    module = types.SimpleNamespace(_atomic_save=cloud_io._atomic_save)
    patch_lightning_save(lazy, module)
    module._atomic_save({"w": torch.zeros(10_000)}, tmp_path / "epoch=0.ckpt")
    assert [c for c, _ in marks] == [ring.CHECKPOINT, ring.CHECKPOINT_TARGET, -ring.CHECKPOINT]
    assert saved_size(marks) == (tmp_path / "epoch=0.ckpt").stat().st_size


def test_an_agent_that_marks_its_own_data_gets_the_loaders_batches_not_their_wait() -> None:
    """Under watch() or a callback the loop marks its own data phase: the DataLoader hook
    tells which loader each batch came from (their workers are the training loader's,
    not an eval loader's) and times no wait of its own beside the loop's."""
    from torch.utils.data import DataLoader

    lazy, marks = recorder()
    iterator = iter(DataLoader(torch.zeros(16, 4), batch_size=8))
    fetch = timed_loader_next(type(iterator).__next__, lazy, timed=False)
    fetch(iterator)
    assert [code for code, _ in marks] == [ring.LOADER_BATCH_UNTIMED] and marks[0][1][-1] == 8
