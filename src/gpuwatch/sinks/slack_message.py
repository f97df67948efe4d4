"""What a Slack message says, readable in two seconds: a short header (verdict and
job), the one-sentence summary, the evidence as labelled values with units, the
projection ("now -> on H100 (range)", cost per 1M tokens now -> there), what to do
and a link to the job's dashboard with its variables filled.

Every user-controlled string is escaped for Slack (``&``, ``<``, ``>``: a job named
``<!channel>`` pings nobody) and every Block Kit limit is kept (3000 characters a
section, 150 a header, 10 fields, 50 blocks), cutting at a word.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpuwatch.detection.projection import speedup_text
from gpuwatch.sinks import fmt

VERDICT_TITLES = {"move_to_h100": ":rocket: Move to H100", "fix_here": ":wrench: Fix it here",
                  "info": ":information_source: For information"}
STATE_PREFIX = {"resolved": "RESOLVED: ", "reminder": "still active: "}
HEADER_CHARS = 150
SECTION_CHARS = 3000
TEXT_CHARS = 3000  # the plain-text fallback (notifications, old clients)
MAX_BLOCKS = 50
BLOCKS_PER_NOTE = 4  # section, evidence, context, (room for the link)
BLOCK_FINDINGS = 10  # findings shown as blocks in one message; a last section lists the rest
DASHBOARD_UID = "gpuwatch-job"
TIMES, DASH = "\u00d7", "\u2013"  # shown in messages
HIDDEN_EVIDENCE = frozenset({"last_step_time_seconds"})  # the last progress's time says it


def escape(text: object) -> str:
    """Slack's three control characters escaped, so user text is shown, never parsed."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at a word with an ellipsis, never
    inside an escape (``&amp;``)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= limit // 2:
        head = head[:space]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head.rstrip() + "…"


# -- values with units --------------------------------------------------------------------

def _pct(v: float) -> str:
    return f"{v:.1%}" if 0 < abs(v) < 0.1 else f"{v:.0%}"


def _seconds(v: float) -> str:
    if abs(v) < 1:
        return f"{v * 1000:.3g} ms"
    if abs(v) < 120:
        return f"{v:.3g} s"
    if abs(v) < 2 * 3600:
        return f"{v / 60:.3g} min"
    return _hours(v / 3600)


def _hours(v: float) -> str:
    return f"{v:.3g} h" if abs(v) < 48 else f"{v / 24:.3g} days"


def _rate(v: float) -> str:
    return fmt.nbytes(v) + "/s"


def _count(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:.3g}"


def _times(v: float) -> str:
    return f"{v:.2g}{TIMES}"


def _usd(v: float) -> str:
    """Dollars with two significant digits below $1 ($0.00015), cents above."""
    if v == 0 or abs(v) >= 1:
        return f"${v:,.2f}"
    decimals = 1 - math.floor(math.log10(abs(v)))
    text = f"{v:.{decimals}f}"
    return "$" + (text.rstrip("0") if decimals > 2 else text)


UNITS: dict[str, Callable[[float], str]] = {
    "pct": _pct, "s": _seconds, "h": _hours, "bytes": fmt.nbytes, "rate": _rate, "n": _count,
    "x": _times, "usd": _usd, "utc": fmt.utc, "w": lambda v: f"{v:.0f} W",
    "usd_h": lambda v: f"{_usd(v)} per hour"}

# Suffix -> unit for evidence no line below names (longest suffix first).
SUFFIX_UNITS = (("_bytes_per_second", "rate"), ("_time_seconds", "utc"), ("_watts", "w"),
                ("_usd_per_hour", "usd_h"), ("_ratio", "pct"), ("_seconds", "s"),
                ("_hours", "h"), ("_bytes", "bytes"), ("_total", "n"), ("_usd", "usd"),
                ("_steps", "n"), ("_s", "s"))

# Words that make a ``_ratio`` a multiple (x), not a share of something (%)
MULTIPLES = ("speedup", "work_ratio", "factor", "gain")

