"""The agent: one daemon thread that drains the hot-path ring, samples the probes on
a monotonic schedule and hands records to the sinks.

It never raises into the job (every failure is counted in ``faults``), stops
within ``STOP_TIMEOUT_S`` even when NVML hangs (never waiting on a thread known
to be stuck, never calling into a hung library), and does nothing in a forked
child (a DataLoader worker inherits it but never runs it). It installs no signal
handler: SIGTERM ends the process as promptly as it would without gpuwatch,
even inside a long C call, and the run log then misses at most the last
``flush_interval_s`` of steps. A handler the job installed itself is chained (it
runs as before), so an exit it makes (``sys.exit(143)``) is known for a death, and
the end waits for no last scrape.

Identity first: until the process knows its rank (a process group, torchrun's
environment; see ``instrument.identity``) the thread holds the hot path's marks,
at most a ring's worth and ``IDENTITY_WAIT_S``, or until the first step ends
(a process that steps without a process group is what its environment says).
Then it claims its own run log (one per rank and attempt), binds its metrics
port (``exporter.port`` + local rank, the next free one if taken) and writes
what it held.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import hashlib
import itertools
import os
import re
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gpuwatch._version import __version__
from gpuwatch.config import MAX_COUNT, Settings, detection_settings
from gpuwatch.cross_rank import CrossRankJudge
from gpuwatch.detection.context import Context
from gpuwatch.detection.engine import Engine, engine_from_settings
from gpuwatch.faults import FaultLog, log
from gpuwatch.instrument import ring
from gpuwatch.instrument.identity import (
    HINTS,
    Hints,
    Identity,
    current_device,
    process_group,
    resolve,
)
from gpuwatch.instrument.patches import COVERAGE, LOADER_WORKERS
from gpuwatch.instrument.ring import Mark, MarkRing
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.pipeline import ExporterSink, Pipeline, RunLogSink, SlackSink
from gpuwatch.probes.allocator import AllocatorProbe, torch_memory_stats
from gpuwatch.probes.host import HostProbe
from gpuwatch.probes.nccl import FlightRecorderProbe, default_dump, timing_setting
from gpuwatch.probes.nvml import Nvml, NvmlSampler, load_pynvml, visible_gpu_indices
from gpuwatch.probes.peers import agree_run_key, job_store
from gpuwatch.probes.probe import Probe
from gpuwatch.probes.topology import read_topology
from gpuwatch.records import SCHEMA_VERSION, Event, Finding, Meta, Record, Sample, utf8
from gpuwatch.redact import redact_argv
from gpuwatch.runlog import ELSEWHERE, RunLogWriter, claim_runlog, create_run_dir, write_whole
from gpuwatch.sinks.console import ConsoleStatus, status_line
from gpuwatch.sinks.prometheus import Exporter, ExporterState, node_name
from gpuwatch.sinks.slack import SlackNotifier, job_notifier
from gpuwatch.sinks.slack_relay import StoreRelay
from gpuwatch.sinks.trackers import figures
from gpuwatch.telemetry import Telemetry

STOP_TIMEOUT_S = 2.0
STUCK_CALL_S = 0.5  # an NVML call in flight this long is taken as hung
LATENCY_REPORT_S = 60.0
IDENTITY_WAIT_S = 30.0  # the longest marks are held for a process to learn its rank
RUN_KEY_WAIT_S = 10.0  # the longest a rank waits for rank 0 to name the run
PORT_TRIES = 64  # exporter.port + local rank, then the next ports up, this many in all
_DEFAULT = object()
_STEP_ENDS = frozenset({ring.STEP_END, ring.STEP_BOUNDARY})


def launch_key(environ: Mapping[str, str]) -> str | None:
    """A name every rank of one launch shares: torchrun's run id (unless ``none``),
    SLURM's job and step; None when the launcher gives none."""
    run_id = environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return _in_a_name(run_id)
    slurm_job = environ.get("SLURM_JOB_ID")
    if slurm_job:
        step = environ.get("SLURM_STEP_ID")
        return _in_a_name(f"slurm{slurm_job}" + (f".{step}" if step else ""))
    return None


