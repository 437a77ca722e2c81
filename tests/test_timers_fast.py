"""Tests of the hot path of fastpgd.Timers: the C++ ``_C._Section`` and ``_C._TimersBase``
and their pure-Python twins.

The behaviour of whole ``Timers`` objects is tested on both backends in
test_timers.py; here: the section log's own contract, which the C++ type and its
twin ``_PySection`` share, misuse that must not crash, and a property test that
the C++ and pure-Python sections record the same laps and parents for any
sequence of enters, exits, reads and resets.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpgd.timers as timers_mod
from conftest import in_thread, needs_ext
from fastpgd import _ext
from fastpgd.timers import PyTimers, Timers


def _C():
    return _ext.require_ext("the C++ timers tests")


@pytest.fixture(params=[pytest.param("cpp", marks=needs_ext), "python"])
def Section(request):
    """The section log under test: ``fastpgd._C._Section`` or its twin ``_PySection``."""
    return _C()._Section if request.param == "cpp" else timers_mod._PySection


class Ticks:
    """A fake clock: every read returns the current value; tests move it."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_default_clock_is_the_clock_of_perf_counter_ns(Section):
    section = Section()
    before = time.perf_counter_ns()
    with section:
        pass
    after = time.perf_counter_ns()
    enter, leave = section._drain()
    assert before <= ~enter <= leave <= after


def test_log_holds_enters_as_complements_and_exits_in_call_order(Section):
    clock = Ticks(10)
    section = Section(clock)
    assert section.__enter__() is section
    clock.now = 25
    assert section.__exit__(None, None, None) is None
    with section:
        clock.now = 40
    assert section._log_size() == 4
    assert section._drain() == [~10, 25, ~25, 40]
    assert section._drain() == [] and section._log_size() == 0
    with section:
        pass
    section._discard()
    assert section._drain() == []


def test_on_claim_runs_at_the_first_enter_until_rearmed(Section):
    calls = []
    section = Section(Ticks(), calls.append)
    assert section._first is True
    for _ in range(3):
        with section:
            pass
    assert calls == [section] and section._first is False
    section._first = True
    assert section._first is True
    with section:
        pass
    assert calls == [section, section]
    with pytest.raises(TypeError, match="_first must be set to a bool"):
        section._first = 1
    with pytest.raises(TypeError, match="_first must be set to a bool"):
        del section._first
    with pytest.raises(ValueError, match="_first can only be set to True"):
        section._first = False
    assert section._first is False and calls == [section, section]


def test_a_failing_on_claim_logs_nothing_and_is_retried(Section):
    attempts = []

    def on_claim(section):
        attempts.append(section)
        if len(attempts) == 1:
            raise RuntimeError("first enter failed")

    section = Section(Ticks(), on_claim)
    with pytest.raises(RuntimeError, match="first enter failed"):
        section.__enter__()
    assert section._log_size() == 0 and section._first is True
    with section:
        pass
    assert len(attempts) == 2 and section._log_size() == 2


# -- threads: a section is for the thread that claimed it ------------------------------


def enter_from_a_thread_that_stays(section):
    """Enter ``section`` in a new thread that is still running when this returns (a finished
    thread's identifier may be reused by the next one). Returns the thread's identifier and
    the function that lets it exit the block and finish."""
    entered, leave, ident = threading.Event(), threading.Event(), []

    def run():
        ident.append(threading.get_ident())
        with section:
            entered.set()
            leave.wait()

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(timeout=60)

    def finish():
        leave.set()
        thread.join()

    return ident[0], finish


def test_another_threads_enter_raises_and_logs_nothing(Section):
    clock = Ticks(10)
    section = Section(clock)
    with section:
        clock.now = 15
    section.__enter__()  # a block of the claiming thread stays open
    error = in_thread(section.__enter__)
    assert type(error) is RuntimeError
    me = threading.get_ident()
    assert str(error).startswith("a section is for one thread: thread ")
    assert str(error).endswith(
        f" entered a section claimed by thread {me}; set _first = True to hand it over"
    )
    clock.now = 20
    section.__exit__(None, None, None)
    assert section._drain() == [~10, 15, ~15, 20]


