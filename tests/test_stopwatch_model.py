"""Both stopwatch backends against a tiny reference model, driven by hypothesis.

The model keeps the closed (start, end) intervals of the current lap and sums
them when a lap is taken: a different bookkeeping from the backends' running
total, simple enough to be obviously right. Every backend shares one fake
clock (an int that the machine moves forward, and sometimes backwards), so
every lap, elapsed, running, len and lap_times must agree exactly.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import needs_ext
from fastpgd import _ext
from fastpgd.stopwatch import PyStopwatch, StopwatchError


class Model:
    """What a stopwatch must do, in the plainest terms."""

    def __init__(self):
        self.started = False  # ever started since creation or reset
        self.running_since = None  # clock reading at the last start()/lap() while running
        self.intervals = []  # (begin, end) pieces of the current lap, clamped to >= 0
        self.laps = []  # nanoseconds

    def misuse(self, method):
        """The strict-mode complaint for this call now, or None when the call is valid."""
        if method == "start":
            return "already running" if self.running_since is not None else None
        if self.running_since is None:
            return "before start()" if not self.started else "while stopped"
        return None

    def current(self, now):
        pieces = self.intervals + (
            [(self.running_since, now)] if self.running_since is not None else []
        )
        return min(sum(max(0, end - begin) for begin, end in pieces), 2**63 - 1)

    def start(self, now):
        if self.running_since is None:
            self.started, self.running_since = True, now

    def stop(self, now):
        if self.running_since is not None:
            self.intervals.append((self.running_since, now))
            self.running_since = None

    def lap(self, now):
        if self.running_since is None:
            return None
        ns = self.current(now)
        self.laps.append(ns)
        self.intervals, self.running_since = [], now
        return ns / 1e9

    def elapsed(self, now):
        return self.current(now) / 1e9

    def reset(self):
        self.__init__()


class StopwatchMachine(RuleBasedStateMachine):
    """Every rule calls the model and each backend and compares what they return."""

    backends: tuple = ()

    @initialize(strict=st.booleans(), t0=st.integers(-(10**15), 10**15))
    def setup(self, strict, t0):
        self.now = t0
        self.strict = strict
        self.model = Model()
        self.watches = [cls(strict=strict, clock=lambda: self.now) for cls in self.backends]

    @rule(dt=st.one_of(st.integers(0, 10**12), st.integers(-(10**6), 0)))
    def advance(self, dt):
        self.now += dt

    def check_call(self, method):
        complaint = self.model.misuse(method)
        expected = getattr(self.model, method)(self.now)
        for sw in self.watches:
            if self.strict and complaint is not None:
                with pytest.raises(StopwatchError, match=f"{method}\\(\\)") as info:
                    getattr(sw, method)()
                assert complaint in str(info.value)
            else:
                assert getattr(sw, method)() == expected

    @rule()
    def start(self):
        self.check_call("start")

    @rule()
    def stop(self):
        self.check_call("stop")

    @rule()
    def lap(self):
        self.check_call("lap")

    @rule()
    def reset(self):
        self.model.reset()
        for sw in self.watches:
            assert sw.reset() is None

    @rule(inside=st.integers(0, 10**9))
    def with_block(self, inside):
        if self.strict and self.model.misuse("start") is not None:
            for sw in self.watches:
                with pytest.raises(StopwatchError, match="already running"):
                    with sw:
                        raise AssertionError("the block must not run")
            return
        # All backends share the clock, so they sit in their blocks at the same time.
        with ExitStack() as stack:
            for sw in self.watches:
                assert stack.enter_context(sw) is sw
            self.model.start(self.now)
            self.now += inside
        self.model.stop(self.now)

    @invariant()
    def observations_agree(self):
        if not hasattr(self, "model"):
            return
        running = self.model.running_since is not None
        elapsed = self.model.elapsed(self.now)
        laps = [ns / 1e9 for ns in self.model.laps]
        for sw in self.watches:
            assert sw.running == running
            assert sw.elapsed == elapsed
            assert len(sw) == len(laps)
            assert sw.lap_times() == laps
            assert sw.total == min(sum(self.model.laps), 2**63 - 1) / 1e9
            assert all(t >= 0.0 for t in sw.lap_times())


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None)


class PythonMachine(StopwatchMachine):
    backends = (PyStopwatch,)


TestPythonAgainstModel = SETTINGS(PythonMachine).TestCase


class BothMachine(StopwatchMachine):
    # Resolved lazily: without the extension the class is never instantiated.
    backends = (_ext._C.Stopwatch, PyStopwatch) if _ext.has_ext() else ()


TestBothAgainstModel = needs_ext(SETTINGS(BothMachine).TestCase)
