"""A corpus of realistic training jobs as run logs, for tests and benchmarks.

Public API:

- ``JOBS`` (tuple of ``Job``), ``job(name)``: each job's ``name``, one-line ``story``,
  ``shape`` (``Shape``), ``expected`` and ``wrong`` verdicts (``Verdict``), ``settings``.
- ``simulate(shape, job="job") -> list[list[Record]]``: each rank's records.
- ``write(shape, directory, job="job") -> list[Path]``: the run logs as the agent
  names them (``run.jsonl``, or ``run-rank{r}.jsonl`` for several ranks).
- ``Shape`` and its parts (``Evals``, ``Saves``, ``Memory``, ``Stop``) and the GPUs
  (``H100``, ``RTX_5090``, ``L40S``) to build new jobs, e.g. a long log for a
  throughput benchmark: ``write(replace(job("vision_small_steps").shape,
  duration_s=3600), tmp)``.
"""

from tests.scenarios.corpus import JOBS, Job, Verdict, job
from tests.scenarios.simulate import (
    H100,
    L40S,
    RTX_5090,
    START,
    Evals,
    Memory,
    Saves,
    Shape,
    Stop,
    simulate,
    write,
)

__all__ = ["H100", "JOBS", "L40S", "RTX_5090", "START", "Evals", "Job", "Memory", "Saves",
           "Shape", "Stop", "Verdict", "job", "simulate", "write"]
