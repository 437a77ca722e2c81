"""Statistics of recorded laps and the report tables of :class:`fastpgd.Timers`.

Everything here is a plain function of data: ``laps`` maps each timed name, in
first-seen order, to its laps in integer nanoseconds, and ``parents`` maps each
name to the innermost section running when it was first entered (``None`` for
an outermost one). :meth:`fastpgd.Timers.summary` and :meth:`~fastpgd.Timers.report`
take a snapshot of both and call these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from fastpgd._table import format_table

__all__ = ["percentile", "lap_stats", "summarize", "tree_order", "summary_table", "gathered_table"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default method).

    The value at rank ``(n - 1) * q / 100`` of the sorted values, interpolated
    linearly between its two neighbours; NaN for no values.

    Examples::

        >>> percentile([10, 20, 30, 40], 50)  # rank 1.5: 20 + 0.5 * (30 - 20)
        25.0
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    position = (n - 1) * q / 100.0
    lo = math.floor(position)
    hi = min(lo + 1, n - 1)
    frac = position - lo
    a, b = sorted_values[lo], sorted_values[hi]
    return a + (b - a) * frac


def lap_stats(laps_ns: Sequence[int]) -> dict[str, float]:
    """``count``, and ``total``, ``mean``, ``median``, ``min``, ``max``, ``p95`` in seconds.

    With no laps, ``count`` is 0, ``total`` 0.0 and the others NaN.
    """
    n = len(laps_ns)
    if n == 0:
        nan = math.nan
        return dict(count=0, total=0.0, mean=nan, median=nan, min=nan, max=nan, p95=nan)
    s = sorted(laps_ns)
    total = sum(s)
    return dict(
        count=n,
        total=total / 1e9,
        mean=total / n / 1e9,
        median=percentile(s, 50.0) / 1e9,
        min=s[0] / 1e9,
        max=s[-1] / 1e9,
        p95=percentile(s, 95.0) / 1e9,
    )


def _root(name: str, parents: Mapping[str, str | None]) -> str:
    while parents.get(name) is not None:
        name = parents[name]
    return name


def _depth(name: str, parents: Mapping[str, str | None]) -> int:
    depth = 0
    while parents.get(name) is not None:
        name = parents[name]
        depth += 1
    return depth


def summarize(
    laps: Mapping[str, Sequence[int]],
    parents: Mapping[str, str | None],
    parent: str | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`lap_stats` of every name plus its ``share``: see :meth:`fastpgd.Timers.summary`."""
    if parent is not None:
        if not isinstance(parent, str):
            raise TypeError(f"parent must be a str, got {type(parent).__name__}")
        if parent not in laps:
            raise ValueError(f"parent {parent!r} is not a timed section; known: {list(laps)}")
    stats = {name: lap_stats(values) for name, values in laps.items()}
    for name, st in stats.items():
        denom_name = parent if parent is not None else _root(name, parents)
        if denom_name == name:
            st["share"] = 1.0
        else:
            denom = stats[denom_name]["total"]
            st["share"] = st["total"] / denom if denom > 0 else math.nan
    return stats


def tree_order(names: Iterable[str], parents: Mapping[str, str | None]) -> list[str]:
    """``names`` depth first (children after their parent), siblings in the given order."""
    children: dict[str | None, list[str]] = {}
    for name in names:
        children.setdefault(parents[name], []).append(name)
    out: list[str] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        name = stack.pop()
        out.append(name)
        stack.extend(reversed(children.get(name, [])))
    return out


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "nan"
    ms = seconds * 1e3
    # Fixed decimals read best in a column; sub-microsecond laps keep their digits.
    return f"{ms:.3f}" if ms == 0 or abs(ms) >= 1e-3 else f"{ms:.3g}"


def _selected(names: Iterable[str] | None) -> set[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError("names must be an iterable of str, not a single str")
    return set(names)


def summary_table(
    laps: Mapping[str, Sequence[int]],
    parents: Mapping[str, str | None],
    parent: str | None = None,
    names: Iterable[str] | None = None,
) -> str:
    """The table of :meth:`fastpgd.Timers.report`: one row per name, indented by depth.

    Args:
        laps, parents: as in this module's description.
        parent (str, optional): denominator of ``share``; see :func:`summarize`.
        names (iterable of str, optional): only these names. Default: all.

    Returns:
        str: the table in milliseconds, ending with a newline.
    """
    selected = _selected(names)
    stats = summarize(laps, parents, parent)
    denom = f"total of {parent!r}" if parent is not None else "total of the outermost section"
    header = ["name", "count", "total", "mean", "median", "min", "max", "p95", "share"]
    rows = []
    for name in tree_order(laps, parents):
        if selected is not None and name not in selected:
            continue
        st = stats[name]
        share = "nan" if math.isnan(st["share"]) else f"{st['share'] * 100:.1f}%"
        rows.append(
            ["  " * _depth(name, parents) + name, str(st["count"])]
            + [_ms(st[k]) for k in ("total", "mean", "median", "min", "max", "p95")]
            + [share]
        )
    title = f"Timers (times in ms; share = total / {denom})"
    return format_table(header, rows, title=title) + "\n"


def gathered_table(gathered: Mapping, names: Iterable[str] | None = None) -> str:
    """The table of :meth:`fastpgd.Timers.report` for the result of :meth:`~fastpgd.Timers.gather`.

    Count, total and mean of each name as min / mean / max across ranks.

    Returns:
        str: the table in milliseconds, ending with a newline.
    """
    if not isinstance(gathered, Mapping) or "stats" not in gathered:
        raise TypeError("gathered must be the dict returned by Timers.gather()")
    selected = _selected(names)
    parents = gathered.get("parents", {})
    header = ["name", "ranks"]
    for figure in ("count", "total", "mean"):
        header += [f"{figure}.min", f"{figure}.mean", f"{figure}.max"]
    rows = []
    for name in gathered["names"]:
        if selected is not None and name not in selected:
            continue
        st = gathered["stats"][name]
        row = ["  " * _depth(name, parents) + name, str(st["ranks"])]
        row += [f"{st['count'][k]:g}" for k in ("min", "mean", "max")]
        row += [_ms(st["total"][k]) for k in ("min", "mean", "max")]
        row += [_ms(st["mean"][k]) for k in ("min", "mean", "max")]
        rows.append(row)
    title = (
        f"Timers across {gathered['world_size']} ranks (times in ms; min / mean / max over ranks)"
    )
    return format_table(header, rows, title=title) + "\n"