def test_another_threads_exit_logs_nothing(Section):
    clock = Ticks(10)
    section = Section(clock)
    assert in_thread(lambda: section.__exit__(None, None, None)) is None  # nobody claimed it
    section.__enter__()
    clock.now = 12
    assert in_thread(lambda: section.__exit__(None, None, None)) is None
    assert section._drain() == [~10]
    section.__exit__(None, None, None)
    assert section._drain() == [12]


def test_an_exit_before_any_claim_logs_nothing(Section):
    clock = Ticks(10)
    section = Section(clock)
    assert section.__exit__(None, None, None) is None
    with section:
        clock.now = 11
    section._first = True  # the claim ends: the exit of a block still open is not logged
    section.__enter__()
    section._first = True
    section.__exit__(None, None, None)
    assert section._drain() == [~10, 11, ~11]


def test_rearming_hands_the_section_to_the_next_thread(Section):
    section = Section(Ticks(10))
    with section:
        pass
    section._first = True
    ident, finish = enter_from_a_thread_that_stays(section)
    try:
        error = in_thread(section.__enter__)  # a third thread: the new claimer still runs
        assert type(error) is RuntimeError and f"claimed by thread {ident}" in str(error)
        with pytest.raises(RuntimeError, match=f"claimed by thread {ident};"):
            section.__enter__()  # nor may the first claimer come back
    finally:
        finish()
    assert section._drain() == [~10, 10, ~10, 10]


def test_on_claim_decides_whether_another_thread_may_claim(Section):
    calls = []
    allow = [True]

    def on_claim(section):
        calls.append(threading.get_ident())
        if not allow[0]:
            raise RuntimeError("refused by on_claim")

    section = Section(Ticks(10), on_claim)
    with section:
        pass
    me = threading.get_ident()
    ident, finish = enter_from_a_thread_that_stays(section)  # allowed: it claims the section
    finish()
    assert calls == [me, ident]
    allow[0] = False
    with pytest.raises(RuntimeError, match="refused by on_claim"):
        section.__enter__()  # this thread is no longer the claimer: on_claim is asked again
    assert section._log_size() == 4 and section._first is False
    allow[0] = True
    with section:
        pass
    assert calls == [me, ident, me, me] and section._log_size() == 6


@pytest.mark.parametrize(
    "reading, error, words",
    [
        (1.5, TypeError, "clock must return an int"),
        (None, TypeError, "clock must return an int"),
        (2**63, OverflowError, "int64"),
        (-(2**63) - 1, OverflowError, "int64"),
    ],
)
def test_bad_clock_readings_raise_and_log_nothing(Section, reading, error, words):
    section = Section(lambda: reading)
    with pytest.raises(error, match=words):
        section.__enter__()
    with pytest.raises(error, match=words):
        section.__exit__(None, None, None)
    assert section._log_size() == 0


def test_a_raising_clock_propagates_and_logs_nothing(Section):
    def broken():
        raise OSError("clock unplugged")

    section = Section(broken)
    with pytest.raises(OSError, match="unplugged"):
        with section:
            pass
    assert section._log_size() == 0


@pytest.mark.parametrize(
    "timers_cls", [pytest.param(Timers, id="Timers", marks=needs_ext), PyTimers]
)
def test_a_clock_that_breaks_mid_block_still_propagates_through_timers(timers_cls):
    clock = Ticks()
    t = timers_cls(clock=clock)
    with pytest.raises(TypeError, match="clock must return an int"):
        with t("x"):
            clock.now = 1.5  # the exit reads a float
    clock.now = 2_000
    with t("x"):
        clock.now += 5
    assert t.laps("x") == [5e-9]  # the block whose exit failed left no lap


def test_constructor_arguments_are_checked(Section):
    with pytest.raises(TypeError, match="clock must be None or a zero-argument callable"):
        Section(3)
    with pytest.raises(TypeError, match="on_claim must be None or a callable"):
        Section(None, 3)


@needs_ext
def test_cpp_exit_checks_its_argument_count():
    section = _C()._Section()
    with pytest.raises(TypeError, match="3 arguments, got 0"):
        section.__exit__()
    with pytest.raises(TypeError, match="3 arguments, got 4"):
        section.__exit__(None, None, None, None)


