"""What detectors share: their result type, the run's context (catalogue, target,
total steps) and the signal helpers several of them read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuwatch.detection.moves import FIX_FIRST, Costs, decide, holds, price
from gpuwatch.detection.projection import (
    DEFAULT_TARGET,
    Gpu,
    Inputs,
    Precision,
    Projection,
    StepParts,
    catalogue,
    identify,
    project,
)
from gpuwatch.detection.rank_input import RankInput
from gpuwatch.detection.rules import Rule
from gpuwatch.probes.topology import pcie_rate
from gpuwatch.records import Verdict
from gpuwatch.series import mean_of
from gpuwatch.telemetry import StepSummary, Telemetry
from gpuwatch.vocabulary import split_step


@dataclass
class Detection:
    """A detector's output: the measured evidence (names end in units), the ranks it
    names, optional projection, and ``text`` fields for the rule's sentences.
    ``verdict``/``severity`` override the rule's when the evidence says so; ``variant``
    names the rule's alternative wording to use."""

    evidence: dict[str, float]
    ranks: list[int]
    text: dict[str, Any] = field(default_factory=dict)
    projection: dict[str, Any] | None = None
    verdict: Verdict | None = None
    severity: Any = None
    variant: str | None = None


BIGGER = ("H100 SXM", "H200", "B200")  # tried in order when the target cannot hold a job
# The job's own memory, its tensors' first: (source, key), best first.
HELD = (("allocator", "allocator_allocated_peak_bytes"),
        ("allocator", "allocator_reserved_peak_bytes"),
        ("allocator", "allocator_reserved_bytes"), ("nvml", "gpu_process_memory_bytes"))

# A job-wide condition the job engine reports beside its findings (``Engine.covered``):
# a rank still working between steps (writing a save, running an eval alone), so every
# other rank waits for it at their next collective.
HOLDING = "holding"
# What the engine adds to ``Context.explained`` for a rank a job-scope ``straggler``
# covers but does not name: it waits at its collectives for the slower ranks.
WAITING = "waiting_on_slower_ranks"


