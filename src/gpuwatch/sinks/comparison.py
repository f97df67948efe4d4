"""A comparison of two runs for people (text, an HTML section) and programs (JSON)."""

from __future__ import annotations

import math
from html import escape

from gpuwatch.detection.compare import Comparison
from gpuwatch.sinks import fmt
from gpuwatch.vocabulary import PARTS


def comparison_json(c: Comparison) -> str:
    return fmt.json_text(c.as_dict())


def _rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(what, BEFORE, AFTER, AFTER vs BEFORE) rows shared by the text and HTML views."""
    b, a = c.before, c.after
    rows = [("GPU", b.gpu or "unknown", a.gpu or "unknown", ""),
            ("ranks", str(b.ranks), str(a.ranks), ""),
            (f"time per {c.unit}", fmt.seconds(b.seconds_per_unit.get("step")),
             fmt.seconds(a.seconds_per_unit.get("step")), _speed(c.speedup.get("step")))]
    for phase in PARTS:
        if phase in c.speedup or b.seconds_per_unit.get(phase) or a.seconds_per_unit.get(phase):
            rows.append((f"  {phase}", fmt.seconds(b.seconds_per_unit.get(phase)),
                         fmt.seconds(a.seconds_per_unit.get(phase)), _speed(c.speedup.get(phase))))
    cost = (f"{c.cost_ratio:.2f}x the cost" if c.cost_ratio is not None else "")
    rows.append((f"cost per {c.unit}", fmt.usd(b.usd_per_unit), fmt.usd(a.usd_per_unit), cost))
    rows.append(("memory headroom", _headroom(b.memory_headroom_ratio, b.memory_peak_bytes,
                                              b.memory_limit_bytes),
                 _headroom(a.memory_headroom_ratio, a.memory_peak_bytes, a.memory_limit_bytes), ""))
    return rows


def _speed(v: float | None) -> str:
    if v is None or not 0 < v < math.inf:  # (a hostile log's: no speed to tell)
        return ""
    return f"{v:.2f}x faster" if v >= 1 else f"{1 / v:.2f}x slower"


def _headroom(ratio: float | None, peak: float | None, limit: float | None) -> str:
    if ratio is None:
        return "not measured"
    return f"{fmt.share(ratio)} free ({fmt.nbytes(peak)} of {fmt.nbytes(limit)})"


def _projection_lines(c: Comparison) -> list[str]:
    p = c.projection
    if p is None:
        return []
    span = (f" (range {p.projected.low:.2f}-{p.projected.high:.2f}x, "
            f"{'inside' if p.within_range else 'outside'} it)"
            if p.projected.low is not None and p.projected.high is not None else "")
    lines = [f"BEFORE projected {p.projected.speedup:.2f}x on {p.target} ({p.detector}){span}; "
             f"measured {p.measured:.2f}x: off by {p.error_ratio:+.0%}"]
    for phase, (projected, measured) in p.phases.items():
        lines.append(f"  {phase}: projected {projected:.2f}x, measured {measured:.2f}x")
    return lines


def comparison_text(c: Comparison) -> str:
    rows = [("", "BEFORE", "AFTER", "AFTER vs BEFORE"), *_rows(c)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = [f"Compared per {c.unit} of work."]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
    out += _projection_lines(c)
    out += [f"note: {n}" for n in c.notes]
    return "\n".join(out)


def comparison_html(c: Comparison) -> str:
    head = "<tr><th></th><th>BEFORE</th><th>AFTER</th><th>AFTER vs BEFORE</th></tr>"
    body = "".join("<tr>" + "".join(f"<td>{escape(cell.strip())}</td>" for cell in r) + "</tr>"
                   for r in _rows(c))
    extra = "".join(f"<p>{escape(line.strip())}</p>" for line in _projection_lines(c))
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in c.notes)
    return (f'<section id="compare"><h2>Compared with another run (per {escape(c.unit)})</h2>'
            f'<table class="compare">{head}{body}</table>{extra}{notes}</section>')
