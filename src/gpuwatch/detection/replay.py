"""Offline analysis: replay run logs through the same detectors the live agent runs.

Each log goes through its own rank-scope engine, fed in file order exactly as
the live agent fed it, so the live findings come back unchanged; every log's meta
line, events and step digests (``step_digest``), merged by time, go through one
job-scope engine for the cross-rank detectors. Each
attempt (a restart, a resumed job: the ``attempt`` of a log's meta line) is a
timeline of its own, so the time between attempts is a restart, never a stall.
Records stream: memory stays flat whatever the logs' size.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import heapq
import itertools
import os
import pickle
import tempfile
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gpuwatch.config import ConfigError, Settings, replay_settings
from gpuwatch.detection.engine import Engine, engine_from_settings
from gpuwatch.detection.fits_on_paper import restarted_to_fit
from gpuwatch.detection.step_digest import JOB_SOURCES, DigestRank, JobInput, StepDigester
from gpuwatch.lifeline import die_with_parent
from gpuwatch.records import Finding, Meta, Record
from gpuwatch.runlog import RunLogReader, log_bytes, logged_elsewhere, logs_in, segments
from gpuwatch.telemetry import Ending

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
TICK_RECORDS = 65536  # the progress bar moves every this many records


@dataclass
class Analysis:
    """Every finding of the run (latest state of each), what the readers skipped, and how
    long the run ran."""

    findings: list[Finding] = field(default_factory=list)
    records: int = 0
    skipped_lines: int = 0
    logs: list[Path] = field(default_factory=list)
    ran_s: float = 0.0  # the longest any rank ran steps, in any attempt (s)


def run_logs(paths: list[Path]) -> list[Path]:
    """Run-log files named directly or found in directories (``run*.jsonl``).

    Raises FileNotFoundError naming the first path that is neither, or that is no
    regular file (a FIFO or a device would be read forever).
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = logs_in(p)
            if not found:  # (`gpuwatch run --out p` of a job that chose its own directory)
                there = logged_elsewhere(p)
                found = logs_in(there) if there is not None else []
            if not found:
                raise FileNotFoundError(f"no run*.jsonl run log in {p}")
        elif p.exists() or segments(p):
            found = [p]
        else:
            raise FileNotFoundError(f"no such run log or directory: {p}")
        for f in found:
            if not f.is_file() and (f.exists() or not segments(f)):
                raise FileNotFoundError(f"not a regular file: {f}")
        out += found
    return out


def analyze(paths: list[Path], settings: Settings, *, workers: int | None = None,
            progress: TextIO | None = None, progress_delay_s: float = 3.0) -> Analysis:
    """Findings of the runs in ``paths``, judged with the detection settings each run
    recorded (except those the caller's ``settings`` set explicitly).

    ``workers``: processes that replay ranks side by side (forked); by default every
    core, unless this process runs other threads (a fork copies their locks as they
    are: a held one would never be released), then 1: all in this process. The
    findings are the same either way. ``progress``: a stream (stderr) for a progress
    bar, shown only on a terminal and once the analysis has run ``progress_delay_s``
    seconds."""
    if workers is None:
        workers = default_workers()
    with _without_cyclic_gc():
        return _analyze(run_logs(paths), settings, workers, progress, progress_delay_s)