@dataclass
class Context:
    """Run-wide facts for detectors. ``gpu_model`` names the GPU where NVML names none
    the catalogue knows; ``planned_steps`` the steps the run plans
    (settings.total_steps). The engine sets
    ``explained`` per evaluation: rank -> the detectors whose active findings or
    detected conditions cover that rank (job-scope ones cover every rank)."""

    gpus: dict[str, Gpu] = field(default_factory=catalogue)
    target: str = DEFAULT_TARGET
    gpu_model: str | None = None
    planned_steps: int | None = None
    costs: Costs = field(default_factory=Costs)
    precision: Precision = "bf16"
    explained: dict[int, frozenset[str]] = field(default_factory=dict)
    latency_bytes: float = 0.0  # sync_bottleneck's min_bytes_per_step (Inputs.latency_bytes)
    link_explained: float = 0.0  # and its link_explained_ratio (Inputs.link_explained)
    # data_starvation's data_share: a step that waits this share on its loader is at the
    # loader's pace (Inputs.loader_bound), judged or not (0: only where judged)
    loader_share: float = 0.0
    first_rank: int = 0  # the job's lowest rank judged: a replay's without rank 0's log
    _identified: dict[str, Gpu | None] = field(default_factory=dict)  # device name -> entry

    @property
    def target_gpu(self) -> Gpu:
        return self.gpus[self.target]

    def current_gpu(self, view: RankInput) -> Gpu | None:
        """The catalogue entry of the GPU this rank runs on, if known: the one NVML names,
        else the configured ``gpu_model`` (a setting for when NVML cannot say: one left
        in a config from another machine must not make an H100 an RTX 5090)."""
        return self._named_gpu(view) or self._identify(self.gpu_model)

    def _named_gpu(self, view: RankInput) -> Gpu | None:
        """The catalogue entry of the card NVML names for this rank, if it knows one."""
        for device in job_devices(view):
            gpu = self._identify(device.get("name"))
            if gpu is not None:
                return gpu
        return None

    def holding(self, held: float | None, card: float | None, pressed: bool = False) -> Gpu:
        """The configured target, or where ``held`` bytes (the job's memory today, on a
        card of ``card`` bytes) would not fit ``HOLD_SHARE`` of it, and it has less
        memory than that card, the first bigger card (``BIGGER``) they fit; the target
        where nothing was measured or no card holds them. ``pressed``: the job is short
        of memory on its card (``fits_on_paper`` holds), so a card no bigger would be
        short of it too: only ``HOLD_SHARE`` counts, as ``fits_on_paper`` judges."""
        target, card = self.target_gpu, None if pressed else card
        if holds(target, held, card):
            return target
        for name in BIGGER:
            gpu = self.gpus.get(name)
            if gpu is not None and gpu.memory_bytes > target.memory_bytes and holds(
                    gpu, held, card):
                return gpu
        return target

    def _identify(self, name: str | None) -> Gpu | None:
        """``catalogue.identify``, remembered per name (detectors ask at every judgement)."""
        if not name:
            return None
        if name not in self._identified:
            self._identified[name] = identify(name, self.gpus)
        return self._identified[name]

    def declared_gpu(self, views: Sequence[RankInput]) -> Gpu | None:
        """The card ``gpu_model`` names where no rank's GPU topology was read (NVML not
        readable: a container without the device); None where one was, or none named."""
        if any(job_devices(v) for v in views):
            return None
        return self._identify(self.gpu_model)

    def host_staged(self, views: Sequence[RankInput]) -> bool:
        """``host_staged``: as the topology says, or where none was read, as the declared
        card's (``peer_to_peer``: GeForce cards copy between each other through host
        memory)."""
        declared = self.declared_gpu(views)
        return host_staged(views) if declared is None else not declared.peer_to_peer

    def device_name(self, view: RankInput) -> str | None:
        """What NVML calls this rank's card (the configured model where NVML names none
        the catalogue knows)."""
        named = next((d["name"] for d in job_devices(view) if d.get("name")), None)
        known = named is not None and self._identify(named) is not None
        return named if known or not self.gpu_model else self.gpu_model

    def project(self, views: Sequence[RankInput], parts: StepParts, since: float, *,
                target: Gpu | None = None, drop_recompute: bool = False,
                target_gpus: int | None = None, fabric: float | None = None,
                transfer_s: float | None = None) -> Projection:
        """``parts`` (the mean step of ``views``' ranks) projected onto ``target`` (default
        the configured one, or a bigger card where it cannot hold the job: ``holding``)
        with what the views measured, priced for the whole job (its world size; tokens and
        samples per rank taken as the same on every rank). ``fabric``: the link between
        the job's nodes (default ``inter_node_link``); ``transfer_s`` the transfer part of
        the collective wait where the ranks were compared (``Inputs.transfer_s``)."""
        view = views[0]
        held = memory_held(view, since)  # (rank 0's in a job: what live and replay both see)
        # ranks on different cards (as NVML names them; the configured model only where
        # it names none): the slowest paces every step, the smallest bounds what the job
        # may hold
        cards = [self._named_gpu(v) for v in views]
        if not any(cards):
            cards = [self._identify(self.gpu_model)] * len(views)
        known = [g for g in cards if g is not None]
        current = min(known, key=lambda g: (g.tensor_flops(self.precision),
                                            g.memory_bandwidth), default=None)
        paced = views[cards.index(current)] if current is not None else view
        card = min((b for v, g in zip(views, cards, strict=True)
                    if (b := card_bytes(v, g)) is not None), default=None)
        if fabric is None:
            fabric = inter_node_link(views)
        world = max(view.world_size, len(views))
        summaries = [s for v in views if (s := v.summarise(since)) is not None]
        tokens = mean_of(s.tokens for s in summaries) or 0.0
        samples = mean_of(s.samples for s in summaries) or 0.0
        tokens, samples = tokens * world, samples * world  # per rank -> the job
        unit, units = (("1M tokens", tokens) if tokens > 0 else
                       ("1M samples", samples) if samples > 0 else ("step", 0.0))
        planned = self.planned_steps or view.planned_steps
        holding = {d for v in views for d in self.explained.get(v.rank, ())}
        if transfer_s is not None:  # (the ranks were compared: a straggler is told apart)
            holding.discard("straggler")
        fix_first = next((d for d in FIX_FIRST if d in holding), None)
        inputs = Inputs(
            tensor_share=mean_of(tensor_share(v, since) for v in views),
            gpu_busy=mean_of(_figure_mean(v, "nvml", "gpu_utilization_ratio", since)
                           for v in views),
            link_now=link_now(views, current), units_per_step=units, unit=unit,
            remaining_steps=planned - view.steps_done if planned else None,
            device_name=self.device_name(paced), precision=self.precision,
            power_watts=_figure_mean(view, "nvml", "gpu_power_watts", since),
            fabric=fabric, fabric_unseen=fabric is None and spans_nodes(views),
            host_staged=self.host_staged(views), memory_bytes=held, card_bytes=card,
            fix_first=fix_first,
            loader_bound=any("data_starvation" in self.explained.get(v.rank, ())
                             for v in views) or (self.loader_share > 0 and any(
                                 s.data_share >= self.loader_share for s in summaries)),
            peer_bound=transfer_s is None and WAITING in holding,
            latency_bytes=self.latency_bytes, link_explained=self.link_explained,
            transfer_s=transfer_s)
        pressed = "fits_on_paper" in holding
        proj = project(parts, target or self.holding(held, card, pressed), current, ranks=world,
                       drop_recompute=drop_recompute, planned_steps=planned,
                       target_gpus=target_gpus, inputs=inputs)
        if world > 1 and units > 0:
            proj.assumptions.append(f"each of the {world} ranks' {unit.removeprefix('1M ')} "
                                    "taken as its own (data parallel): with tensor or "
                                    "pipeline parallelism ranks share them, and each costs "
                                    "that degree more")
        if len({g.name for g in known}) > 1:
            proj.assumptions.append(
                "the job's ranks run on different cards: projected from the slowest, "
                f"rank {paced.rank}'s {current.name if current else ''}, which paces every "
                "step; priced now at each rank's own")
        price(proj, self.costs, known)
        return proj

    def decide(self, proj: Projection, *, otherwise: Verdict,
               cannot_run_here: str | None = None) -> Verdict:
        """The move gate (gpuwatch.detection.moves.decide) with this run's costs."""
        return decide(proj, self.costs, otherwise=otherwise, cannot_run_here=cannot_run_here,
                      configured=self.target_gpu)


