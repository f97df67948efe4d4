"""The cross-rank judge of a multi-rank job: every rank publishes its summary through
``probes.peers``; rank 0 knows the others from it (``detection.peer_view.PeerRank``)
and runs the job-scope detectors over every rank."""

from __future__ import annotations

from gpuwatch.config import Settings
from gpuwatch.detection.engine import Engine, engine_from_settings
from gpuwatch.detection.peer_view import JobCover, PeerRank, summary
from gpuwatch.faults import FaultLog
from gpuwatch.instrument.identity import Identity
from gpuwatch.probes.peers import PeerExchange
from gpuwatch.records import Finding
from gpuwatch.telemetry import Telemetry


class CrossRankJudge:
    """Publishes ``telemetry`` (this rank's) and, on rank 0, judges across ranks with a
    job engine whose active findings also explain the rank engine's (``rank_engine``)."""

    def __init__(self, settings: Settings, identity: Identity, telemetry: Telemetry,
                 rank_engine: Engine, faults: FaultLog) -> None:
        self._identity = identity
        self._telemetry = telemetry
        self.exchange = PeerExchange(identity.rank, identity.world_size, faults,
                                     interval_s=settings.peers_interval_s)
        self.engine: Engine | None = None
        self._cover: JobCover | None = None
        if identity.rank == 0:
            self.engine = engine_from_settings(settings, "job", identity.job)
            self.engine.views[identity.rank] = telemetry
            rank_engine.peers.append(self.engine)  # job findings explain this rank too
        else:  # ... and, through the store, every other rank
            self._cover = JobCover()
            rank_engine.peers.append(self._cover)
        self._peers: dict[int, PeerRank] = {}  # the other ranks, at rank 0

    def start(self) -> None:
        self.exchange.start()

    def stop(self) -> None:
        self.exchange.stop()

    def judge(self, now: float) -> list[Finding]:
        """Publish this rank's summary; on rank 0, fold the others' in and judge across
        ranks (the findings raised or resolved)."""
        ident = self._identity
        self.exchange.publish(summary(self._telemetry, ident.host, now))
        if self._cover is not None:
            self._cover.update(self.exchange.job_word())
        if self.engine is None:
            return []
        for rank, data in self.exchange.peers().items():
            peer = self._peers.get(rank)
            if peer is None:
                peer = self._peers[rank] = self.engine.published[rank] = PeerRank(rank)
            peer.update(data, ident.world_size)
        changes = list(self.engine.evaluate(now))
        self.exchange.publish_job({"covered": self.engine.covered()})
        return changes

    def active(self) -> list[Finding]:
        return self.engine.active() if self.engine is not None else []

    def findings(self) -> list[Finding]:
        """The latest state of every finding across ranks (rank 0; else none)."""
        return list(self.engine.findings.values()) if self.engine is not None else []