def default_workers() -> int:
    """Every core this process may run on; 1 while it runs other threads."""
    return _cores() if threading.active_count() == 1 else 1


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Replay allocates millions of short-lived, acyclic records: the cycle collector's
    passes over them are pure cost (about 15% of replay time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


Placed = tuple[float, int, int, Record]  # (clock, log tag, line, record): ``placed``


@dataclass
class Log:
    """One run log opened for replay: its reader, the settings and attempt its meta line
    recorded, its first record and the reader's stream of the rest, placed
    (``RunLogReader.placed``) with its ``tag``: its index among the logs analysed, which
    orders logs at equal times in every merge, serial or in workers."""

    reader: RunLogReader
    tag: int
    settings: Settings
    attempt: int
    first: Placed | None
    rest: Generator[Placed, None, None]
    rank: int = 0  # its meta line's

    @property
    def placed(self) -> Iterator[Placed]:
        """Every record of the log with its place, the first included (once)."""
        return itertools.chain((self.first,) if self.first is not None else (), self.rest)

    def close(self) -> None:
        """Done with the stream: its file closes, its parsed block goes."""
        self.rest.close()


def _analyze(paths: list[Path], settings: Settings, workers: int,
             progress: TextIO | None, delay_s: float) -> Analysis:
    _room_for_files(len(paths))
    logs = [_open(path, tag, settings) for tag, path in enumerate(paths)]
    readers = [log.reader for log in logs]
    attempts: dict[int, list[Log]] = {}
    for log in logs:
        attempts.setdefault(log.attempt, []).append(log)
    size = sum(log_bytes(p) for p in paths)
    parallel = workers > 1 and any(len(a) > 1 for a in attempts.values())
    if parallel:  # the logs of attempts with ranks to compare are read twice: digested first
        size += sum(log_bytes(log.reader.path) for a in attempts.values() if len(a) > 1
                    for log in a)
    with _bar(size, progress, delay_s) as bar:
        if parallel:
            engines, n_records, skipped = _parallel(
                [attempts[a] for a in sorted(attempts)], workers, bar)
        else:
            engines = [_replay_attempt(attempts[a], Reading(readers, bar))
                       for a in sorted(attempts)]
            n_records = sum(r.records for r in readers)
            skipped = sum(r.skipped for r in readers)
    ran_s = max((ending.ran_s for rank_engines, _ in engines for e in rank_engines
                 for ending in e.endings.values()), default=0.0)
    return Analysis(findings=_ordered(engines), records=n_records, skipped_lines=skipped,
                    logs=paths, ran_s=ran_s)


SPARE_FILES = 64  # open files a replay may need beside its logs (rules, digests, pipes)


def _room_for_files(logs: int) -> None:
    """Raise this process's open-file limit for ``logs`` run logs and ``SPARE_FILES``,
    as far as the hard limit allows (a replay reads every rank's log at once: a job of
    over a thousand ranks is over the usual soft limit of 1024); OSError naming the
    limit where even the hard one cannot hold the logs themselves."""
    try:
        import resource
    except ImportError:  # (no such limits here)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = logs + SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < logs + MIN_SPARE_FILES:
        raise OSError(errno.EMFILE, f"{logs} run logs are read at once, more than the "
                      f"open-file limit allows ({hard}; raise it: ulimit -Hn {needed})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY
                                                else min(needed, hard), hard))


MIN_SPARE_FILES = 8  # the fewest a replay needs beside its logs (stdio, rules, a pipe)


@dataclass
class Reading:
    """The readers of a replay and the bar that shows how far they got (by bytes)."""

    readers: list[RunLogReader]
    bar: tqdm[Any] | None

    def tick(self) -> None:
        if self.bar is not None:
            done = sum(r.bytes_read for r in self.readers)
            self.bar.update(done - self.bar.n)


@contextlib.contextmanager
def _bar(total: int, stream: TextIO | None, delay_s: float) -> Iterator[tqdm[Any] | None]:
    """A progress bar over ``total`` bytes on ``stream`` if it is a terminal."""
    if stream is None or not stream.isatty():
        yield None
        return
    with tqdm(total=total, file=stream, unit="B", unit_scale=True, delay=delay_s,
              desc="gpuwatch analyze", leave=False) as bar:
        yield bar


def _replay_attempt(logs: list[Log], reading: Reading) -> tuple[list[Engine], Engine]:
    """One attempt's logs through their rank engines and a job engine of their own, which
    takes each log's meta line, events and step digests where they come in the merge."""
    first_rank = _first_rank(logs)
    rank_engines = [_rank_engine(log.settings, first_rank) for log in logs]
    job_engine = _job_engine(logs[0].settings)
    for engine in rank_engines:
        engine.peers = [job_engine]  # a straggler or sync finding explains every rank
    if len(logs) == 1:  # one log: nothing to compare across ranks
        take = rank_engines[0].take
        for n, (_, _, _, record) in enumerate(logs[0].placed):
            take(record)
            if not n % TICK_RECORDS:
                reading.tick()
    else:
        by_tag = {log.tag: (engine.take, StepDigester())
                  for log, engine in zip(logs, rank_engines, strict=True)}
        take_job = job_engine.take
        for n, (_, tag, _, read) in enumerate(heapq.merge(*map(_ended, logs))):
            take, digester = by_tag[tag]
            if read is None:  # the log's end
                item: JobInput | None = digester.flush()
            else:
                take(read)
                item = digester.add(read)
            if item is not None:
                take_job(item)
            if not n % TICK_RECORDS:
                reading.tick()
    for engine in [*rank_engines, job_engine]:
        engine.close()
    for engine in [*rank_engines, job_engine]:
        engine.retire()  # (after every close: a rank engine's peer is the job engine)
    reading.tick()
    return rank_engines, job_engine