# Evidence lines: a label and a template over evidence keys ``{key:unit}``. A line is
# shown when all its keys are present; keys no line took are shown one by one.
EVIDENCE_LINES: tuple[tuple[str, str], ...] = (
    ("Data wait", "{data_share_ratio:pct} of step, {data_seconds_per_step:s} of "
                  "{step_seconds:s}"),
    ("Data wait", "{data_share_ratio:pct} of step"),
    ("Loader workers", "{workers:n}, {workers_cpu_ratio:pct} busy"),
    ("Loader workers", "{workers:n}"),
    ("Speedup", "{speedup_ratio:x}"),
    ("Checkpoints", "{checkpoint_share_ratio:pct} of wall time, {saves_total:n} saves"),
    ("Per save", "{seconds_per_save:s}, {bytes_per_save:bytes} at {save_bytes_per_second:rate}"),
    ("Memory peak", "{memory_peak_ratio:pct} of the card, {memory_peak_bytes:bytes} of "
                    "{memory_total_bytes:bytes}"),
    ("Memory needed", "{memory_need_bytes:bytes}"),
    ("Allocator retries", "{alloc_retries_total:n}"),
    ("Out-of-memory errors", "{ooms_total:n}"),
    ("Recompute", "{recompute_share_ratio:pct} of step"),
    ("Batch size cut", "{batch_size_from:n} → {batch_size_to:n}"),
    ("Stalled", "{stalled_seconds:s} (limit {bound_seconds:s}, median step "
                "{median_step_seconds:s})"),
    ("Waiting in a collective", "{in_collective_seconds:s}"),
    ("Steps so far", "{steps_total:n}"),
    ("Slow rank's step before its collectives", "{slow_work_seconds:s} vs fastest "
                                                "{fastest_work_seconds:s} ({work_ratio:x})"),
    ("Data wait", "slow rank {slow_data_seconds:s}, fastest {fastest_data_seconds:s} a step"),
    ("Collective wait", "slow rank {slow_collective_share_ratio:pct}, others "
                        "{others_collective_share_ratio:pct} of step"),
    ("Collective wait", "{collective_share_ratio:pct} of step, {collective_seconds_per_step:s} "
                        "a step"),
    ("Collective traffic", "{collective_bytes_per_step:bytes} a step"),
    ("Link", "{link_bytes_per_second:rate}; through host memory "
             "{staged_bytes_per_second:rate} a GPU, {link_seconds_per_step:s} a step"),
    ("Link", "{link_bytes_per_second:rate}, {link_seconds_per_step:s} a step"),
    ("Wait spread across ranks", "{collective_share_spread_ratio:pct}"),
    ("Remaining", "{remaining_steps:n} steps: {remaining_hours_now:h} here, "
                  "{remaining_hours_target:h} on the target"),
    ("Scaled out", "{remaining_hours_scaled:h} on {scale_out_gpus:n} GPUs"),
    ("GPU busy", "{gpu_utilization_ratio:pct}"),
)


def _fields(template: str) -> list[tuple[str, str]]:
    out = []
    for part in template.split("{")[1:]:
        key, _, unit = part.split("}", 1)[0].partition(":")
        out.append((key, unit))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def evidence_lines(evidence: Mapping[str, Any], skip: frozenset[str] = frozenset()
                   ) -> list[tuple[str, str]]:
    """(label, value with units) for each piece of evidence; e.g. ``("Data wait",
    "97% of step, 76 ms of 78 ms")``."""
    left = {k: v for k, v in evidence.items() if k not in skip and k not in HIDDEN_EVIDENCE}
    out: list[tuple[str, str]] = []
    for label, template in EVIDENCE_LINES:
        fields = _fields(template)
        numbers = {key: _number(left.get(key)) for key, _ in fields}
        if any(n is None for n in numbers.values()):
            continue
        text = template
        for key, unit in fields:
            text = text.replace(f"{{{key}:{unit}}}", UNITS[unit](numbers[key] or 0.0))
            left.pop(key, None)
        out.append((label, text))
    for key, value in left.items():
        out.append(_generic(str(key), value))
    return out


