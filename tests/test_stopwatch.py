"""The lap stopwatch: both backends, the same checks.

Most tests drive a fake clock (an int advanced by hand), so exact lap values
can be asserted; one test uses the real clock with generous bounds.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import threading
import time
import weakref

import pytest

from conftest import needs_ext
from fastpgd import _ext
from fastpgd.stopwatch import PyStopwatch, Stopwatch, StopwatchError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

BACKENDS = [
    pytest.param(Stopwatch, id="cpp", marks=needs_ext),
    pytest.param(PyStopwatch, id="python"),
]


class FakeClock:
    """Integer nanoseconds that move only when told."""

    def __init__(self, t: int = 0) -> None:
        self.t = t
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.t

    def advance(self, ns: int) -> None:
        self.t += ns


@pytest.fixture(params=BACKENDS)
def cls(request):
    return request.param


def make(cls, t=0, strict=False):
    clock = FakeClock(t)
    return cls(strict=strict, clock=clock), clock


def test_stopwatch_is_the_backend_in_use():
    if _ext.has_ext():
        assert Stopwatch is _ext._C.Stopwatch
        assert Stopwatch is not PyStopwatch
    else:
        assert Stopwatch is PyStopwatch


def test_pause_is_excluded(cls):
    sw, clock = make(cls, t=1_000)
    sw.start()
    clock.advance(100)
    assert sw.lap() == 100 / 1e9
    clock.advance(50)
    sw.stop()
    clock.advance(10_000)  # the pause
    sw.start()
    clock.advance(30)
    assert sw.lap() == 80 / 1e9  # 50 before the pause + 30 after it
    assert sw.lap_times() == [100 / 1e9, 80 / 1e9]
    assert len(sw) == 2
    assert sw.total == 180 / 1e9


def test_pause_is_excluded_real_clock(cls):
    pause = 0.2
    sw = cls()
    sw.start()
    first = sw.lap()
    sw.stop()
    time.sleep(pause)
    sw.start()
    second = sw.lap()
    assert 0.0 <= first < pause
    assert 0.0 <= second < pause
    assert sw.lap_times() == [first, second]


def test_real_clock_measures_a_sleep(cls):
    sw = cls()
    with sw:
        time.sleep(0.05)
    assert sw.elapsed >= 0.05  # a monotonic wall clock never undercounts a sleep
    assert sw.lap() is None  # stopped


def test_never_started(cls):
    sw, clock = make(cls)
    assert not sw.running
    assert sw.elapsed == 0.0
    assert sw.lap() is None
    assert sw.stop() is None
    assert sw.lap_times() == []
    assert len(sw) == 0
    assert sw.total == 0.0


def test_start_while_running_keeps_the_mark(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(40)
    sw.start()  # does nothing
    clock.advance(60)
    assert sw.lap() == 100 / 1e9


def test_stop_twice_and_lap_while_stopped(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(70)
    sw.stop()
    clock.advance(5)
    sw.stop()  # does nothing
    assert sw.lap() is None
    assert not sw.running
    assert sw.elapsed == 70 / 1e9
    assert len(sw) == 0


def test_elapsed_in_each_state(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(25)
    assert sw.running
    assert sw.elapsed == 25 / 1e9
    sw.stop()
    clock.advance(1_000)
    assert sw.elapsed == 25 / 1e9
    sw.start()
    clock.advance(5)
    assert sw.elapsed == 30 / 1e9
    sw.lap()
    assert sw.elapsed == 0.0
    clock.advance(7)
    assert sw.elapsed == 7 / 1e9


def test_reset(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(10)
    sw.lap()
    clock.advance(10)
    sw.reset()
    assert not sw.running
    assert len(sw) == 0
    assert sw.lap_times() == []
    assert sw.elapsed == 0.0
    assert sw.lap() is None
    sw.start()
    clock.advance(3)
    assert sw.lap() == 3 / 1e9


def test_lap_times_returns_a_new_list(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(10)
    sw.lap()
    first = sw.lap_times()
    second = sw.lap_times()
    assert first == second == [10 / 1e9]
    assert first is not second
    first.append(1.0)
    first[0] = 2.0
    assert sw.lap_times() == [10 / 1e9]
    assert isinstance(second[0], float)


def test_lap_returns_float_seconds(cls):
    sw, clock = make(cls)
    sw.start()
    clock.advance(1_500_000_000)
    lap = sw.lap()
    assert type(lap) is float
    assert lap == 1.5


def test_context_manager(cls):
    sw, clock = make(cls)
    with sw as inside:
        assert inside is sw
        assert sw.running
        clock.advance(12)
    assert not sw.running
    clock.advance(100)
    with sw:
        clock.advance(8)
    assert sw.elapsed == 20 / 1e9
    assert sw.lap() is None
    sw.start()
    assert sw.lap() == 20 / 1e9


def test_context_manager_lets_errors_through(cls):
    sw, clock = make(cls, strict=True)
    with pytest.raises(KeyError, match="boom"):
        with sw:
            clock.advance(9)
            sw.stop()  # so that __exit__'s stop() is misuse; the KeyError must still win
            raise KeyError("boom")
    assert not sw.running
    assert sw.elapsed == 9 / 1e9


def test_context_manager_strict_reports_misuse(cls):
    sw, clock = make(cls, strict=True)
    with pytest.raises(StopwatchError, match=r"stop\(\) called while stopped"):
        with sw:
            sw.stop()


@pytest.mark.parametrize(
    ("before", "call", "words"),
    [
        ([], "lap", ["lap()", "before start()", "call start() first"]),
        ([], "stop", ["stop()", "before start()", "call start() first"]),
        (["start"], "start", ["start()", "already running", "call stop() first"]),
        (["start", "stop"], "lap", ["lap()", "while stopped", "call start() first"]),
        (["start", "stop"], "stop", ["stop()", "while stopped", "call start() first"]),
    ],
)
def test_strict_misuse_raises(cls, before, call, words):
    sw, clock = make(cls, strict=True)
    for name in before:
        getattr(sw, name)()
    clock.advance(10)
    running, laps, elapsed = sw.running, len(sw), sw.elapsed
    with pytest.raises(StopwatchError) as info:
        getattr(sw, call)()
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, RuntimeError)
    # The failed call changed nothing.
    assert (sw.running, len(sw), sw.elapsed) == (running, laps, elapsed)
    assert sw.strict is True


def test_not_strict_misuse_is_silent(cls):
    sw, clock = make(cls, strict=False)
    assert sw.strict is False
    assert sw.stop() is None
    assert sw.lap() is None
    sw.start()
    assert sw.start() is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"strict": "yes"}, "strict"),
        ({"strict": 1}, "strict"),
        ({"strict": None}, "strict"),
        ({"clock": 5}, "clock"),
        ({"clock": "perf_counter_ns"}, "clock"),
    ],
)
def test_bad_arguments(cls, kwargs, name):
    with pytest.raises(TypeError, match=name):
        cls(**kwargs)


def test_positional_arguments(cls):
    clock = FakeClock(5)
    sw = cls(True, clock)
    assert sw.strict is True
    sw.start()
    assert clock.reads == 1


@pytest.mark.parametrize("value", [1.5, "10", None, 10**3 * 1.0])
def test_clock_returning_non_int(cls, value):
    sw = cls(clock=lambda: value)
    with pytest.raises(TypeError, match=r"clock must return an int"):
        sw.start()
    assert not sw.running


def test_clock_type_error_leaves_state(cls):
    readings = iter([0, 10, 2.5])
    sw = cls(clock=lambda: next(readings))
    sw.start()
    assert sw.lap() == 10 / 1e9
    with pytest.raises(TypeError, match="clock"):
        sw.lap()
    assert sw.running
    assert len(sw) == 1


def test_clock_errors_propagate(cls):
    def broken():
        raise ZeroDivisionError("clock broke")

    sw = cls(clock=broken)
    with pytest.raises(ZeroDivisionError, match="clock broke"):
        sw.start()
    with pytest.raises(ZeroDivisionError):
        sw.elapsed  # noqa: B018


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_clock_outside_int64(cls, value):
    sw = cls(clock=lambda: value)
    with pytest.raises(OverflowError, match="int64"):
        sw.start()


def test_backwards_clock_gives_zero_not_negative(cls):
    sw, clock = make(cls, t=1_000)
    sw.start()
    clock.advance(-300)
    assert sw.elapsed == 0.0
    assert sw.lap() == 0.0
    clock.advance(50)  # measured from the last lap's (backwards) reading
    sw.stop()
    clock.advance(-10_000)
    sw.start()
    clock.advance(20)
    assert sw.lap() == 70 / 1e9
    assert all(t >= 0.0 for t in sw.lap_times())


def test_extreme_readings_saturate(cls):
    sw, clock = make(cls, t=INT64_MIN)
    sw.start()
    clock.t = INT64_MAX
    assert sw.elapsed == INT64_MAX / 1e9
    sw.stop()
    clock.t = INT64_MIN
    sw.start()
    clock.t = INT64_MAX
    assert sw.lap() == INT64_MAX / 1e9  # saturated, not wrapped around to a negative lap
    sw.start()
    clock.t = INT64_MIN
    sw.start()
    clock.t = INT64_MAX
    sw.lap()
    assert sw.total == INT64_MAX / 1e9


def test_len_bool_repr(cls):
    sw, clock = make(cls)
    assert len(sw) == 0
    assert bool(sw)  # truthy even without laps
    text = repr(sw)
    assert "never started" in text and "laps=0" in text and "strict=False" in text
    sw.start()
    for _ in range(3):
        clock.advance(500_000)
        sw.lap()
    assert len(sw) == 3
    text = repr(sw)
    assert "running" in text and "laps=3" in text and "total=0.0015s" in text
    sw.stop()
    assert "stopped" in repr(sw)
    assert repr(sw).startswith(f"<{cls.__name__} ")


@needs_ext
def test_repr_matches_between_backends():
    for state_calls in ([], ["start"], ["start", "lap", "stop"]):
        texts = []
        for cls in (Stopwatch, PyStopwatch):
            sw, clock = make(cls, strict=True)
            for name in state_calls:
                clock.advance(123_456_789)
                getattr(sw, name)()
            texts.append(repr(sw).replace("PyStopwatch", "Stopwatch"))
        assert texts[0] == texts[1]


def test_subclass(cls):
    class Counting(cls):
        def lap(self):
            self.calls = getattr(self, "calls", 0) + 1
            return super().lap()

    clock = FakeClock()
    sw = Counting(strict=True, clock=clock)
    sw.start()
    clock.advance(4)
    assert sw.lap() == 4 / 1e9
    assert sw.calls == 1
    sw.stop()
    with pytest.raises(StopwatchError):
        sw.lap()
    assert sw.calls == 2


def test_error_class_is_shared():
    assert issubclass(StopwatchError, RuntimeError)
    import fastpgd.stopwatch as mod

    assert mod.StopwatchError is StopwatchError


@needs_ext
def test_cpp_raises_the_python_error_class():
    sw = _ext._C.Stopwatch(strict=True)
    with pytest.raises(StopwatchError):
        sw.stop()


@needs_ext
def test_cpp_finds_the_error_class_on_its_own():
    # A fresh interpreter that never imports fastpgd.stopwatch itself.
    code = (
        "import fastpgd._C as c\n"
        "try:\n"
        "    c.Stopwatch(strict=True).lap()\n"
        "except Exception as e:\n"
        "    print('error:', type(e).__module__, type(e).__qualname__,\n"
        "          isinstance(e, RuntimeError))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    # Only the marked line: an editable install may print its rebuild log first.
    lines = [line.split() for line in out.splitlines() if line.startswith("error:")]
    assert lines == [["error:", "fastpgd.stopwatch", "StopwatchError", "True"]]


@needs_ext
def test_set_stopwatch_error_checks_its_argument():
    with pytest.raises(TypeError, match="cls must be a subclass of RuntimeError"):
        _ext._C._set_stopwatch_error(ValueError)
    with pytest.raises(TypeError, match="cls"):
        _ext._C._set_stopwatch_error(3)
    sw = _ext._C.Stopwatch(strict=True)
    with pytest.raises(StopwatchError):  # the registered class is unchanged
        sw.lap()


@needs_ext
@pytest.mark.parametrize("n", [1, 2, 3, 100, 1000, 4097, 100_000])
def test_cpp_memory_per_lap(n):
    sw, clock = make(Stopwatch)
    sw.start()
    for _ in range(n):
        clock.advance(1)
        sw.lap()
    assert len(sw) == n
    assert 8 * n <= sw._capacity_bytes() <= 16 * n
    sw.reset()
    assert sw._capacity_bytes() == 0


@needs_ext
def test_cpp_clock_cycle_is_collected():
    class Holder:
        def __init__(self):
            self.sw = Stopwatch(clock=self.now)

        def now(self):
            return 0

    holder = Holder()
    ref = weakref.ref(holder)
    del holder
    gc.collect()
    assert ref() is None


def _hammer(sw, n_threads=8, n_ops=3_000, seed=0):
    """Start/stop/lap from several threads at once; return the successful lap() results."""
    results: list[list[float]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def work(i):
        rng = random.Random(seed + i)
        ops = [rng.choice(("start", "stop", "lap", "lap", "elapsed")) for _ in range(n_ops)]
        barrier.wait()
        for op in ops:
            if op == "lap":
                value = sw.lap()
                if value is not None:
                    results[i].append(value)
            elif op == "elapsed":
                assert sw.elapsed >= 0.0
            else:
                getattr(sw, op)()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return [v for r in results for v in r]


@pytest.mark.parametrize("clocked", [False, True], ids=["real-clock", "python-clock"])
def test_threads_keep_state_consistent(cls, clocked):
    # A Python clock lets the interpreter switch threads inside every call.
    sw = cls(clock=time.perf_counter_ns) if clocked else cls()
    returned = _hammer(sw)
    laps = sw.lap_times()
    assert len(returned) > 0
    assert len(sw) == len(laps) == len(returned)
    assert all(t >= 0.0 for t in laps)
    assert sorted(laps) == sorted(returned)
    sw.stop()
    sw.start()
    assert sw.running
    assert sw.lap() >= 0.0


class CountingClock:
    """A clock shared by threads: every read, under a lock, returns the next integer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0

    def __call__(self) -> int:
        with self._lock:
            self.now += 1
            return self.now


