"""The charts of :meth:`fastpgd.Timers.plot` and ``fastpgd bench --plot`` (need matplotlib).

Figures are drawn on an explicit Agg canvas, which leaves pyplot's global state
(its backend, its current figure) alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib, which is not installed: "
            "`pip install fastpgd[plot]` (or `pip install matplotlib`)"
        ) from exc
    return Figure, FigureCanvasAgg


def bar_chart(
    path,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    xlabel: str,
    title: str,
    notes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
) -> None:
    """Write a horizontal bar chart, the first label at the top.

    Args:
        path (str or path-like): output file; the format follows the suffix
            (``.png``, ``.svg``, ``.pdf``).
        labels (Sequence[str]): one per bar.
        values (Sequence[float]): bar lengths, one per label.
        xlabel (str): the axis label, with the unit.
        title (str): the chart's title.
        notes (Sequence[str], optional): text written after the end of each bar.
        colors (Sequence[str], optional): matplotlib colours, one per bar.
            Default: all ``"tab:blue"``.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    for name, given in (("values", values), ("notes", notes), ("colors", colors)):
        if given is not None and len(given) != len(labels):
            raise ValueError(f"{name} has {len(given)} entries, labels has {len(labels)}")
    Figure, FigureCanvasAgg = _require_matplotlib()
    fig = Figure(figsize=(7, 1.2 + 0.45 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, values, color=colors if colors is not None else "tab:blue")
    ax.set_yticks(positions, labels)
    if notes is not None:
        for y, value, note in zip(positions, values, notes, strict=True):
            ax.annotate(f" {note}", (value, y), va="center", fontsize=8, annotation_clip=False)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


def plot_breakdown(path, parent: str, parent_stats: dict, children: dict[str, dict]) -> None:
    """Write a bar chart of the time each child takes per lap of ``parent``.

    Each bar is a child's total divided by the parent's lap count (so a phase
    run several times per step shows its whole cost per step), labelled with its
    share of the parent's total; a last, grey bar shows the parent time no child
    covers.

    Args:
        path (str or path-like): output file; the format follows the suffix.
        parent (str): the section broken down.
        parent_stats (dict): ``Timers.summary()`` entry of ``parent``.
        children (dict): child name -> its ``Timers.summary(parent)`` entry.
    """
    laps = max(parent_stats["count"], 1)
    labels = list(children)
    per_lap_ms = [children[c]["total"] / laps * 1e3 for c in labels]
    shares = [children[c]["share"] for c in labels]
    untimed_ms = parent_stats["total"] / laps * 1e3 - sum(per_lap_ms)
    if untimed_ms > 0:
        labels.append("(not in a child)")
        per_lap_ms.append(untimed_ms)
        total = parent_stats["total"]
        shares.append(untimed_ms * laps / 1e3 / total if total > 0 else math.nan)
    bar_chart(
        path,
        labels,
        per_lap_ms,
        xlabel=f"ms per {parent!r} lap (mean over {parent_stats['count']} laps)",
        title=f"Where {parent!r} spends its time",
        notes=[f"{share * 100:.1f}%" for share in shares],
        colors=["tab:blue"] * len(children) + ["tab:gray"] * (len(labels) - len(children)),
    )
