"""The lap stopwatch: a C++ core (:class:`Stopwatch`) and its pure-Python twin.

A stopwatch is in one of three states: never started, running, stopped. Its
laps are measured on a monotonic wall clock (``steady_clock`` in C++,
:func:`time.perf_counter_ns` in Python), which keeps counting while a GPU
works. Stopping pauses the current lap and starting again resumes it, so
``start, lap, stop, <pause>, start, lap`` records a second lap without the
pause.

Both backends keep laps as int64 nanoseconds and return seconds as floats;
given the same clock readings they return exactly the same numbers.
:data:`Stopwatch` is the C++ type when the compiled extension is in use and
:class:`PyStopwatch` otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import islice

from fastpgd import _ext

__all__ = ["PyStopwatch", "Stopwatch", "StopwatchError"]


class StopwatchError(RuntimeError):
    """Misuse of a stopwatch created with ``strict=True``.

    The message says what was called in which state and what to call instead,
    e.g. ``"lap() called while stopped; call start() first"``. Without
    ``strict`` the same calls do nothing.
    """


_NEVER_STARTED, _RUNNING, _STOPPED = 0, 1, 2
_STATE_NAMES = {_NEVER_STARTED: "never started", _RUNNING: "running", _STOPPED: "stopped"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _misuse(method: str, state: int) -> str:
    # The same words as the C++ core (csrc/binding/stopwatch.cpp).
    if state == _RUNNING:
        return "start() called while already running; call stop() first, or lap() to record a lap"
    if state == _NEVER_STARTED:
        return f"{method}() called before start(); call start() first"
    return f"{method}() called while stopped; call start() first"


def checked_clock(clock: Callable[[], int]) -> Callable[[], int]:
    """Wrap a user clock so that a bad reading fails at the call that reads it, with the
    C++ core's words (csrc/binding/user_clock.h): ``TypeError`` for a reading that is not an
    ``int``, ``OverflowError`` for one outside int64."""

    def read() -> int:
        now = clock()
        if not isinstance(now, int):
            raise TypeError(f"clock must return an int (nanoseconds), got {type(now).__name__}")
        if not _INT64_MIN <= now <= _INT64_MAX:
            raise OverflowError("clock returned a value outside the int64 range of nanoseconds")
        return now

    return read


class PyStopwatch:
    """A lap stopwatch in pure Python, with the same API and results as the C++ one.

    Times come from a monotonic wall clock. Each segment between two clock
    readings is clamped to 0, so a clock that goes backwards yields laps of 0
    rather than negative ones; lap sums saturate at 2**63 - 1 ns (about 292
    years), as in the C++ core.

    Args:
        strict (bool): raise :class:`StopwatchError` on misuse (``start()`` while
            running, ``stop()``/``lap()`` while not running) instead of doing
            nothing. Default: ``False``.
        clock (Callable[[], int], optional): zero-argument callable returning
            integer nanoseconds, like :func:`time.perf_counter_ns`; tests use it
            to control time. A reading that is not an ``int`` raises
            ``TypeError`` at the call that reads it. Default: ``None``
            (:func:`time.perf_counter_ns`).

    Thread safety: every call reads the clock and updates the state under one
    lock, so calls from several threads take effect one at a time, in the order
    of their clock readings. No time is counted twice: the laps never sum to
    more than the wall time between the first ``start()`` and the last
    ``lap()`` (with ``lap()`` alone they sum to exactly that). The lock is
    re-entrant, so a ``clock`` that calls the stopwatch does not deadlock; its
    inner call takes a later reading than the outer one, which then counts as
    a clock going backwards. The C++ :data:`Stopwatch` is the fast path and
    records the same laps from several threads: it applies a reading that
    other threads' later readings overtook while its user clock was read as
    the last of those (and so also the outer reading of such a ``clock``).

    Examples::

        >>> sw = PyStopwatch()
        >>> sw.start()
        >>> first = sw.lap()      # seconds since start()
        >>> sw.stop()             # pause: not counted
        >>> sw.start()            # resume
        >>> second = sw.lap()
        >>> len(sw), sw.lap_times() == [first, second]
        (2, True)
    """

    __slots__ = ("_accum", "_clock", "_laps", "_lock", "_mark", "_state", "_strict", "__weakref__")

    def __init__(self, strict: bool = False, clock: Callable[[], int] | None = None) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(
                "clock must be None or a zero-argument callable returning int nanoseconds "
                f"(like time.perf_counter_ns), got {type(clock).__name__}"
            )
        self._strict = strict
        self._clock = time.perf_counter_ns if clock is None else checked_clock(clock)
        # Re-entrant: the clock is read under the lock and may be user code that calls back.
        self._lock = threading.RLock()
        self._state = _NEVER_STARTED
        self._mark = 0  # clock reading at the last start() or lap()
        self._accum = 0  # running total of the current lap before _mark
        self._laps: list[int] = []  # nanoseconds

    def start(self) -> None:
        """Start or resume timing.

        Never started: begin the first lap. Stopped: resume the current lap.
        Running: do nothing (``strict``: raise :class:`StopwatchError`).
        """
        with self._lock:
            now = self._clock()
            state = self._state
            if state != _RUNNING:
                self._state = _RUNNING
                self._mark = now
                return
        if self._strict:
            raise StopwatchError(_misuse("start", state))

    def stop(self) -> None:
        """Pause timing.

        Running: add the time since the last ``start()``/``lap()`` to the
        current lap and stop. Never started or stopped: do nothing
        (``strict``: raise :class:`StopwatchError`).
        """
        with self._lock:
            now = self._clock()
            state = self._state
            if state == _RUNNING:
                d = now - self._mark
                ns = self._accum + d if d > 0 else self._accum
                self._accum = ns if ns < _INT64_MAX else _INT64_MAX
                self._state = _STOPPED
                return
        if self._strict:
            raise StopwatchError(_misuse("stop", state))

    def lap(self) -> float | None:
        """Record a lap.

        Running: record the current lap (its running total plus the time since
        the last ``start()``/``lap()``), begin the next lap, and return the
        recorded lap in seconds. Never started or stopped: do nothing and
        return ``None`` (``strict``: raise :class:`StopwatchError`).

        Returns:
            float or None: the lap in seconds, or ``None`` when not running.
        """
        with self._lock:
            now = self._clock()
            state = self._state
            if state == _RUNNING:
                d = now - self._mark
                ns = self._accum + d if d > 0 else self._accum
                if ns > _INT64_MAX:
                    ns = _INT64_MAX
                self._laps.append(ns)
                self._accum = 0
                self._mark = now
                return ns / 1e9
        if self._strict:
            raise StopwatchError(_misuse("lap", state))
        return None

    def reset(self) -> None:
        """Any state: back to never started, laps cleared."""
        with self._lock:
            self._state = _NEVER_STARTED
            self._mark = 0
            self._accum = 0
            self._laps = []

    def lap_times(self) -> list[float]:
        """Return the recorded laps.

        Returns:
            list[float]: a new list of the laps in seconds, oldest first.
        """
        with self._lock:
            laps = self._laps
            n = len(laps)
        # reset() replaces the list instead of clearing it, and lap() only appends, so the
        # first n items stay as they were while other threads go on.
        return [ns / 1e9 for ns in islice(laps, n)]

    @property
    def running(self) -> bool:
        """``True`` between ``start()`` and ``stop()``."""
        return self._state == _RUNNING

    @property
    def strict(self) -> bool:
        """Whether misuse raises :class:`StopwatchError`."""
        return self._strict

    @property
    def elapsed(self) -> float:
        """Seconds of the current, unfinished lap so far.

        Running: its running total plus the time since the last
        ``start()``/``lap()``. Stopped: its running total. Never started: 0.0.
        """
        with self._lock:
            now = self._clock()
            ns = self._accum
            if self._state == _RUNNING:
                d = now - self._mark
                if d > 0:
                    ns = min(ns + d, _INT64_MAX)
        return ns / 1e9

    @property
    def total(self) -> float:
        """Sum of the recorded laps in seconds."""
        with self._lock:
            ns = sum(self._laps)
        return min(ns, _INT64_MAX) / 1e9

    def __enter__(self) -> PyStopwatch:
        """``start()``, then return the stopwatch."""
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """``stop()``; an exception from the block propagates unchanged."""
        if exc_type is None:
            self.stop()
        else:
            # Strict mode must not replace the block's own error with a StopwatchError
            # (stop() changes nothing when it would raise).
            try:
                self.stop()
            except StopwatchError:
                pass
        return False

    def __len__(self) -> int:
        """Number of recorded laps."""
        return len(self._laps)

    def __bool__(self) -> bool:
        # Always true: with __len__ alone a stopwatch without laps would be falsy.
        return True

    def __repr__(self) -> str:
        with self._lock:
            state, n, ns = self._state, len(self._laps), min(sum(self._laps), _INT64_MAX)
        return (
            f"<{type(self).__name__} {_STATE_NAMES[state]}, laps={n}, "
            f"total={ns / 1e9:.6g}s, strict={self._strict}>"
        )


if _ext.built is not None:
    # One exception class for both backends, even when the extension is disabled at run time.
    _ext.built._set_stopwatch_error(StopwatchError)

#: The C++ stopwatch (``fastpgd._C.Stopwatch``) when the compiled extension is in use,
#: else :class:`PyStopwatch`. Same constructor, methods, properties and results.
Stopwatch = _ext.pick("Stopwatch", PyStopwatch)
