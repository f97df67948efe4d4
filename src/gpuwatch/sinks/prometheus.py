"""The Prometheus endpoint: a pull-based collector over the agent's latest state.

The agent thread folds each batch of records into ``ExporterState`` (a lock held
for microseconds); a scrape builds metric families from a copy of it, driven by
the metric catalogue (``metrics.toml``). Nothing is set per step on the hot path.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import socket
import threading
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gpuwatch.probes.nvml import CLOCK_EVENT_REASONS
from gpuwatch.records import Finding, Record, Sample, Step

log = logging.getLogger("gpuwatch")

BASE_LABELS = ("job", "run", "host", "rank", "local_rank")
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 120.0)
PHASES = ("data", "compute", "optimizer", "checkpoint", "collective", "recompute", "other")
REQUEST_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 64 * 1024
HEALTH = ("faults", "exporter")  # catalogue sources exempt from the series cap
STEP_TOTALS = ("samples", "tokens", "checkpoint_bytes", "collective_bytes", "act_ckpt_calls")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One catalogue entry: ``source`` and ``key`` say where its value comes from."""

    name: str
    type: str
    source: str
    key: str
    labels: tuple[str, ...]
    help: str


@cache
def catalogue() -> tuple[MetricSpec, ...]:
    text = resources.files("gpuwatch.sinks").joinpath("metrics.toml").read_text()
    return tuple(MetricSpec(name=m["name"], type=m["type"], source=m["source"], key=m["key"],
                            labels=tuple(m["labels"]), help=m["help"])
                 for m in tomllib.loads(text)["metric"])


def metrics_markdown() -> str:
    """docs/metrics.md: the catalogue as a table (``gpuwatch metrics`` prints it)."""
    lines = ["# Metrics", "",
             "Generated from `src/gpuwatch/sinks/metrics.toml` by `gpuwatch metrics`: do not edit.",
             "", f"Every series has the labels {', '.join(f'`{k}`' for k in BASE_LABELS)}. "
             "A metric the hardware does not offer is absent, never 0.", "",
             "| metric | type | labels | source | meaning |", "| --- | --- | --- | --- | --- |"]
    for m in catalogue():
        labels = ", ".join(f"`{k}`" for k in m.labels) or "-"
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {m.source} | {m.help} |")
    return "\n".join(lines) + "\n"


class ExporterState:
    """What the next scrape reports. ``update`` runs on the agent thread, ``families``
    on the HTTP server's; they share one short lock."""

    def __init__(self, labels: Mapping[str, str], max_series: int = 5000) -> None:
        self.labels = dict(labels)
        self.max_series = max_series
        self.dropped = 0
        self.version = 0  # bumped by every update: the exporter renders again
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, int | None], dict[str, float]] = {}
        self._buckets = [0] * (len(STEP_BUCKETS) + 1)
        self._step_sum = 0.0
        self._phases = dict.fromkeys(PHASES, 0.0)
        self._totals = dict.fromkeys(STEP_TOTALS, 0.0)
        self._findings: list[Finding] = []
        self._faults: dict[str, int] = {}

    def update(self, records: Iterable[Record], active: list[Finding],
               faults: Mapping[str, int]) -> None:
        with self._lock:
            for r in records:
                if isinstance(r, Step):
                    self._add_step(r)
                elif isinstance(r, Sample):
                    self._latest[(r.source, r.gpu)] = r.values
            self._findings = list(active)
            self._faults = dict(faults)
            self.version += 1

    def _add_step(self, s: Step) -> None:
        self._buckets[bisect.bisect_left(STEP_BUCKETS, s.wall_s)] += 1
        self._step_sum += s.wall_s
        p = self._phases
        p["data"] += s.data_s
        p["compute"] += s.compute_s - s.collective_s - s.recompute_s
        p["optimizer"] += s.optimizer_s
        p["checkpoint"] += s.checkpoint_s
        p["collective"] += s.collective_s
        p["recompute"] += s.recompute_s
        p["other"] += s.other_s
        t = self._totals
        t["samples"] += s.samples
        t["tokens"] += s.tokens
        t["checkpoint_bytes"] += s.checkpoint_bytes
        t["collective_bytes"] += s.collective_bytes
        t["act_ckpt_calls"] += s.act_ckpt_calls

    def families(self) -> list[Metric]:
        """The metric families of the catalogue, from a consistent copy of the state."""
        with self._lock:
            snap = _Snapshot(latest=dict(self._latest), buckets=list(self._buckets),
                             step_sum=self._step_sum, phases=dict(self._phases),
                             totals=dict(self._totals), findings=list(self._findings),
                             faults=dict(self._faults), dropped=self.dropped)
        budget = _Budget(self.max_series)
        health = _Budget(10_000)  # gpuwatch's own health series are never capped away
        out = [f for spec in catalogue()
               if (f := self._family(spec, snap, health if spec.source in HEALTH else budget))]
        self.dropped += budget.dropped
        return out

    def _family(self, spec: MetricSpec, snap: _Snapshot, budget: _Budget) -> Metric | None:
        names = [*BASE_LABELS, *spec.labels]
        base = [self.labels.get(k, "") for k in BASE_LABELS]
        if spec.type == "histogram":
            hist = HistogramMetricFamily(spec.name, spec.help, labels=names)
            for _, buckets in _series(spec, snap):
                if budget.take(len(buckets) + 2):  # buckets, _sum and _count
                    hist.add_metric(base, buckets, snap.step_sum)
            return hist if hist.samples else None
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(spec.name, spec.help, labels=names) if spec.type == "counter"
            else GaugeMetricFamily(spec.name, spec.help, labels=names))
        for extra, value in _series(spec, snap):
            if budget.take(1):
                family.add_metric([*base, *extra], value)
        return family if family.samples else None


