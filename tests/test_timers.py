"""Tests of fastpgd.Timers: laps, nesting, statistics, export, state and GPU modes.

Every timing test injects a fake clock, so laps are exact and nothing sleeps.
"""

from __future__ import annotations

import csv
import doctest
import gc
import io
import json
import math
import sys
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpgd.timers as timers_mod
from conftest import in_thread, needs_cuda
from fastpgd import _ext, timer_gather, timer_stats
from fastpgd.timers import Timers


@pytest.fixture(autouse=True, params=["PyTimers", "Timers"])
def section_backend(request, monkeypatch):
    """Run every test on PyTimers and on Timers; returns "cpp" where Timers runs on C++."""
    if request.param == "PyTimers":
        monkeypatch.setitem(globals(), "Timers", timers_mod.PyTimers)
        return "python"
    return "cpp" if _ext.has_ext() else "python"


class FakeClock:
    """A clock that moves only when told to (integer nanoseconds)."""

    def __init__(self, start: int = 1_000) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


def make(start: int = 1_000):
    clock = FakeClock(start)
    return Timers(clock=clock), clock


def run_steps(t: Timers, clock: FakeClock, attack_ns, update_ns, gap_ns=5):
    """One "step" per entry: attack, a gap outside any child, update."""
    for a, u in zip(attack_ns, update_ns, strict=True):
        with t("step"):
            with t("attack"):
                clock.advance(a)
            clock.advance(gap_ns)
            with t("update"):
                clock.advance(u)


# -- laps and nesting ----------------------------------------------------------------


def test_laps_are_exact_and_in_order():
    t, clock = make()
    for ns in (30, 10, 20):
        with t("x"):
            clock.advance(ns)
    assert t.laps("x") == [30e-9, 10e-9, 20e-9]
    assert t.count("x") == 3
    assert t.total("x") == pytest.approx(60e-9, rel=1e-15)
    assert t.names() == ["x"]


def test_sections_come_from_the_backend_under_test(section_backend):
    t, _ = make()
    cpp = section_backend == "cpp"
    assert (_ext.has_ext() and isinstance(t("x"), _ext._C._Section)) == cpp
    assert (_ext.has_ext() and isinstance(t, _ext._C._TimersBase)) == cpp
    assert repr(t("x")) == "<timer section 'x'>"


def test_unused_timers_are_freed_despite_reference_cycles():
    # Sections refer back to their Timers (the first-enter callback): only the cycle
    # collector frees them, which needs both C types to report their references.
    t, clock = make()
    with t("a"), t("b"):
        clock.advance(1)
    ref = weakref.ref(t)
    held_by_sections = weakref.ref(clock)
    del t, clock
    gc.collect()
    assert ref() is None and held_by_sections() is None


def test_section_objects_are_cached_and_reusable():
    t, clock = make()
    section = t("x")
    assert t("x") is section
    for _ in range(2):
        with section:
            clock.advance(7)
    assert t.laps("x") == [7e-9, 7e-9]


def test_nesting_records_parents_in_first_seen_order():
    t, clock = make()
    run_steps(t, clock, [100, 200], [50, 50])
    with t("eval"):
        with t("attack"):  # first seen inside "step": its parent stays "step"
            clock.advance(1)
    assert t.names() == ["step", "attack", "update", "eval"]
    assert t.parents() == {"step": None, "attack": "step", "update": "step", "eval": None}
    assert t.laps("step") == [155e-9, 255e-9]
    assert t.laps("attack") == [100e-9, 200e-9, 1e-9]


def test_parent_is_the_innermost_running_section_even_with_a_frozen_clock():
    # The clock never moves, so running sections tie on their start reading.
    t, _ = make()
    with t("a"), t("b"), t("c"):
        pass
    with t("b"), t("d"):
        pass
    assert t.parents() == {"a": None, "b": "a", "c": "b", "d": "b"}


def test_name_nested_in_itself_records_each_block():
    t, clock = make()
    with t("x"):
        clock.advance(10)
        with t("x"):
            clock.advance(5)
        clock.advance(1)
    assert t.laps("x") == [5e-9, 16e-9]  # inner block closes first
    assert t.parents() == {"x": None}


