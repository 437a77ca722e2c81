"""Named, nestable timing sections for a training loop.

:class:`Timers` records one lap per ``with timers("name"):`` block and reports
per-name statistics (count, total, mean, median, min, max, p95, share of the
outer section), optionally gathered across ``torch.distributed`` ranks.

The hot path is kept to a dict lookup, two clock reads and two appends: laps
are paired and converted to seconds only when they are read. With the compiled
extension the lookup and the clock-timed sections are C types
(``fastpgd._C._TimersBase`` and ``fastpgd._C._Section``) subclassed here; the
pure-Python classes below do the same when it is not in use.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

from fastpgd import _ext

__all__ = ["Timers"]

_SYNC_MODES = (None, "cuda", "events")
_STATE_VERSION = 1
# In events mode a log entry is (seq, event); seq >= 0 marks an enter, _END an exit.
_END = -1


# The CUDA hooks are module functions so that tests can replace them on a
# machine without a GPU and still run the events/synchronize logic.
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def _new_cuda_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


class _SectionCommon:
    """What every section does off the hot path: pair its log into laps, and clear.

    Enters are logged as ``~t`` (always negative for a non-negative reading ``t``)
    and exits as ``t``, in one append-only log per name; ``_drain()`` takes the
    entries logged so far. Pairing them (last-in, first-out) is deferred to
    :meth:`_pair`, so nesting a name in itself and exits out of order pair
    correctly and cost nothing extra in the hot path.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<timer section {self.name!r}>"

    def _pair(self) -> None:
        """Match logged enters and exits into laps; an exit with no open enter is dropped."""
        batch = self._drain()
        if not batch:
            return
        opened, laps = self._open, self._laps
        for raw in batch:
            if raw < 0:
                opened.append(~raw)
            elif opened:
                laps.append(raw - opened.pop())

    def _laps_ns(self) -> array:
        self._pair()
        return self._laps

    def _open_key(self):
        """Sort key of the innermost running block, or None when not running."""
        return (self._open[-1], self._index) if self._open else None

    def _clear(self) -> None:
        self._discard()
        del self._open[:]
        del self._laps[:]
        self._index = -1


class _Section(_SectionCommon):
    """One named section in pure Python: a context manager that logs its enter/exit
    clock readings in a list (see :class:`_SectionCommon`)."""

    __slots__ = (
        "name", "_timers", "_clock", "_log", "_entries", "_open", "_laps", "_index",
        "_hot_cls", "_first_cls",
    )  # fmt: skip

    def __init__(self, timers: Timers, name: str, clock: Callable[[], int]) -> None:
        self.name = name
        self._timers = timers
        self._clock = clock
        self._entries: list = []
        self._log = self._entries.append
        self._open: list = []  # enters not yet matched by an exit, innermost last
        self._laps = array("q")  # nanoseconds; 8 bytes a lap once paired
        self._index = -1  # position in first-seen order; -1 before the first enter
        # The class used while the name is known (hot) and before its first enter;
        # swapping ``__class__`` keeps the first-enter check out of the hot path.
        self._hot_cls, self._first_cls = _hot_classes(type(self), clock, self._log)
        self.__class__ = self._first_cls

    # What every clock-timed section does; _hot_classes installs the same two
    # methods as closures, which run faster.
    def __enter__(self) -> _Section:
        self._log(~self._clock())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._log(self._clock())

    # -- slow path ---------------------------------------------------------
    def _drain(self) -> list:
        """The entries logged so far, removed from the log."""
        entries = self._entries
        batch = entries[:]
        del entries[: len(batch)]
        return batch

    def _discard(self) -> None:
        del self._entries[:]

    def _rearm(self) -> None:
        """Make the next enter a first enter (which records the parent)."""
        self.__class__ = self._first_cls

    def _mark_entered(self) -> None:
        """Make the next enter a plain one, as after a first enter."""
        self.__class__ = self._hot_cls


def _first_enter(self: _Section) -> _Section:
    """``__enter__`` of a section never entered since creation or reset: record its
    parent, switch to the hot class, then enter as usual."""
    self._timers._first_enter(self)
    self.__class__ = self._hot_cls
    return self.__enter__()


