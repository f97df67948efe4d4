"""Builders for constructed telemetry: steps, samples and events on a shared clock,
fed to a real detection engine."""

from __future__ import annotations

from typing import Any

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.records import SCHEMA_VERSION, Event, Finding, Meta, Record, Sample, Step

START = 1_000_000.0
GB = 1e9


def meta(rank: int = 0, world_size: int = 1, host: str = "node-a", job: str = "job") -> Meta:
    return Meta(schema=SCHEMA_VERSION, gpuwatch="test", job=job, host=host, rank=rank,
                local_rank=rank, world_size=world_size, pid=4242 + rank, started=START)


def steps(seconds: float, wall: float = 0.1, rank: int = 0, start: float = START,
          first: int = 1, **fields: Any) -> list[Step]:
    """Contiguous steps of ``wall`` seconds from ``start``; compute is the remainder
    of the wall time unless given."""
    out = []
    n = round(seconds / wall)
    spent = sum(fields.get(k, 0.0) for k in ("data_s", "optimizer_s", "checkpoint_s"))
    fields.setdefault("compute_s", max(wall - spent, 0.0))
    fields.setdefault("samples", 32)
    for i in range(n):
        out.append(Step(rank=rank, step=first + i, t=start + (i + 1) * wall, wall_s=wall,
                        **fields))
    return out


def samples(source: str, seconds: float, values: dict[str, float], rank: int = 0,
            gpu: int | None = None, start: float = START, every: float = 1.0,
            ramp: dict[str, float] | None = None) -> list[Sample]:
    """One sample a second; ``ramp`` adds that much to a value at each sample (counters)."""
    out = []
    for i in range(int(seconds / every)):
        v = dict(values)
        for key, step in (ramp or {}).items():
            v[key] = v.get(key, 0.0) + step * i
        out.append(Sample(rank, start + (i + 1) * every, source, v, gpu=gpu))
    return out


def topology(name: str, memory: float, nvlinks: int = 0, rank: int = 0, gpus: int = 1) -> Event:
    devices = [{"index": i, "name": name, "memory_total_bytes": memory,
                "nvlink_links_active": nvlinks} for i in range(gpus)]
    return Event(rank, START, "topology", {"devices": devices, "job_gpus": [rank % gpus],
                                           "gpu_count": gpus, "p2p": []})


def judge(records: list[Record], scope: str = "rank", **settings: Any) -> list[Finding]:
    """Every finding a real engine reaches over ``records`` (in time order)."""
    engine = engine_from_settings(Settings(**settings), scope)  # type: ignore[arg-type]
    ordered = sorted(records, key=lambda r: (not isinstance(r, Meta), getattr(r, "t", 0.0)))
    engine.feed(ordered)
    engine.close()
    return list(engine.findings.values())


def only(findings: list[Finding], detector: str) -> Finding:
    matching = [f for f in findings if f.detector == detector]
    assert len(matching) == 1, findings
    return matching[0]
