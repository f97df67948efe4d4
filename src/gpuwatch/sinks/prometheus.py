"""The Prometheus endpoint: a pull-based collector over the agent's latest state.

The agent thread folds each batch of records into ``ExporterState`` (a lock held
for microseconds); a scrape builds metric families from a copy of it, driven by
the metric catalogue (``metrics.toml``). Nothing is set per step on the hot path.
"""

from __future__ import annotations

import bisect
import contextlib
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
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

from gpuwatch.detection.projection import PCIE_BYTES_PER_S, identify
from gpuwatch.detection.projection import catalogue as gpu_catalogue
from gpuwatch.faults import log
from gpuwatch.records import Event, Finding, Record, Sample, Step
from gpuwatch.telemetry import PROGRESS_EVENTS
from gpuwatch.vocabulary import CLOCK_EVENT_REASONS, PARTS, THROTTLE_POLICIES, split_step

# Never `job` or `instance`: Prometheus owns those (the scrape job, the target).
BASE_LABELS = ("training_job", "run", "host", "rank", "local_rank")
# Step-time buckets: 1 ms to ~2 min, each 2^(1/3) (26 %) above the last, so a quantile
# interpolated within one bucket is off by at most 26 % of its value.
STEP_BUCKETS = tuple(float(f"{0.001 * 2 ** (k / 3):.4g}") for k in range(52))
CLIENT_DEADLINE_S = 5.0  # a client has this long, all told, to send a request and read the reply
MAX_CLIENTS = 16  # clients served at once; a newcomer waits for a reader's place, else 503
READER_GRACE_S = 0.2  # a client still sending its request after this may lose its place
EVICT_WAIT_S = 1.0  # how long a newcomer waits for a place a reader gives up
MAX_REQUEST_BYTES = 16 * 1024
LINGER_BYTES = 1 << 20  # read and dropped after refusing a request, at most
HEALTH = ("faults", "exporter", "run")  # catalogue sources exempt from the series cap
STEP_TOTALS = ("samples", "tokens", "checkpoint_bytes", "collective_bytes", "act_ckpt_calls",
               "collective_timed_s", "collective_timed_bytes")
SAMPLE_SOURCES = ("nvml", "allocator", "host", "agent", "collectives")  # Sample.source
DEVICE_SOURCES = ("nvml",)  # left to dcgm-exporter when exporter.device_metrics is off


def node_name(environ: Mapping[str, str], hostname: str) -> str:
    """The node's name as dcgm-exporter reports it (``Hostname``): ``NODE_NAME`` (set from
    the downward API's spec.nodeName), else the host name (in a pod: the pod's name)."""
    return environ.get("NODE_NAME") or hostname


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
             "", f"Every series has the labels {', '.join(f'`{k}`' for k in BASE_LABELS)}; "
             "Prometheus adds `job` and `instance` (and, on Kubernetes, `namespace`, `pod`, "
             "`container`). `gpu` is the NVML index of the GPU on its node, as in "
             "dcgm-exporter. A metric the hardware does not offer is absent, never 0.", "",
             "| metric | type | labels | source | meaning |", "| --- | --- | --- | --- | --- |"]
    for m in catalogue():
        labels = ", ".join(f"`{k}`" for k in m.labels) or "-"
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {m.source} | {m.help} |")
    return "\n".join(lines) + "\n"