def _hot_classes(base: type, clock: Callable[[], int], log: Callable[[Any], None]):
    """The hot and first-enter classes of one clock-timed section.

    ``with timers("x"): pass`` must cost a few hundred nanoseconds, and closure
    cells are read faster than slot attributes, so each section gets its own
    tiny subclass whose ``__enter__``/``__exit__`` close over the clock and the
    log's ``append``. Event sections use the shared classes (recording an event
    costs far more than an attribute read).
    """
    if base is _EventSection:
        return _EventSection, _FirstEventSection

    def __enter__(self):
        log(~clock())
        return self

    def __exit__(self, exc_type, exc, tb):
        log(clock())  # recorded whether or not the block raised; None re-raises

    hot = type("_Section", (base,), {"__slots__": (), "__enter__": __enter__, "__exit__": __exit__})
    first = type("_FirstSection", (hot,), {"__slots__": (), "__enter__": _first_enter})
    return hot, first


class _EventSection(_Section):
    """A section timed by CUDA events recorded on the current stream.

    Enter and exit only record an event (asynchronous); the pairs wait in
    ``_pending`` and are synchronized and read when laps are read, or harvested
    without stalling (``query()``) when the event pool runs dry.
    """

    __slots__ = ("_pending",)

    def __init__(self, timers: Timers, name: str, clock: Callable[[], int]) -> None:
        super().__init__(timers, name, clock)
        self._pending: list = []  # (start_event, end_event), oldest first

    def __enter__(self) -> _Section:
        timers = self._timers
        event = timers._get_event()
        event.record()
        self._log((next(timers._seq), event))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        event = self._timers._get_event()
        event.record()
        self._log((_END, event))

    def _pair(self) -> None:
        batch = self._drain()
        if not batch:
            return
        opened, pending = self._open, self._pending
        for seq, event in batch:
            if seq != _END:
                opened.append((seq, event))
            elif opened:
                pending.append((opened.pop()[1], event))
            else:
                self._timers._pool.append(event)

    def _harvest(self, block: bool) -> None:
        """Turn pending event pairs into laps, oldest first; without ``block`` stop at the
        first pair whose end event has not completed."""
        self._pair()
        pending, pool, laps = self._pending, self._timers._pool, self._laps
        done = 0
        for start, end in pending:
            # Both ends are checked: a block may switch streams between enter and exit.
            if block:
                start.synchronize()
                end.synchronize()
            elif not (end.query() and start.query()):
                break
            laps.append(round(start.elapsed_time(end) * 1e6))  # ms -> ns
            pool.append(start)
            pool.append(end)
            done += 1
        del pending[:done]

    def _laps_ns(self) -> array:
        self._harvest(block=True)
        return self._laps

    def _open_key(self):
        return (self._open[-1][0], self._index) if self._open else None

    def _clear(self) -> None:
        pool = self._timers._pool
        pool.extend(event for _, event in self._entries)
        pool.extend(event for _, event in self._open)
        for start, end in self._pending:
            pool.append(start)
            pool.append(end)
        del self._pending[:]
        super()._clear()


class _FirstEventSection(_EventSection):
    __slots__ = ()
    __enter__ = _first_enter


if _ext._C is not None:

    class _FastSection(_SectionCommon, _ext._C._Section):
        """A clock-timed section whose ``__enter__``/``__exit__`` and log are C++.

        The C base reads ``steady_clock`` (the clock of :func:`time.perf_counter_ns`)
        or the given clock, keeps the log as int64 nanoseconds, and calls
        ``Timers._first_enter`` at the first enter; pairing is :class:`_SectionCommon`'s.
        """

        __slots__ = ("name", "_timers", "_open", "_laps", "_index")

        def __init__(self, timers: Timers, name: str, clock: Callable[[], int]) -> None:
            _ext._C._Section.__init__(
                self, None if clock is time.perf_counter_ns else clock, timers._first_enter
            )
            self.name = name
            self._timers = timers
            self._open: list = []
            self._laps = array("q")
            self._index = -1

        def _rearm(self) -> None:
            self._first = True

        def _mark_entered(self) -> None:
            self._first = False

    _FAST_SECTION: type | None = _FastSection
    _TimersBase: type | None = _ext._C._TimersBase
else:
    _FAST_SECTION = None
    _TimersBase = None  # set below to _PyTimersBase


def _percentile(sorted_values: list[int], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default method).

    The value at rank ``(n - 1) * q / 100`` of the sorted values, interpolated
    linearly between its two neighbours.
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


def _stats(laps_ns: Iterable[int]) -> dict[str, float]:
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
        median=_percentile(s, 50.0) / 1e9,
        min=s[0] / 1e9,
        max=s[-1] / 1e9,
        p95=_percentile(s, 95.0) / 1e9,
    )