@dataclass
class _Snapshot:
    latest: dict[tuple[str, int | None], dict[str, float]]
    buckets: list[int]
    step_sum: float
    phases: dict[str, float]
    totals: dict[str, float]
    findings: list[Finding]
    faults: dict[str, int]
    dropped: int


class _Budget:
    """The series cap: each series takes from it; what does not fit is counted."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.dropped = 0

    def take(self, n: int) -> bool:
        if n > self.left:
            self.dropped += n
            return False
        self.left -= n
        return True


def _series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    """(extra label values, value) for each series of ``spec``."""
    if spec.source in ("nvml", "allocator", "host", "agent"):
        for (source, gpu), values in sorted(snap.latest.items(), key=lambda kv: str(kv[0])):
            if source != spec.source or spec.key not in values:
                continue
            gpu_label = [] if "gpu" not in spec.labels else [str(gpu) if gpu is not None else ""]
            if spec.name == "gpuwatch_gpu_clock_event_active":
                bits = int(values[spec.key])
                for bit, reason in CLOCK_EVENT_REASONS.items():
                    yield [*gpu_label, reason], float(bool(bits & bit))
            else:
                yield gpu_label, values[spec.key]
    elif spec.source == "steps":
        count = sum(snap.buckets)
        if spec.key == "wall_s":
            cumulative, running = [], 0
            for bound, n in zip([*map(str, STEP_BUCKETS), "+Inf"], snap.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            yield [], cumulative
        elif spec.key == "phases":
            for phase in PHASES:
                yield [phase], max(snap.phases[phase], 0.0)
        elif spec.key == "count":
            yield [], float(count)
        else:
            yield [], snap.totals[spec.key]
    elif spec.source == "findings":  # one series per label set (the best projection)
        best: dict[tuple[str, ...], float] = {}
        for f in snap.findings:
            if spec.key == "active":
                best[(f.detector, f.verdict, f.severity)] = 1.0
            elif f.projection and spec.key in f.projection:
                key, value = (f.projection["target"],), float(f.projection[spec.key])
                best[key] = max(best.get(key, value), value)
        for labels, value in sorted(best.items()):
            yield list(labels), value
    elif spec.source == "faults":
        for component, n in sorted(snap.faults.items()):
            yield [component], float(n)
    elif spec.source == "exporter":
        yield [], float(snap.dropped)


class _Collector:
    def __init__(self, state: ExporterState, on_error: Any) -> None:
        self._state = state
        self._on_error = on_error

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._state.families()
        except Exception as exc:  # a scrape gets what there is; the job never notices
            self._on_error(exc)


def _response(status: bytes, body: bytes, content_type: bytes = b"text/plain",
              head: bool = False) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + (b"" if head else body))


class Exporter:
    """Serves ``/metrics`` for one process on ``port`` (0: any free port).

    The text is rendered once per state change (the agent updates it every
    flush) and served from cache in between; the server is a minimal one-thread
    HTTP/1.1 responder (a request line and headers in, cached bytes out), so
    frequent scrapes cost the training process almost nothing.
    """

    def __init__(self, state: ExporterState, on_error: Any) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(state, on_error))
        self._on_error = on_error
        self.port: int | None = None
        self.renders = 0
        self._listener: socket.socket | None = None
        self._cache: tuple[int, bytes] = (-1, b"")
        self._render_lock = threading.Lock()

    def render(self) -> bytes:
        """The exposition text of the current state (rendered again only if it changed)."""
        with self._render_lock:
            version = self.state.version
            if self._cache[0] != version:
                self._cache = (version, generate_latest(self.registry))
                self.renders += 1
            return self._cache[1]

    def _respond(self, conn: socket.socket) -> None:
        """One request, one response, then close (HTTP/1.1 with Connection: close)."""
        conn.settimeout(REQUEST_TIMEOUT_S)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            conn.sendall(_response(b"405 Method Not Allowed", b"GET /metrics\n"))
        elif path not in (b"/", b"/metrics"):
            conn.sendall(_response(b"404 Not Found", b"see /metrics\n"))
        else:
            try:
                body = self.render()
            except Exception as exc:  # counted, never a traceback in the training log
                self._on_error(exc)
                conn.sendall(_response(b"500 Internal Server Error", b"exporter error\n"))
                return
            conn.sendall(_response(b"200 OK", body, CONTENT_TYPE_LATEST.encode(),
                                   head=method == b"HEAD"))

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            with conn, contextlib.suppress(OSError):  # a scraper gone mid-request
                self._respond(conn)

    def start(self, addr: str, port: int, tries: int = 1) -> bool:
        """Bind ``port`` (or, when taken, the next of ``tries`` ports up) and serve;
        False (warned once) when none is free."""
        for candidate in range(port, min(port + max(tries, 1), 65536)):
            try:
                listener = socket.create_server((addr, candidate), backlog=16)
                break
            except OSError as exc:
                error = exc
        else:
            log.warning("gpuwatch: metrics endpoint %s:%d unavailable (%s); training goes on "
                        "without it", addr, port, error.strerror or error)
            return False
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._serve, args=(listener,), name="gpuwatch-metrics",
                         daemon=True).start()
        return True

    def stop(self) -> None:
        """Close the endpoint; a scrape in flight finishes or fails on its own."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
