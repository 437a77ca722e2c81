"""The laps of :class:`fastpgd.Timers` across ``torch.distributed`` ranks: min / mean / max.

:func:`gather` is the collective behind :meth:`fastpgd.Timers.gather`;
:func:`reduce_gathered` is the arithmetic, a plain function of every rank's
figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["gather", "reduce_gathered"]


def gather(
    laps: Mapping[str, Sequence[int]], parents: Mapping[str, str | None], group=None
) -> dict[str, Any]:
    """Gather every rank's lap counts and totals and reduce them across ranks.

    A collective call when ``torch.distributed`` is initialised (every rank of
    ``group`` must call it); otherwise this process's figures with
    ``world_size`` 1. See :meth:`fastpgd.Timers.gather` for the result.

    Args:
        laps (Mapping[str, Sequence[int]]): this rank's laps in integer
            nanoseconds per name, in first-seen order.
        parents (Mapping[str, str or None]): each name's parent.
        group (ProcessGroup, optional): the group to gather over. Default: the
            default group.
    """
    mine = {
        "names": list(laps),
        "parents": dict(parents),
        "figures": {name: (len(values), sum(values)) for name, values in laps.items()},
    }
    world = [mine]
    try:
        import torch.distributed as dist
    except ImportError:  # a torch build without distributed support
        dist = None
    if dist is not None and dist.is_available() and dist.is_initialized():
        world = [None] * dist.get_world_size(group)
        dist.all_gather_object(world, mine, group=group)
    return reduce_gathered(world)


def reduce_gathered(world: list[dict]) -> dict[str, Any]:
    """Reduce the figures of every rank (rank order) to min / mean / max across ranks.

    Args:
        world (list[dict]): per rank, ``{"names": [...], "parents": {...},
            "figures": {name: (count, total_ns)}}``.

    Returns:
        dict: ``world_size``, ``names`` (union, first-seen order of the lowest
        rank that has each), ``parents`` and ``stats``; see :meth:`fastpgd.Timers.gather`.
    """
    names: list[str] = []
    parents: dict[str, str | None] = {}
    for rank in world:
        for name in rank["names"]:
            if name not in parents:
                names.append(name)
                parents[name] = rank["parents"][name]
    stats = {}
    for name in names:
        per_rank = []
        for rank in world:
            count, total_ns = rank["figures"].get(name, (0, 0))
            per_rank.append(
                {
                    "count": count,
                    "total": total_ns / 1e9,
                    "mean": total_ns / count / 1e9 if count else math.nan,
                }
            )
        timed = [r for r in per_rank if r["count"] > 0]
        entry: dict[str, Any] = {"ranks": len(timed), "per_rank": per_rank}
        for figure, rows in (("count", per_rank), ("total", per_rank), ("mean", timed)):
            values = [r[figure] for r in rows]
            entry[figure] = (
                {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}
                if values
                else {"min": math.nan, "mean": math.nan, "max": math.nan}
            )
        stats[name] = entry
    return {"world_size": len(world), "names": names, "parents": parents, "stats": stats}