def _ended(log: Log) -> Iterator[tuple[float, int, int, Record | None]]:
    """The log's placed records, then its end (None) placed after every line of it:
    where its digester flushes, here as in a worker (``_digest_log``)."""
    yield from log.placed
    if log.first is not None:
        yield log.reader.clock, log.tag, log.reader.lines_read, None


def _rank_engine(settings: Settings, first_rank: int) -> Engine:
    """A rank engine whose job's first rank is ``first_rank`` (``Context.first_rank``)."""
    engine = engine_from_settings(settings, "rank")
    engine.context.first_rank = first_rank
    return engine


def _first_rank(logs: list[Log]) -> int:
    """The lowest rank an attempt's logs hold (0 unless rank 0's log is missing)."""
    return min(log.rank for log in logs)


def _job_engine(settings: Settings) -> Engine:
    """A job engine that knows ranks by their step digests."""
    engine = engine_from_settings(settings, "job")
    engine.make_view = DigestRank
    return engine


# -- ranks side by side ---------------------------------------------------------------
# The job engine needs every rank's digests; each rank engine needs only its own log and
# what the job engine's findings explained at each moment. So workers first digest each
# log (``_digest_log``: meta line, events, step digests, each at its place in the merged
# order: clock, log, line); this process runs the job engine over them merged and notes
# each change of what its findings cover at its place; then each log's rank engine
# replays in a worker, taking in those changes at the same places. The findings are the
# serial replay's.

Position = tuple[float, int, int]  # (merged clock, log tag, line in the log)
Covered = list[tuple[str, list[int]]]
DIGEST_BATCH = 128  # digests pickled at a time (a merge holds a batch of each log)


@dataclass
class JobTimeline:
    """What the job engine's findings covered, from each position of the merged replay."""

    changes: list[tuple[Position, Covered]] = field(default_factory=list)
    _at: int = 0
    _covered: Covered = field(default_factory=list)
    revision: int = 0  # the changes taken in

    def note(self, at: Position, covered: Covered) -> None:
        if covered != (self.changes[-1][1] if self.changes else []):
            self.changes.append((at, covered))

    def advance(self, before: Position) -> None:
        """Take in every change made before ``before``."""
        while self._at < len(self.changes) and self.changes[self._at][0] < before:
            self._covered = self.changes[self._at][1]
            self._at += 1
            self.revision = self._at

    def covered(self) -> Covered:
        return self._covered


def _parallel(attempts: list[list[Log]], workers: int, bar: tqdm[Any] | None) -> tuple[
        list[tuple[list[Engine], Engine]], int, int]:
    """Each attempt's job engine here, the digests and rank engines in ``workers``
    processes."""
    job_engines = []
    every = [log for logs in attempts for log in logs]
    for log in every:
        log.close()  # the workers read each log afresh
    with (tempfile.TemporaryDirectory(prefix="gpuwatch-digests-") as tmp,
          ProcessPoolExecutor(max_workers=min(workers, len(every)),
                              initializer=die_with_parent(os.getpid())) as pool):
        pool.submit(int)  # forks every worker now, before this process grows
        compared = [log for logs in attempts if len(logs) > 1 for log in logs]
        digested = {log.tag: pool.submit(_digest_log, log.reader.path, log.tag,
                                         Path(tmp) / f"{log.tag}.pickle") for log in compared}
        _progress(bar, {digested[log.tag]: log.reader.path for log in compared})
        futures: dict[int, Future[tuple[Engine, int, int]]] = {}
        for logs in attempts:
            files = [digested[log.tag].result() for log in logs if log.tag in digested]
            job_engine, timeline = _job_pass(logs[0].settings,
                                             [_digests(path) for path in files])
            for path in files:
                path.unlink()  # (gone once judged: as large as a log of short steps)
            job_engines.append(job_engine)
            first_rank = _first_rank(logs)
            for log in logs:
                futures[log.tag] = pool.submit(_replay_rank, log.reader.path, log.settings,
                                               log.tag, timeline, first_rank)
        _progress(bar, {futures[log.tag]: log.reader.path for log in every})
    results = [futures[log.tag].result() for log in every]
    out, done = [], iter(results)
    for logs, job in zip(attempts, job_engines, strict=True):
        out.append(([next(done)[0] for _ in logs], job))
    return out, sum(r[1] for r in results), sum(r[2] for r in results)