@pytest.mark.parametrize(
    "timers_cls", [pytest.param(Timers, id="Timers", marks=needs_ext), PyTimers]
)
def test_timers_call_finds_cached_sections_and_checks_its_argument(timers_cls):
    t = timers_cls(clock=Ticks())
    section = t("x")
    assert t("x") is section and t(name="x") is section
    with pytest.raises(TypeError):
        t()
    with pytest.raises(TypeError):
        t("x", "y")
    with pytest.raises(TypeError, match="unhashable"):
        t(["x"])
    with pytest.raises(TypeError, match="name must be a str"):
        t(3)
    assert t("x") is section


@needs_ext
def test_cpp_timers_base_guards_its_sections():
    t = Timers(clock=Ticks())
    section = t("x")
    assert isinstance(t, _C()._TimersBase)
    with pytest.raises(TypeError, match="_sections must be set to a dict"):
        t._sections = []
    with pytest.raises(TypeError, match="_sections must be set to a dict"):
        del t._sections
    assert t("x") is section


def test_a_clock_that_misuses_the_section_does_not_corrupt_it(Section):
    # The clock runs between the claim and the append: clearing, draining or re-arming the
    # section from inside it must leave a consistent log behind.
    holder = {}
    now = [100]

    def meddling_clock():
        section = holder.get("section")
        if section is not None:
            section._drain()
            section._discard()
            section._first = True
        now[0] += 1
        return now[0]

    section = Section(meddling_clock)
    holder["section"] = section
    for _ in range(100):
        with section:
            pass
    # Each enter's read emptied the log and ended the claim, so the exits were not logged:
    # what is left is the last enter.
    assert section._drain() == [~200]


def test_threads_taking_a_section_over_lose_no_entries(Section):
    # Threads race to claim one section, each taking it over (_first = True) when refused.
    # Every enter that returned logged exactly one entry, every refused one none, and an exit
    # is logged only for a block whose thread still held the claim.
    section = Section()
    n, workers = 5_000, 4
    entered = [0] * workers
    refused = [0] * workers
    barrier = threading.Barrier(workers)

    def work(i):
        barrier.wait()
        for _ in range(n):
            try:
                with section:
                    entered[i] += 1
            except RuntimeError:
                refused[i] += 1
                section._first = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    log = section._drain()
    enters = sum(1 for v in log if v < 0)
    assert enters == sum(entered) and sum(entered) + sum(refused) == n * workers
    assert sum(refused) > 0  # the threads did overlap
    assert 0 < len(log) - enters <= enters


@needs_ext
def test_a_million_blocks_hold_sixteen_bytes_each_until_read():
    t = Timers()
    section = t("x")
    for _ in range(1_000_000):
        with section:
            pass
    assert section._log_size() == 2_000_000
    assert t.count("x") == 1_000_000
    assert section._log_size() == 0
    assert min(t.laps("x")) >= 0.0


# -- the C++ and Python sections agree on any sequence of operations ------------------

NAMES = ("a", "b", "c")
OPS = st.one_of(
    st.tuples(st.just("enter"), st.sampled_from(NAMES)),
    st.tuples(st.just("exit"), st.sampled_from(NAMES)),
    st.tuples(st.just("advance"), st.integers(min_value=0, max_value=10**6)),
    st.tuples(st.just("read"), st.sampled_from(NAMES)),
    st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("reload"), st.none()),
)


def _run(ops, use_cpp: bool) -> list:
    clock = Ticks(0)
    t = (Timers if use_cpp else PyTimers)(clock=clock)
    assert isinstance(t("a"), _C()._Section) == use_cpp
    seen = []
    for op, arg in ops:
        if op == "enter":
            t(arg).__enter__()
        elif op == "exit":
            t(arg).__exit__(None, None, None)
        elif op == "advance":
            clock.now += arg
        elif op == "read":
            seen.append((arg, t.count(arg), t.laps(arg)))
        elif op == "reset":
            t.reset()
        else:
            t.load_state_dict(t.state_dict())
    seen.append(t.state_dict())
    seen.append(t.names())
    return seen


@needs_ext
@settings(deadline=None, max_examples=200)
@given(st.lists(OPS, max_size=40))
def test_cpp_and_python_sections_record_the_same_laps_and_parents(ops):
    assert _run(ops, True) == _run(ops, False)
