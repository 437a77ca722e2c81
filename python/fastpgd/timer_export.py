"""The laps of :class:`fastpgd.Timers` written out: plain data, JSON, CSV, checkpoint state, chart.

Plain functions of a snapshot (``laps``: name -> integer nanoseconds, in
first-seen order; ``parents``: name -> parent or ``None``), called by the
methods of the same names on :class:`~fastpgd.Timers`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastpgd import timer_stats
from fastpgd._plot import plot_breakdown

__all__ = ["to_dict", "to_json", "to_csv", "state_dict", "check_state", "plot"]

STATE_VERSION = 1


def to_dict(
    sync: str | None, laps: Mapping[str, Sequence[int]], parents: Mapping[str, str | None]
) -> dict[str, Any]:
    """``{"sync", "unit": "s", "laps": {name: [seconds, ...]}, "parents"}``."""
    return {
        "sync": sync,
        "unit": "s",
        "laps": {name: [ns / 1e9 for ns in values] for name, values in laps.items()},
        "parents": dict(parents),
    }


def _write(text: str, path, newline: str | None = None) -> None:
    with open(path, "w", encoding="utf-8", newline=newline) as f:
        f.write(text)


def to_json(data: Mapping[str, Any], path=None) -> str:
    """``data`` as indented JSON; also written to ``path`` when given."""
    text = json.dumps(data, indent=2)
    if path is not None:
        _write(text, path)
    return text


def to_csv(laps: Mapping[str, Sequence[int]], path=None) -> str:
    """Every lap as one CSV row ``name,index,seconds`` under a header row; also written to
    ``path`` when given."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "index", "seconds"])
    for name, values in laps.items():
        for i, ns in enumerate(values):
            writer.writerow([name, i, repr(ns / 1e9)])
    text = buf.getvalue()
    if path is not None:
        _write(text, path, newline="")
    return text


def state_dict(
    sync: str | None, laps: Mapping[str, Sequence[int]], parents: Mapping[str, str | None]
) -> dict[str, Any]:
    """Laps (integer nanoseconds), parents and sync mode as plain data, for a checkpoint."""
    return {
        "version": STATE_VERSION,
        "sync": sync,
        "unit": "ns",
        "laps": {name: list(values) for name, values in laps.items()},
        "parents": dict(parents),
    }


def check_state(state: Any) -> tuple[dict[str, list[int]], dict[str, str | None]]:
    """Validate a :func:`state_dict` result and return its ``(laps, parents)``.

    Raises:
        TypeError: ``state`` or its ``laps``/``parents`` are not dicts.
        ValueError: a key is missing, the version is unknown, names are empty or
            differ between ``laps`` and ``parents``, a lap is not a non-negative
            int64, or a parent is not listed before its child.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from Timers.state_dict(), got {type(state)}")
    missing = {"version", "laps", "parents"} - state.keys()
    if missing:
        raise ValueError(f"state is missing keys {sorted(missing)}")
    if state["version"] != STATE_VERSION:
        raise ValueError(f"state has unsupported version {state['version']!r}")
    laps, parents = state["laps"], state["parents"]
    if not isinstance(laps, dict) or not isinstance(parents, dict):
        raise TypeError("state['laps'] and state['parents'] must be dicts")
    if set(laps) != set(parents):
        raise ValueError("state['laps'] and state['parents'] must have the same names")
    for name, values in laps.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"state has an invalid section name {name!r}")
        if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values
        ):
            raise ValueError(f"state['laps'][{name!r}] must be a list of non-negative int ns")
    seen: set[str] = set()
    for name in laps:  # parents must come before their children, which rules out cycles
        parent = parents[name]
        if parent is not None and parent not in seen:
            raise ValueError(f"state: parent {parent!r} of {name!r} is not an earlier name")
        seen.add(name)
    return laps, parents


def plot(
    path,
    laps: Mapping[str, Sequence[int]],
    parents: Mapping[str, str | None],
    parent: str | None = None,
) -> None:
    """The chart of :meth:`fastpgd.Timers.plot`: time per ``parent`` lap in each child."""
    if parent is None:
        roots = [name for name in laps if parents[name] is None]
        if not roots:
            raise ValueError("nothing to plot: no section has been timed")
        parent = roots[0]
    stats = timer_stats.summarize(laps, parents, parent)  # checks parent
    children = [name for name in laps if parents[name] == parent]
    if not children:
        raise ValueError(f"parent {parent!r} has no nested sections to break down")
    plot_breakdown(path, parent, stats[parent], {c: stats[c] for c in children})