def _figure_mean(view: RankInput, source: str, key: str, since: float) -> float | None:
    figure = view.figure(source, key, since)
    return figure.mean if figure is not None else None



def memory_held(view: RankInput, since: float) -> float | None:
    """The most memory this rank's job held in the window (bytes): its tensors' live peak
    (allocator), else the allocator's reserved memory, else its processes' (NVML); None
    where nothing measured it."""
    found = first_high(view, HELD, since)
    return found[0] if found else None


def first_high(view: RankInput, keys: Sequence[tuple[str, str]],
               since: float) -> tuple[float, int] | None:
    """The highest reading in the window of the first of ``keys`` ((source, key), best
    first) that has readings, and that key's index; None if none has."""
    for i, (source, key) in enumerate(keys):
        figure = view.figure(source, key, since)
        if figure is not None:
            return figure.high, i
    return None


def card_bytes(view: RankInput, current: Gpu | None) -> float | None:
    """Bytes on this rank's card: its topology's, else the catalogue's for ``current``."""
    return next((float(d["memory_total_bytes"]) for d in job_devices(view)
                 if d.get("memory_total_bytes")), current.memory_bytes if current else None)


def link_now(views: Sequence[RankInput], current: Gpu | None) -> float | None:
    """Today's GPU-to-GPU link (bytes/s, one direction): NVLink where it joins the job's
    GPUs (``has_nvlink``) and the card is known, or where it is down on cards built with
    it (``nvlink_down``: a fault to fix, no reason to move), else PCIe at the slot's
    maximum generation and width; None if unknown."""
    if nvlink_down(views, current):
        return current.nvlink_bandwidth if current else None
    if has_nvlink(views):
        return current.nvlink_bandwidth if current and current.nvlink_bandwidth else None
    links = [link[0] for v in views[:1] for d in job_devices(v) if (link := pcie_slot(d))]
    return min(links) if links else None