def _lap_from_threads(sw, n_threads=8, n_laps=10_000):
    """start(), then lap() n_laps times in each of n_threads threads at once."""
    barrier = threading.Barrier(n_threads + 1)

    def work():
        barrier.wait()
        for _ in range(n_laps):
            sw.lap()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        sw.start()
        barrier.wait()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert len(sw) == n_threads * n_laps


def test_laps_from_threads_sum_to_the_clock_time_exactly(cls):
    # Each lap spans the readings since the previous one, so the laps tile the time from
    # start() to the last lap(): no time counted twice. The C++ Stopwatch reads a Python clock
    # before it takes its turn, so other threads may apply later readings meanwhile; it then
    # applies its own as the last of theirs (PyStopwatch reads the clock under its lock).
    clock = CountingClock()
    sw = cls(clock=clock)
    _lap_from_threads(sw)
    first = clock.now - len(sw)  # the reading of start(); every lap() read once after it
    assert sum(round(t * 1e9) for t in sw.lap_times()) == clock.now - first


def test_a_clock_that_calls_lap_overlaps_the_outer_call(cls):
    # The outer lap() reads 10 and, inside that reading, an inner lap() reads 20 and applies
    # it first. PyStopwatch applies the outer 10 as a clock going backwards (the mark moves
    # back to 10); the C++ Stopwatch applies it as 20, the reading that overtook it.
    readings = iter([0, 10, 20, 30])

    def clock():
        now = next(readings)
        if now == 10:
            assert sw.lap() == 20e-9
        return now

    sw = cls(clock=clock)
    sw.start()
    assert sw.lap() == 0.0
    sw.lap()
    laps_ns = [round(t * 1e9) for t in sw.lap_times()]
    assert laps_ns == ([20, 0, 20] if cls is PyStopwatch else [20, 0, 10])


def test_laps_from_threads_never_exceed_the_wall_time(cls):
    sw = cls()
    before = time.perf_counter_ns()
    _lap_from_threads(sw)
    wall_ns = time.perf_counter_ns() - before
    laps_ns = sum(round(t * 1e9) for t in sw.lap_times())
    assert 0 < laps_ns <= wall_ns


def test_a_clock_that_calls_the_stopwatch_does_not_deadlock(cls):
    box = {}

    def clock():
        sw = box["sw"]
        if not box.get("inside"):
            box["inside"] = True
            box["seen"] = sw.elapsed  # a nested call while the outer call holds the stopwatch
            box["inside"] = False
        return 1_000

    sw = box["sw"] = cls(clock=clock)
    worker = threading.Thread(target=lambda: (sw.start(), sw.lap()), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the stopwatch deadlocked on a clock that calls it"
    assert box["seen"] == 0.0 and sw.lap_times() == [0.0]