class ExporterState:
    """What the next scrape reports. ``update`` runs on the agent thread, ``families``
    on the HTTP server's; they share one short lock.

    ``labels`` holds the values of BASE_LABELS; ``hostname`` is the node's name for
    ``gpuwatch_gpu_info``; ``device_metrics=False`` leaves the NVML series out.
    """

    def __init__(self, labels: Mapping[str, str], max_series: int = 5000, *,
                 hostname: str = "", device_metrics: bool = True,
                 started: float | None = None) -> None:
        self.labels = dict(labels)
        self.max_series = max_series
        self.hostname = hostname or self.labels.get("host", "")
        self.device_metrics = device_metrics
        self.dropped = 0
        self.version = 0  # bumped by every update: the exporter renders again
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, int | None], dict[str, float]] = {}
        self._buckets = [0] * (len(STEP_BUCKETS) + 1)
        self._step_sum = 0.0
        self._phases = dict.fromkeys(PARTS, 0.0)
        self._totals = dict.fromkeys(STEP_TOTALS, 0.0)
        self._findings: list[Finding] = []
        self._faults: dict[str, int] = {}
        self._devices: dict[int, dict[str, Any]] = {}  # NVML index -> topology device
        self._job_gpus: list[int] = []
        self._run = {"start": time.time() if started is None else started, "progress": 0.0}

    def update(self, records: Iterable[Record], active: list[Finding],
               faults: Mapping[str, int]) -> None:
        with self._lock:
            for r in records:
                if isinstance(r, Step):
                    self._add_step(r)
                    self._run["progress"] += 1
                elif isinstance(r, Sample):
                    self._latest[(r.source, r.gpu)] = r.values
                elif isinstance(r, Event) and r.name == "topology":
                    self._add_topology(r.data)
                elif isinstance(r, Event) and r.name in PROGRESS_EVENTS:
                    self._run["progress"] += 1
            self._findings = list(active)
            self._faults = dict(faults)
            self.version += 1

    def finish(self, now: float) -> int:
        """Mark the run ended on its own (``gpuwatch_run_end_time_seconds``); returns the
        state version that carries the marker."""
        with self._lock:
            self._run["end"] = now
            self.version += 1
            return self.version

    def _add_topology(self, data: Mapping[str, Any]) -> None:
        devices = data.get("devices")
        if isinstance(devices, list):
            self._devices = {d["index"]: d for d in devices
                             if isinstance(d, dict) and isinstance(d.get("index"), int)}
        gpus = data.get("job_gpus")
        if isinstance(gpus, list):
            self._job_gpus = [g for g in gpus if isinstance(g, int)]

    def _add_step(self, s: Step) -> None:
        self._buckets[bisect.bisect_left(STEP_BUCKETS, s.wall_s)] += 1
        self._step_sum += s.wall_s
        p = self._phases
        for part, seconds in zip(PARTS, split_step(s), strict=True):
            p[part] += seconds
        t = self._totals
        t["samples"] += s.samples
        t["tokens"] += s.tokens
        t["checkpoint_bytes"] += s.checkpoint_bytes
        t["collective_bytes"] += s.collective_bytes
        t["act_ckpt_calls"] += s.act_ckpt_calls
        t["collective_timed_s"] += s.collective_timed_s
        t["collective_timed_bytes"] += s.collective_timed_bytes

    def families(self) -> list[Metric]:
        """The metric families of the catalogue, from a consistent copy of the state."""
        with self._lock:
            snap = _Snapshot(latest=dict(self._latest), buckets=list(self._buckets),
                             step_sum=self._step_sum, phases=dict(self._phases),
                             totals=dict(self._totals), findings=list(self._findings),
                             faults=dict(self._faults), dropped=self.dropped,
                             devices=dict(self._devices), job_gpus=list(self._job_gpus),
                             run=dict(self._run), hostname=self.hostname,
                             rank=self.labels.get("rank", ""))
        budget = _Budget(self.max_series)
        health = _Budget(10_000)  # gpuwatch's own health series are never capped away
        out = [f for spec in catalogue()
               if (self.device_metrics or spec.source not in DEVICE_SOURCES)
               and (f := self._family(spec, snap, health if spec.source in HEALTH else budget))]
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
    devices: dict[int, dict[str, Any]]
    job_gpus: list[int]
    run: dict[str, float]
    hostname: str
    rank: str


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
    """(extra label values, value) for each series of ``spec``, by its source."""
    series = _sample_series if spec.source in SAMPLE_SOURCES else _BY_SOURCE.get(spec.source)
    if series is not None:
        yield from series(spec, snap)