def _progress(bar: tqdm[Any] | None, paths: dict[Future[Any], Path]) -> None:
    """Wait for ``paths``' futures, moving the bar by each one's log size as it ends."""
    for future in as_completed(paths):
        future.result()
        if bar is not None:
            bar.update(log_bytes(paths[future]))


def _digest_log(path: Path, index: int, out: Path) -> Path:
    """What the job engine takes of one log (``StepDigester``), each with its place in
    the merged order, pickled to ``out`` in batches (in a worker). The samples no job
    detector reads are passed over unparsed (``JOB_SOURCES``)."""
    reader = RunLogReader(path, JOB_SOURCES)
    digester = StepDigester()
    batch: list[tuple[Position, JobInput]] = []
    with out.open("wb") as f, _without_cyclic_gc():
        for clock, _, line, record in reader.placed(index):
            item = digester.add(record)
            if item is not None:
                batch.append(((clock, index, line), item))
                if len(batch) == DIGEST_BATCH:
                    pickle.dump(batch, f)
                    batch = []
        last = digester.flush()  # (placed as the serial replay places a log's end)
        if last is not None:
            batch.append(((reader.clock, index, reader.lines_read), last))
        pickle.dump(batch, f)
    return out


def _digests(path: Path) -> Iterator[tuple[Position, JobInput]]:
    """A digested log, batch by batch (a file this process's workers wrote)."""
    with path.open("rb") as f:
        while True:
            try:
                batch = pickle.load(f)
            except EOFError:
                return
            yield from batch


def _job_pass(settings: Settings, logs: list[Iterator[tuple[Position, JobInput]]]
              ) -> tuple[Engine, JobTimeline]:
    """The job engine over one attempt's digested logs merged, and what its findings
    covered (fewer than two logs: nothing to compare across ranks, as in the serial
    replay, and nothing was digested)."""
    job_engine = _job_engine(settings)
    timeline = JobTimeline()
    if len(logs) < 2:
        return job_engine, timeline
    for position, item in heapq.merge(*logs):
        revision = job_engine.revision
        job_engine.take(item)
        if job_engine.revision != revision:
            timeline.note(position, job_engine.covered())
    job_engine.close()
    job_engine.retire()
    return job_engine, timeline


def _replay_rank(path: Path, settings: Settings, index: int, timeline: JobTimeline,
                 first_rank: int) -> tuple[Engine, int, int]:
    """One log's rank engine, explained by the job engine's timeline (in a worker)."""
    reader = RunLogReader(path)
    engine = _rank_engine(settings, first_rank)
    engine.peers = [timeline]
    with _without_cyclic_gc():
        for clock, _, line, record in reader.placed(index):
            timeline.advance((clock, index, line))
            engine.take(record)
        timeline.advance((float("inf"), 0, 0))
        engine.close()
    engine.retire()  # what goes back is the findings, not the telemetry or the timeline
    return engine, reader.records, reader.skipped


def _open(path: Path, tag: int, settings: Settings) -> Log:
    """A log with the settings and attempt its run recorded in its meta line."""
    reader = RunLogReader(path)
    placed = reader.placed(tag)
    first = next(placed, None)
    if first is None:
        return Log(reader, tag, settings, 0, None, placed)
    meta = first[3] if isinstance(first[3], Meta) else None
    recorded = meta.detection if meta else {}
    return Log(reader, tag, _replayed(recorded, settings),
               meta.attempt if meta else 0, first, placed, meta.rank if meta else 0)