def _generic(key: str, value: Any) -> tuple[str, str]:
    """A key no line took, as a label and its value in the unit its name ends in
    (``transfer_seconds_per_step``: "Transfer per step", "1.17 s")."""
    per = "_per_step" if key.endswith("_per_step") else ""
    stem = key.removesuffix(per)
    suffix, unit = next(((sfx, u) for sfx, u in SUFFIX_UNITS if stem.endswith(sfx)),
                        ("", None))
    if unit == "pct" and any(word in stem for word in MULTIPLES):
        unit = "x"  # (a ratio of two times: a speedup, not a share)
    name = stem.removesuffix(suffix) if unit else key
    label = (name.replace("_", " ").strip().capitalize() or key) + (" per step" if unit and per
                                                                    else "")
    if isinstance(value, bool):
        return label, "yes" if value else "no"
    number = _number(value)
    if number is None:
        return label, str(value)
    return label, UNITS[unit](number) if unit else f"{number:.4g}"


# -- the projection ----------------------------------------------------------------------

def projection_line(projection: Mapping[str, Any]) -> str | None:
    """"Step 78 ms now → 41 ms on H100 SXM (1.9-4.7x (2.7x at the middle) faster); cost
    per 1M tokens $0.12 → $0.08 at the low end", from a finding's projection (the shape in
    docs/projection.md; one replayed from an older run log may lack parts); None when it
    projects nothing."""
    speedup = _number(projection.get("speedup_ratio"))
    if speedup is None:
        return None
    target = escape(projection.get("target") or "the target GPU")
    now = _number(projection.get("step_seconds_now"))
    there = _number(projection.get("step_seconds_projected"))
    gain = escape(speedup_text(projection))
    line = (f"Step {_seconds(now)} now → {_seconds(there)} on {target} ({gain} faster)"
            if now is not None and there is not None else f"On {target} ({gain} faster)")
    unit = escape(projection.get("unit") or "step")
    cost_now = _number(projection.get("cost_per_unit_now_usd",
                                       projection.get("cost_per_step_now_usd")))
    cost_there = _number(projection.get("cost_per_unit_target_worst_usd",
                                         projection.get("cost_per_step_target_usd")))
    if cost_there is not None:
        ends = " at the low end" if "cost_per_unit_target_worst_usd" in projection else ""
        line += (f"; cost per {unit} {_usd(cost_now)} → {_usd(cost_there)}{ends}"
                 if cost_now is not None else f"; cost per {unit} there {_usd(cost_there)}")
    return line


# -- the message ------------------------------------------------------------------------

def dashboard_link(grafana_url: str, finding: Mapping[str, Any]) -> str:
    """The job dashboard with its job, run (where the note says it) and rank variables
    filled in (the dashboard's ``training_job``, ``run`` and ``rank``)."""
    query = [("var-training_job", str(finding.get("job") or ""))]
    if finding.get("run"):
        query.append(("var-run", str(finding["run"])))
    query += [("var-rank", str(r)) for r in finding.get("ranks") or [] if _number(r) is not None]
    return (f"{grafana_url.rstrip('/')}/d/{DASHBOARD_UID}?"
            + urllib.parse.urlencode(query))


def headline(kind: str, finding: Mapping[str, Any]) -> str:
    """One line: state, verdict, detector, job and ranks (escaped)."""
    ranks = rank_list(finding.get("ranks") or [])
    return escape(f"{STATE_PREFIX.get(kind, '')}[{finding.get('verdict')}] "
                  f"{finding.get('detector')} on {finding.get('job') or 'a job'}"
                  + (f" rank {ranks}" if ranks else "") + f": {finding.get('summary', '')}")


def rank_list(ranks: Sequence[Any]) -> str:
    """``[0, 1, 2, 3, 5]`` -> ``0-3,5`` (with an en dash); what is not a number is left out."""
    return fmt.spans(int(r) for r in ranks if _number(r) is not None)


def merge_ranks(notes: Sequence[tuple[str, Mapping[str, Any]]]
                ) -> list[tuple[str, Mapping[str, Any]]]:
    """The same news from one detector on several ranks (the same verdict, severity and
    words: ``fmt.wording``) becomes one note naming every rank (the first rank's
    evidence stands for the rest)."""
    merged: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}
    out: list[tuple[str, Mapping[str, Any]]] = []
    for kind, f in notes:
        if kind == "test":
            out.append((kind, f))
            continue
        group = (kind, str(f.get("detector")), str(f.get("verdict")), str(f.get("job")),
                 str(f.get("severity")), fmt.wording(str(f.get("summary", ""))))
        ranks = [r for r in f.get("ranks") or [] if _number(r) is not None]
        if group in merged:
            into = merged[group][1]
            into["ranks"] = sorted({*into["ranks"], *ranks})
        else:
            merged[group] = (kind, {**f, "ranks": sorted(set(ranks))})
            out.append(merged[group])
    return out