def _in_a_name(key: str) -> str:
    """A launcher's key as part of a directory name: as it is where it is short and
    plain, else its plain characters cut short and a digest of the whole (one key, one
    name; a slash or ``..`` never leads elsewhere, a long key never past NAME_MAX)."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", key).strip(".")
    if plain == key and len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{plain[:MAX_KEY_CHARS - 13]}-{digest}"


MAX_KEY_CHARS = 64  # of a launcher's key in a run directory's name


def parent_key(environ: Mapping[str, str]) -> str:
    """The launching process (torchrun's agent, the ``mp.spawn`` parent): its start time
    and pid, the same for all the ranks it starts and its restarts of them; with the
    job's rendezvous port (``MASTER_PORT``), which tells apart jobs one shell started."""
    import psutil

    try:
        parent = psutil.Process().parent()
        started = parent.create_time() if parent is not None else time.time()
    except psutil.Error:
        started = time.time()
    port = environ.get("MASTER_PORT", "")
    return (f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}-p{os.getppid()}"
            + (f"-m{port}" if port.isdigit() else ""))


def default_out_dir(settings: Settings, identity: Identity, environ: Mapping[str, str],
                    store: Any = None, wait_s: float = RUN_KEY_WAIT_S,
                    pause: Callable[[float], object] = time.sleep,
                    runs: Path = Path("runs")) -> Path:
    """The run directory when none is configured: ``<runs>/<job>-<key>`` shared by the
    ranks of one launch (``launch_key``; else rank 0's launching process, read from the
    job's ``store`` where there is one — a launcher that is itself rank 0, as
    Lightning's, is no rank's parent but its own — else this rank's), or for a lone
    process a new directory of its own (``create_run_dir``). ``wait_s``: how long a rank
    waits for rank 0's word (``pause``: how, ending early when it returns True)."""
    key = launch_key(environ)
    if key is None and (identity.world_size > 1 or "TORCHELASTIC_RESTART_COUNT" in environ):
        key = parent_key(environ)
        if store is not None and identity.world_size > 1:
            key = agree_run_key(store, identity.rank, key, wait_s, pause) or key
    if key is None:
        return create_run_dir(runs, settings.job)
    return runs / f"{settings.job}-{key}"


def restart_count(environ: Mapping[str, str]) -> int:
    """How often torchrun has restarted this worker (0 without torchrun)."""
    value = environ.get("TORCHELASTIC_RESTART_COUNT", "")
    count = int(value) if value.isascii() and value.isdigit() else 0
    return count if count <= MAX_COUNT else 0  # (past what a run log's integers hold)