def _replayed(recorded: dict[str, Any], settings: Settings) -> Settings:
    """``replay_settings``, less any recorded value the engine refuses (a detector, a
    threshold or a GPU this gpuwatch does not know: a newer writer's, or a damaged meta
    line): the log is judged with the caller's setting there instead. Detector
    overrides are kept or left out one threshold at a time, the first
    ``MAX_CHECKED_SETTINGS`` of them (a meta line holding more is damaged: the rest go)."""
    chosen = replay_settings(recorded, settings)
    if _accepted(chosen):
        return chosen
    checks = itertools.repeat(True, MAX_CHECKED_SETTINGS)

    def taken(part: dict[str, Any]) -> bool:
        """Whether the engine takes ``part`` of the recorded settings (no, past the budget)."""
        return next(checks, False) and _accepted(replay_settings(part, settings))

    kept = {k: v for k, v in recorded.items() if k != "detectors" and taken({k: v})}
    detectors = recorded.get("detectors")
    if isinstance(detectors, dict):
        each = {d: {k: v for k, v in values.items() if taken({"detectors": {d: {k: v}}})}
                for d, values in detectors.items() if isinstance(values, dict)}
        kept["detectors"] = {d: values for d, values in each.items() if values}
    return replay_settings(kept, settings)


JUDGED_S = 120.0  # an attempt that trained this long judged the run (past warm-up)
MAX_CHECKED_SETTINGS = 256  # recorded settings tried one by one (each builds an engine)


def _accepted(settings: Settings) -> bool:
    try:
        engine_from_settings(settings, "rank")
    except ConfigError:
        return False
    return True


def _ordered(attempts: list[tuple[list[Engine], Engine]]) -> list[Finding]:
    """Every attempt's findings, the newest attempt's standing for the run: an earlier
    attempt's finding the same condition (``_condition``) shows again later gives way
    to the later one, and one still active when its attempt ended was ended by the
    restart (resolved) once a later attempt trained long enough to be judged
    (``JUDGED_S``): a restart that died at start-up resolves nothing."""
    later: set[str] = set()
    judged = False  # a later attempt trained long enough to be judged
    findings: list[Finding] = []
    restarted: dict[int, Ending] = {}  # how each rank's log of the next attempt ended
    for rank_engines, job_engine in reversed(attempts):
        mine = [f for e in [*rank_engines, job_engine] for f in e.findings.values()
                if _condition(f, len(rank_engines)) not in later]
        endings = {r: ending for e in rank_engines for r, ending in e.endings.items()}
        for f in mine:
            carried = _fitted_by_restart(f, endings, restarted)
            findings.append(carried or (replace(f, state="resolved")
                                        if judged and f.state == "active" else f))
        later.update(_condition(f, len(rank_engines)) for f in mine)
        judged = judged or max((e.trained_s for e in rank_engines), default=0.0) >= JUDGED_S
        restarted = endings
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.first_seen, f.detector))


def _fitted_by_restart(f: Finding, endings: dict[int, Ending],
                       restarted: dict[int, Ending]) -> Finding | None:
    """A memory finding of a rank an OOM killed, which the next attempt answered by
    fitting the job to the card (``fits_on_paper.restarted_to_fit``): not ended by the
    restart, but standing, with what the restart did; else None."""
    if f.detector != "fits_on_paper" or f.state != "active" or len(f.ranks) != 1:
        return None
    rank = f.ranks[0]
    before, after = endings.get(rank), restarted.get(rank)
    fitted = restarted_to_fit(before, after) if before and after else None
    if fitted is None:
        return None
    evidence, words = fitted
    return replace(f, evidence={**evidence, **f.evidence},
                   summary=f"{f.summary.rstrip('.')}; {words}.")


def _condition(f: Finding, ranks: int) -> str:
    """What a finding is of, across attempts: its fingerprint, or for one that names
    every rank of its attempt, its detector (a job restarted on fewer or more ranks
    that shows the same job-wide condition again shows that condition, not another)."""
    return f"{f.detector}|every rank" if ranks > 1 and len(f.ranks) >= ranks else f.fingerprint
