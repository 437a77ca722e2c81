"""The phase-breakdown chart behind :meth:`fastpgd.Timers.plot` (needs matplotlib)."""

from __future__ import annotations

import os


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "Timers.plot needs matplotlib, which is not installed: "
            "`pip install fastpgd[plot]` (or `pip install matplotlib`)"
        ) from exc
    return Figure, FigureCanvasAgg


def plot_breakdown(path, parent: str, parent_stats: dict, children: dict[str, dict]) -> None:
    """Write a horizontal bar chart of the time each child takes per lap of ``parent``.

    Each bar is a child's total divided by the parent's lap count (so a phase
    run several times per step shows its whole cost per step), labelled with its
    share of the parent's total; a last bar shows the parent time no child
    covers.

    Args:
        path (str or path-like): output file; the format follows the suffix.
        parent (str): the section broken down.
        parent_stats (dict): ``Timers.summary()`` entry of ``parent``.
        children (dict): child name -> its ``Timers.summary(parent)`` entry.
    """
    # A Figure with an explicit Agg canvas leaves pyplot's global state alone.
    Figure, FigureCanvasAgg = _require_matplotlib()
    laps = max(parent_stats["count"], 1)
    labels = list(children)
    per_lap_ms = [children[c]["total"] / laps * 1e3 for c in labels]
    shares = [children[c]["share"] for c in labels]
    untimed_ms = parent_stats["total"] / laps * 1e3 - sum(per_lap_ms)
    if untimed_ms > 0:
        labels.append("(not in a child)")
        per_lap_ms.append(untimed_ms)
        total = parent_stats["total"]
        shares.append(untimed_ms * laps / 1e3 / total if total > 0 else float("nan"))

    fig = Figure(figsize=(7, 1.2 + 0.45 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = list(range(len(labels)))[::-1]  # first-seen phase at the top
    colors = ["tab:blue"] * len(children) + ["tab:gray"] * (len(labels) - len(children))
    ax.barh(positions, per_lap_ms, color=colors)
    ax.set_yticks(positions, labels)
    for y, value, share in zip(positions, per_lap_ms, shares, strict=True):
        ax.annotate(
            f" {share * 100:.1f}%", (value, y), va="center", fontsize=8, annotation_clip=False
        )
    ax.set_xlabel(f"ms per {parent!r} lap (mean over {parent_stats['count']} laps)")
    ax.set_title(f"Where {parent!r} spends its time")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