class Agent:
    """The thread, schedule and lifecycle of one training process's monitoring: it
    drains the ring into records, reads the probes once a sample interval, and hands
    records to the pipeline (engine, then sinks); a multi-rank job's cross-rank judge
    runs on the same schedule.

    ``nvml_library`` and ``memory_stats`` are injectable (fakes in tests); by default
    the agent uses pynvml and ``torch.cuda.memory_stats`` when they exist. ``identity``
    is for a caller that knows it (a framework adapter); otherwise it is resolved from
    ``hints`` (what the torch hooks saw), the process group and ``environ``.
    ``out_dir``, ``runlog_path`` and ``attempt`` are None until the identity settles.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        nvml_library: Any = _DEFAULT,
        memory_stats: Callable[[], Mapping[str, Any]] | object | None = _DEFAULT,
        environ: Mapping[str, str] | None = None,
        identity: Identity | None = None,
        hints: Hints = HINTS,
    ) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        self._env = env
        self._hints = hints
        self._settled = identity is not None
        if identity is None:
            identity, self._settled = self._resolve()
        self.identity = identity
        try:  # (a relative run directory is the job's cwd's at start)
            self._cwd = Path.cwd()
        except OSError:  # (deleted under the job: relative paths stay relative)
            self._cwd = Path()
        self.out_dir: Path | None = (self._cwd / settings.out_dir if settings.out_dir
                                     else None)
        self.runlog_path: Path | None = None
        self.attempt: int | None = None
        self.faults = FaultLog()
        self.engine = (engine_from_settings(settings, "rank", identity.job) if settings.enabled
                       else Engine({}, Context(gpus={}), job=identity.job))  # (reads no file)
        self.pipeline = Pipeline(self.engine, self.faults)
        self.telemetry = Telemetry(identity.rank)  # the engine's own view once settled
        self._held: list[Mark] = []  # marks from before the identity settled
        self._wake = threading.Event()
        self.ring = MarkRing(settings.ring_capacity, wake=self._wake)
        self._stop = threading.Event()
        self._drain_lock = threading.Lock()
        self._finishing = threading.Lock()  # the final flush runs once, by whoever gets here
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._nvml_library = load_pynvml() if nvml_library is _DEFAULT else nvml_library
        self._memory_stats = memory_stats
        # records are stamped on the monotonic clock from the wall clock's reading at
        # start (``_now``): a wall clock stepped later (NTP, a VM resumed) moves none of
        # them, steps and samples alike
        self._offset = time.time() - time.perf_counter()
        self.assembler = StepAssembler(self.identity.rank, self._offset)
        self._writer: RunLogWriter | None = None
        self._nvml: Nvml | None = None
        self._probes: list[tuple[str, Probe]] = []  # read in this order
        self._console: ConsoleStatus | None = None
        self.exporter: Exporter | None = None
        self.slack: SlackNotifier | None = None
        self._slack_relay: StoreRelay | None = None
        self.cross_rank: CrossRankJudge | None = None
        self.thread_cpu_s = 0.0
        self.stopped = False
        self.figures: dict[str, float] = {}  # the latest, for trackers (sinks/trackers.py)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the agent thread (idempotent); from here on the run log is written."""
        if self._thread is not None or self.stopped:
            return
        if self.out_dir is not None:  # there from the start: the job may save into it
            with contextlib.suppress(OSError, ValueError):  # unwritable: the claim counts it
                self.out_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="gpuwatch-agent", daemon=True)
        self._thread.start()
        _register(self)
        _chain_stop_handlers()
        _note_failing_exits()

    def stop(self, timeout: float = STOP_TIMEOUT_S, failed: bool = False) -> None:
        """Stop the thread, write what is left and close; returns within ``timeout`` seconds,
        plus, when the endpoint is being scraped, up to exporter.final_scrape_s for a scrape
        to take the end-of-run marker: on a normal end only, never while the process dies
        of an uncaught exception or Ctrl-C, nor when the caller says the job ``failed`` (a
        framework that caught the exception). A Ctrl-C during that wait ends it."""
        if self.stopped or os.getpid() != self._pid:
            return
        self.stopped = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            join_until = deadline - 0.5 * timeout
            while thread.is_alive() and not self._stuck() and time.monotonic() < join_until:
                thread.join(0.02)
            if thread.is_alive():  # stuck in a probe call, or slow: finish from here
                self.faults.record("agent", "agent thread did not stop in time (probe hang?)")
                self._final_flush(deadline)
        exporter = self.exporter
        if exporter is not None:  # the end-of-run marker, for one last scrape to take
            wait_s = (0.0 if failed or dying_of_an_exception()
                      else self.settings.exporter.final_scrape_s)
            with contextlib.suppress(KeyboardInterrupt):  # told again to go: go
                self._guarded("exporter", lambda: exporter.finish(wait_s))

    def _stuck(self) -> bool:
        """Whether the agent thread is known to be stuck (in an NVML call that hangs)."""
        return self._nvml is not None and self._nvml.in_call_for() > STUCK_CALL_S

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._settle()
            self._setup()
            interval = self.settings.sample_interval_s
            next_sample = time.monotonic()
            next_latency = next_sample + LATENCY_REPORT_S
            while not self._stop.is_set():
                mono = time.monotonic()
                records: list[Record] = []
                sampled = mono >= next_sample
                if sampled:
                    self._sample(records, mono)
                    next_sample += interval * max(1, int((mono - next_sample) // interval) + 1)
                    if mono >= next_latency:
                        self._report_latency(records)
                        next_latency = mono + LATENCY_REPORT_S
                self._drain(records)
                if sampled:
                    self._periodic()
                if self.ring.pending():
                    continue  # a backlog: keep draining, in bounded batches
                timeout = min(self.settings.flush_interval_s, max(next_sample - mono, 0.0))
                self._wake.wait(timeout)
                self._wake.clear()
            self._final_flush(time.monotonic() + STOP_TIMEOUT_S)
        except Exception as exc:  # the thread dies, the job does not
            self.faults.record("agent", exc)
        finally:
            self.thread_cpu_s = time.thread_time()

    def _resolve(self) -> tuple[Identity, bool]:
        hints = self._hints
        device = hints.device if hints.device is not None else current_device()
        return resolve(self.settings.job, self._env, hints.group or process_group(), device)

    def _settle(self) -> None:
        """Hold the marks until the identity is settled, the first step has ended, the
        held marks fill a ring or ``IDENTITY_WAIT_S`` has passed; then adopt it."""
        if not self._settled:
            deadline = time.monotonic() + IDENTITY_WAIT_S
            self._hints.listen(self._wake.set)
            try:
                while not self._stop.is_set():
                    fresh = len(self._held)
                    self._held.extend(self.ring.drain())
                    stepped = any(code in _STEP_ENDS for code, _, _ in self._held[fresh:])
                    self.identity, self._settled = self._resolve()
                    if (self._settled or stepped or len(self._held) >= self.ring.capacity
                            or time.monotonic() >= deadline):
                        break
                    self._wake.wait(self.settings.flush_interval_s)
                    self._wake.clear()
            finally:
                self._hints.unlisten(self._wake.set)
            self.identity, _ = self._resolve()  # the latest word, however the wait ended
        ident = self.identity
        self.assembler.rank = ident.rank
        self.telemetry = self.engine.view(ident.rank)
        if self.out_dir is None:
            self.out_dir = default_out_dir(self.settings, ident, self._env, job_store(),
                                           pause=self._stop.wait, runs=self._cwd / "runs")

    def _tell_launcher(self, out_dir: Path) -> None:
        """Under `gpuwatch run`, a job that chose its own run directory says where, in
        the one `gpuwatch run` chose (which judges the run there at the end)."""
        given = self._env.get("GPUWATCH_OUT_DIR")
        if not given:
            return
        with contextlib.suppress(OSError, ValueError):
            launched = self._cwd / given  # (as out_dir is: where the job started)
            if launched.resolve() != out_dir.resolve():
                launched.mkdir(parents=True, exist_ok=True)
                write_whole(launched / ELSEWHERE, f"{out_dir.resolve()}\n")

    def _setup(self) -> None:
        ident, out_dir = self.identity, self.out_dir
        assert out_dir is not None  # set by _settle
        torch = sys.modules.get("torch")
        first = (self.settings.attempt or 0) + restart_count(self._env)
        self._writer, self.attempt = claim_runlog(
            out_dir, ident.rank, ident.world_size, first,
            segment_bytes=int(self.settings.runlog_segment_mb * 2**20))
        self.runlog_path = self._writer.path
        self._tell_launcher(out_dir)
        self.pipeline.add("runlog", RunLogSink(self._writer))
        self._start_exporter()
        port = self.exporter.port if self.exporter is not None else None
        self._write([Meta(
            schema=SCHEMA_VERSION, gpuwatch=__version__, job=ident.job, host=ident.host,
            rank=ident.rank, local_rank=ident.local_rank, world_size=ident.world_size,
            pid=self._pid, started=time.time(), argv=redact_argv(sys.argv),
            torch=getattr(torch, "__version__", None),
            detection=detection_settings(self.settings), run=self.run_id(),
            attempt=self.attempt, device=ident.device, identity=ident.source,
            metrics_port=port,
        )])
        log.info("gpuwatch: rank %d of %d (%s), attempt %d: %s; metrics port %s", ident.rank,
                 ident.world_size, ident.source, self.attempt, self.runlog_path, port)
        host = HostProbe(ident.rank, loader_workers=lambda: LOADER_WORKERS.pids(
            self.assembler.feeding))  # (the training loaders' workers, not an eval's)
        nccl_on, nccl_how = timing_setting(os.environ)
        dump = default_dump() if nccl_on else None
        nccl = FlightRecorderProbe(ident.rank, dump) if dump is not None else None
        if ident.world_size > 1:  # what collective waits can be seen, and how
            self._write([Event(ident.rank, self._now(), "collective_timing",
                               {**COVERAGE, "nccl_timing": nccl_how})])
        self._start_slack()
        self._start_peers()
        if self.settings.console:
            self._console = ConsoleStatus()
        gpu, allocator = self._setup_gpu(torch, host)
        probes = (("host", host), ("nvml", gpu), ("allocator", allocator), ("nccl", nccl))
        self._probes = [(name, probe) for name, probe in probes if probe is not None]

    def run_id(self) -> str:
        """What tells apart runs of one job (``run`` in the meta line and the exporter's
        labels): torchrun's rendezvous id, which every rank on every node shares (its
        default "none" tells nothing apart), else the run directory's name."""
        rdzv = self._env.get("TORCHELASTIC_RUN_ID", "none")
        if rdzv != "none":
            return f"{self.identity.job}-{rdzv}"
        return self.out_dir.name if self.out_dir is not None else ""

    def _start_exporter(self) -> None:
        cfg, ident = self.settings.exporter, self.identity
        if not cfg.enabled:
            return
        node = node_name(self._env, ident.host)
        labels = utf8({"training_job": ident.job, "run": self.run_id(), "host": node,
                       "rank": str(ident.rank), "local_rank": str(ident.local_rank)})
        state = ExporterState(labels, cfg.max_series, hostname=node,
                              device_metrics=cfg.device_metrics)
        exporter = Exporter(state, on_error=lambda exc: self.faults.record("exporter", exc))
        port = cfg.port + ident.local_rank if cfg.port else 0
        if exporter.start(cfg.addr, port, tries=PORT_TRIES if port else 1):
            self.exporter = exporter
            self.pipeline.add("exporter", ExporterSink(exporter, self._active, self.faults))

    def _active(self) -> list[Finding]:
        """Every active finding: this rank's, and across ranks (rank 0)."""
        cross = self.cross_rank
        return self.engine.active() + (cross.active() if cross is not None else [])

    def _start_peers(self) -> None:
        ident = self.identity
        if ident.world_size < 2 or not self.settings.peers_interval_s:
            return
        self.cross_rank = CrossRankJudge(self.settings, ident, self.telemetry, self.engine,
                                         self.faults)
        self.cross_rank.start()

    def _periodic(self) -> None:
        """Once a sample interval: judge across ranks, remind Slack, redraw the status.
        A failure of one is counted and the others still run."""
        tasks: tuple[tuple[str, Callable[[], None]], ...] = (
            ("peers", lambda: self._write([], judged=self._judge_across(self._now()))),
            ("slack", self._remind), ("console", self._show_status),
            ("figures", self._publish_figures))
        for component, task in tasks:
            try:
                task()
            except Exception as exc:
                self.faults.record(component, exc)

    def _publish_figures(self) -> None:
        """Replace (never mutate) the figures a tracker reads from another thread."""
        findings = list(self.engine.findings.values())
        if self.cross_rank is not None:
            findings += self.cross_rank.findings()
        self.figures = figures(self.telemetry, findings, self.telemetry.clock or self._now())

    def _show_status(self) -> None:
        if self._console is not None:
            self._console.show(status_line(self.telemetry, self._now()))

    def _judge_across(self, now: float) -> list[Finding]:
        return self.cross_rank.judge(now) if self.cross_rank is not None else []

    def _start_slack(self) -> None:
        ident = self.identity
        assert self.out_dir is not None
        try:
            self.slack, self._slack_relay = job_notifier(
                self.settings, self.out_dir, ident.rank, ident.world_size, job_store,
                on_error=lambda what: self.faults.record("slack", what), run=self.run_id())
        except (OSError, ValueError) as exc:  # load_settings said so at start already
            self.faults.record("slack", f"slack webhook unusable: {type(exc).__name__}")
            return
        if self._slack_relay is not None:
            self._slack_relay.start()
        if self.slack is not None:
            self.slack.start()  # also delivers what an earlier start left spooled
            self.pipeline.add("slack", SlackSink(self.slack))

    def _setup_gpu(self, torch: Any,
                   host: HostProbe) -> tuple[NvmlSampler | None, AllocatorProbe | None]:
        """The GPU's probes (NVML, the allocator), and the topology event."""
        ident = self.identity
        sampler: NvmlSampler | None = None
        allocator: AllocatorProbe | None = None
        gpus: list[int] | None = None  # the NVML indices of this process's GPUs
        device = ident.device  # seen in use, else one GPU per local rank (the convention)
        if device is None and ident.world_size > 1:
            device = ident.local_rank
        if self.settings.nvml:
            nvml = Nvml(self._nvml_library, self.faults)
            if nvml.init():
                self._nvml = nvml
                gpus = None if self.settings.gpus is None else list(self.settings.gpus)
                if gpus is None:
                    env = dict(self._env)
                    if device is not None:  # the index among the visible GPUs
                        env["LOCAL_RANK"] = str(device)
                    gpus = visible_gpu_indices(nvml, env)
                sampler = NvmlSampler(nvml, gpus, ident.rank, host.pids,
                                      self.settings.pcie_interval_s)
                self._write([Event(ident.rank, self._now(), "topology",
                                   read_topology(nvml, gpus))])
        stats = self._memory_stats
        if stats is _DEFAULT:
            stats = torch_memory_stats(device or 0) if torch is not None else None
        if callable(stats):
            allocator = AllocatorProbe(stats, ident.rank, _nvml_index(gpus, device))
        if self._nvml is None and allocator is None:
            log.warning("gpuwatch: no NVML-visible GPU; monitoring the host only")
            self._write([Event(ident.rank, self._now(), "host_only",
                               {"reason": "no NVML-visible GPU"})])
        return sampler, allocator

    def _now(self) -> float:
        """Record time (Unix s): the monotonic clock from the wall clock's start."""
        return time.perf_counter() + self._offset

    def _sample(self, records: list[Record], mono: float) -> None:
        now = self._now()
        for name, probe in self._probes:
            try:
                records.extend(probe.sample(now, mono))
            except Exception as exc:
                self.faults.record(name, exc)
        agent = {
            "agent_cpu_seconds_total": time.thread_time(),
            "agent_marks_dropped_total": float(self.ring.dropped),
            "agent_device_timings_dropped_total": float(self.assembler.device.dropped),
            "agent_bad_marks_total": float(self.assembler.bad_values),
            "agent_errors_total": float(sum(self.faults.counts.values()) + self.engine.errors),
            "slack_in_process": float(self.slack is not None),
        }
        for phase, seconds in self.assembler.open_phases(time.perf_counter()).items():
            agent[f"open_{phase}_seconds"] = seconds
        records.append(Sample(self.identity.rank, now, "agent", agent))

    def _remind(self) -> None:
        if self.slack is not None:
            self.slack.remind(self.engine.active())

    def _report_latency(self, records: list[Record]) -> None:
        if self._nvml is not None:
            slowest = self._nvml.take_latencies()
            if slowest:
                records.append(Sample(self.identity.rank, self._now(), "nvml_calls", slowest))

    def _drain(self, records: list[Record], final: bool = False) -> None:
        with self._drain_lock:
            marks: Iterable[Mark] = self.ring.drain()
            if self._held:  # what came before the identity settled goes first
                marks, self._held = itertools.chain(self._held, marks), []
            try:
                self.assembler.feed(marks, records, final)
            except Exception as exc:
                self.faults.record("steps", exc)
            self._write(records, final)

    def _write(self, records: list[Record], final: bool = False,
               judged: Sequence[Finding] = ()) -> None:
        """Judge the records, then deliver them and any finding they raised or resolved
        (``judged``: findings reached elsewhere, across ranks) to every sink."""
        self.pipeline.write(records, final, judged)

    def _final_flush(self, deadline: float) -> None:
        """Write what is left and close every sink by ``deadline`` (monotonic seconds);
        once, by the agent thread or by ``stop`` when that thread is stuck."""
        if not self._finishing.acquire(blocking=False):
            return  # the other side is doing it
        if not self._drain_lock.acquire(timeout=max(deadline - time.monotonic() - 0.5, 0.01)):
            return  # a drain holds it (a write stuck on a full disk?): leave the rest as is
        self._drain_lock.release()
        records: list[Record] = []
        self._report_latency(records)
        self._drain(records, final=True)
        guarded = self._guarded  # one sink failing to close never stops the others
        console, slack, nvml = self._console, self.slack, self._nvml
        if console is not None:
            guarded("console", lambda: console.show(status_line(self.telemetry, self._now())))
            guarded("console", console.close)
        if self._writer is not None:
            guarded("runlog", self._writer.close)  # a full disk fails here: counted
        if self.cross_rank is not None:
            guarded("peers", self.cross_rank.stop)
        if self._slack_relay is not None:
            guarded("slack", self._slack_relay.stop)
        if slack is not None:  # a last chance; what is left stays spooled
            guarded("slack", lambda: slack.flush(
                timeout=min(0.5, max(deadline - time.monotonic() - 0.4, 0.0))))
            guarded("slack", lambda: slack.stop(timeout=0.2))
        if nvml is not None:
            guarded("nvml", lambda: nvml.shutdown(timeout=max(deadline - time.monotonic(), 0.0)))

    def _guarded(self, component: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            self.faults.record(component, exc)


# -- process lifecycle: stop at exit, go quiet after fork (no signal handler: see above) --

_agents: weakref.WeakSet[Agent] = weakref.WeakSet()
_lifecycle_installed = False


_finalized_in: int | None = None  # the process whose multiprocessing finalizer stops agents


def _register(agent: Agent) -> None:
    global _lifecycle_installed, _finalized_in
    _agents.add(agent)
    if not _lifecycle_installed:
        _lifecycle_installed = True
        atexit.register(_stop_at_exit)
        os.register_at_fork(after_in_child=_agents.clear)
        for name in ("execv", "execve"):  # (os.execl*, execvp* and execvpe call these)
            exec_ = getattr(os, name, None)
            if exec_ is not None:
                setattr(os, name, _stopping_first(exec_))
    # A multiprocessing child (a rank started with multiprocessing.Process) ends in
    # os._exit after its run(): atexit never runs there, its finalizers do.
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _finalized_in != os.getpid():
        _finalized_in = os.getpid()
        util.Finalize(None, _stop_at_process_end, exitpriority=0)


EXEC_STOP_S = 2.0  # the most a process replacing itself waits for its agents' last writes


def _stopping_first(exec_: Callable[..., Any]) -> Callable[..., Any]:
    """``os.execv``/``execve`` that stop this process's agents first (their last
    records written, no last scrape awaited): the new image runs no atexit, and what
    the old one had not written yet was lost."""

    @functools.wraps(exec_)
    def stopped_then(*args: Any, **kwargs: Any) -> Any:
        for agent in list(_agents):
            with contextlib.suppress(Exception):
                agent.stop(timeout=EXEC_STOP_S, failed=True)
        return exec_(*args, **kwargs)

    return stopped_then


def _stop_at_process_end() -> None:
    """A multiprocessing child's end (its run() returned or raised: the exception is
    still under way here, and a failed process waits for no last scrape)."""
    exc = sys.exc_info()[1]
    stop_all(failed=exc is not None and not (isinstance(exc, SystemExit)
                                             and exc.code in (0, None)))


def _stop_at_exit() -> None:
    """The interpreter's end (atexit): failed where the main thread gave ``sys.exit`` a
    failure status in the last ``FAILING_EXIT_S`` (``_note_failing_exits``: a job that
    caught Ctrl-C or an OOM and exits 1; one caught long before, argparse's at start,
    is not this exit)."""
    failed_at = _failing_exit_at
    stop_all(failed=failed_at is not None and time.monotonic() - failed_at < FAILING_EXIT_S)


def stop_all(failed: bool = False) -> None:
    """Stop every agent of this process (at exit; safe to call twice); ``failed``: the
    process ends in an error (``Agent.stop``)."""
    for agent in list(_agents):
        try:
            agent.stop(failed=failed)
        except Exception as exc:  # never let shutdown raise
            log.warning("gpuwatch: stop failed: %s", exc)


_stop_signalled_at: float | None = None  # (monotonic s) when a stopping signal last
# reached a Python handler (chained: the job's, Ctrl-C's)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _chain_stop_handlers() -> None:
    """Chain the job's own Python handlers of the stopping signals (never one where it
    has none: SIG_DFL ends the process at once), so that an exit they make is known:
    ``sys.exit`` leaves no trace of its status for the atexit handlers. Those installed
    already (main thread only, where handlers are set), and, through ``signal.signal``,
    those the job installs later; once per handler."""
    if not getattr(signal.signal, "gpuwatch_chaining", False):
        signal.signal, signal.getsignal = _chaining(signal.signal), _unwrapping(signal.getsignal)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        try:  # (a handler object of the job's may raise on any attribute read)
            handler = signal.getsignal(signum)
            if _to_chain(handler):
                signal.signal(signum, handler)  # (chained on its way in)
        except Exception as exc:
            log.debug("gpuwatch: signal %s's handler left as it is (%s)", signum, exc)


def _to_chain(handler: Any) -> bool:
    """Whether ``handler`` is a Python handler not chained yet: the job's, or Ctrl-C's
    KeyboardInterrupt (``default_int_handler``: a job that catches it and ends normally
    is stopping, not ending a run). May raise (a handler object's attribute reads)."""
    return callable(handler) and not getattr(handler, "gpuwatch_chained", False)


def _chaining(install: Callable[..., Any]) -> Callable[..., Any]:
    """``signal.signal`` that chains the job's handlers of the stopping signals as it
    installs them (what it returns, the previous handler, installs unchanged again)."""

    @functools.wraps(install)
    def chaining(signum: Any, handler: Any) -> Any:
        try:
            if signum in STOP_SIGNALS and _to_chain(handler):
                handler = _chained(handler)
        except Exception as exc:  # (never raised into the job: its handler goes in as is)
            log.debug("gpuwatch: signal %s's handler not chained (%s)", signum, exc)
        return _unchained(install(signum, handler))

    chaining.gpuwatch_chaining = True  # type: ignore[attr-defined]
    return chaining


def _unwrapping(read: Callable[..., Any]) -> Callable[..., Any]:
    """``signal.getsignal`` giving the job's own handler where gpuwatch chained it: code
    that checks which handler is in (asyncio restores its own only if it still is)
    sees what it installed."""

    @functools.wraps(read)
    def getsignal(signum: Any) -> Any:
        return _unchained(read(signum))

    return getsignal


def _unchained(handler: Any) -> Any:
    """The job's handler behind a chained one; any other handler as it is."""
    try:
        return handler.gpuwatch_job_handler if getattr(handler, "gpuwatch_chained",
                                                       False) else handler
    except Exception:  # (a handler object of the job's raising on reads: as it is)
        return handler


def _chained(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    def chained(signum: int, frame: Any) -> Any:
        global _stop_signalled_at
        _stop_signalled_at = time.monotonic()
        return handler(signum, frame)

    chained.gpuwatch_chained = True  # type: ignore[attr-defined]
    chained.gpuwatch_job_handler = handler  # type: ignore[attr-defined]
    return chained


_failing_exit_at: float | None = None  # when the main thread last called sys.exit failing
FAILING_EXIT_S = 60.0  # an exit status or stopping signal older than this: the job went on


def _note_failing_exits() -> None:
    """Wrap ``sys.exit`` (once) to note when the main thread calls it with a failure
    status: a job that catches Ctrl-C or an OOM, cleans up and calls ``sys.exit(1)``
    (Lightning does) leaves no other trace of it for the atexit handlers
    (``_stop_at_exit``); an agent stopped by the job's own call is not told."""
    for name in ("exit", "quit"):  # the builtins a script may call instead (site's
        quitter = getattr(builtins, name, None)  # own: a host's are left as they are)
        if type(quitter).__module__ == "_sitebuiltins":
            setattr(builtins, name, _NotingQuitter(quitter))
    if getattr(sys.exit, "gpuwatch_noting", False):
        return
    exit_now = sys.exit

    @functools.wraps(exit_now)
    def noting(status: Any = None) -> NoReturn:
        _note_exit(status)
        exit_now(status)

    noting.gpuwatch_noting = True  # type: ignore[attr-defined]
    sys.exit = noting


def _note_exit(status: Any) -> None:
    global _failing_exit_at
    if status not in (None, 0) and threading.current_thread() is threading.main_thread():
        _failing_exit_at = time.monotonic()


class _NotingQuitter:
    """Site's builtin ``exit`` or ``quit`` (what a script calls without ``sys``), noting
    a failing status as ``sys.exit``'s wrapper does; otherwise it is the original."""

    def __init__(self, quitter: Any) -> None:
        self._quitter = quitter

    def __call__(self, code: Any = None) -> Any:
        _note_exit(code)
        return self._quitter(code)

    def __getattr__(self, name: str) -> Any:
        if name == "_quitter":  # (a copy made without __init__: no original to ask)
            raise AttributeError(name)
        return getattr(self._quitter, name)

    def __repr__(self) -> str:
        return repr(self._quitter)


def dying_of_an_exception() -> bool:
    """Whether the process is exiting because an exception (KeyboardInterrupt included)
    went uncaught in its main thread (Python keeps the last one it printed in
    ``sys.last_value`` before the atexit handlers run), or within ``FAILING_EXIT_S``
    of a stopping signal reaching a Python handler (``_chain_stop_handlers``: the job's,
    whose ``sys.exit`` leaves no other trace, or Ctrl-C's, whose KeyboardInterrupt the
    job caught; one longer ago, the job lived through and went on)."""
    signalled = _stop_signalled_at
    return ((signalled is not None and time.monotonic() - signalled < FAILING_EXIT_S)
            or getattr(sys, "last_value", None) is not None)


def _nvml_index(gpus: list[int] | None, device: int | None) -> int | None:
    """The NVML index of the GPU the allocator counts (torch's ``device``, an index among
    the visible GPUs, which ``gpus`` lists in order); None where NVML names none."""
    if not gpus:
        return None
    if len(gpus) == 1:
        return gpus[0]
    return gpus[device] if device is not None and 0 <= device < len(gpus) else None
