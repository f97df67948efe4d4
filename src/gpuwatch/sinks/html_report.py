"""``report.html``: one self-contained page per run, verdicts first.

No script, no external stylesheet, font or image: inline CSS and inline SVG
(sinks/svg.py), so it opens from disk with no network and can be mailed or
archived as one file. Sections: verdicts; step time by phase over the run with
checkpoint saves marked; GPU utilisation and memory against the card's limit;
exposed collective wait per rank; checkpoint saves; the projection with its
range and assumptions; cost and time to finish; and, when given, a comparison.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

from gpuwatch.detection.compare import Comparison, projected_speedup
from gpuwatch.detection.projection import Gpu, speedup_text
from gpuwatch.detection.run_profile import RunProfile, profile
from gpuwatch.records import Finding
from gpuwatch.runlog import write_whole
from gpuwatch.sinks import fmt, svg
from gpuwatch.sinks.comparison import comparison_html
from gpuwatch.sinks.report import fold_ranks, rank_text
from gpuwatch.sinks.slack_message import evidence_lines
from gpuwatch.vocabulary import PARTS

REPORT_NAME = "report.html"
TIME_UNITS = ((180, 1, "seconds"), (3 * 3600, 60, "minutes"), (3 * 86400, 3600, "hours"))
VERDICT_ORDER = {"move_to_h100": 0, "fix_here": 1, "info": 2}
VERDICT_TEXT = {"move_to_h100": "Move to a bigger GPU", "fix_here": "Fix it here",
                "info": "For information"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;
background:#f6f7f9}
main{max-width:960px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6570;margin:0 0 16px}
.finding{background:#fff;border-left:6px solid #999;border-radius:6px;padding:10px 14px;
margin:8px 0;box-shadow:0 1px 2px #0001}
.finding.move_to_h100{border-color:#2f7dd1}.finding.fix_here{border-color:#e0892b}
.finding.info{border-color:#8a96a3}.finding.resolved{opacity:.7}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;
color:#fff;background:#8a96a3;margin-right:6px}
.move_to_h100 .badge{background:#2f7dd1}.fix_here .badge{background:#e0892b}
.finding p{margin:4px 0}.do{color:#33404d}
details{margin-top:4px;color:#4a5560}summary{cursor:pointer}
.none{background:#fff;padding:12px;border-radius:6px}
figure{background:#fff;margin:8px 0;padding:8px;border-radius:6px;box-shadow:0 1px 2px #0001}
figcaption{font-weight:600;margin:0 0 4px}
svg{width:100%;height:auto;display:block}
.axis{stroke:#55606b}.grid{stroke:#e3e6ea}.tick{font-size:11px;fill:#55606b}
.marker{stroke:#c0392b;stroke-width:1.2;stroke-dasharray:3 3}
.limit{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:6 4}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:4px 0 0 60px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
td,th{padding:4px 10px;border-bottom:1px solid #e6e8eb;text-align:left}
th{background:#eef1f4;font-weight:600}.note{color:#5b6570;font-size:13px}
.kv td:first-child{color:#4a5560}
"""

REPORT_HEAD = b'<!DOCTYPE html><html lang="en">'  # how every report begins


def write_report(out_dir: Path, findings: list[Finding], run: RunProfile | None = None,
                 comparison: Comparison | None = None) -> Path:
    """Write ``report.html`` into ``out_dir`` (the run directory) and return its path."""
    run = run if run is not None else profile([out_dir])
    path = out_dir / REPORT_NAME
    write_whole(path, render(run, findings, comparison))
    return path


def render(run: RunProfile, findings: list[Finding], comparison: Comparison | None = None,
           generated: float | None = None) -> str:
    """The whole page as one string."""
    sections = [_header(run, generated or time.time()), _verdicts(findings), _phases(run),
                _gpus(run), _collectives(run), _checkpoints(run), _projection(findings),
                _finish(run, findings)]
    if comparison is not None:
        sections.append(comparison_html(comparison))
    return (REPORT_HEAD.decode() + '<head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>gpuwatch report: {escape(run.job or 'run')}</title>"
            f"<style>{CSS}</style></head><body><main>" + "".join(sections)
            + "</main></body></html>\n")