def test_exits_out_of_order_close_their_own_block():
    t, clock = make()
    a, b = t("a"), t("b")
    a.__enter__()
    clock.advance(10)
    b.__enter__()
    clock.advance(20)
    a.__exit__(None, None, None)  # "a" leaves while "b" still runs
    clock.advance(40)
    b.__exit__(None, None, None)
    assert t.laps("a") == [30e-9]
    assert t.laps("b") == [60e-9]
    # later blocks are unaffected
    with t("a"):
        clock.advance(3)
    assert t.laps("a") == [30e-9, 3e-9]


def test_exit_without_enter_is_ignored():
    t, clock = make()
    with t("x"):
        clock.advance(4)
    t("x").__exit__(None, None, None)
    t("never_entered").__exit__(None, None, None)
    assert t.laps("x") == [4e-9]
    assert t.names() == ["x"]
    assert t.laps("never_entered") == []


def test_exception_records_the_lap_and_propagates():
    t, clock = make()
    with pytest.raises(KeyError, match="boom"):
        with t("step"):
            with t("attack"):
                clock.advance(9)
                raise KeyError("boom")
    assert t.laps("attack") == [9e-9]
    assert t.laps("step") == [9e-9]
    with t("step"):  # and the state is clean afterwards
        clock.advance(1)
    assert t.laps("step") == [9e-9, 1e-9]


def test_running_block_is_not_a_lap_yet():
    t, clock = make()
    with t("x"):
        clock.advance(5)
        assert t.count("x") == 0
        st_ = t.summary()["x"]
        assert st_["count"] == 0 and st_["total"] == 0.0 and math.isnan(st_["mean"])
    assert t.count("x") == 1


def test_unknown_names_have_no_laps():
    t, _ = make()
    assert t.laps("nope") == [] and t.count("nope") == 0 and t.total("nope") == 0.0
    assert t.names() == []


def test_a_clock_going_backwards_records_no_negative_lap_and_raises():
    t, clock = make()
    with t("x"):
        clock.advance(5)
    with t("x"):
        clock.advance(-100)
    with pytest.raises(RuntimeError, match="1 lap.* of section 'x' would be negative"):
        t.laps("x")
    assert t.laps("x") == [5e-9]  # only the lap that was not negative
    with t("x"):
        clock.advance(7)
    assert t.laps("x") == [5e-9, 7e-9]


# -- threads -------------------------------------------------------------------------


def enter_and_exit(t, name):
    with t(name):
        pass


def test_another_thread_entering_a_new_section_raises_and_records_nothing():
    t, clock = make()
    made_here = t("eval")  # created by the owner, never entered
    with t("step"):
        clock.advance(3)
        for name in ("attack", "eval"):
            error = in_thread(lambda name=name: enter_and_exit(t, name))
            assert type(error) is RuntimeError
            assert "Timers is for one thread" in str(error) and f"section {name!r}" in str(error)
            assert "one Timers per thread" in str(error)
    assert t.names() == ["step"] and t.laps("step") == [3e-9]
    with made_here, t("attack"):  # the owner still enters them as first enters
        clock.advance(2)
    assert t.parents() == {"step": None, "eval": None, "attack": "eval"}
    assert t.laps("attack") == [2e-9]


def test_reset_hands_the_timers_over_to_another_thread():
    t, clock = make()
    with t("a"):
        clock.advance(1)
    assert type(in_thread(lambda: enter_and_exit(t, "b"))) is RuntimeError
    t.reset()
    assert in_thread(lambda: enter_and_exit(t, "b")) is None
    assert t.names() == ["b"]


def test_load_state_dict_hands_the_timers_over_to_another_thread():
    t, clock = make()
    with t("a"):
        clock.advance(1)
    t.load_state_dict(t.state_dict())
    assert in_thread(lambda: enter_and_exit(t, "b")) is None
    assert t.names() == ["a", "b"] and t.laps("a") == [1e-9]


def test_a_finished_owner_hands_the_timers_over():
    t, clock = make()
    assert in_thread(lambda: enter_and_exit(t, "a")) is None
    with t("b"):  # the thread that timed "a" has finished: this one takes over
        clock.advance(4)
    assert t.names() == ["a", "b"] and t.laps("b") == [4e-9]


