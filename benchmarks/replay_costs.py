"""Where a serial replay's CPU goes, by ablation: the replay run whole, then with one
part of the work left out at a time (its findings are then wrong: only the time
counts). Interleaved rounds, median CPU seconds, and each part's cost as the whole
less the replay without it.

    python benchmarks/replay_costs.py LOG_DIR [--rounds 5]

Parts: the rank engines' judgements (``Engine.evaluate`` of rank scope), the job
engine's, the samples taken into the rank engines' windows (``Telemetry.add_one`` of
a sample) and the digests (``StepDigester.add``: the job engine then gets no steps
to judge, so this part holds the job engine's work on them too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpuwatch.config import Settings
from gpuwatch.detection.engine import Engine
from gpuwatch.detection.replay import analyze
from gpuwatch.detection.step_digest import StepDigester
from gpuwatch.records import Sample
from gpuwatch.telemetry import Telemetry

Patch = tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]


def _skip_scope(scope: str) -> Patch:
    def wrap(evaluate: Callable[..., Any]) -> Callable[..., Any]:
        return lambda self, now: [] if self.scope == scope else evaluate(self, now)
    return Engine, "evaluate", wrap


def _skip_samples(add_one: Callable[..., Any]) -> Callable[..., Any]:
    return lambda self, r: None if type(r) is Sample else add_one(self, r)


PARTS: dict[str, list[Patch]] = {
    "rank judgements": [_skip_scope("rank")],
    "job judgements": [_skip_scope("job")],
    "samples into windows": [(Telemetry, "add_one", _skip_samples)],
    "digests (and the job engine's steps)": [(StepDigester, "add", lambda add: lambda s, r: None)],
}


@contextmanager
def _without(patches: list[Patch]) -> Iterator[None]:
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    try:
        for cls, name, wrap in patches:
            setattr(cls, name, wrap(getattr(cls, name)))
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


def _replay(paths: list[Path]) -> float:
    start = time.process_time()
    analyze(paths, Settings(), workers=1)
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("logs", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    paths = sorted(args.logs.iterdir())
    runs: dict[str, list[float]] = {"whole": [], **{name: [] for name in PARTS}}
    for _ in range(args.rounds):
        runs["whole"].append(_replay(paths))
        for name, patches in PARTS.items():
            with _without(patches):
                runs[name].append(_replay(paths))
    whole = statistics.median(runs["whole"])
    print(f"whole replay: {whole:.3f} s CPU [{min(runs['whole']):.3f}-{max(runs['whole']):.3f}]")
    for name in PARTS:
        cost = whole - statistics.median(runs[name])
        print(f"  {name:38} {cost:.3f} s ({cost / whole:.0%})")


if __name__ == "__main__":
    main()
