"""What the job-scope detectors know of a rank in a replay: its meta line, steps and events
as they are, and its samples digested per step (``StepDigest``: count, sum, least,
greatest, first and last reading of each key those detectors read, per GPU).

A replay feeds its job engine digests rather than every rank's samples, so the job pass
of a parallel replay merges what its workers digested instead of reading every log
(``replay``). A digest closes at each step, and between steps once its readings span
``DIGEST_SPAN_S`` (a long step, an eval, a save, a hang). Its readings count at its
close: a window over digests holds those that closed at or after its start, as a
window over steps holds the steps that ended there. At a log's end, the readings since
its last digest close in one more (``flush``).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from gpuwatch.records import Event, Meta, Record, Sample, Step
from gpuwatch.series import Figure, combined, combined_rise
from gpuwatch.telemetry import MAX_GROUPS, MAX_SAMPLES, OPEN_SAVE_KEY, Telemetry

AGENT_CPU_KEY = "agent_cpu_seconds_total"
# The sample keys job-scope detectors read, by source (a test holds them to it).
JOB_READINGS: dict[str, tuple[str, ...]] = {
    "nvml": ("gpu_utilization_ratio", "gpu_power_watts", "gpu_tensor_active_ratio",
             "gpu_dram_active_ratio", "gpu_pcie_tx_bytes_per_second",
             "gpu_clock_event_reasons", "gpu_process_memory_bytes"),
    # the job's memory, for the card a move must hold (``context.memory_held``)
    "allocator": ("allocator_allocated_peak_bytes", "allocator_reserved_peak_bytes",
                  "allocator_reserved_bytes"),
    "nccl": ("nccl_bus_bytes_total", "nccl_collective_seconds_total"),
    # every agent sample has the first; the second while a save is open (``open_save``);
    # the waits, and the CPU of the process and its loader workers, tell a rank working
    # alone between steps from one waiting (``hang.working_off_step``)
    "agent": (AGENT_CPU_KEY, OPEN_SAVE_KEY, "open_data_seconds", "open_collective_seconds"),
    "host": ("process_cpu_cores", "workers", "workers_cpu_ratio"),
}
JOB_SOURCES = frozenset(JOB_READINGS)
DIGESTED_KEYS = max(map(len, JOB_READINGS.values()))  # (the most of one source)
DIGEST_SPAN_S = 10.0  # while no step comes, a digest closes once its readings span this

ReadingKey = tuple[str, int | None, str]  # (source, GPU, key)


class ReadingSummary(NamedTuple):
    """One key's readings on one GPU within one digest: how many (``n``), their sum,
    least, greatest, first and last (in the key's unit), and when the last was taken
    (Unix s)."""

    n: int
    total: float
    low: float
    high: float
    first: float
    last: float
    last_t: float


class StepDigest(NamedTuple):
    """One rank's step (None: a span without one) and the readings since its last digest,
    closed at ``t`` (Unix s)."""

    rank: int
    t: float
    step: Step | None
    readings: dict[ReadingKey, ReadingSummary]


JobInput = Meta | Event | StepDigest


class StepDigester:
    """Digests one rank's records in their order: ``add`` returns what the job engine
    takes of a record (a meta line or event as it is, the digest a step closes), else
    None; ``flush``, at the end, the digest of the readings still open."""

    def __init__(self) -> None:
        # (source, GPU) -> key -> [count, total, low, high, first, last, last_t]
        self._open: dict[tuple[str, int | None], dict[str, list[float]]] = {}
        self._since = 0.0  # the first open reading's time
        self._newest = 0.0  # the newest open reading's time
        self._rank = 0  # of the newest open reading

    def add(self, r: Record) -> JobInput | None:
        if type(r) is Sample:
            keys = JOB_READINGS.get(r.source)
            if keys is None:
                return None
            closed = (self._close(r.rank, self._newest, None)
                      if self._open and r.t - self._since > DIGEST_SPAN_S else None)
            self._take(r, keys)
            return closed
        if isinstance(r, Step):
            return self._close(r.rank, r.t, r)
        if isinstance(r, Meta):
            self._open = {}  # (a restart logged in the same file: a new timeline)
            return r
        return r if isinstance(r, Event) else None

    def flush(self) -> StepDigest | None:
        """The readings since the last digest, closed at the newest of them (a log's
        end: none is left unjudged); None if there are none."""
        return self._close(self._rank, self._newest, None) if self._open else None

    def _take(self, r: Sample, keys: tuple[str, ...]) -> None:
        values, t = r.values, r.t
        group = self._open.get((r.source, r.gpu))
        if group is None:
            if len(self._open) >= MAX_GROUPS:
                return  # (as a rank's telemetry leaves them out)
            if not self._open:
                self._since = t
            group = self._open[(r.source, r.gpu)] = {}
        for key in keys:
            v = values.get(key)
            if v is None:
                continue
            acc = group.get(key)
            if acc is None:
                group[key] = [1, v, v, v, v, v, t]
                continue
            acc[0] += 1
            acc[1] += v
            if v < acc[2]:
                acc[2] = v
            if v > acc[3]:
                acc[3] = v
            acc[5] = v
            acc[6] = t
        self._newest = t
        self._rank = r.rank

    def _close(self, rank: int, t: float, step: Step | None) -> StepDigest:
        readings = {(source, gpu, key): ReadingSummary._make(a)  # (its count: an int)
                    for (source, gpu), group in self._open.items() for key, a in group.items()}
        self._open = {}
        return StepDigest(rank, t, step, readings)


class ReadingSeries:
    """One key's digested readings on one GPU, oldest first, as (close time, summary).
    A window is read newest first: it holds a few digests (one a step, and only those
    with readings: about as many as the seconds of samples it spans, or its steps)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: deque[tuple[float, ReadingSummary]] = deque(maxlen=MAX_SAMPLES)

    def append(self, t: float, r: ReadingSummary) -> None:
        self._entries.append((t, r))

    def figure(self, since: float) -> Figure | None:
        """The readings of the digests that closed at or after ``since``; None if none."""
        count, total, low, high = 0, 0.0, float("inf"), float("-inf")
        for t, r in reversed(self._entries):
            if t < since:
                break
            count, total = count + r.n, total + r.total
            low, high = min(low, r.low), max(high, r.high)
        if not count:
            return None
        return Figure(count, total, low, high, self._entries[-1][1].last)

    def newest(self) -> tuple[float, float] | None:
        """(time, value) of the newest reading, if any."""
        if not self._entries:
            return None
        r = self._entries[-1][1]
        return r.last_t, r.last

    def rise(self, since: float) -> tuple[float, float] | None:
        """(base, newest) of a counter: the last reading before the window, else the
        first reading kept; None if there are none."""
        if not self._entries:
            return None
        base = self._entries[0][1].first
        for t, r in reversed(self._entries):
            if t < since:
                base = r.last
                break
        return base, self._entries[-1][1].last


class DigestRank(Telemetry):
    """A rank as a replay's job engine knows it: its meta line and events taken as
    ``Telemetry`` takes them, its steps and samples as digests (``add_digest``). The
    sample questions the job-scope detectors ask (figures, counter rises, clock-event
    reasons) are answered from the digests, as ``Telemetry`` answers them from samples;
    it holds none, and any other question of samples, or of a key not digested, raises
    LookupError (a detector's error, counted by its engine: never a silent absence)."""

    def __init__(self, rank: int = 0) -> None:
        super().__init__(rank)
        self._digested: dict[ReadingKey, ReadingSeries] = {}

    def add_digest(self, d: StepDigest) -> None:
        """Take a digest: its step as ``add_one`` takes a step, its readings into the
        digested series; a step's mean power into the power drawn while stepping
        (``working_power_w``), as ``Telemetry`` takes the samples taken in steps."""
        if d.step is not None:
            self.add_one(d.step)
            power = [r for (src, _, key), r in d.readings.items()
                     if src == "nvml" and key == "gpu_power_watts" and r.n]
            if power:
                self._stepping_power.append(sum(r.total for r in power) / sum(
                    r.n for r in power))
        for key, reading in d.readings.items():
            series = self._digested.get(key)
            if series is None:
                if len(self._digested) >= MAX_GROUPS * DIGESTED_KEYS:
                    continue  # (as a rank's telemetry leaves them out)
                series = self._digested[key] = ReadingSeries()
            series.append(d.t, reading)
        if d.t > self.clock:
            self.clock = d.t

    def _series_of(self, source: str, key: str) -> list[tuple[int | None, ReadingSeries]]:
        if key not in JOB_READINGS.get(source, ()):
            raise LookupError(f"{source} {key} is not digested (step_digest.JOB_READINGS)")
        return [(gpu, series) for (src, gpu, k), series in self._digested.items()
                if src == source and k == key]

    def _no_samples(self) -> LookupError:
        return LookupError("a digested rank holds no samples: ask for a digested figure")

    def latest(self, source: str, gpu: int | None = None) -> Sample | None:
        raise self._no_samples()

    def gpu_samples(self) -> list[Sample]:
        raise self._no_samples()

    def samples_since(self, source: str, since: float) -> list[Sample]:
        raise self._no_samples()

    def uninterrupted(self, source: str, key: str, since: float
                      ) -> tuple[int, float, tuple[int, ...]]:
        raise self._no_samples()

    def figure(self, source: str, key: str, since: float) -> Figure | None:
        return combined((gpu, f, newest[0]) for gpu, series in self._series_of(source, key)
                        if (f := series.figure(since)) is not None
                        and (newest := series.newest()) is not None)

    def counter_rise(self, source: str, key: str, since: float) -> float:
        return combined_rise(series.rise(since) for _, series in self._series_of(source, key))

    def open_save(self) -> tuple[float, float] | None:
        """As ``Telemetry.open_save``: the newest agent reading names a save still open
        only if it is also the newest agent reading of all."""
        agent = self._digested.get(("agent", None, AGENT_CPU_KEY))
        save = self._digested.get(("agent", None, OPEN_SAVE_KEY))
        newest, open_ = agent.newest() if agent else None, save.newest() if save else None
        if newest is None or open_ is None or open_[0] != newest[0] or open_[1] <= 0:
            return None
        return open_

    def clock_event_reasons(self) -> list[int]:
        newest = sorted((gpu or 0, series.newest()) for gpu, series
                        in self._series_of("nvml", "gpu_clock_event_reasons"))
        return [int(reading[1]) for _, reading in newest if reading is not None]
