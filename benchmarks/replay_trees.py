"""Serial replay CPU of two or more source trees of gpuwatch on the same logs, alternated
in fresh processes (like against like on a box whose speed drifts).

    python benchmarks/replay_trees.py LOGDIR TREE [TREE ...] [--rounds 5]

Each round runs one serial ``analyze`` of ``LOGDIR`` (its ``run*.jsonl``) per tree, in
tree order, each in a fresh process with ``TREE/src`` first on ``sys.path`` (a tree:
this checkout, or another commit's, e.g. ``git worktree add /tmp/base COMMIT``).
Reports each tree's CPU seconds, median and [min-max], its ratio to the first tree's
median, and the records and findings it counted (which should agree).

``--instructions`` counts instead the instructions the analysis executes (under
valgrind's callgrind: the same run with and without the analysis, imports alike), once
per tree: deterministic, so a change of a few percent shows on a shared, loaded box
where CPU seconds drift by more.

LOGDIR can be the throughput benchmark's 8-rank, 30-minute log, written with
``python -c "import sys; sys.path[:0] = ['benchmarks', '.']; from analyze_throughput
import shape; from tests.scenarios import write; from pathlib import Path;
write(shape(8, 1800), Path('/tmp/log8'))"`` (one line).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

ONE = """import sys, time
sys.path.insert(0, sys.argv[1] + "/src")
from pathlib import Path
from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
paths = sorted(Path(sys.argv[2]).glob("run*.jsonl"))
if sys.argv[3:] != ["imports"]:
    start = time.process_time()
    result = analyze(paths, Settings(), workers=1)
    print(time.process_time() - start, result.records, len(result.findings))
"""
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def instructions(tree: str, logdir: str, *mode: str) -> int:
    """Instructions one fresh process executes (callgrind's count) running ``ONE``."""
    err = subprocess.run([*CALLGRIND, sys.executable, "-c", ONE, tree, logdir, *mode],
                         check=True, capture_output=True, text=True).stderr
    return int(re.search(r"Collected : (\d+)", err).group(1))  # type: ignore[union-attr]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("logdir")
    p.add_argument("trees", nargs="+")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--instructions", action="store_true")
    args = p.parse_args()
    if args.instructions:
        counts = {tree: instructions(tree, args.logdir) - instructions(tree, args.logdir,
                                                                       "imports")
                  for tree in args.trees}
        for tree, n in counts.items():
            print(f"{tree}: {n / 1e9:.3f} G instructions  x{n / counts[args.trees[0]]:.3f}")
        return
    cpu: dict[str, list[float]] = {tree: [] for tree in args.trees}
    counted: dict[str, set[tuple[int, int]]] = {tree: set() for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            out = subprocess.run([sys.executable, "-c", ONE, tree, args.logdir], check=True,
                                 capture_output=True, text=True).stdout.split()
            cpu[tree].append(float(out[0]))
            counted[tree].add((int(out[1]), int(out[2])))
    first = statistics.median(cpu[args.trees[0]])
    for tree in args.trees:
        xs = cpu[tree]
        median = statistics.median(xs)
        print(f"{tree}: CPU median {median:.3f} s [{min(xs):.3f}-{max(xs):.3f}]  "
              f"x{median / first:.2f}  (records, findings) {sorted(counted[tree])}")


if __name__ == "__main__":
    main()