def _header(run: RunProfile, generated: float) -> str:
    duration = run.ended - run.started if run.ended and run.started else None
    gpu = run.gpu_name() or "no GPU seen"
    facts = [f"{run.world_size} rank{'s' if run.world_size != 1 else ''} on "
             f"{', '.join(sorted(run.hosts)) or '?'}", gpu,
             f"{run.last_step} steps", f"{fmt.seconds(duration)} of records",
             f"mean step {fmt.seconds(run.mean_step_s())}"]
    if run.ooms:
        facts.append(f"{run.ooms} out-of-memory error{'s' if run.ooms != 1 else ''}")
    if run.skipped_lines:
        facts.append(f"{run.skipped_lines} unreadable log line(s) skipped")
    started, made = fmt.utc(run.started), fmt.utc(generated)
    return (f"<header><h1>gpuwatch report: {escape(run.job or 'run')}</h1>"
            f'<p class="sub">{escape(" · ".join(facts))}<br>started {escape(started)}; '
            f"report made {escape(made)}</p></header>")


def _verdicts(findings: list[Finding]) -> str:
    if not findings:
        return ('<section id="verdicts"><h2>Verdicts</h2><p class="none">No findings: nothing '
                "held this run back that gpuwatch can see.</p></section>")
    ordered = sorted(fold_ranks(findings),
                     key=lambda pair: (pair[0].state != "active", VERDICT_ORDER[pair[0].verdict]))
    cards = []
    for f, ranks in ordered:
        evidence = _table(evidence_lines(f.evidence))
        state = " (resolved)" if f.state == "resolved" else ""
        cards.append(
            f'<div class="finding {f.verdict} {f.state}" data-detector="{escape(f.detector)}">'
            f'<p><span class="badge">{escape(VERDICT_TEXT[f.verdict])}</span>'
            f"<b>{escape(f.detector)}</b> · {escape(f.severity)} · {escape(rank_text(f, ranks))}"
            f"{escape(state)}</p><p>{escape(f.summary)}</p>"
            f'<p class="do">Do: {escape(f.action)}</p>'
            f"<details><summary>evidence</summary>{evidence}</details></div>")
    return f'<section id="verdicts"><h2>Verdicts</h2>{"".join(cards)}</section>'


def _time_axis(run: RunProfile, note: str = "") -> svg.Axis:
    """Seconds since the start, read in a unit that suits the run's length (ticks on
    round numbers of it); ``note`` follows the label."""
    span = max(run.ended - run.started, 0.0) if run.started else 0.0
    scale, name = next(((scale, name) for limit, scale, name in TIME_UNITS if span <= limit),
                       (86400, "days"))
    return svg.Axis(lambda v: f"{v / scale:.4g}", f"{name} since start{note}", scale)


def _figure(caption: str, chart: str, legend: str = "") -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{chart}{legend}</figure>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _checkpoint_markers(run: RunProfile) -> list[svg.Marker]:
    return [svg.Marker(c.t - run.started, f"checkpoint save, rank {c.rank}: "
                       f"{fmt.seconds(c.seconds)}, {fmt.nbytes(c.nbytes)}")
            for c in run.checkpoints]


def _phases(run: RunProfile) -> str:
    bins = run.timeline.means()
    title = "Step time by phase over the run"
    if not bins:
        return f'<section id="phases"><h2>{title}</h2>{_note("No training steps recorded.")}'\
               "</section>"
    xs = [values[-1] - run.started for _, values in bins]  # the bin's mean end time
    series = {p: [values[i] for _, values in bins] for i, p in enumerate(PARTS)}
    used = {p: v for p, v in series.items() if any(x > 0 for x in v)}
    markers = _checkpoint_markers(run)
    axis = _time_axis(run, " (dashed: checkpoint saves)" if markers else "")
    chart = svg.stacked_area("phases", title, xs, used, x_axis=axis, fmt_y=fmt.seconds,
                             markers=markers)
    totals = run.phase_seconds()
    wall = sum(totals.values())
    shares = ", ".join(f"{p} {fmt.share(s / wall)}" for p, s in totals.items() if s > 0) \
        if wall else ""
    return (f'<section id="phases"><h2>{title}</h2>'
            + _figure("Mean seconds per step, stacked (all ranks)", chart, svg.legend(list(used)))
            + _note(f"Share of step time after warm-up: {shares}.") + "</section>")