def enter_in_a_thread_that_stays(t, name):
    """Enter section ``name`` in a new thread that is still inside the block when this returns
    (so its identifier cannot be reused meanwhile). Returns the thread and the function that
    lets it leave the block, then waits for it to finish."""
    entered, leave = threading.Event(), threading.Event()

    def run():
        with t(name):
            entered.set()
            leave.wait()

    thread = threading.Thread(target=run, name="stays")
    thread.start()
    assert entered.wait(timeout=60)

    def finish():
        leave.set()
        thread.join()

    return thread, finish


def test_another_thread_entering_an_entered_section_raises_and_records_nothing():
    t, clock = make()
    with t("attack"):
        clock.advance(2)
    with t("step"):
        clock.advance(3)
        for name in ("step", "attack"):  # one running, one entered before
            error = in_thread(lambda name=name: enter_and_exit(t, name))
            assert type(error) is RuntimeError
            assert "Timers is for one thread" in str(error) and f"section {name!r}" in str(error)
            assert f"that thread {threading.current_thread().name!r} times" in str(error)
        clock.advance(4)
    assert t.laps("step") == [7e-9] and t.laps("attack") == [2e-9]
    assert t.parents() == {"attack": None, "step": None}


def test_another_threads_exit_is_ignored():
    t, clock = make()
    section = t("x")
    section.__enter__()
    clock.advance(3)
    assert in_thread(lambda: section.__exit__(None, None, None)) is None
    clock.advance(4)
    section.__exit__(None, None, None)
    assert t.laps("x") == [7e-9]


def test_a_finished_owner_hands_over_the_sections_it_entered():
    t, clock = make()
    assert in_thread(lambda: enter_and_exit(t, "a")) is None
    with t("a"):  # entered by the finished thread: this one takes it, and the Timers, over
        clock.advance(2)
    assert t.laps("a") == [0.0, 2e-9] and t.names() == ["a"]
    assert type(in_thread(lambda: enter_and_exit(t, "a"))) is RuntimeError


def test_a_thread_started_after_the_owner_finished_becomes_the_owner():
    # Identifiers of finished threads are reused: the second thread may get the first one's,
    # and then enters "a" without asking the Timers. It is the owner all the same.
    t, clock = make()
    assert in_thread(lambda: enter_and_exit(t, "a")) is None
    thread, finish = enter_in_a_thread_that_stays(t, "a")
    try:
        for name in ("a", "b"):
            with pytest.raises(
                RuntimeError, match=f"section {name!r} of a Timers that thread 'stays'"
            ):
                with t(name):
                    pass
    finally:
        finish()
    assert t.names() == ["a"] and t.count("a") == 2


def test_a_reset_from_another_thread_discards_the_owners_open_block():
    t, clock = make()
    thread, finish = enter_in_a_thread_that_stays(t, "x")
    try:
        t.reset()
        section = t("x")
        section.__enter__()  # this thread takes the Timers over
    finally:
        finish()  # the old owner's exit closes no block: it is ignored
    clock.advance(7)
    section.__exit__(None, None, None)
    assert t.laps("x") == [7e-9] and t.names() == ["x"]
    assert type(in_thread(lambda: enter_and_exit(t, "x"))) is RuntimeError


def test_a_handover_during_a_clock_reading_never_records_a_negative_lap():
    # A user clock is Python code: while the owner's exit reads it, another thread can reset
    # the Timers and enter the section at a later reading. The owner's exit, checked before
    # that, is logged after the new owner's enter with an earlier reading. That pairing would
    # be negative: it is dropped and reading raises.
    clock = FakeClock(10)
    other_thread = []

    def owner_clock():
        reading = clock()
        if other_thread:
            other = other_thread.pop()
            clock.advance(100)
            other.start()
            other.join()
        return reading

    t = Timers(clock=owner_clock)
    with t("x"):
        clock.advance(5)
    section = t("x")
    section.__enter__()
    clock.advance(20)
    other_thread.append(threading.Thread(target=lambda: (t.reset(), section.__enter__())))
    section.__exit__(None, None, None)
    with pytest.raises(RuntimeError, match="would be negative.*one Timers per thread"):
        t.laps("x")
    assert t.laps("x") == [] and t.names() == ["x"]