def pcie_slot(device: dict[str, Any]) -> tuple[float, str] | None:
    """What a device's PCIe slot carries per direction (bytes/s) and its name ("PCIe gen 4
    x16"): at the link's maximum generation and width, since an idle card trains its link
    down to save power (gen 1 at start-up); the recorded rate where neither is known."""
    gen = device.get("pcie_generation_max") or device.get("pcie_generation")
    width = device.get("pcie_width_max") or device.get("pcie_width")
    rate = pcie_rate(gen, width)
    if rate is not None:
        return rate, f"PCIe gen {gen} x{width}"
    rate = device.get("pcie_bytes_per_second")
    return (float(rate), f"PCIe gen {device.get('pcie_generation')} x{device.get('pcie_width')}"
            ) if rate else None


STEP_SLACK = 1.25  # a window sized in steps holds this many times min_steps median steps
# A rule judged over this many of its windows too: what happens in some steps only (a
# loader's stall every few steps, a rank slow in some) shows its mean over many of them
LONG_WINDOWS = 6


def scale(view: RankInput, rule: Rule) -> float:
    """How much longer than its ``window_s`` a rule looks at this rank (>= 1): enough
    for ``min_steps`` median steps (with ``STEP_SLACK`` for steps that vary), so a 30 s
    step gets as many steps as a 0.1 s one; cycles of its rhythm where it has one (a
    gradient sync every N micro-steps: a window of a few micro-steps holds one sync or
    none, and what it says flickers with them)."""
    median = view.median_step_s()
    if not median or rule.min_steps <= 0:
        return 1.0
    return max(1.0, STEP_SLACK * rule.min_steps * median * view.cycle_steps / rule.window_s)


def window_s(view: RankInput, rule: Rule) -> float:
    """The rule's window on this rank (seconds):
    max(window_s, STEP_SLACK x min_steps x median step x steps per cycle)."""
    return rule.window_s * scale(view, rule)


def for_s(views: Sequence[RankInput], rule: Rule) -> float:
    """How long a condition must hold on these ranks (seconds): ``for_s`` scaled as the
    window is, by the slowest of them."""
    return rule.for_s * max((scale(v, rule) for v in views), default=1.0)


def window_start(view: RankInput, rule: Rule, now: float) -> float:
    """Where the rule's window on this rank starts (Unix s): ``window_s`` before ``now``,
    or further back, at its newest ``min_steps`` typical steps, where it holds fewer: a
    gap (an eval, a save, a pause, steps that stopped) leaves the steps before it to
    judge, not an empty window that cleared every finding at every eval; steps far
    longer than their median (a slow one every few) fill it too."""
    start = now - window_s(view, rule)
    held = view.since_holding(rule.min_steps)  # (O(log n): no summary made)
    return min(start, held) if held is not None else start


def recent(view: RankInput, rule: Rule, now: float) -> StepSummary | None:
    """The mean step over the rule's window (``window_start``), if it holds its minimum of
    steps."""
    summary = view.summarise(window_start(view, rule, now))
    return summary if summary is not None and summary.steps >= rule.min_steps else None