def _gpus(run: RunProfile) -> str:
    head = '<section id="gpu"><h2>GPU utilisation and memory</h2>'
    if not run.gpu_timelines:
        memory = ""
        if run.memory_peak_bytes:
            memory = (f" Allocator peak {fmt.nbytes(run.memory_peak_bytes)} of "
                      f"{fmt.nbytes(run.memory_limit_bytes)}.")
        return head + _note("No NVML samples in this run (no NVML-visible GPU)." + memory) \
            + "</section>"
    util: dict[str, tuple[list[float], list[float]]] = {}
    used: dict[str, tuple[list[float], list[float]]] = {}
    for (rank, gpu), bins in sorted(run.gpu_timelines.items()):
        label = f"rank {rank} · GPU {gpu}"
        means, peaks = bins.means(), bins.peaks()
        util[label] = ([t - run.started for t, _ in means], [v[0] for _, v in means])
        used[label] = ([t - run.started for t, _ in peaks], [v[1] for _, v in peaks])
    markers = _checkpoint_markers(run)
    axis = _time_axis(run)
    util_chart = svg.lines("gpu_utilization", "GPU utilisation", util, x_axis=axis,
                           fmt_y=lambda v: f"{v:.0%}", y_max=1.0, markers=markers)
    limit = run.memory_limit_bytes
    mem_chart = svg.lines("gpu_memory", "GPU memory used against the card's limit", used,
                          x_axis=axis, fmt_y=fmt.nbytes,
                          limit=(limit, f"limit {fmt.nbytes(limit)}") if limit else None,
                          markers=markers)
    headroom = ""
    if run.memory_peak_bytes and limit:
        headroom = (f"Peak {fmt.nbytes(run.memory_peak_bytes)} of {fmt.nbytes(limit)}: "
                    f"{fmt.share(1 - run.memory_peak_bytes / limit)} headroom.")
    return (head + _figure("Utilisation (mean per bin)", util_chart, svg.legend(list(util)))
            + _figure("Memory used (peak per bin)", mem_chart, svg.legend(list(used)))
            + _note(headroom) + "</section>")


def _collectives(run: RunProfile) -> str:
    head = '<section id="collectives"><h2>Collective wait per rank</h2>'
    i = PARTS.index("collective")
    per_rank = {f"rank {r}": t.phases[i] / t.steps for r, t in sorted(run.ranks.items())
                if t.steps}
    if not any(per_rank.values()):
        why = "one rank" if len(run.ranks) <= 1 else "no exposed collective wait measured"
        return head + _note(f"No collective wait: {why}.") + "</section>"
    chart = svg.bars("collectives", "Exposed collective wait per step, by rank", per_rank,
                     fmt_y=fmt.seconds, x_label="rank")
    return (head + _figure("Mean exposed collective wait per step", chart)
            + _note("Equal bars: every rank waits for the wire (sync). One short bar: "
                    "the others wait for that rank (a straggler).") + "</section>")


def _checkpoints(run: RunProfile) -> str:
    head = '<section id="checkpoints"><h2>Checkpoint saves</h2>'
    if not run.checkpoints_total:
        return head + _note("No checkpoint saves recorded.") + "</section>"
    cps = run.checkpoints
    total_s = sum(c.seconds for c in cps)
    wall = sum(t.wall_s for t in run.ranks.values())
    share = run.phase_seconds()["checkpoint"] / wall if wall else None
    rows = [("saves", f"{run.checkpoints_total} (marked on the timelines above)"),
            ("mean save", fmt.seconds(total_s / len(cps))),
            ("longest save", fmt.seconds(max(c.seconds for c in cps))),
            ("mean size", fmt.nbytes(sum(c.nbytes for c in cps) / len(cps))),
            ("share of step time" + (", all ranks" if len(run.ranks) > 1 else ""),
             fmt.share(share))]
    saver = _most_saving(run)
    if saver is not None and len(run.ranks) > 1:
        rows.append((f"share of rank {saver[0]}'s step time", fmt.share(saver[1])))
    return head + _table(rows) + "</section>"


def _most_saving(run: RunProfile) -> tuple[int, float] | None:
    """The rank that spends the largest share of its step time saving, and that share
    (the saving rank's figure, which checkpoint_overhead judges); None without saves."""
    i = PARTS.index("checkpoint")
    shares = [(t.phases[i] / t.wall_s, rank) for rank, t in run.ranks.items() if t.wall_s > 0]
    share, rank = max(shares, default=(0.0, -1))
    return (rank, share) if share > 0 else None


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _projections(findings: list[Finding]) -> list[tuple[Finding, dict[str, Any]]]:
    """One projection per target GPU: the most cautious (lowest speedup) of the findings
    that carry one, so ranks that disagree never show the rosiest."""
    best: dict[str, tuple[float, Finding, dict[str, Any]]] = {}
    for f in findings:
        p = f.projection
        speed = projected_speedup(p) if p else None
        if p and speed is not None:
            target = str(p.get("target"))
            if target not in best or speed.speedup < best[target][0]:
                best[target] = (speed.speedup, f, p)
    return [(f, p) for _, f, p in best.values()]