def test_reading_from_another_thread_takes_turns_with_the_owner(monkeypatch):
    # A reader pairs a section's log while the owner goes on timing. Its pairing and the
    # owner's (at a first enter) must not interleave: the owner's later exit would find no
    # open block and be lost. The reader is held between draining the log and pairing it.
    t, clock = make()
    x = t("x")
    with x:
        clock.advance(10)
    x.__enter__()
    clock.advance(10)
    drained, resume = threading.Event(), threading.Event()
    drain = type(x)._drain

    def slow_drain(section):
        batch = drain(section)
        if threading.current_thread() is not threading.main_thread() and batch:
            drained.set()
            resume.wait(timeout=0.5)  # with the lock the owner cannot get here meanwhile
        return batch

    # _SectionMethods comes before either base class in every section's method order.
    monkeypatch.setattr(timers_mod._SectionMethods, "_drain", slow_drain, raising=False)
    reader = threading.Thread(target=t.count, args=("x",))
    reader.start()
    assert drained.wait(timeout=60)
    x.__exit__(None, None, None)  # the hot path takes no lock
    with t("y"):  # a first enter: pairs every section, so waits for the reader
        clock.advance(1)
    resume.set()
    reader.join()
    assert t.laps("x") == [10e-9, 10e-9]
    assert t.parents() == {"x": None, "y": None}


# -- statistics ----------------------------------------------------------------------


def test_summary_statistics_and_shares():
    t, clock = make()
    run_steps(t, clock, attack_ns=[100, 300, 200, 400], update_ns=[10, 10, 10, 50])
    s = t.summary()
    assert list(s) == ["step", "attack", "update"]
    att = s["attack"]
    assert att["count"] == 4
    assert att["total"] == pytest.approx(1000e-9, rel=1e-15)
    assert att["mean"] == pytest.approx(250e-9, rel=1e-15)
    assert att["median"] == pytest.approx(250e-9, rel=1e-15)
    assert att["min"] == 100e-9 and att["max"] == 400e-9
    assert att["p95"] == pytest.approx(np.percentile([100, 300, 200, 400], 95) * 1e-9, rel=1e-12)
    step_total = (1000 + 80 + 4 * 5) * 1e-9
    assert s["step"]["total"] == pytest.approx(step_total, rel=1e-15)
    assert s["step"]["share"] == 1.0
    assert att["share"] == pytest.approx(1000e-9 / step_total, rel=1e-12)
    assert s["update"]["share"] == pytest.approx(80e-9 / step_total, rel=1e-12)

    by_attack = t.summary(parent="attack")
    assert by_attack["attack"]["share"] == 1.0
    assert by_attack["update"]["share"] == pytest.approx(0.08, rel=1e-12)
    assert by_attack["step"]["share"] == pytest.approx(step_total / 1000e-9, rel=1e-12)


def test_share_defaults_to_the_outermost_section_not_the_direct_parent():
    t, clock = make()
    with t("step"):
        clock.advance(50)
        with t("attack"):
            clock.advance(30)
            with t("forward"):
                clock.advance(20)
    s = t.summary()
    assert s["forward"]["share"] == pytest.approx(20 / 100, rel=1e-12)
    assert s["attack"]["share"] == pytest.approx(50 / 100, rel=1e-12)


def test_share_is_nan_when_the_parent_took_no_time():
    t, _ = make()
    with t("step"), t("attack"):
        pass
    assert t.summary()["step"]["share"] == 1.0
    assert math.isnan(t.summary()["attack"]["share"])


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=60))
def test_median_and_p95_match_numpy(laps_ns):
    t, clock = make(start=0)
    for ns in laps_ns:
        with t("x"):
            clock.advance(ns)
    s = t.summary()["x"]
    seconds = np.array(laps_ns, dtype=np.float64) / 1e9
    assert s["p95"] == pytest.approx(np.percentile(seconds, 95), rel=1e-12, abs=1e-18)
    assert s["median"] == pytest.approx(np.median(seconds), rel=1e-12, abs=1e-18)
    assert s["min"] == seconds.min() and s["max"] == seconds.max()
    assert s["mean"] == pytest.approx(seconds.mean(), rel=1e-12, abs=1e-18)


