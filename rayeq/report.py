"""Floors and result tables, the project's central device: the rule that marks a figure at or below its floor
(`below_floor`, `FLOOR_MARK`), the format of the numbers (`number`, `seed_spread`) and the one Markdown table
writer (`table`). Eval's tables, `--protocol-items`, a study's summary, a sweep's results, the quickstart's closing
table, the training summary and the console's probe line all use these; none writes its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FLOOR_MARK = "▼"  # a figure at or below a floor (an untrained encoder, the mean predictor, chance)


def highest_floor(*floors: float | None) -> float | None:
    """The floor a figure must beat: the highest one it has (None where it has none)."""
    values = [f for f in floors if f is not None]
    return max(values) if values else None


def below_floor(value: float, *floors: float | None) -> bool:
    """The floor rule: a figure at or below its highest floor has not shown anything (False with no floor)."""
    top = highest_floor(*floors)
    return top is not None and value <= top


def mark(value: float, *floors: float | None) -> str:
    """` ▼` where `below_floor`, else nothing."""
    return f" {FLOOR_MARK}" if below_floor(value, *floors) else ""


def floor_of(key: str, floors: Mapping[str, Mapping[str, float]]) -> float | None:
    """The highest floor a metric has among named floor sets ({"random_init": {...}, "mean_predictor": {...}})."""
    return highest_floor(*(f.get(key) for f in floors.values()))


def at_or_below_floor(metrics: Mapping[str, float], floors: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The metrics the floor rule marks."""
    return [k for k, v in metrics.items() if below_floor(v, *(f.get(k) for f in floors.values()))]


def number(v: Any, digits: int = 4, width: int = 0, sci: bool = False, empty: str = "") -> str:
    """A table's number: `digits` decimals, right-aligned in `width` when given (blank there for None). `sci` (a
    sweep's rows of metrics and searched values): the general format for magnitudes under 1e-3 or from 1e4, and whole
    numbers as they are. Anything else as text."""
    if v is None:
        return " " * width if width else empty
    if isinstance(v, bool) or not isinstance(v, int | float) or (sci and isinstance(v, int)):
        return str(v)
    if sci and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:{width or ''}.{digits}g}"
    return f"{v:{width or ''}.{digits}f}"


def seed_spread(st: Mapping[str, float], digits: int = 3, with_range: bool = True) -> str:
    """`mean ± std (min–max)` of a metric over seeds."""
    out = f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"
    return out + (f" ({st['min']:.{digits}f}–{st['max']:.{digits}f})" if with_range else "")


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table of already formatted cells (an empty cell is written `| |`)."""

    def line(cells: Sequence[str]) -> str:
        return "|" + "".join(f" {c} |" if c else " |" for c in cells)

    return "\n".join([line(head), "|" + " --- |" * len(head), *(line(r) for r in rows)])
