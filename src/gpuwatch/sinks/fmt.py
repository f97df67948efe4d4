"""Numbers for people: durations, sizes, shares and money, shared by the text and HTML views."""

from __future__ import annotations


def seconds(v: float | None) -> str:
    """``v`` seconds as µs, ms, s, min, h or days, whichever reads best."""
    if v is None or v != v:
        return "—"
    a = abs(v)
    if a == 0:
        return "0 s"
    if a < 1e-3:
        return f"{v * 1e6:.3g} µs"
    if a < 1:
        return f"{v * 1e3:.3g} ms"
    if a < 120:
        return f"{v:.3g} s"
    if a < 7200:
        return f"{v / 60:.3g} min"
    if a < 172800:
        return f"{v / 3600:.3g} h"
    return f"{v / 86400:.3g} days"


def nbytes(v: float | None) -> str:
    if v is None or v != v:
        return "—"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


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
