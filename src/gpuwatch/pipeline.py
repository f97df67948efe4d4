"""Where the agent's records go: the engine judges them, then every sink gets the records
and the findings they raised or resolved. A sink that fails is counted (under its name)
and the others still get the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gpuwatch.detection.engine import Engine
from gpuwatch.faults import FaultLog, log
from gpuwatch.records import Finding, Record
from gpuwatch.runlog import RunLogWriter
from gpuwatch.sinks.prometheus import Exporter
from gpuwatch.sinks.slack import SlackNotifier


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: ``records`` in log order (the findings last), ``findings`` the ones
    raised or resolved by it."""

    records: list[Record]
    findings: list[Finding]


class Sink(Protocol):
    """Delivers batches; may raise (the pipeline counts it)."""

    def deliver(self, batch: Batch) -> None: ...


class Pipeline:
    """Judges records with ``engine`` and hands them to ``sinks`` (name -> sink, in order)."""

    def __init__(self, engine: Engine, faults: FaultLog) -> None:
        self.engine = engine
        self.faults = faults
        self.sinks: list[tuple[str, Sink]] = [("findings", FindingLog())]

    def add(self, name: str, sink: Sink) -> None:
        self.sinks.append((name, sink))

    def write(self, records: list[Record], final: bool = False,
              judged: Sequence[Finding] = ()) -> None:
        """Judge ``records`` (``final``: and close the engine's windows), then deliver them
        with the findings they raised or resolved and ``judged`` (reached elsewhere)."""
        try:
            findings = self.engine.feed(records)
            if final:
                findings += self.engine.close()
        except Exception as exc:
            self.faults.record("detection", exc)
            findings = []
        findings += judged
        batch = Batch([*records, *findings], findings)
        for name, sink in self.sinks:
            try:
                sink.deliver(batch)
            except Exception as exc:  # one sink failing never keeps the batch from the others
                self.faults.record(name, exc)


class FindingLog:
    """Findings into the process's log: raised ones as warnings, resolved ones as info."""

    def deliver(self, batch: Batch) -> None:
        for f in batch.findings:
            if f.state == "active":
                log.warning("gpuwatch finding [%s] %s: %s", f.verdict, f.detector, f.summary)
            else:
                log.info("gpuwatch finding resolved: %s", f.detector)


class RunLogSink:
    def __init__(self, writer: RunLogWriter) -> None:
        self.writer = writer

    def deliver(self, batch: Batch) -> None:
        if batch.records:
            self.writer.write(batch.records)


class ExporterSink:
    """The exporter's state: the records, every active finding (``active``) and the
    fault counts."""

    def __init__(self, exporter: Exporter, active: Callable[[], list[Finding]],
                 faults: FaultLog) -> None:
        self.exporter = exporter
        self._active = active
        self._faults = faults

    def deliver(self, batch: Batch) -> None:
        self.exporter.state.update(batch.records, self._active(), self._faults.counts)


class SlackSink:
    def __init__(self, notifier: SlackNotifier) -> None:
        self.notifier = notifier

    def deliver(self, batch: Batch) -> None:
        self.notifier.notify(batch.findings)