def message(notes: Sequence[tuple[str, Mapping[str, Any]]],
            grafana_url: str | None = None) -> dict[str, Any]:
    """A Block Kit message with a plain-text fallback for (kind, finding) pairs; one
    detector's news from several ranks is merged into one."""
    notes = merge_ranks(notes)
    first = notes[0][1]
    job = escape(first.get("job") or "a training job")
    if len(notes) == 1:
        kind, f = notes[0]
        if kind == "test":
            title = "gpuwatch: test message"
        else:
            verdict = VERDICT_TITLES.get(str(f.get("verdict")), escape(f.get("verdict")))
            state = {"resolved": ":white_check_mark: Resolved", "reminder": f"{verdict} "
                     "(still active)"}.get(kind, verdict)
            title = f"{state}: {escape(f.get('detector'))} on {job}"
    else:
        title = f"gpuwatch: {len(notes)} findings on {job}"
    lines = [headline(k, f) if k != "test" else escape(f.get("summary", "")) for k, f in notes]
    text = "\n".join([f"gpuwatch: {lines[0]}"] if len(notes) == 1 else [title, *lines])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(title, HEADER_CHARS),
                                    "emoji": True}}]
    shown = notes[: min(BLOCK_FINDINGS, (MAX_BLOCKS - 3) // BLOCKS_PER_NOTE)]
    for kind, f in shown:
        blocks += note_blocks(kind, f, grafana_url)
    rest = notes[len(shown):]
    if rest:  # one line each, as many as a section holds; then how many more
        listed = _fitting([f"• {headline(k, f)}" for k, f in rest], SECTION_CHARS - 120)
        more = len(rest) - len(listed)
        blocks.append(_section(f"*{len(rest)} more:*\n" + "\n".join(listed)
                               + (f"\n…and {more} more (the run's findings.json has them all)"
                                  if more else "")))
    return {"text": cut(text, TEXT_CHARS), "blocks": blocks[:MAX_BLOCKS]}


def _fitting(lines: Sequence[str], limit: int) -> list[str]:
    """The first ``lines``, each cut to a line's worth, that fit ``limit`` characters
    joined by newlines."""
    out: list[str] = []
    used = 0
    for line in lines:
        line = cut(line, 300)
        if used + len(line) + 1 > limit:
            break
        out.append(line)
        used += len(line) + 1
    return out


def note_blocks(kind: str, f: Mapping[str, Any], grafana_url: str | None = None
                ) -> list[dict[str, Any]]:
    """The blocks of one note: summary, evidence, projection and action, context."""
    summary = escape(f.get("summary", ""))
    if kind == "test":
        return [_section(summary)]
    detector = escape(f.get("detector"))
    ranks = rank_list(f.get("ranks") or [])
    label = "ranks" if len(f.get("ranks") or []) > 1 else "rank"
    where = f"*{detector}*" + (f" · {label} {ranks}" if ranks else "")
    if kind == "resolved":
        return [_section(f"{where}\n{summary}\nThis has cleared.")]
    body = [f"{where}\n{summary}"]
    projection = f.get("projection")
    projection = projection if isinstance(projection, Mapping) else {}
    line = projection_line(projection) if projection else None
    if line:
        body.append(f"*Projection:* {line}")
    if f.get("action"):
        body.append(f"*What to do:* {escape(f.get('action'))}")
    blocks = [_section("\n".join(body))]
    evidence = f.get("evidence")
    skip = frozenset({"speedup_ratio"}) if line else frozenset()
    rows = evidence_lines(evidence, skip) if isinstance(evidence, Mapping) else []
    if rows:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": cut(f"*{escape(label)}*\n{escape(value)}", 2000)}
            for label, value in rows[:10]]})
    context = [f"job {escape(f.get('job') or '?')}", f"severity {escape(f.get('severity'))}"]
    if grafana_url:
        context.append(f"<{escape(dashboard_link(grafana_url, f))}|dashboard>")
    blocks.append(_context(" · ".join(context)))
    return blocks


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_CHARS)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text, SECTION_CHARS)}]}
