"""sync_bottleneck: ranks spend a large share of each step waiting in collectives.

Step by step (``skew.split``) the wait is split into transfer (the least wait across
ranks) and waiting on a slower rank, and the larger part decides. Mostly waiting on a
rank that changes from step to step: fix here (balance the batches). Mostly waiting on
one fixed rank (it caused most of the waiting): the straggler's case, not this one.
Mostly transfer: a move only when the bytes over the slowest link the collectives cross
explain it (no NVLink, bandwidth-bound; a path through host memory, where the GPUs
cannot reach each other peer to peer, always is); with NVLink already, latency-bound, or
a link that could carry the bytes far faster: fix here (overlap, bucketing). Mostly
point-to-point bytes (a pipeline) that even the path's slowest rate moves in a fraction
of the wait: the pipeline's bubble, fix here (more micro-batches, another schedule).
Bound by the link between nodes, or by a network between nodes that nothing reports: fix
here too (no GPU changes the fabric; projections keep that wait). With no bytes or no
topology seen, nothing tells bandwidth from the rest: ``info``, no move.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuwatch.detection import skew
from gpuwatch.detection.context import (
    Context,
    Detection,
    gpus_per_host,
    has_nvlink,
    inter_node_link,
    job_devices,
    mean_parts,
    nvlink_down,
    pcie_slot,
    recent,
    spans_nodes,
    uneven_rails,
    window_start,
    with_interruptions,
)
from gpuwatch.detection.projection import (
    HOST_STAGED_SHARE,
    Projection,
    mean_step_parts,
    p2p_rate,
    pipelined,
    speedup_text,
)
from gpuwatch.detection.rank_input import RankInput
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry

BULK_BYTES_PER_STEP = 1e9  # bus bytes a step past which a slow wait is no latency's


def detect(views: Sequence[RankInput], rule: Rule, ctx: Context, now: float) -> Detection | None:
    since = min(window_start(v, rule, now) for v in views)
    th = rule.thresholds
    summaries = {v.rank: s for v in views if (s := recent(v, rule, now)) is not None}
    if len(summaries) < 2 or len(summaries) < len(views):
        return None
    split = skew.split(views, since, rule.min_steps)
    if split is None:
        return None
    wait_share = split.transfer_share + split.skew_share
    if wait_share < th["collective_share"]:
        return None
    ranks = sorted(summaries)
    # one rank, or a few (judged first), hold the others: stragglers, whose waiting is
    # their finding's; the transfer alone must reach the share to be this one
    straggled = (split.fixed_last(th["fixed_rank_share"]) is not None
                 or any("straggler" in ctx.explained.get(r, ()) for r in ranks))
    if straggled and split.transfer_share < th["collective_share"]:
        return None
    parts = [mean_parts(s) for s in summaries.values()]
    mean = mean_step_parts(parts)
    if isinstance(views[0], Telemetry):  # (rank 0's own, live and in a replay alike)
        mean = with_interruptions(mean, views[0], now)  # the run pays its saves and evals
    evidence = {"collective_share_ratio": wait_share,
                "collective_seconds_per_step": split.transfer_s + split.mean_skew_s,
                "transfer_seconds_per_step": split.transfer_s,
                "skew_seconds_per_step": split.mean_skew_s,
                "collective_bytes_per_step": mean.comm_bytes,
                "p2p_bytes_per_step": mean.p2p_bytes,
                "wait_caused_max_share_ratio": max(split.caused_share.values())}
    if straggled:  # (the stragglers' finding has their waiting: this one is the transfer)
        evidence["collective_share_ratio"] = split.transfer_share
        evidence["collective_seconds_per_step"] = split.transfer_s
    achieved = achieved_bandwidth(views, since)
    if achieved is not None:
        evidence["achieved_bus_bytes_per_second"] = achieved
    link, link_name = slowest_link(views, th["inter_node_bytes_per_second"])
    seen = any(job_devices(v) for v in views)  # a topology from NVML
    declared = ctx.declared_gpu(views)
    if declared is not None and (link is None or declared.link_bandwidth < link):
        link = declared.link_bandwidth  # no topology, but the card is named: its own link
        link_name = (f"{'NVLink' if declared.nvlink_bandwidth else 'PCIe'} "
                     f"({declared.name}, as configured)")
    if link is not None:
        evidence["link_bytes_per_second"] = link
    pcie = [f.high for v in views
            if (f := v.figure("nvml", "gpu_pcie_tx_bytes_per_second", since)) is not None]
    if pcie:
        evidence["pcie_tx_bytes_per_second"] = max(pcie)
    text = {"ranks_n": len(ranks), "outcome": "", "unseen": unseen(views)}
    rails = uneven_rails(views)
    if split.mean_skew_s > split.transfer_s and not straggled:
        text |= {"link": "most of it waiting on a slower rank, a different one from step "
                         "to step, not transfer",
                 "advice": "Balance the work per rank per step: bucket or pack variable-length "
                           "sequences to equal tokens per rank, balance MoE routing (capacity "
                           "factor, auxiliary loss). A faster link would not help."}
        return Detection(evidence, ranks, text=text, verdict="fix_here")
    fabric = inter_node_link(views, th["inter_node_bytes_per_second"])
    proj = ctx.project(views, mean, since, fabric=fabric, transfer_s=split.transfer_s)
    unsized = mean.comm_bytes <= 0  # no collective's bytes were seen
    small = 0 < mean.comm_bytes < th["min_bytes_per_step"]
    rate = link
    if ctx.host_staged(views):  # the GPUs' path through host memory, at its slowest (see
        # ``staged_floor``): the link, unless a fabric between nodes is slower still
        within, within_name = (slowest_link(views, th["inter_node_bytes_per_second"],
                                            across_nodes=False) if declared is None
                               else (declared.link_bandwidth, link_name))  # (its slot)
        floor = staged_floor(within, gpus_per_host(views)) if within is not None else None
        if floor is not None and (link is None or floor < link):
            rate, link_name = floor, within_name + " through host memory (no P2P between the GPUs)"
            evidence["staged_bytes_per_second"] = floor  # (what ``link_seconds`` is at)
    needed = mean.comm_bytes / rate if rate and not unsized else None  # the link's seconds
    if needed is not None:
        evidence["link_seconds_per_step"] = needed
    explained = needed is None or needed >= th["link_explained_ratio"] * split.transfer_s
    inter_node = "inter-node" in link_name
    if not seen and declared is None:
        text |= {"link": "over links gpuwatch cannot see (no GPU topology: NVML not "
                         "readable)",
                 "advice": "Without the links between the GPUs, gpuwatch cannot tell a slow "
                           "link from latency or contention, so it recommends no move: give "
                           "the agent NVML access, or run nccl-tests on these GPUs and "
                           "compare their bus bandwidth."}
        return Detection(evidence, ranks, text=text, verdict="info")
    if fabric is None and spans_nodes(views):
        text |= {"link": "across nodes over a network gpuwatch cannot see (no InfiniBand or "
                         "RoCE port reported: NCCL over TCP sockets?)",
                 "outcome": f"; on {proj.target.name} nodes on the same network the wait stays",
                 "advice": "The network between nodes bounds the collectives on any GPU: "
                           "use RDMA (InfiniBand or RoCE with GPUDirect), hierarchical "
                           "all-reduce, or all-reduce less often (accumulate gradients over "
                           "more micro-batches, overlap them with backward). Set "
                           "sync_bottleneck's inter_node_bytes_per_second to the network's "
                           "rate for gpuwatch to judge the bytes."}
        return Detection(_priced(evidence, proj), ranks, text=text, projection=proj.as_dict(),
                         verdict="fix_here")
    # a pipeline's sends at the slowest rate of their path (the projection's own split)
    rate = p2p_rate(proj.inputs, proj.current) if pipelined(mean.comm_bytes, mean.p2p_bytes) \
        else None
    sends_s = mean.comm_bytes / rate if rate else None
    if sends_s is not None and sends_s < th["link_explained_ratio"] * split.transfer_s:
        moved = (f"point-to-point sends carry {mean.comm_bytes / 1e6:.0f} MB per step"
                 if mean.p2p_bytes >= mean.comm_bytes else
                 f"its sends and collectives carry {mean.comm_bytes / 1e6:.0f} MB per step "
                 f"({mean.p2p_bytes / 1e6:.0f} MB point-to-point)")
        text |= {"link": f"the pipeline's bubble: {moved}, at most {sends_s:.2g} s over "
                         f"{link_name}",
                 "advice": "The pipeline's stages wait on each other's compute, not on the "
                           "link: more micro-batches per step (a 1F1B schedule idles "
                           "(stages - 1) / (micro-batches + stages - 1) of it), an interleaved "
                           "or zero-bubble schedule, stages of equal compute. A faster link "
                           "would barely help."}
        # (the evidence says the seconds the sends were judged by: a pipeline's stages
        # send to their neighbours, not a ring whose every GPU shares the host's path)
        evidence["link_seconds_per_step"] = sends_s
        evidence.pop("staged_bytes_per_second", None)
        return Detection(evidence, ranks, text=text, verdict="fix_here")
    if (card := proj.current) is not None and nvlink_down(views, card) and not inter_node:
        text |= {"link": f"over {link_name}: NVLink reads down on {card.name} cards built "
                         "with it",
                 "advice": "These cards are built to talk over NVLink; with a GPU's links down "
                           "the collectives to it fall back to PCIe. Check `nvidia-smi nvlink "
                           "--status` and `nvidia-smi topo -m`, and on NVSwitch systems the "
                           "fabric manager (nvidia-fabricmanager), then run again: no move is "
                           "judged until the links are up."}
        return Detection(evidence, ranks, text=text, verdict="fix_here")
    if explained and has_nvlink(views) and not inter_node:  # (bytes unseen: explained)
        text |= {"link": "over NVLink already",
                 "advice": "The link is not the problem: overlap communication with compute "
                           "(DDP bucket size, FSDP prefetch), accumulate gradients over more "
                           "micro-batches, or compress gradients."}
    elif unsized:
        text |= {"link": f"over {link_name}, bytes per step not seen",
                 "advice": "Without the bytes the collectives move, gpuwatch cannot tell a "
                           "slow link from latency, contention or a misconfigured NCCL, so it "
                           "recommends no move: let gpuwatch size the collectives "
                           "(torch.distributed calls or a DDP comm hook), or run nccl-tests "
                           "on these GPUs and compare their bus bandwidth."}
        return Detection(evidence, ranks, text=text, verdict="info")
    elif small:
        text |= {"link": f"{mean.comm_bytes / 1e6:.2f} MB per step: latency-bound, not "
                         "bandwidth-bound",
                 "advice": "Many small collectives: fuse them (flatten gradients into one "
                           "buffer, larger DDP buckets) and overlap them with backward. A "
                           "faster link would barely help."}
    elif not explained:
        # (gigabytes a step are no latency: a path slower than the link's rating is)
        suspects = ("contention: GPUs sharing a PCIe switch's uplink, or traffic crossing "
                    "CPU sockets (`nvidia-smi topo -m`: SYS or NODE between them), or a "
                    "misconfigured NCCL" if mean.comm_bytes >= BULK_BYTES_PER_STEP else
                    "latency (many small collectives), contention or a misconfigured NCCL")
        text |= {"link": f"{link_name} could move these bytes in {needed:.3g} s: not the "
                         "link's bandwidth",
                 "advice": f"The wait is not explained by bytes over the link: look for "
                           f"{suspects} (check NCCL_DEBUG=INFO for the transport it picked)."
                           + _rails_advice(rails)}
    elif inter_node:  # no GPU changes the link between nodes: the wait stays
        there = proj.current is None or proj.current.name != proj.target.name
        text |= {"link": f"bandwidth-bound over {link_name}",
                 "outcome": (f"; on {proj.target.name} nodes on the same fabric the wait stays "
                             f"(the step {speedup_text(proj.as_dict())} faster, from compute "
                             "alone)") if there else "",
                 "advice": "The link between nodes bounds the all-reduce on any GPU: a faster "
                           "fabric (more rails, GPUDirect RDMA), hierarchical all-reduce, or "
                           "fewer all-reduces (accumulate gradients over more micro-batches, "
                           "overlap them with backward)." + _rails_advice(rails)}
        if not there:  # (already on the target: no move to price)
            return Detection(evidence, ranks, text=text, verdict="fix_here")
        return Detection(_priced(evidence, proj), ranks, text=text, projection=proj.as_dict(),
                         verdict="fix_here")
    elif ctx.decide(proj, otherwise="fix_here") != "move_to_h100":
        why = proj.economics["decision"]["why"]
        text |= {"link": f"bandwidth-bound over {link_name}",
                 "outcome": f"; on {proj.target.name} with NVLink the step is projected "
                            f"{speedup_text(proj.as_dict())} faster",
                 "advice": f"{why[:1].upper()}{why[1:]}. Accumulate "
                           "gradients over more micro-batches and overlap the all-reduce "
                           "with backward."}
        return Detection(_priced(evidence, proj), ranks, text=text, projection=proj.as_dict(),
                         verdict="fix_here")
    else:
        text |= {"link": f"bandwidth-bound over {link_name}",
                 "outcome": f"; on {proj.target.name} with NVLink the step is projected "
                            f"{speedup_text(proj.as_dict())} faster",
                 "advice": f"Move to {proj.target.name} nodes with NVLink/NVSwitch; meanwhile "
                           "accumulate gradients over more micro-batches to all-reduce less "
                           "often."}
        return Detection(_priced(evidence, proj), ranks, text=text, projection=proj.as_dict(),
                         verdict="move_to_h100")
    return Detection(evidence, ranks, text=text, verdict="fix_here")


def staged_floor(slot: float, gpus: int) -> float:
    """The slowest rate (bytes/s) a path through host memory plausibly moves a GPU's
    bytes at: the projection's ``HOST_STAGED_SHARE`` of its slot, shared by the ``gpus``
    that stage through the same host memory at once (a ring's every GPU does). A wait
    that even this rate would move the bytes in a fraction of is not that path's
    bandwidth (latency, contention, NCCL's transport): no card fixes it."""
    return slot * HOST_STAGED_SHARE / max(gpus, 1)


def _priced(evidence: dict[str, float], proj: Projection) -> dict[str, float]:
    """``evidence`` with the projected speedup, for a detection that carries ``proj``
    (one without a projection claims no speedup)."""
    return evidence | {"speedup_ratio": proj.speedup}


def _rails_advice(rails: str) -> str:
    """A clause for nodes short of InfiniBand ports (``uneven_rails``), else empty."""
    return (f" Not every node has all its rails: {rails}; NCCL's rings go at the pace of "
            "the node with the fewest, so bring its ports up (ibstat)." if rails else "")


def unseen(views: Sequence[RankInput]) -> str:
    """What collective waits the ranks could not time (their ``collective_timing``
    events), as a clause for the summary; empty when everything was timed."""
    missing: list[str] = []
    for v in views:
        for what, how in v.collective_timing().items():
            if not isinstance(how, str) or not how.startswith("not timed"):
                continue
            note = f"{what} ({how.removeprefix('not timed: ')})"
            if note not in missing:
                missing.append(note)
    return f"; not timed: {', '.join(missing)}" if missing else ""


def achieved_bandwidth(views: Sequence[RankInput], since: float) -> float | None:
    """Bus bytes over the full device duration of the collectives whose duration was
    seen in the window (bytes/s): NCCL's own timing where on (every collective), else
    the blocking collectives timed in the ranks' steps; None when none was seen."""
    nbytes = sum(v.counter_rise("nccl", "nccl_bus_bytes_total", since) for v in views)
    seconds = sum(v.counter_rise("nccl", "nccl_collective_seconds_total", since) for v in views)
    if seconds > 0 and nbytes > 0:
        return nbytes / seconds
    timed = [v.timed_collectives(since) for v in views]
    nbytes, seconds = sum(b for b, _ in timed), sum(s for _, s in timed)
    return nbytes / seconds if seconds > 0 and nbytes > 0 else None


def slowest_link(views: Sequence[RankInput], inter_node: float,
                 across_nodes: bool = True) -> tuple[float | None, str]:
    """The slowest link the job's collectives cross (bytes/s per direction) and its name:
    within a node NVLink, else PCIe; ``across_nodes``, also the link between them
    (``inter_node_link``: the setting, else InfiniBand). None where nothing says."""
    links: list[tuple[float, str]] = []
    nvlink = has_nvlink(views)
    for v in views:
        for d in job_devices(v):
            if nvlink and d.get("nvlink_bytes_per_second") and d.get("nvlink_links_active", 0):
                links.append((float(d["nvlink_bytes_per_second"]), "NVLink"))
            elif (slot := pcie_slot(d)) is not None:
                links.append(slot)
    between = inter_node_link(views, inter_node) if across_nodes else None
    if between is not None:
        links.append((between, "the inter-node link" if inter_node > 0 else
                      f"{_link_layer(views)} (inter-node)"))
    if not links:
        return None, "PCIe or the host (no NVLink seen)"
    return min(links)


def _link_layer(views: Sequence[RankInput]) -> str:
    """What the ranks' InfiniBand ports call their link layer (InfiniBand, Ethernet)."""
    for v in views:
        for port in (v.topology or {}).get("infiniband") or []:
            if isinstance(port, dict) and port.get("link_layer"):
                return str(port["link_layer"])
    return "InfiniBand"
