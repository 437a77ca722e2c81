"""Named, nestable timing sections for a training loop: :class:`Timers` and its sections.

:class:`Timers` records one lap per ``with timers("name"):`` block. This module
is the hot path: ``timers(name)`` looks the section up, and entering and leaving
it read the clock and append to the section's log; laps are paired and turned
into seconds only when they are read. What is made of the laps lives beside it:
statistics and the report table in :mod:`fastpgd.timer_stats`; JSON, CSV,
checkpoint state and the chart in :mod:`fastpgd.timer_export`; the across-rank
figures in :mod:`fastpgd.timer_gather`.

Two parts of the hot path have a C++ core in ``fastpgd._C``, each with its
pure-Python twin here: ``_C._TimersBase`` (``timers(name)``; twin
:class:`_PyTimersBase`) and ``_C._Section`` (a section's log, ``__enter__`` and
``__exit__``; twin :class:`_PySection`). The methods built on them are written
once (:class:`_TimersMethods`, :class:`_SectionMethods`) and used by two
classes: :class:`Timers`, on whichever :func:`fastpgd._ext.pick` chooses, and
:class:`PyTimers`, always on the twins.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

from fastpgd import _ext, timer_export, timer_gather, timer_stats
from fastpgd.stopwatch import checked_clock

__all__ = ["PyTimers", "Timers"]

_SYNC_MODES = (None, "cuda", "events")
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


def _running_thread(ident: int) -> threading.Thread | None:
    """The running thread whose ``threading.get_ident()`` is ``ident``, or None. Identifiers
    of finished threads are reused, so a thread started later may be the one found."""
    for thread in threading.enumerate():
        if thread.ident == ident and thread.is_alive():
            return thread
    return None


def _negative_laps(name: str, n: int) -> str:
    return (
        f"{n} lap(s) of section {name!r} would be negative (they end before they begin) and "
        "were not recorded: several threads timed this Timers at once (it is for one thread: "
        "create one Timers per thread), or the clock went backwards, or (sync='events') a "
        "block ended on another CUDA stream than the one it began on"
    )


# -- sections --------------------------------------------------------------------------


def _claimed_by_another(me: int, claimer: int) -> str:
    # The same words as the C++ section (csrc/binding/timers.cpp).
    return (
        f"a section is for one thread: thread {me} entered a section claimed by thread "
        f"{claimer}; set _first = True to hand it over"
    )


class _PySection:
    """The pure-Python twin of ``fastpgd._C._Section``: the log of one timing section.

    Entering logs ``~t`` (negative for a reading ``t >= 0``) and leaving logs
    ``t``, integer nanoseconds in call order; :meth:`_drain` hands the entries
    over.

    A section is for one thread. The first enter since creation (or since
    ``_first = True``) claims it for the calling thread; an enter from another
    thread claims it only if ``on_claim`` allows it, and without ``on_claim``
    raises ``RuntimeError``. ``on_claim(self)`` runs before the clock is read;
    if it raises, nothing is logged and the claim stays as it was. Exits from a
    thread other than the claiming one (or before any claim) log nothing.

    Each section runs on a class of its own, made by :func:`_per_section_class`,
    whose ``__enter__`` and ``__exit__`` are closures over the clock, the log's
    ``append`` and the claiming thread's identifier: the hot path compares one
    ``threading.get_ident()`` with a closure cell and tests no flag.

    Args:
        clock (Callable[[], int], optional): zero-argument callable returning int
            nanoseconds, checked at every reading like the C++ one. Default:
            ``None`` (:func:`time.perf_counter_ns`).
        on_claim (Callable[[_PySection], object], optional): called before a
            thread claims the section; raising refuses the thread.
    """

    __slots__ = ("_clock", "_entries", "_on_claim", "_thread", "_set_hot_thread")

    def __init__(self, clock: Callable[[], int] | None = None, on_claim=None) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(
                "clock must be None or a zero-argument callable returning int nanoseconds, "
                f"got {type(clock).__name__}"
            )
        if on_claim is not None and not callable(on_claim):
            raise TypeError(f"on_claim must be None or a callable, got {type(on_claim).__name__}")
        self._clock = time.perf_counter_ns if clock is None else checked_clock(clock)
        self._entries: list = []
        self._on_claim = on_claim
        self._thread: int | None = None  # threading.get_ident() of the claimer; None: unclaimed
        enter, exit, self._set_hot_thread = self._hot_methods()
        self.__class__ = _per_section_class(type(self), enter, exit)

    def _hot_methods(self):
        """``__enter__`` and ``__exit__`` of this section's class, as closures over its clock,
        its log's ``append`` and the claiming thread (closure cells are read faster than slot
        attributes), and the function that sets that thread."""
        clock, log, get_ident = self._clock, self._entries.append, threading.get_ident
        thread = None

        def __enter__(section):
            if get_ident() != thread:
                return _claim_then_enter(section)
            log(~clock())
            return section

        def __exit__(section, exc_type, exc, tb):
            if get_ident() == thread:
                log(clock())  # recorded whether or not the block raised; None re-raises

        def set_thread(ident):
            nonlocal thread
            thread = ident

        return __enter__, __exit__, set_thread

    def _set_thread(self, ident: int | None) -> None:
        self._thread = ident
        self._set_hot_thread(ident)

    def _drain(self) -> list:
        """The logged entries (``~t`` for an enter, ``t`` for an exit), removed from the log."""
        entries = self._entries
        batch = entries[:]
        del entries[: len(batch)]  # entries logged meanwhile stay for the next drain
        return batch

    def _discard(self) -> None:
        """Forget the logged entries."""
        del self._entries[:]

    def _log_size(self) -> int:
        """Number of entries logged and not yet drained."""
        return len(self._entries)

    @property
    def _first(self) -> bool:
        """Whether no thread has claimed the section since creation or ``_first = True`` (the
        next enter claims it). Can only be set to ``True``."""
        return self._thread is None

    @_first.setter
    def _first(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError("_first must be set to a bool")
        if not value:
            raise ValueError(
                "_first can only be set to True (the next enter then claims the section)"
            )
        self._set_thread(None)

    @_first.deleter
    def _first(self) -> None:
        raise TypeError("_first must be set to a bool")


def _claim_then_enter(section: _PySection):
    """``__enter__`` of a section that the calling thread has not claimed: its first enter
    since creation or ``_first = True``, or an enter from another thread than the claimer."""
    me = threading.get_ident()
    on_claim = section._on_claim
    if on_claim is not None:
        on_claim(section)  # if it raises, the claim stays as it was and nothing is logged
    elif section._thread is not None:
        raise RuntimeError(_claimed_by_another(me, section._thread))
    section._set_thread(me)
    return section.__enter__()


def _per_section_class(base: type, enter, exit) -> type:
    """The class of one pure-Python section: ``base`` with ``enter`` and ``exit`` (closures
    over that section's state) as its ``__enter__`` and ``__exit__``."""

    class Section(base):
        __slots__ = ()
        __enter__ = enter
        __exit__ = exit

    return Section


class _SectionMethods:
    """What every section of a :class:`Timers` does off the hot path: pair its log into laps.

    Pairing (last in, first out, per name) waits until laps are read, so nesting a
    name in itself and exits out of order pair correctly and cost nothing in the
    hot path.
    """

    __slots__ = ()

    def __init__(self, timers: _TimersMethods, name: str, clock: Callable[[], int]) -> None:
        self.name = name
        self._timers = timers
        self._open: list = []  # enters not yet matched by an exit, innermost last
        self._laps = array("q")  # nanoseconds; 8 bytes a lap once paired
        self._index = -1  # position in first-seen order; -1 before the first enter
        # None: the C++ section reads steady_clock itself, the clock of perf_counter_ns.
        super().__init__(None if clock is time.perf_counter_ns else clock, timers._claim)

    def __repr__(self) -> str:
        return f"<timer section {self.name!r}>"

    def _pair(self) -> None:
        """Match logged enters and exits into laps; an exit with no open enter is dropped.

        Raises:
            RuntimeError: an exit read the clock before the enter it closes; that
                lap is not recorded (the others of the batch are).
        """
        batch = self._drain()
        if not batch:
            return
        opened, laps = self._open, self._laps
        negative = 0
        for raw in batch:
            if raw < 0:
                opened.append(~raw)
            elif opened:
                lap = raw - opened.pop()
                if lap >= 0:
                    laps.append(lap)
                else:
                    negative += 1
        if negative:
            raise RuntimeError(_negative_laps(self.name, negative))

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


_SECTION_SLOTS = ("name", "_timers", "_open", "_laps", "_index")


class _ClockSection(_SectionMethods, _ext.pick("_Section", _PySection)):
    """A clock-timed section of :class:`Timers`: its log, ``__enter__`` and ``__exit__`` are
    C++ when the extension is in use."""

    __slots__ = _SECTION_SLOTS


class _PyClockSection(_SectionMethods, _PySection):
    """A clock-timed section of :class:`PyTimers`."""

    __slots__ = _SECTION_SLOTS


class _EventSection(_SectionMethods, _PySection):
    """A section timed by CUDA events recorded on the current stream (both Timers classes).

    Enter and exit only record an event (asynchronous); the pairs wait in
    ``_pending`` and are synchronized and read when laps are read, or harvested
    without stalling (``query()``) when the event pool runs dry.
    """

    __slots__ = (*_SECTION_SLOTS, "_pending")

    def __init__(self, timers: _TimersMethods, name: str, clock: Callable[[], int]) -> None:
        super().__init__(timers, name, clock)
        self._pending: list = []  # (start_event, end_event), oldest first

    def _hot_methods(self):
        # Recording an event costs far more than the closure saves; closures keep one shape.
        get_event, seq, log = self._timers._get_event, self._timers._seq, self._entries.append
        get_ident = threading.get_ident
        thread = None

        def __enter__(section):
            if get_ident() != thread:
                return _claim_then_enter(section)
            event = get_event()
            event.record()
            log((next(seq), event))
            return section

        def __exit__(section, exc_type, exc, tb):
            if get_ident() == thread:
                event = get_event()
                event.record()
                log((_END, event))

        def set_thread(ident):
            nonlocal thread
            thread = ident

        return __enter__, __exit__, set_thread

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
        done = negative = 0
        for start, end in pending:
            # Both ends are checked: a block may switch streams between enter and exit.
            if block:
                start.synchronize()
                end.synchronize()
            elif not (end.query() and start.query()):
                break
            lap = round(start.elapsed_time(end) * 1e6)  # ms -> ns
            if lap >= 0:
                laps.append(lap)
            else:
                negative += 1
            pool.append(start)
            pool.append(end)
            done += 1
        del pending[:done]
        if negative:
            raise RuntimeError(_negative_laps(self.name, negative))

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


# -- timers ----------------------------------------------------------------------------


class _PyTimersBase:
    """The pure-Python twin of ``fastpgd._C._TimersBase``: ``timers(name)``."""

    __slots__ = ("_sections",)

    def __call__(self, name: str):
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


class _TimersMethods:
    """Everything of :class:`Timers` but ``timers(name)``, shared by both Timers classes."""

    __slots__ = ()
    #: The class of clock-timed sections.
    _clock_section_cls: type

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
        self._sections: dict[str, _SectionMethods] = {}
        self._order: list[_SectionMethods] = []  # first-entered order
        self._parents: dict[str, str | None] = {}
        # Serializes what other threads may do (read, reset) with the owner's claims;
        # re-entrant because load_state_dict() resets and reports read the summary.
        self._lock = threading.RLock()
        # threading.get_ident() of the thread that times; None: not yet.
        self._owner: int | None = None
        if sync == "events":
            self._seq = itertools.count()
            self._pool: list = []
            self._new_event = _new_cuda_event
            self._section_cls = _EventSection
        else:
            self._section_cls = self._clock_section_cls

    # -- hot path: timers(name) is the base class's __call__ ---------------------------
    def _new_section(self, name: str) -> _SectionMethods:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must be a non-empty string")
        section = self._sections[name] = self._section_cls(self, name, self._clock)
        return section

    def _claim(self, section: _SectionMethods) -> None:
        """Called by a section before the calling thread claims it (its first enter since
        creation, :meth:`reset` or :meth:`load_state_dict`, or an enter from another thread
        than its claimer): refuse any thread but the owner while the owner runs; at a
        section's first enter, record its parent."""
        with self._lock:
            me = threading.current_thread()
            if self._owner is not None and self._owner != me.ident:
                owner = _running_thread(self._owner)
                if owner is not None:
                    raise RuntimeError(
                        f"Timers is for one thread: thread {me.name!r} entered section "
                        f"{section.name!r} of a Timers that thread {owner.name!r} times. "
                        "Create one Timers per thread, or call reset() to hand this one over."
                    )
            self._owner = me.ident
            if section._index >= 0:
                return  # entered (or loaded) before: only its thread changes
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
            with self._lock:
                for section in self._order:
                    section._harvest(block=False)
        return pool.pop() if pool else self._new_event()

    # -- reading -----------------------------------------------------------------------
    @property
    def sync(self) -> str | None:
        """The GPU timing mode given at construction."""
        return self._sync

    def names(self) -> list[str]:
        """Names in the order they were first entered."""
        return [s.name for s in list(self._order)]

    def parents(self) -> dict[str, str | None]:
        """For each name, the innermost section running when it was first entered (or None)."""
        return dict(self._parents)

    def _lookup(self, name: str) -> _SectionMethods | None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        section = self._sections.get(name)
        return section if section is not None and section._index >= 0 else None

    def _section_laps(self, name: str) -> array:
        """A copy of the completed laps of ``name`` (integer ns); empty for a name never timed."""
        with self._lock:
            section = self._lookup(name)
            return array("q") if section is None else section._laps_ns()[:]

    def _snapshot(self) -> tuple[dict[str, array], dict[str, str | None]]:
        """Copies of every name's laps (integer ns, first-seen order) and of the parents."""
        with self._lock:
            laps = {s.name: s._laps_ns()[:] for s in self._order}
            return laps, dict(self._parents)

    def laps(self, name: str) -> list[float]:
        """Completed laps of ``name`` in seconds, in order; ``[]`` for a name never timed."""
        return [ns / 1e9 for ns in self._section_laps(name)]

    def count(self, name: str) -> int:
        """Number of completed laps of ``name`` (0 for a name never timed)."""
        return len(self._section_laps(name))

    def total(self, name: str) -> float:
        """Sum of the completed laps of ``name`` in seconds (0.0 for a name never timed)."""
        return sum(self._section_laps(name)) / 1e9

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
        return timer_stats.summarize(*self._snapshot(), parent)

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
        if gathered is not None:
            text = timer_stats.gathered_table(gathered, names)
        else:
            text = timer_stats.summary_table(*self._snapshot(), parent, names)
        print(text, end="", file=sys.stdout if file is None else file)
        return text

    # -- export ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Laps and nesting as plain data.

        Returns:
            dict: ``{"sync": ..., "unit": "s", "laps": {name: [seconds, ...]},
            "parents": {name: parent or None}}``, names in first-seen order.
        """
        return timer_export.to_dict(self._sync, *self._snapshot())

    def to_json(self, path=None) -> str:
        """:meth:`to_dict` as JSON; also written to ``path`` when given."""
        return timer_export.to_json(self.to_dict(), path)

    def to_csv(self, path=None) -> str:
        """Every lap as one CSV row ``name,index,seconds`` (with a header row); also
        written to ``path`` when given."""
        return timer_export.to_csv(self._snapshot()[0], path)

    def plot(self, path, parent: str | None = None) -> None:
        """Save a bar chart of time per ``parent`` lap spent in each child section.

        Needs matplotlib (``pip install fastpgd[plot]``).

        Args:
            path (str or path-like): image file to write; the format follows the
                suffix (``.png``, ``.svg``, ``.pdf``).
            parent (str, optional): the section to break down. Default: the first
                outermost section.
        """
        timer_export.plot(path, *self._snapshot(), parent)

    # -- distributed -------------------------------------------------------------------
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
        return timer_gather.gather(*self._snapshot(), group)

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every lap, parent and open block; cached sections stay usable.

        Also releases the Timers: the next thread to enter a section times it.
        """
        with self._lock:
            # A copy: the owner creates sections without the lock (timers(name) for a new
            # name); one created meanwhile is fresh already.
            for section in list(self._sections.values()):
                # Unclaimed first: the owner's next enter then waits for this lock, and its
                # exits are ignored, so nothing it does meanwhile outlives the clear.
                section._first = True
                section._clear()
            del self._order[:]
            self._parents.clear()
            self._owner = None

    def state_dict(self) -> dict[str, Any]:
        """Laps (integer nanoseconds), parents and sync mode, for a checkpoint."""
        return timer_export.state_dict(self._sync, *self._snapshot())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace all laps and parents with those of ``state`` (from :meth:`state_dict`).

        The sync mode of this object is kept (it describes this machine), open
        blocks are discarded, new laps append after the loaded ones, and, as
        after :meth:`reset`, the next thread to enter a section times it.
        """
        laps, parents = timer_export.check_state(state)
        with self._lock:
            self.reset()
            for name, values in laps.items():
                section = self(name)
                section._index = len(self._order)
                section._laps.extend(values)
                self._order.append(section)
                self._parents[name] = parents[name]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sync={self._sync!r}, names={self.names()!r})"


_TIMERS_SLOTS = (
    "_clock", "_sync", "_order", "_parents", "_section_cls", "_lock", "_owner",
    "_seq", "_pool", "_new_event", "__weakref__",
)  # fmt: skip


class Timers(_TimersMethods, _ext.pick("_TimersBase", _PyTimersBase)):
    """Named timing sections for a training loop: one lap per ``with`` block.

    ``timers(name)`` returns the (cached) section for ``name``; entering and
    leaving it records one lap. Blocks nest: the first time a name is entered,
    the innermost block running at that moment becomes its *parent* (none for
    an outermost block), which sets the indentation of :meth:`report` and the
    default denominator of ``share``. With the compiled extension in use the
    lookup and the clock-timed sections are C++; :class:`PyTimers` is the same
    in pure Python.

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
    - *A clock that goes backwards*: a lap that would be negative is not
      recorded; the call that pairs it (a read, or the first enter of a name)
      raises ``RuntimeError``.

    Threads: a ``Timers`` times the blocks of one thread.

    - The first thread to enter a section after construction, :meth:`reset` or
      :meth:`load_state_dict` *owns* the ``Timers``, until the next of those
      calls or until it finishes; then the next thread to enter a section owns
      it. Threads are told apart by :func:`threading.get_ident`, whose values
      finished threads pass on: a thread started after the owner finished may
      be the owner from its first enter on.
    - Another thread entering any section while the owner runs raises
      ``RuntimeError`` before its block runs, and records nothing: create one
      ``Timers`` per thread. Every enter and exit compares the calling thread
      with the owner: one ``pthread_self()`` call in C++ (a block measured
      about 2% slower), one :func:`threading.get_ident` call in pure Python
      (a block measured about 20% slower; see
      ``benchmarks/results/old-vs-new-cpu-2026-11-30.md``).
    - An exit from a thread that does not own the section records nothing: a
      manual ``__exit__`` call from another thread, or the end of a block that
      was open when :meth:`reset` or :meth:`load_state_dict` let another
      thread take over, so that it cannot close the new owner's block.
    - Reading (:meth:`laps`, :meth:`summary`, :meth:`report`, the exports,
      :meth:`gather`), :meth:`reset` and :meth:`load_state_dict` work from any
      thread, even while the owner times: a lock makes them take turns with
      the owner's first enters.
    - With the C++ sections and the built-in clock, an enter or exit checks
      the thread and logs in one step. A user ``clock`` is Python code, and
      the pure-Python sections can switch threads between any two steps: if
      another thread calls :meth:`reset` and enters the same section while the
      owner is between its check and its log entry, that entry lands among the
      new owner's and may pair with one of its blocks. A lap this makes
      negative is never recorded (the call that pairs it raises
      ``RuntimeError``); another may be wrong.

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
            Called once at construction to check it, and every reading is
            checked (``TypeError`` for a non-int, ``OverflowError`` outside
            int64). Default: :func:`time.perf_counter_ns`. Not allowed with
            ``"events"``.

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

    __slots__ = _TIMERS_SLOTS
    _clock_section_cls = _ClockSection


class PyTimers(_TimersMethods, _PyTimersBase):
    """:class:`Timers` in pure Python, whether or not the extension is in use.

    Same constructor, methods and results; ``with timers("x"): pass`` costs
    about 2.9x the C++ path. For comparing the two in one process (tests,
    benchmarks).
    """

    __slots__ = _TIMERS_SLOTS
    _clock_section_cls = _PyClockSection