SHOWN = {"target", "current", "parts_seconds_now", "parts_seconds_projected", "assumptions",
         "workarounds_dropped"}


def _projection(findings: list[Finding]) -> str:
    head = '<section id="projection"><h2>Projection</h2>'
    found = _projections(findings)
    if not found:
        return head + _note("No detector projected this run onto another GPU: nothing here "
                            "that a bigger card would clearly change.") + "</section>"
    out = [head]
    fixes = sorted({f.detector for f in findings
                    if f.verdict == "fix_here" and f.state == "active"})
    if fixes:
        out.append(_note(f"Fix here first ({', '.join(fixes)}): a projection carries today's "
                         "waste over to the new card."))
    for f, p in found:
        span = speedup_text(p) if "speedup_ratio" in p else ""
        out.append(f"<h3>{escape(str(p.get('current') or 'this GPU'))} → "
                   f"{escape(str(p.get('target')))}: {escape(span)}</h3>"
                   f'<p class="note">from {escape(f.detector)}</p>')
        now, proj = p.get("parts_seconds_now") or {}, p.get("parts_seconds_projected") or {}
        if isinstance(now, dict) and isinstance(proj, dict) and now:
            rows = "".join(f"<tr><td>{escape(k)}</td><td>{fmt.seconds(_num(now.get(k)))}</td>"
                           f"<td>{fmt.seconds(_num(proj.get(k)))}</td></tr>"
                           for k in now if _num(now.get(k)) or _num(proj.get(k)))
            out.append("<table><tr><th>part of the step</th><th>now</th><th>projected</th></tr>"
                       f"{rows}</table>")
        scalars = {k: v for k, v in p.items()
                   if k not in SHOWN and isinstance(v, (int, float, str)) and v is not None}
        out.append(_table(evidence_lines(scalars)))
        notes = [*(p.get("assumptions") or []), *(p.get("workarounds_dropped") or [])]
        if notes:
            out.append("<p>Assumptions:</p><ul>"
                       + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>")
    return "".join(out) + "</section>"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _finish(run: RunProfile, findings: list[Finding]) -> str:
    head = '<section id="finish"><h2>Cost and time to finish</h2>'
    step_s = run.mean_step_s()
    price = run.usd_per_hour()
    gpu = run.gpu()
    rows = [("mean step (after warm-up)", fmt.seconds(step_s)),
            ("GPU price", f"{fmt.usd(price)} per hour for {max(run.world_size, 1)} "
                          f"x {gpu.name}" if gpu and price is not None
             else "unknown GPU: set gpu_model for costs")]
    if step_s and price is not None:
        rows.append(("cost per step", fmt.usd(price * step_s / 3600)))
        unit = run.unit()
        per_unit = run.seconds_per_unit(unit)
        if unit != "step" and per_unit:
            rows.append((f"cost per 1k {unit}s", fmt.usd(price * per_unit["step"] / 3.6)))
    planned = run.planned_steps
    if not planned or not step_s:
        rows.append(("time to finish", "planned steps unknown: set total_steps "
                                       "(GPUWATCH_TOTAL_STEPS) or use a framework adapter"))
        return head + _table(rows) + "</section>"
    remaining = max(planned - run.last_step, 0)
    here_s = remaining * step_s
    rows += [("steps done / planned", f"{run.last_step} / {planned}"),
             ("time to finish here", fmt.seconds(here_s))]
    if price is not None:
        rows.append(("cost to finish here", fmt.usd(price * here_s / 3600)))
    for _, p in _projections(findings):
        target = _target_gpu(run, p)
        projected = _num(p.get("step_seconds_projected"))
        if projected is None or target is None:
            continue
        now = _num(p.get("step_seconds_now")) or step_s
        there_s = remaining * step_s * projected / now
        rows.append((f"time to finish on {target.name}", fmt.seconds(there_s)))
        rows.append((f"cost to finish on {target.name}", fmt.usd(
            target.price_per_hour * max(run.world_size, 1) * there_s / 3600)))
    return head + _table(rows) + "</section>"


def _target_gpu(run: RunProfile, p: dict[str, Any]) -> Gpu | None:
    return run.catalogue().get(str(p.get("target")))