def _finding_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    """One series per label set (the best projection)."""
    best: dict[tuple[str, ...], float] = {}
    for f in snap.findings:
        if spec.key == "active":
            subject = rank_ranges(f.ranks) or snap.rank
            best[(f.detector, f.verdict, f.severity, subject)] = 1.0
        elif f.projection and spec.key in f.projection:
            key, value = (f.projection["target"],), float(f.projection[spec.key])
            best[key] = max(best.get(key, value), value)
    for labels, value in sorted(best.items()):
        yield list(labels), value


def _fault_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    for component, n in sorted(snap.faults.items()):
        yield [component], float(n)


def _exporter_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    yield [], float(snap.dropped)


def _run_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    if spec.key in snap.run:
        yield [], snap.run[spec.key]


def rank_ranges(ranks: Iterable[int]) -> str:
    """Ranks as a short label value: ``[0, 1, 2, 3, 7]`` -> ``"0-3,7"``."""
    parts: list[str] = []
    run: list[int] = []
    for r in sorted(set(ranks)):
        if run and r != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(r)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _sample_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], float]]:
    for (source, gpu), values in sorted(snap.latest.items(), key=lambda kv: str(kv[0])):
        if source != spec.source:
            continue
        gpu_label = ["" if gpu is None else str(gpu)] if "gpu" in spec.labels else []
        if spec.key == "gpu_clock_event_reasons" and spec.key in values:
            bits = int(values[spec.key])
            for bit, reason in CLOCK_EVENT_REASONS.items():
                yield [*gpu_label, reason], float(bool(bits & bit))
        elif spec.key == "gpu_throttle_seconds_total":
            for reason in THROTTLE_POLICIES.values():
                key = f"gpu_throttle_{reason}_seconds_total"
                if key in values:
                    yield [*gpu_label, reason], values[key]
        elif spec.key in values:
            yield gpu_label, values[spec.key]


def _topology_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], float]]:
    for index in snap.job_gpus:
        d = snap.devices.get(index)
        if d is None:
            continue
        if spec.key == "info":  # dcgm-exporter's label names and spellings
            yield [str(index), str(d.get("uuid", "")), str(d.get("name", "")),
                   str(d.get("pci_bus_id", "")), snap.hostname], 1.0
        elif spec.key == "link_bandwidth" and (link := link_bandwidth(d)) is not None:
            yield [str(index), link[0]], link[1]


def link_bandwidth(device: Mapping[str, Any]) -> tuple[str, float] | None:
    """("nvlink" | "pcie", bytes/s one direction) for a topology device: NVLink when links
    are up and the catalogue knows the model, else the PCIe link as trained now."""
    if device.get("nvlink_links_active"):
        gpu = identify(device.get("name"), gpu_catalogue())
        if gpu is not None and gpu.nvlink_bandwidth:
            return "nvlink", gpu.nvlink_bandwidth
    gen, width = device.get("pcie_generation"), device.get("pcie_width")
    if isinstance(gen, int) and isinstance(width, int) and gen in PCIE_BYTES_PER_S:
        return "pcie", PCIE_BYTES_PER_S[gen] * width / 16
    return None