def test_percentile_helper_on_known_values():
    # rank (n - 1) * 0.95 = 3.8 of [1, 2, 3, 4, 100]: 4 + 0.8 * 96
    assert timer_stats.percentile([1, 2, 3, 4, 100], 95) == pytest.approx(80.8)
    assert timer_stats.percentile([7], 95) == 7
    assert math.isnan(timer_stats.percentile([], 95))


# -- report --------------------------------------------------------------------------


def test_report_prints_and_returns_an_indented_ms_table():
    t, clock = make()
    run_steps(t, clock, attack_ns=[2_000_000, 4_000_000], update_ns=[1_000_000, 1_000_000])
    buf = io.StringIO()
    text = t.report(file=buf)
    assert buf.getvalue() == text
    lines = text.splitlines()
    assert "ms" in lines[0]
    assert lines[1].split() == [
        "name", "count", "total", "mean", "median", "min", "max", "p95", "share"
    ]  # fmt: skip
    rows = {line.strip().split()[0]: line for line in lines[3:]}
    assert set(rows) == {"step", "attack", "update"}
    assert rows["step"].startswith("step")
    assert rows["attack"].startswith("  attack")
    cells = rows["attack"].split()
    assert cells[1] == "2"
    assert float(cells[2]) == pytest.approx(6.0)  # total ms
    assert float(cells[3]) == pytest.approx(3.0)  # mean ms
    assert float(cells[5]) == pytest.approx(2.0) and float(cells[6]) == pytest.approx(4.0)
    share = 6.0 / (6.0 + 2.0 + 10e-6)
    assert cells[8] == f"{share * 100:.1f}%"
    assert rows["step"].split()[8] == "100.0%"


def test_report_defaults_to_stdout_and_filters_names(capsys):
    t, clock = make()
    run_steps(t, clock, [10], [20])
    text = t.report(names=["update"], parent="step")
    assert capsys.readouterr().out == text
    body = text.splitlines()[3:]
    assert len(body) == 1 and body[0].split()[0] == "update"
    assert "'step'" in text.splitlines()[0]


def test_report_of_nothing_is_just_the_header():
    t, _ = make()
    text = t.report(file=io.StringIO())
    assert len(text.splitlines()) == 3


# -- export and state ----------------------------------------------------------------


def test_to_dict_json_and_csv(tmp_path):
    t, clock = make()
    run_steps(t, clock, [100, 200], [7, 9])
    d = t.to_dict()
    assert d == {
        "sync": None,
        "unit": "s",
        "laps": {"step": t.laps("step"), "attack": [1e-7, 2e-7], "update": [7e-9, 9e-9]},
        "parents": {"step": None, "attack": "step", "update": "step"},
    }
    path = tmp_path / "laps.json"
    text = t.to_json(path)
    assert json.loads(text) == d
    assert json.loads(path.read_text()) == d

    csv_path = tmp_path / "laps.csv"
    text = t.to_csv(csv_path)
    assert csv_path.read_text() == text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["name", "index", "seconds"]
    got: dict[str, list[float]] = {}
    for name, index, seconds in rows[1:]:
        assert int(index) == len(got.setdefault(name, []))
        got[name].append(float(seconds))
    assert got == d["laps"]


def test_state_dict_round_trip_and_resume():
    t, clock = make()
    run_steps(t, clock, [100, 200], [7, 9])
    state = t.state_dict()
    json.dumps(state)  # checkpoint-friendly: plain data
    other, clock2 = make()
    with other("stale"):
        clock2.advance(1)
    other.load_state_dict(state)
    assert other.to_dict() == t.to_dict()
    assert other.names() == ["step", "attack", "update"]
    with other("step"):  # new laps append after the loaded ones
        with other("attack"):
            clock2.advance(11)
        with other("extra"):
            clock2.advance(1)
    assert other.laps("attack") == [1e-7, 2e-7, 11e-9]
    assert other.parents()["extra"] == "step"
    assert other.laps("stale") == []


