"""Which DataLoader workers are the training loop's, with real torch loaders and worker
processes: the host probe counts the workers of the loaders whose batches feed steps
(the step assembler's ``feeding``), not an eval loader's, idle between evaluations."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gpuwatch.instrument import ring
from gpuwatch.instrument.patches import LazyPush, LoaderWorkers, timed_loader_next
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.records import Record, Step

torch = pytest.importorskip("torch")


def worker_pids(iterator: Any) -> set[int]:
    return {w.pid for w in iterator._workers}


def hooked() -> tuple[list[tuple[int, float, Any]], LazyPush, LoaderWorkers, StepAssembler]:
    """Marks as the ring would hand them to the assembler (a clock ticking a second a
    mark), the hooks' state that pushes them, the loaders noted and the assembler."""
    marks: list[tuple[int, float, Any]] = []
    clock = itertools.count()
    lazy = LazyPush(lambda: lambda code, value=None: marks.append(
        (code, float(next(clock)), value)), lambda: False)
    return marks, lazy, LoaderWorkers(), StepAssembler(rank=0, clock_offset=0.0)


def test_an_eval_loaders_idle_workers_are_not_the_training_loaders() -> None:
    """A training loader of 2 persistent workers and an eval loader of 2, iterated every
    other step: once a step has told which loader feeds training, only its workers
    count, but the eval loader's do while a batch is drawn from it (an eval loader
    starting up is at work, not idle). Before any step, every loader's count."""
    from torch.utils.data import DataLoader

    marks, lazy, loaders, assembler = hooked()
    seen_drawing: list[set[int] | None] = []

    def drawing(iterator: Any) -> Any:  # the eval loader's __next__, noting what counts
        seen_drawing.append(loaders.pids(assembler.feeding))
        return type(iterator).__next__(iterator)

    train_loader = DataLoader(torch.zeros(64, 4), batch_size=4, num_workers=2,
                              persistent_workers=True)
    eval_loader = DataLoader(torch.zeros(8, 4), batch_size=4, num_workers=2,
                             persistent_workers=True)
    fetch = timed_loader_next(type(iter(train_loader)).__next__, lazy, loaders)
    fetch_eval = timed_loader_next(drawing, lazy, loaders)
    train = iter(train_loader)
    assert loaders.pids(assembler.feeding) is None  # no batch drawn yet
    out: list[Record] = []
    evals = None
    for step in range(1, 7):
        fetch(train)
        lazy.push(ring.STEP_BOUNDARY, step)
        if step == 1:
            assert loaders.pids(assembler.feeding) == worker_pids(train)
        if step % 2 == 0:
            evals = iter(eval_loader)
            for _ in range(2):
                fetch_eval(evals)
        assembler.feed(marks, out)
        marks.clear()
    assert evals is not None and sum(isinstance(r, Step) for r in out) == 6
    train_workers, eval_workers = worker_pids(train), worker_pids(evals)
    assert len(train_workers) == 2 and len(eval_workers) == 2
    assert assembler.feeding is not None and loaders.pids(None) == train_workers | eval_workers
    assert loaders.pids(assembler.feeding) == train_workers
    assert seen_drawing[-1] == train_workers | eval_workers  # drawn from: at work


def test_a_training_loader_made_anew_counts_from_its_first_batch() -> None:
    """A loader made anew each epoch (a new DataLoader with shuffle=True: a new sampler,
    a new key) fetches the new epoch's first batch before any step says it feeds
    training: its workers count from that batch (they read as none until the epoch's
    first step ended, a 0 in every epoch's first reading); an eval loader's count at the
    first reading after its batches where training drew none meanwhile, not later."""
    from torch.utils.data import DataLoader

    marks, lazy, loaders, assembler = hooked()
    data = torch.zeros(64, 4)
    first = iter(DataLoader(data, batch_size=4, shuffle=True, num_workers=1))
    fetch = timed_loader_next(type(first).__next__, lazy, loaders)
    out: list[Record] = []
    for step in range(1, 4):
        fetch(first)
        lazy.push(ring.STEP_BOUNDARY, step)
    assembler.feed(marks, out)
    marks.clear()
    assert loaders.pids(assembler.feeding) == worker_pids(first)
    evals = iter(DataLoader(data, batch_size=4, num_workers=1))
    fetch(evals)
    assert loaders.pids(assembler.feeding) == worker_pids(first) | worker_pids(evals)
    assert loaders.pids(assembler.feeding) == worker_pids(first)  # not drawn since
    fetch(evals)
    fetch(first)  # (training drew too: the eval's batch was an eval's)
    assert loaders.pids(assembler.feeding) == worker_pids(first)
    anew = iter(DataLoader(data, batch_size=4, shuffle=True, num_workers=1))
    fetch(anew)
    assembler.feed(marks, out)
    assert worker_pids(anew) <= (loaders.pids(assembler.feeding) or set())