def _step_series(spec: MetricSpec, snap: _Snapshot) -> Iterator[tuple[list[str], Any]]:
    if spec.key == "wall_s":
        cumulative, running = [], 0
        for bound, n in zip([*map(str, STEP_BUCKETS), "+Inf"], snap.buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield [], cumulative
    elif spec.key == "phases":
        for phase in PARTS:
            yield [phase], max(snap.phases[phase], 0.0)
    elif spec.key == "count":
        yield [], float(sum(snap.buckets))
    else:
        yield [], snap.totals[spec.key]


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
    flush) and served from cache in between. The server is a minimal HTTP/1.1
    responder (a request line and headers in, cached bytes out): each client is
    served on its own short-lived thread and has CLIENT_DEADLINE_S in all to send
    its request and take the reply, so a slow or hostile client never holds up a
    scrape; at most MAX_CLIENTS are served at once. When all are taken, the client
    that has waited longest without sending its whole request gives its place up to
    the newcomer (a scraper sends its request at once: idle connections held open,
    slow-loris style, never shut scrapes out); with none such within ``EVICT_WAIT_S``,
    503.
    """

    def __init__(self, state: ExporterState, on_error: Any) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(state, on_error))
        self._on_error = on_error
        self.port: int | None = None
        self.renders = 0
        self.rejected = 0  # clients turned away: too many at once, malformed, too slow
        self._listener: socket.socket | None = None
        self._cache: tuple[int, bytes] = (-1, b"")
        self._render_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._reading: dict[socket.socket, float] = {}  # clients yet to send their request
        self._reading_lock = threading.Lock()
        self._served = threading.Condition()
        self._served_version = -1  # the newest state version a scrape has taken in full
        self._scraped = False  # a scrape has asked for /metrics (set before it is answered)

    def render(self) -> bytes:
        """The exposition text of the current state (rendered again only if it changed)."""
        return self._render()[1]

    def _render(self) -> tuple[int, bytes]:
        with self._render_lock:
            version = self.state.version
            if self._cache[0] != version:
                self._cache = (version, generate_latest(self.registry))
                self.renders += 1
            return self._cache

    def _read_request(self, conn: socket.socket, deadline: float) -> bytes | None:
        """The request line and headers, or None when the client is too slow, too big
        or gone (it is answered where it can still read), or gave its place up."""
        with self._reading_lock:
            self._reading[conn] = time.monotonic()
        try:
            return self._request_of(conn, deadline)
        finally:
            with self._reading_lock:
                self._reading.pop(conn, None)

    def _request_of(self, conn: socket.socket, deadline: float) -> bytes | None:
        request = b""
        while b"\r\n\r\n" not in request:
            if len(request) > MAX_REQUEST_BYTES:
                self._reject(conn, b"431 Request Header Fields Too Large", deadline)
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                self._reject(conn, b"408 Request Timeout", deadline + 0.2)
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                self._reject(conn, b"408 Request Timeout", time.monotonic() + 0.2)
                return None
            if not chunk:
                return None
            request += chunk
        return request

    def _reject(self, conn: socket.socket, status: bytes, deadline: float) -> None:
        """Answer ``status``, then a lingering close: what the client still sends is read
        and dropped for a moment, so the close does not reset the answer away."""
        self.rejected += 1
        self._send(conn, _response(status, status + b"\n"), deadline)
        conn.shutdown(socket.SHUT_WR)
        linger = min(deadline, time.monotonic() + 0.5)
        drained = 0
        while drained < LINGER_BYTES and (left := linger - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(65536)
            if not chunk:
                return
            drained += len(chunk)

    @staticmethod
    def _send(conn: socket.socket, data: bytes, deadline: float) -> None:
        conn.settimeout(max(deadline - time.monotonic(), 0.01))  # the whole sendall
        conn.sendall(data)

    def _respond(self, conn: socket.socket, deadline: float) -> None:
        """One request, one response, then close (HTTP/1.1 with Connection: close)."""
        request = self._read_request(conn, deadline)
        if request is None:
            return
        line = request.split(b"\r\n", 1)[0].split(b" ")
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            self._reject(conn, b"400 Bad Request", deadline)
            return
        method, target = line[0], line[1]
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._send(conn, _response(b"405 Method Not Allowed", b"GET /metrics\n"), deadline)
        elif path not in (b"/", b"/metrics"):
            self._send(conn, _response(b"404 Not Found", b"see /metrics\n"), deadline)
        else:
            # (a scraper reads /metrics: a person's curl of / or a liveness probe is none)
            self._scraped = self._scraped or (method == b"GET" and path == b"/metrics")
            try:
                version, body = self._render()
            except Exception as exc:  # counted, never a traceback in the training log
                self._on_error(exc)
                self._send(conn, _response(b"500 Internal Server Error", b"exporter error\n"),
                           deadline)
                return
            self._send(conn, _response(b"200 OK", body, CONTENT_TYPE_LATEST.encode(),
                                       head=method == b"HEAD"), deadline)
            if method == b"GET":
                with self._served:
                    self._served_version = max(self._served_version, version)
                    self._served.notify_all()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn, contextlib.suppress(OSError):  # a client gone or too slow
                self._respond(conn, time.monotonic() + CLIENT_DEADLINE_S)
        finally:
            self._slots.release()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False) and not self._make_room():
                with conn, contextlib.suppress(OSError):
                    self.rejected += 1
                    conn.setblocking(False)  # never wait on this client
                    conn.send(_response(b"503 Service Unavailable", b"too many clients\n"))
                continue
            try:
                threading.Thread(target=self._client, args=(conn,), daemon=True,
                                 name="gpuwatch-metrics-client").start()
            except RuntimeError:  # no thread to be had: drop this client, keep serving
                self._slots.release()
                conn.close()

    def _make_room(self) -> bool:
        """A place for a newcomer when all are taken: one a reader gives up
        (``_evict_a_reader``), waited for at most ``EVICT_WAIT_S``; whether it got one."""
        deadline, evicted = time.monotonic() + EVICT_WAIT_S, False
        while (left := deadline - time.monotonic()) > 0:
            evicted = evicted or self._evict_a_reader()  # (one place per newcomer)
            if self._slots.acquire(timeout=min(left, READER_GRACE_S / 4)):
                return True
        return False

    def _evict_a_reader(self) -> bool:
        """End the connection of the client that has waited longest, at least
        ``READER_GRACE_S``, without sending its whole request; whether there was one."""
        with self._reading_lock:
            now = time.monotonic()
            idle = [(since, conn) for conn, since in self._reading.items()
                    if now - since >= READER_GRACE_S]
            if not idle:
                return False
            _, conn = min(idle, key=lambda pair: pair[0])
            self._reading.pop(conn, None)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)  # (its thread's recv returns: the slot comes free)
        return True

    def start(self, addr: str, port: int, tries: int = 1) -> bool:
        """Bind ``port`` (or, when taken, the next of ``tries`` ports up) and serve;
        False (warned once) when none is free."""
        reason = "no port in 0-65535"  # (a base port plus a local rank past the last one)
        for candidate in range(port, min(port + max(tries, 1), 65536)):
            try:
                listener = socket.create_server((addr, candidate), backlog=64)
                break
            except OSError as exc:
                reason = str(exc.strerror or exc)
        else:
            log.warning("gpuwatch: metrics endpoint %s:%d unavailable (%s); training goes on "
                        "without it", addr, port, reason)
            return False
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._serve, args=(listener,), name="gpuwatch-metrics",
                         daemon=True).start()
        return True

    def finish(self, wait_s: float) -> bool:
        """Export the end-of-run marker, wait until a scrape has taken it (at most
        ``wait_s`` seconds, and only if anything ever scraped this endpoint), then
        close. True when a scrape saw the marker."""
        version = self.state.finish(time.time())
        with self._served:
            seen = self._served.wait_for(
                lambda: self._served_version >= version or not self._scraped,
                timeout=wait_s if self._listener is not None else 0)
            seen = seen and self._served_version >= version
        self.stop()
        return seen

    def stop(self) -> None:
        """Close the endpoint; a scrape in flight finishes or fails on its own."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()


# The series of each metric source (``_series``), after the functions they name.
Series = Callable[[MetricSpec, _Snapshot], Iterator[tuple[list[str], Any]]]
_BY_SOURCE: dict[str, Series] = {
    "topology": _topology_series, "steps": _step_series, "findings": _finding_series,
    "faults": _fault_series, "exporter": _exporter_series, "run": _run_series}