@pytest.mark.parametrize(
    "mutate, error, words",
    [
        (lambda s: s.pop("laps"), ValueError, "missing"),
        (lambda s: s.update(version=99), ValueError, "version"),
        (lambda s: s["parents"].update(attack="ghost"), ValueError, "ghost"),
        (lambda s: s["laps"].update(attack=[1.5]), ValueError, "non-negative int"),
        (lambda s: s["laps"].update(attack=[-1]), ValueError, "non-negative int"),
        (lambda s: s["laps"].update(attack=[2**63]), ValueError, "non-negative int"),
        (lambda s: s["parents"].pop("attack"), ValueError, "same names"),
        (lambda s: s.update(laps=[]), TypeError, "dicts"),
    ],
)
def test_load_state_dict_rejects_bad_state(mutate, error, words):
    t, clock = make()
    run_steps(t, clock, [1], [1])
    state = t.state_dict()
    mutate(state)
    fresh, _ = make()
    with pytest.raises(error, match=words):
        fresh.load_state_dict(state)
    with pytest.raises(TypeError, match="state"):
        fresh.load_state_dict([("laps", {})])


def test_load_state_dict_rejects_a_child_listed_before_its_parent():
    fresh, _ = make()
    state = {"version": 1, "laps": {"b": [1], "a": [2]}, "parents": {"b": "a", "a": None}}
    with pytest.raises(ValueError, match="earlier"):
        fresh.load_state_dict(state)


def test_reset_forgets_everything_and_cached_sections_keep_working():
    t, clock = make()
    section = t("inner")
    with t("outer"), section:
        clock.advance(3)
    t.reset()
    assert t.names() == [] and t.laps("inner") == [] and t.summary() == {}
    with section:  # first entry again: now outermost
        clock.advance(2)
    assert t.laps("inner") == [2e-9]
    assert t.parents() == {"inner": None}


def test_reset_while_the_owner_creates_a_section():
    # The owner creates a section without the lock (timers(name) for a new name), so one can
    # appear while another thread's reset() walks the sections. A section whose clearing runs
    # that creation stands in for the interleaving.
    t, clock = make()

    class CreatesOnClear:
        _first = False

        def _clear(self):
            t("late")

    t._sections["stub"] = CreatesOnClear()
    t.reset()
    del t._sections["stub"]
    with t("late"):
        clock.advance(4)
    assert t.laps("late") == [4e-9] and t.names() == ["late"]


def test_reset_discards_open_blocks():
    t, clock = make()
    with t("x"):
        clock.advance(1)
        t.reset()
    assert t.laps("x") == []
    with t("x"):
        clock.advance(2)
    assert t.laps("x") == [2e-9]


# -- argument checking ---------------------------------------------------------------


@pytest.mark.parametrize("sync", ["CUDA", "event", "", 1, True])
def test_unknown_sync_is_rejected(sync):
    with pytest.raises(ValueError, match="sync"):
        Timers(sync=sync)