def _format_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = [title]

    def fmt(cells):
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in rows)
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "nan"
    ms = seconds * 1e3
    # Fixed decimals read best in a column; sub-microsecond laps keep their digits.
    return f"{ms:.3f}" if ms == 0 or abs(ms) >= 1e-3 else f"{ms:.3g}"


class _PyTimersBase:
    """What ``fastpgd._C._TimersBase`` does, in Python: ``timers(name)``."""

    __slots__ = ("_sections",)

    def __call__(self, name: str) -> _Section:
        """Return the context manager that times one block of section ``name``.

        Args:
            name (str): section name, e.g. ``"attack"``.

        Returns:
            A reusable context manager; entering and leaving it records one lap.
        """
        try:
            return self._sections[name]
        except KeyError:
            return self._new_section(name)


if _TimersBase is None:
    _TimersBase = _PyTimersBase


class Timers(_TimersBase):
    """Named timing sections for a training loop: one lap per ``with`` block.

    ``timers(name)`` returns the (cached) section for ``name``; entering and
    leaving it records one lap. Blocks nest: the first time a name is entered,
    the innermost block running at that moment becomes its *parent* (none for
    an outermost block), which sets the indentation of :meth:`report` and the
    default denominator of ``share``.

    Behaviour in unusual states:

    - *Exceptions*: a block that raises still records its lap; the exception
      propagates unchanged.
    - *A name nested in itself*: each block records its own lap (the outer lap
      includes the inner one); the parent stays the one recorded at first entry.
    - *Exits out of order* (manual ``__enter__``/``__exit__`` calls): each exit
      closes the most recent open block of the *same* name, so every lap spans
      its own enter and exit; an exit of a name with no open block is ignored.
    - *Blocks open during* :meth:`reset` *or* :meth:`load_state_dict` are
      discarded: their exits are ignored.
    - Not thread-safe: use one ``Timers`` per thread.

    Args:
        sync (str or None): how GPU work is accounted for. ``None`` (default):
            read the clock directly (right for CPU work; GPU work still queued
            is not counted). ``"cuda"``: ``torch.cuda.synchronize()`` before each
            clock read (exact, but stalls the host twice per block).
            ``"events"``: record a ``torch.cuda.Event`` on the current stream at
            enter and exit and read the elapsed times only when laps are read,
            so the loop never stalls; times then measure the GPU stream. Events
            belong to the device current when they are created: keep one
            ``Timers`` per device. ``"cuda"`` and ``"events"`` need a CUDA device.
        clock (callable, optional): zero-argument function returning a
            non-negative integer number of nanoseconds from a monotonic clock.
            Called once at construction to check it. Default:
            :func:`time.perf_counter_ns`. Not allowed with ``"events"``.

    Examples::

        >>> import fastpgd
        >>> timers = fastpgd.Timers()
        >>> for _ in range(3):
        ...     with timers("step"):
        ...         with timers("attack"):
        ...             pass
        ...         with timers("update"):
        ...             pass
        >>> timers.names()
        ['step', 'attack', 'update']
        >>> timers.count("attack")
        3
        >>> timers.parents()
        {'step': None, 'attack': 'step', 'update': 'step'}
        >>> sorted(timers.summary()["attack"])
        ['count', 'max', 'mean', 'median', 'min', 'p95', 'share', 'total']
        >>> table = timers.report(file=sys.stderr)  # prints a table in ms
    """

    # The class of clock-timed sections: C++ where the extension is in use.
    _fast_section_cls: type | None = _FAST_SECTION

    __slots__ = (
        "_clock", "_sync", "_order", "_parents", "_section_cls",
        "_seq", "_pool", "_new_event", "__weakref__",
    )  # fmt: skip

    def __init__(self, sync: str | None = None, clock: Callable[[], int] | None = None) -> None:
        if sync not in _SYNC_MODES:
            raise ValueError(f"sync must be one of None, 'cuda', 'events', got {sync!r}")
        if sync is not None and not _cuda_available():
            raise RuntimeError(
                f"Timers(sync={sync!r}) needs a CUDA device, but torch.cuda.is_available() is "
                "False; use sync=None to time CPU work"
            )
        if clock is not None:
            if sync == "events":
                raise ValueError("clock cannot be combined with sync='events' (events keep time)")
            if not callable(clock):
                raise TypeError(
                    f"clock must be a callable returning int nanoseconds, got {clock!r}"
                )
            reading = clock()
            if not isinstance(reading, int) or isinstance(reading, bool):
                raise TypeError(
                    f"clock must return int nanoseconds, got {type(reading).__name__} ({reading!r})"
                )
            if reading < 0:
                raise ValueError(f"clock must return non-negative nanoseconds, got {reading}")
        base = clock if clock is not None else time.perf_counter_ns
        if sync == "cuda":
            synchronize = _cuda_synchronize

            def synced_clock() -> int:
                synchronize()
                return base()

            self._clock = synced_clock
        else:
            self._clock = base
        self._sync = sync
        self._sections: dict[str, _Section] = {}
        self._order: list[_Section] = []  # first-entered order
        self._parents: dict[str, str | None] = {}
        if sync == "events":
            import itertools

            self._seq = itertools.count()
            self._pool: list = []
            self._new_event = _new_cuda_event
            self._section_cls = _EventSection
        else:
            fast = self._fast_section_cls
            self._section_cls = fast if fast is not None else _Section

    # -- hot path: timers(name) is the base class's __call__ ---------------
    def _new_section(self, name: str) -> _Section:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must be a non-empty string")
        section = self._sections[name] = self._section_cls(self, name, self._clock)
        return section

    def _first_enter(self, section: _Section) -> None:
        best_key, parent = None, None
        for other in self._order:
            other._pair()
            key = other._open_key()
            if key is not None and (best_key is None or key > best_key):
                best_key, parent = key, other.name
        section._index = len(self._order)
        self._order.append(section)
        self._parents[section.name] = parent

    def _get_event(self):
        pool = self._pool
        if not pool:
            for section in self._order:
                section._harvest(block=False)
        return pool.pop() if pool else self._new_event()

    # -- reading -----------------------------------------------------------
    @property
    def sync(self) -> str | None:
        """The GPU timing mode given at construction."""
        return self._sync

    def names(self) -> list[str]:
        """Names in the order they were first entered."""
        return [s.name for s in self._order]

    def parents(self) -> dict[str, str | None]:
        """For each name, the innermost section running when it was first entered (or None)."""
        return dict(self._parents)

    def _lookup(self, name: str, arg: str = "name") -> _Section | None:
        if not isinstance(name, str):
            raise TypeError(f"{arg} must be a str, got {type(name).__name__}")
        section = self._sections.get(name)
        return section if section is not None and section._index >= 0 else None

    def laps(self, name: str) -> list[float]:
        """Completed laps of ``name`` in seconds, in order; ``[]`` for a name never timed."""
        section = self._lookup(name)
        return [] if section is None else [ns / 1e9 for ns in section._laps_ns()]

    def count(self, name: str) -> int:
        """Number of completed laps of ``name`` (0 for a name never timed)."""
        section = self._lookup(name)
        return 0 if section is None else len(section._laps_ns())

    def total(self, name: str) -> float:
        """Sum of the completed laps of ``name`` in seconds (0.0 for a name never timed)."""
        section = self._lookup(name)
        return 0.0 if section is None else sum(section._laps_ns()) / 1e9

    def _root(self, name: str) -> str:
        parents = self._parents
        while parents.get(name) is not None:
            name = parents[name]
        return name

    def _depth(self, name: str) -> int:
        depth, parents = 0, self._parents
        while parents.get(name) is not None:
            name = parents[name]
            depth += 1
        return depth

    def _tree_order(self) -> list[str]:
        """Names depth first (children after their parent), siblings in first-seen order."""
        children: dict[str | None, list[str]] = {}
        for s in self._order:
            children.setdefault(self._parents[s.name], []).append(s.name)
        out: list[str] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            name = stack.pop()
            out.append(name)
            stack.extend(reversed(children.get(name, [])))
        return out

    def summary(self, parent: str | None = None) -> dict[str, dict[str, float]]:
        """Statistics of every name, in seconds.

        Args:
            parent (str, optional): the section whose total is the denominator of
                every ``share``. Default: each name's outermost enclosing section
                (itself for an outermost section, whose share is then 1.0).

        Returns:
            dict: name (in first-seen order) -> dict with ``count``, ``total``,
            ``mean``, ``median``, ``min``, ``max``, ``p95`` (seconds; NaN when
            ``count`` is 0) and ``share`` (fraction; NaN when the denominator is 0).
            ``p95`` interpolates linearly between closest ranks, like
            ``numpy.percentile(laps, 95)``.
        """
        if parent is not None and self._lookup(parent, "parent") is None:
            raise ValueError(f"parent {parent!r} is not a timed section; known: {self.names()}")
        stats = {s.name: _stats(s._laps_ns()) for s in self._order}
        for name, st in stats.items():
            denom_name = parent if parent is not None else self._root(name)
            if denom_name == name:
                st["share"] = 1.0
            else:
                denom = stats[denom_name]["total"]
                st["share"] = st["total"] / denom if denom > 0 else math.nan
        return stats

    def report(
        self,
        parent: str | None = None,
        file=None,
        names: Iterable[str] | None = None,
        gathered: dict | None = None,
    ) -> str:
        """Format a table of :meth:`summary` (or of :meth:`gather`), print it and return it.

        Rows are indented by nesting depth, children under their parent. Times
        are in milliseconds; share is a percentage.

        Args:
            parent (str, optional): denominator of ``share``; see :meth:`summary`.
            file (file-like, optional): where to print. Default: ``sys.stdout``.
            names (iterable of str, optional): only these names. Default: all.
            gathered (dict, optional): the result of :meth:`gather`; the table
                then shows min / mean / max across ranks of count, total and mean.

        Returns:
            str: the table.
        """
        selected = None
        if names is not None:
            if isinstance(names, str):
                raise TypeError("names must be an iterable of str, not a single str")
            selected = set(names)
        if gathered is not None:
            text = self._format_gathered(gathered, selected)
        else:
            text = self._format_summary(parent, selected)
        print(text, end="", file=sys.stdout if file is None else file)
        return text

    def _format_summary(self, parent: str | None, selected: set | None) -> str:
        stats = self.summary(parent)
        denom = f"total of {parent!r}" if parent is not None else "total of the outermost section"
        title = f"Timers (times in ms; share = total / {denom})"
        header = ["name", "count", "total", "mean", "median", "min", "max", "p95", "share"]
        rows = []
        for name in self._tree_order():
            if selected is not None and name not in selected:
                continue
            st = stats[name]
            share = "nan" if math.isnan(st["share"]) else f"{st['share'] * 100:.1f}%"
            rows.append(
                ["  " * self._depth(name) + name, str(st["count"])]
                + [_ms(st[k]) for k in ("total", "mean", "median", "min", "max", "p95")]
                + [share]
            )
        return _format_table(title, header, rows)

    def _format_gathered(self, gathered: dict, selected: set | None) -> str:
        if not isinstance(gathered, dict) or "stats" not in gathered:
            raise TypeError("gathered must be the dict returned by Timers.gather()")
        parents = gathered.get("parents", {})

        def depth(name):
            d = 0
            while parents.get(name) is not None:
                name = parents[name]
                d += 1
            return d

        title = (
            f"Timers across {gathered['world_size']} ranks "
            "(times in ms; min / mean / max over ranks)"
        )
        header = ["name", "ranks"]
        for figure in ("count", "total", "mean"):
            header += [f"{figure}.min", f"{figure}.mean", f"{figure}.max"]
        rows = []
        for name in gathered["names"]:
            if selected is not None and name not in selected:
                continue
            st = gathered["stats"][name]
            row = ["  " * depth(name) + name, str(st["ranks"])]
            row += [f"{st['count'][k]:g}" for k in ("min", "mean", "max")]
            row += [_ms(st["total"][k]) for k in ("min", "mean", "max")]
            row += [_ms(st["mean"][k]) for k in ("min", "mean", "max")]
            rows.append(row)
        return _format_table(title, header, rows)

    # -- export ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Laps and nesting as plain data.

        Returns:
            dict: ``{"sync": ..., "unit": "s", "laps": {name: [seconds, ...]},
            "parents": {name: parent or None}}``, names in first-seen order.
        """
        return {
            "sync": self._sync,
            "unit": "s",
            "laps": {s.name: [ns / 1e9 for ns in s._laps_ns()] for s in self._order},
            "parents": dict(self._parents),
        }

    def to_json(self, path=None) -> str:
        """:meth:`to_dict` as JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    def to_csv(self, path=None) -> str:
        """Every lap as one CSV row ``name,index,seconds`` (with a header row); also
        written to ``path`` when given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "index", "seconds"])
        for s in self._order:
            for i, ns in enumerate(s._laps_ns()):
                writer.writerow([s.name, i, repr(ns / 1e9)])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return text

    def plot(self, path, parent: str | None = None) -> None:
        """Save a bar chart of time per ``parent`` lap spent in each child section.

        Needs matplotlib (``pip install fastpgd[plot]``).

        Args:
            path (str or path-like): image file to write; the format follows the
                suffix (``.png``, ``.svg``, ``.pdf``).
            parent (str, optional): the section to break down. Default: the first
                outermost section.
        """
        from fastpgd._plot import plot_breakdown

        if parent is None:
            roots = [s.name for s in self._order if self._parents[s.name] is None]
            if not roots:
                raise ValueError("nothing to plot: no section has been timed")
            parent = roots[0]
        elif self._lookup(parent, "parent") is None:
            raise ValueError(f"parent {parent!r} is not a timed section; known: {self.names()}")
        children = [s.name for s in self._order if self._parents[s.name] == parent]
        if not children:
            raise ValueError(f"parent {parent!r} has no nested sections to break down")
        stats = self.summary(parent)
        plot_breakdown(path, parent, stats[parent], {c: stats[c] for c in children})

    # -- distributed -------------------------------------------------------
    def gather(self, group=None) -> dict[str, Any]:
        """Gather every rank's figures and reduce them to min / mean / max across ranks.

        A collective call: with ``torch.distributed`` initialised every rank of
        ``group`` must call it (with NCCL, after ``torch.cuda.set_device``, as
        ``all_gather_object`` requires). Without it, returns this process's
        figures with ``world_size`` 1.

        Args:
            group (ProcessGroup, optional): the group to gather over. Default: the
                default group.

        Returns:
            dict: ``world_size``, ``names`` (union, first-seen order of the lowest
            rank that has each), ``parents``, and ``stats``: name -> ``ranks``
            (how many ranks timed it) and, for each of ``count``, ``total`` and
            ``mean`` (seconds), a dict ``{"min", "mean", "max"}`` across ranks plus
            ``per_rank`` (list of ``{"count", "total", "mean"}``, rank order).
            A rank that never timed a name counts as count 0 and total 0.0 and
            is left out of the across-rank ``mean`` figures.
        """
        mine = {
            "names": self.names(),
            "parents": dict(self._parents),
            "figures": {
                s.name: (len(laps), sum(laps)) for s in self._order for laps in [s._laps_ns()]
            },
        }
        world = [mine]
        try:
            import torch.distributed as dist
        except ImportError:  # a torch build without distributed support
            dist = None
        if dist is not None and dist.is_available() and dist.is_initialized():
            world = [None] * dist.get_world_size(group)
            dist.all_gather_object(world, mine, group=group)
        return _reduce_gathered(world)

    # -- state -------------------------------------------------------------
    def reset(self) -> None:
        """Forget every lap, parent and open block; cached sections stay usable."""
        for section in self._sections.values():
            section._clear()
            section._rearm()
        del self._order[:]
        self._parents.clear()

    def state_dict(self) -> dict[str, Any]:
        """Laps (integer nanoseconds), parents and sync mode, for a checkpoint."""
        return {
            "version": _STATE_VERSION,
            "sync": self._sync,
            "unit": "ns",
            "laps": {s.name: list(s._laps_ns()) for s in self._order},
            "parents": dict(self._parents),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace all laps and parents with those of ``state`` (from :meth:`state_dict`).

        The sync mode of this object is kept (it describes this machine), open
        blocks are discarded, and new laps append after the loaded ones.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from Timers.state_dict(), got {type(state)}")
        missing = {"version", "laps", "parents"} - state.keys()
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if state["version"] != _STATE_VERSION:
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
        self.reset()
        for name, values in laps.items():
            section = self(name)
            section._mark_entered()
            section._index = len(self._order)
            section._laps.extend(values)
            self._order.append(section)
            self._parents[name] = parents[name]

    def __repr__(self) -> str:
        return f"Timers(sync={self._sync!r}, names={self.names()!r})"


def _pure_python_twin(cls: type) -> type:
    """``cls`` rebuilt on the pure-Python base and sections, so that both paths can be
    compared in one process (tests, benchmarks). Its methods are ``cls``'s own."""
    slots = set(cls.__slots__)
    namespace = {k: v for k, v in vars(cls).items() if k not in slots}
    namespace["_fast_section_cls"] = None
    return type(cls.__name__, (_PyTimersBase,), namespace)


# Timers without the extension, whether or not it is in use.
_PyTimers = Timers if _TimersBase is _PyTimersBase else _pure_python_twin(Timers)


def _reduce_gathered(world: list[dict]) -> dict[str, Any]:
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