def job_devices(view: RankInput) -> list[dict[str, Any]]:
    """Topology entries of the GPUs this rank samples (all GPUs if it names none)."""
    topo = view.topology or {}
    devices: list[dict[str, Any]] = topo.get("devices", [])
    mine = set(topo.get("job_gpus") or [])
    return [d for d in devices if not mine or d.get("index") in mine]


def has_nvlink(views: Sequence[RankInput]) -> bool:
    """Whether the job's GPUs talk over NVLink: their links are up, and no two of them
    on a host lack NVLink between them (``pcie_between``)."""
    return (any(d.get("nvlink_links_active", 0) > 0 for v in views for d in job_devices(v))
            and not pcie_between(views))


def spans_nodes(views: Sequence[RankInput]) -> bool:
    """Whether the job runs on more than one node: its ranks name several hosts, or it
    has more ranks than a rank's node has GPUs (one rank seen alone)."""
    if len({v.host for v in views}) > 1:
        return True
    return any(v.world_size > ((v.topology or {}).get("gpu_count") or v.world_size)
               for v in views)


def inter_node_link(views: Sequence[RankInput], setting: float = 0.0) -> float | None:
    """The link between the job's nodes (bytes/s, one direction): ``setting`` when set,
    else each reporting rank's node's active InfiniBand or RoCE ports together (NCCL
    spreads its rings over every rail), the slowest node's; None within one node, or
    where nothing says."""
    if not spans_nodes(views):
        return None
    if setting > 0:
        return setting
    nodes = [sum(float(p.get("bytes_per_second") or 0) for p in ports if isinstance(p, dict))
             for v in views if (ports := (v.topology or {}).get("infiniband"))]
    rates = [n for n in nodes if n > 0]
    return min(rates) if rates else None


def uneven_rails(views: Sequence[RankInput]) -> str:
    """Nodes with fewer active InfiniBand or RoCE ports than the job's others, in words
    ("host b has 7 ports up, the others 8"); empty when every node has as many."""
    ports = {v.host: len([p for p in (v.topology or {}).get("infiniband") or []
                          if isinstance(p, dict)]) for v in views}
    ports = {host: n for host, n in ports.items() if n}
    most = max(ports.values(), default=0)
    short = sorted(host for host, n in ports.items() if n < most)
    if len(ports) < 2 or not short:
        return ""
    return "; ".join(f"host {host} has {ports[host]} port{'s' * (ports[host] != 1)} up"
                     for host in short) + f", the others {most}"


def host_staged(views: Sequence[RankInput]) -> bool:
    """Whether copies between the job's GPUs on a host go through host memory: the
    topology says peer-to-peer reads are impossible between two GPUs the job uses there
    (GeForce cards, some PCIe topologies). Each byte then crosses PCIe twice and the
    host's memory, at a fraction of the slot's rate."""
    return _pair_without(views, "read")


def nvlink_down(views: Sequence[RankInput], current: Gpu | None) -> bool:
    """Whether the job runs on several cards built with NVLink (SXM: ``nvlink_built_in``)
    one of which the topology reads with every link down: collectives to it fall back to
    PCIe (a rank seen alone judges its host's GPUs it takes the job to use, as
    ``pcie_between`` does)."""
    if current is None or not current.nvlink_built_in or max(
            (v.world_size for v in views), default=1) < 2:
        return False
    for v, mine in _used_gpus(views):
        for d in (v.topology or {}).get("devices") or []:
            if ((not mine or d.get("index") in mine)
                    and d.get("nvlink_links_active", 1) == 0):
                return True
    return False


def pcie_between(views: Sequence[RankInput]) -> bool:
    """Whether two GPUs the job uses on a host have no NVLink between them (the topology's
    P2P map: NVLink bridges that pair the cards two by two, a mixed node): collectives
    between them cross PCIe, whatever links the others have."""
    return _pair_without(views, "nvlink")