@pytest.mark.parametrize("sync", ["cuda", "events"])
def test_gpu_modes_need_cuda(sync, monkeypatch):
    monkeypatch.setattr(timers_mod, "_cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match=f"sync='{sync}'.*CUDA"):
        Timers(sync=sync)


@pytest.mark.skipif(timers_mod._cuda_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("sync", ["cuda", "events"])
def test_gpu_modes_fail_on_this_cpu_machine(sync):
    with pytest.raises(RuntimeError, match="CUDA"):
        Timers(sync=sync)


def test_clock_is_checked():
    with pytest.raises(TypeError, match="clock"):
        Timers(clock=123)
    with pytest.raises(TypeError, match="clock must return int"):
        Timers(clock=lambda: 1.5)
    with pytest.raises(ValueError, match="clock must return non-negative"):
        Timers(clock=lambda: -1)


def test_names_and_parents_are_checked():
    t, _ = make()
    with pytest.raises(TypeError, match="name must be a str"):
        t(3)
    with pytest.raises(ValueError, match="name"):
        t("")
    with pytest.raises(TypeError, match="name must be a str"):
        t.laps(None)
    with t("x"):
        pass
    with pytest.raises(ValueError, match="parent 'y'"):
        t.summary(parent="y")
    with pytest.raises(TypeError, match="names"):
        t.report(names="x", file=io.StringIO())
    with pytest.raises(TypeError, match="gathered"):
        t.report(gathered={"world_size": 1}, file=io.StringIO())


# -- GPU modes, with fakes standing in for torch.cuda --------------------------------


def test_sync_cuda_synchronizes_before_every_clock_read(monkeypatch):
    calls: list[str] = []
    clock = FakeClock()

    def logging_clock():
        calls.append("clock")
        return clock()

    monkeypatch.setattr(timers_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(timers_mod, "_cuda_synchronize", lambda: calls.append("sync"))
    t = Timers(sync="cuda", clock=logging_clock)
    calls.clear()  # construction reads the clock once to check it
    with t("x"):
        clock.advance(8)
    assert calls == ["sync", "clock", "sync", "clock"]
    assert t.laps("x") == [8e-9]
    assert t.sync == "cuda"


class FakeStream:
    """GPU time for fake events: work is 'done' up to ``completed``."""

    def __init__(self) -> None:
        self.now = 0.0  # ms of GPU time
        self.completed = math.inf
        self.created = 0
        self.synchronized = 0


class FakeEvent:
    def __init__(self, stream: FakeStream) -> None:
        stream.created += 1
        self.stream = stream
        self.t = None

    def record(self) -> None:
        self.t = self.stream.now

    def query(self) -> bool:
        return self.t <= self.stream.completed

    def synchronize(self) -> None:
        self.stream.synchronized += 1
        self.stream.completed = max(self.stream.completed, self.t)

    def elapsed_time(self, end: FakeEvent) -> float:
        assert end.query(), "elapsed_time on an incomplete event"
        return end.t - self.t


@pytest.fixture
def fake_cuda(monkeypatch):
    stream = FakeStream()
    monkeypatch.setattr(timers_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(timers_mod, "_new_cuda_event", lambda: FakeEvent(stream))
    return stream


def test_events_mode_times_the_stream_and_never_stalls_the_loop(fake_cuda):
    t = Timers(sync="events")
    fake_cuda.completed = -1.0  # nothing finishes until someone synchronizes
    for ms in (2.0, 3.0, 4.0):
        with t("step"):
            with t("attack"):
                fake_cuda.now += ms
            fake_cuda.now += 1.0
    assert fake_cuda.synchronized == 0
    assert t.parents() == {"step": None, "attack": "step"}
    assert t.laps("attack") == pytest.approx([2e-3, 3e-3, 4e-3], rel=1e-12)
    assert t.laps("step") == pytest.approx([3e-3, 4e-3, 5e-3], rel=1e-12)
    assert fake_cuda.synchronized > 0


def test_events_mode_recycles_events(fake_cuda):
    t = Timers(sync="events")
    for _ in range(50):
        with t("x"):
            fake_cuda.now += 0.5
    # completed pairs go back to the pool, without a stall, whenever it runs dry
    assert fake_cuda.created <= 4
    assert fake_cuda.synchronized == 0
    assert t.count("x") == 50
    assert t.laps("x") == pytest.approx([5e-4] * 50)


def test_events_mode_nesting_self_nesting_and_exceptions(fake_cuda):
    t = Timers(sync="events")
    with pytest.raises(RuntimeError):
        with t("x"):
            fake_cuda.now += 1.0
            with t("x"):
                fake_cuda.now += 2.0
            with t("y"):
                raise RuntimeError
    assert t.laps("x") == pytest.approx([2e-3, 3e-3])
    assert t.laps("y") == [0.0]
    assert t.parents() == {"x": None, "y": "x"}
    t.reset()
    assert t.names() == [] and len(t._pool) == fake_cuda.created


def test_events_mode_never_records_a_negative_lap(fake_cuda):
    t = Timers(sync="events")
    with t("x"):
        fake_cuda.now += 1.0
    with t("x"):
        fake_cuda.now -= 3.0  # as if the block ended on a stream behind the one it began on
    with pytest.raises(RuntimeError, match="1 lap.* of section 'x' would be negative"):
        t.laps("x")
    assert t.laps("x") == pytest.approx([1e-3])
    assert len(t._pool) == fake_cuda.created  # the dropped pair's events are reused


def test_events_mode_sections_are_for_one_thread(fake_cuda):
    t = Timers(sync="events")
    with t("x"):
        fake_cuda.now += 1.0
        error = in_thread(lambda: enter_and_exit(t, "x"))
        assert type(error) is RuntimeError and "section 'x' of a Timers" in str(error)
        assert in_thread(lambda: t("x").__exit__(None, None, None)) is None
    assert t.laps("x") == pytest.approx([1e-3])
    assert fake_cuda.created == 2  # neither the refused enter nor the ignored exit recorded one


def test_events_mode_refuses_a_clock(fake_cuda):
    with pytest.raises(ValueError, match="clock"):
        Timers(sync="events", clock=lambda: 0)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("sync", ["cuda", "events"])
def test_gpu_modes_time_real_cuda_work(sync):
    import torch

    t = Timers(sync=sync)
    a = torch.randn(512, 512, device="cuda")
    for _ in range(3):
        with t("step"):
            with t("matmul"):
                for _ in range(20):
                    a = a @ a
                    a = a / a.norm()
    steps, matmuls = t.laps("step"), t.laps("matmul")
    assert t.parents() == {"step": None, "matmul": "step"}
    assert len(matmuls) == 3 and all(lap > 0 for lap in matmuls)
    assert all(s >= m for s, m in zip(steps, matmuls, strict=True))


# -- gather without torch.distributed -------------------------------------------------


def test_gather_without_distributed_is_this_process():
    t, clock = make()
    run_steps(t, clock, [100, 300], [10, 30])
    g = t.gather()
    assert g["world_size"] == 1
    assert g["names"] == ["step", "attack", "update"]
    assert g["parents"] == t.parents()
    att = g["stats"]["attack"]
    assert att["ranks"] == 1
    assert att["count"] == {"min": 2, "mean": 2.0, "max": 2}
    for k in ("min", "mean", "max"):
        assert att["total"][k] == pytest.approx(400e-9, rel=1e-12)
        assert att["mean"][k] == pytest.approx(200e-9, rel=1e-12)
    text = t.report(gathered=g, file=io.StringIO())
    assert "1 ranks" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.strip().startswith("attack"))
    assert row.startswith("  attack")
    assert row.split()[1:5] == ["1", "2", "2", "2"]


def test_reduce_gathered_across_ranks_with_a_missing_name():
    rank0 = {"names": ["a", "b"], "parents": {"a": None, "b": "a"},
             "figures": {"a": (2, 100), "b": (1, 40)}}  # fmt: skip
    rank1 = {"names": ["a", "c"], "parents": {"a": None, "c": None},
             "figures": {"a": (4, 400), "c": (3, 30)}}  # fmt: skip
    g = timer_gather.reduce_gathered([rank0, rank1])
    assert g["world_size"] == 2 and g["names"] == ["a", "b", "c"]
    assert g["stats"]["a"]["count"] == {"min": 2, "mean": 3.0, "max": 4}
    assert g["stats"]["a"]["mean"]["max"] == pytest.approx(100e-9)
    b = g["stats"]["b"]
    assert b["ranks"] == 1
    assert b["count"] == {"min": 0, "mean": 0.5, "max": 1}
    assert b["total"]["min"] == 0.0
    assert b["mean"] == {"min": 40e-9, "mean": 40e-9, "max": 40e-9}  # only ranks that timed it


# -- plot ----------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    t, clock = make()
    run_steps(t, clock, [3_000_000, 2_000_000], [1_000_000, 1_000_000])
    path = tmp_path / "breakdown.png"
    t.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no nested sections"):
        t.plot(tmp_path / "x.png", parent="attack")
    with pytest.raises(ValueError, match="parent 'nope'"):
        t.plot(tmp_path / "x.png", parent="nope")


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    t, clock = make()
    run_steps(t, clock, [1], [1])
    with pytest.raises(ImportError, match=r"pip install fastpgd\[plot\]"):
        t.plot(tmp_path / "x.png")


def test_plot_of_nothing_is_an_error(tmp_path):
    t, _ = make()
    with pytest.raises(ValueError, match="no section"):
        t.plot(tmp_path / "x.png")


# -- docs ----------------------------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(timers_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
