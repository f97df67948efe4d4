"""Numbers for people: durations, sizes, shares and money, shared by the text and HTML views."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any

from gpuwatch.vocabulary import duration, size


def seconds(v: float | None) -> str:
    """``v`` seconds as µs, ms, s, min, h or days, whichever reads best ("—" for none)."""
    return duration(v)


def nbytes(v: float | None) -> str:
    """``v`` bytes in the unit that suits them ("—" for none)."""
    return "—" if v is None or v != v else size(v)


def share(v: float | None) -> str:
    return "—" if v is None or v != v else f"{v:.0%}" if abs(v) >= 0.1 else f"{v:.1%}"


def usd(v: float | None) -> str:
    if v is None or v != v:
        return "—"
    if abs(v) >= 100:
        return f"${v:,.0f}"
    return f"${v:.3g}"


def ratio(v: float | None) -> str:
    return "—" if v is None or v != v else f"{v:.2f}x"


def spans(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 5]`` -> "0-3,5": runs of consecutive numbers as spans, with an en
    dash."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}\u2013{run[-1]}"
                    for run in runs)


def utc(t: float | None) -> str:
    """Unix time ``t`` as "2026-11-29 17:05 UTC"; "" for none, or one no calendar holds
    (a damaged log's)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else ""
    except (OverflowError, OSError, ValueError):
        return ""


_FIGURE = re.compile(r"\d[\d.,]*")


def wording(summary: str) -> str:
    """A summary with its figures blanked: what ranks saying the same thing share, so
    findings are folded only where their words agree ("waits for data 84%" and "83%"
    do; a hang's "waited 180 s in a collective" and "not in a collective" do not)."""
    return _FIGURE.sub("#", summary)


def json_text(value: Any) -> str:
    """``value`` as indented JSON that any parser reads: a number JSON cannot hold (inf,
    nan: a hostile log's 1e308-second steps) is null."""
    return json.dumps(_finite(value), indent=2, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