def _pair_without(views: Sequence[RankInput], what: str) -> bool:
    """Whether the P2P map of a host says ``what`` (``read``, ``nvlink``) is false for a
    pair of GPUs the job uses there (an absent word says nothing). A rank seen alone
    knows only its own GPU: its peers' are inferred (``_peers_gpus``), so a rank-scope
    projection judges the links as the job-wide one does."""
    for v, mine in _used_gpus(views):
        for pair in (v.topology or {}).get("p2p") or []:
            gpus = pair.get("gpus") if isinstance(pair, dict) else None
            if (isinstance(gpus, list) and len(gpus) == 2 and set(gpus) <= mine
                    and pair.get(what) is False):
                return True
    return False


def gpus_per_host(views: Sequence[RankInput]) -> int:
    """The most GPUs the job uses on one host (``_used_gpus``; where no topology names
    them, its ranks there, as their meta lines name the host; 1 where nothing says)."""
    ranks_on = Counter(v.host for v in views)
    return max((len(mine) or ranks_on[v.host] for v, mine in _used_gpus(views)),
               default=1) or 1


def _used_gpus(views: Sequence[RankInput]) -> Iterator[tuple[RankInput, set[int]]]:
    """Each view with the GPUs the job uses on its host (their ``job_gpus`` together; a
    rank seen alone: its inferred peers', ``_peers_gpus``)."""
    used: dict[str, set[int]] = {}
    for v in views:
        used.setdefault(v.host, set()).update((v.topology or {}).get("job_gpus") or [])
    for v in views:
        yield v, (_peers_gpus(v, used[v.host]) if len(views) == 1 else used[v.host])


def _peers_gpus(view: RankInput, mine: set[int]) -> set[int]:
    """The GPUs a rank seen alone (it knows its own) takes its job to use on its host:
    where the job fits the host and the rank's GPU is among its first ``world_size``,
    those (each rank on the device of its local rank); else its own alone."""
    count = (view.topology or {}).get("gpu_count") or 0
    if len(mine) == 1 and 1 < view.world_size <= count and max(mine) < view.world_size:
        return set(range(view.world_size))
    return mine


def tensor_share(view: RankInput, since: float) -> float | None:
    """Tensor-bound share of compute from GPM: tensor / (tensor + DRAM) activity."""
    t = _figure_mean(view, "nvml", "gpu_tensor_active_ratio", since)
    d = _figure_mean(view, "nvml", "gpu_dram_active_ratio", since)
    if t is None or d is None:
        return None
    return t / (t + d) if t + d > 0 else None


def with_interruptions(parts: StepParts, view: Telemetry, now: float) -> StepParts:
    """``parts`` with the rank's interruptions spread over its steps at their run-long shares:
    a window of typical steps leaves rare ones out, yet the run pays for each. Blocking
    saves (``Telemetry.save_share``) become checkpoint time, GPU work through
    interruptions (a rollout, generation, an evaluation's forward passes) compute, the
    rest (recompiles, epoch restarts, waits for a rank working alone:
    ``Telemetry.interruption_share``) other time, which a projection keeps as measured.
    The step grows so that each part is its share of it; a window that already holds
    more checkpoint time keeps its own."""
    saves, rest = view.save_share(now), view.interruption_share(now)
    if saves + rest <= 0 or saves + rest >= 1:
        return parts
    gpu = view.interruption_share(now, ("gpu", "eval"))
    total = (parts.total - parts.checkpoint) / (1 - saves - rest)
    checkpoint = max(saves * total, parts.checkpoint)
    return parts._replace(checkpoint=checkpoint, compute=parts.compute + gpu * total,
                          other=parts.other + (rest - gpu) * total)


def mean_parts(summary: StepSummary) -> StepParts:
    """The mean step as projection parts (``vocabulary.split_step``; ``comm`` is the
    collective part)."""
    data, compute, recompute, comm, optimizer, checkpoint, other = split_step(summary)
    return StepParts(compute=compute, recompute=recompute, comm=comm, data=data,
                     checkpoint=checkpoint, other=other, comm_bytes=summary.collective_bytes,
                     p2p_bytes=summary.p2p_bytes, optimizer=optimizer)

