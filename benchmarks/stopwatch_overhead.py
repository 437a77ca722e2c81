"""What a lap costs: the stopwatch's overhead next to a bare clock read, in one process.

Measures, per call: ``time.perf_counter_ns()`` (the floor: one clock read from
Python), ``Stopwatch.lap()`` (C++), ``PyStopwatch.lap()``, ``with sw:`` blocks,
a ``with timers("x"):`` block (``Timers``, with the C++ hot path, and its twin
``PyTimers``) and codetiming's reused ``Timer(logger=None)`` (start+stop
and a ``with`` block) where installed. Then ``lap_times()`` with
10**6 laps stored against building a Python list of 10**6 floats, and the bytes
each lap holds.

Every case runs in the same repeat, round-robin, so that a noisy machine slows
all of them alike; ratios are medians of the per-repeat ratios to
``perf_counter_ns()``. Times include the ``timeit`` loop (its cost is printed
as "empty loop"), as a user's loop would.

Targets: ``Stopwatch.lap()`` <= 1.3x ``perf_counter_ns()``; a timers block <=
300 ns and faster than codetiming's start+stop; ``lap_times()`` of 10**6 laps no
slower than building such a list.

Usage::

    python benchmarks/stopwatch_overhead.py [--json PATH] [--repeat 15] [--number 200000]
"""

from __future__ import annotations

import argparse
import array
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import timeit
import tracemalloc

from fastpgd import _ext
from fastpgd.bench import cpu_model
from fastpgd.stopwatch import PyStopwatch, Stopwatch
from fastpgd.timers import PyTimers, Timers


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": "extension" if _ext.has_ext() else "python",
    }


def load_codetiming():
    try:
        from codetiming import Timer
    except ImportError:
        return None
    return Timer


TIMERS_BLOCK = 'with timers("x"): pass'
PY_TIMERS_BLOCK = 'with timers("x"): pass [py]'
CODETIMING_START_STOP = "codetiming start+stop"


def call_cases() -> tuple[dict, dict]:
    """Per-call cases: name -> (statement, setup, namespace); and the skipped ones."""
    cases: dict = {}
    skipped: dict = {}
    cases["empty loop"] = ("pass", "pass", {})
    cases["perf_counter_ns()"] = ("f()", "pass", {"f": time.perf_counter_ns})
    if _ext.has_ext():
        sw = Stopwatch()
        cases["Stopwatch.lap()"] = ("f()", "sw.reset(); sw.start()", {"f": sw.lap, "sw": sw})
        sw2 = Stopwatch()
        cases["Stopwatch start()+stop()"] = (
            "a(); b()",
            "pass",
            {"a": sw2.start, "b": sw2.stop},
        )
        sw3 = Stopwatch()
        cases["with Stopwatch: pass"] = ("with sw:\n    pass", "sw.reset()", {"sw": sw3})
    else:
        skipped["Stopwatch.lap()"] = "skipped: extension not in use"
    psw = PyStopwatch()
    cases["PyStopwatch.lap()"] = ("f()", "sw.reset(); sw.start()", {"f": psw.lap, "sw": psw})
    psw3 = PyStopwatch()
    cases["with PyStopwatch: pass"] = ("with sw:\n    pass", "sw.reset()", {"sw": psw3})
    block = 'with timers("x"):\n    pass'
    cases[TIMERS_BLOCK] = (block, "pass", {"timers": Timers()})
    if _ext.has_ext():
        cases[PY_TIMERS_BLOCK] = (block, "pass", {"timers": PyTimers()})
    else:
        skipped[PY_TIMERS_BLOCK] = "skipped: extension not in use (the row above is pure Python)"
    timer_cls = load_codetiming()
    if timer_cls is None:
        skipped[CODETIMING_START_STOP] = "skipped: codetiming not installed"
    else:
        t = timer_cls(logger=None)
        cases[CODETIMING_START_STOP] = ("a(); b()", "pass", {"a": t.start, "b": t.stop})
        t2 = timer_cls(logger=None)
        cases["codetiming with t: pass"] = ("with t:\n    pass", "pass", {"t": t2})
    return cases, skipped


def measure_calls(number: int, repeat: int) -> tuple[dict, dict]:
    cases, skipped = call_cases()
    timers = {
        name: timeit.Timer(stmt, setup, globals=ns) for name, (stmt, setup, ns) in cases.items()
    }
    for t in timers.values():  # warm up: caches, branch predictors, lap vectors
        t.timeit(number)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeat):
        for name, t in timers.items():
            samples[name].append(t.timeit(number) / number * 1e9)
    floor = samples["perf_counter_ns()"]
    loop = samples["empty loop"]
    results = {}
    for name, ns in samples.items():
        q1, _, q3 = statistics.quantiles(ns, n=4)
        results[name] = {
            "median_ns": statistics.median(ns),
            "q1_ns": q1,
            "q3_ns": q3,
            "min_ns": min(ns),
            "net_median_ns": statistics.median(a - b for a, b in zip(ns, loop, strict=True)),
            "ratio_vs_perf_counter_ns": statistics.median(
                a / b for a, b in zip(ns, floor, strict=True)
            ),
            "samples_ns": ns,
        }
    return results, skipped


def median_seconds(fn, repeat: int) -> tuple[float, float, float]:
    fn()  # warm up
    times = []
    gc_was = gc.isenabled()
    gc.disable()  # the collector would walk the million floats at random moments
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            del out
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(times), min(times), max(times)


def measure_lap_times(n_laps: int, repeat: int) -> dict:
    ints = [1_000 + (i * 7919) % 100_000 for i in range(n_laps)]  # lap-like nanoseconds
    doubles = array.array("d", (ns / 1e9 for ns in ints))
    cases = {
        "list comprehension [ns / 1e9 for ns in ints]": lambda: [ns / 1e9 for ns in ints],
        "array('d').tolist()": doubles.tolist,
    }
    filled = {}
    for name, cls in (("Stopwatch", Stopwatch), ("PyStopwatch", PyStopwatch)):
        if name == "Stopwatch" and not _ext.has_ext():
            continue  # extension not in use: Stopwatch is PyStopwatch
        readings = iter(range(0, 1_000 * (n_laps + 1), 1_000))
        sw = cls(clock=lambda it=readings: next(it))
        sw.start()
        for _ in range(n_laps):
            sw.lap()
        filled[name] = sw
        cases[f"{name}.lap_times()"] = sw.lap_times
    results = {}
    for name, fn in cases.items():
        med, lo, hi = median_seconds(fn, repeat)
        results[name] = {"median_ms": med * 1e3, "min_ms": lo * 1e3, "max_ms": hi * 1e3}
    base = results["list comprehension [ns / 1e9 for ns in ints]"]["median_ms"]
    for r in results.values():
        r["ratio_vs_list_comprehension"] = r["median_ms"] / base
    memory = {}
    if "Stopwatch" in filled and _ext.has_ext():
        sw = filled["Stopwatch"]
        memory["Stopwatch bytes/lap"] = sw._capacity_bytes() / len(sw)
        memory["Stopwatch bytes/lap worst case"] = 16.0  # int64 + at most 2x vector slack
    # PyStopwatch: Python ints in a list, counted by tracemalloc (ints up to 256 are shared).
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    readings = iter(range(0, 1_000 * 100_001, 1_000))
    psw = PyStopwatch(clock=lambda: next(readings))
    psw.start()
    for _ in range(100_000):
        psw.lap()
    memory["PyStopwatch bytes/lap"] = (tracemalloc.get_traced_memory()[0] - before) / 100_000
    tracemalloc.stop()
    return {"n_laps": n_laps, "times": results, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per sample")
    parser.add_argument("--repeat", type=int, default=15, help="samples per case")
    parser.add_argument("--laps", type=int, default=1_000_000, help="laps for lap_times()")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.number < 1 or args.repeat < 2 or args.laps < 1:
        parser.error("--number and --laps must be >= 1 and --repeat >= 2")

    info = machine()
    print("fastpgd stopwatch overhead")
    for key, value in info.items():
        print(f"  {key:<15} {value}")
    print(f"  {'samples':<15} {args.repeat} x {args.number} calls, round-robin")
    print()

    calls, skipped = measure_calls(args.number, args.repeat)
    header = f"{'per call':<28} {'median ns':>10} {'q1..q3 ns':>15} {'net ns':>8} {'x pc_ns':>8}"
    print(header)
    print("-" * len(header))
    for name, r in calls.items():
        spread = f"{r['q1_ns']:.1f}..{r['q3_ns']:.1f}"
        print(
            f"{name:<28} {r['median_ns']:>10.1f} {spread:>15} {r['net_median_ns']:>8.1f} "
            f"{r['ratio_vs_perf_counter_ns']:>8.2f}"
        )
    for name, why in skipped.items():
        print(f"{name:<28} {why}")
    print()

    lt = measure_lap_times(args.laps, max(3, min(args.repeat, 9)))
    title = f"{args.laps:.0e} laps -> list of floats"
    header = f"{title:<46} {'median ms':>10} {'min..max ms':>17} {'x list':>7}"
    print(header)
    print("-" * len(header))
    for name, r in lt["times"].items():
        spread = f"{r['min_ms']:.1f}..{r['max_ms']:.1f}"
        print(
            f"{name:<46} {r['median_ms']:>10.2f} {spread:>17} "
            f"{r['ratio_vs_list_comprehension']:>7.2f}"
        )
    print()
    for name, value in lt["memory"].items():
        print(f"{name:<46} {value:>10.2f}")
    print()

    checks = []
    if "Stopwatch.lap()" in calls and _ext.has_ext():
        ratio = calls["Stopwatch.lap()"]["ratio_vs_perf_counter_ns"]
        checks.append(("Stopwatch.lap() <= 1.3x perf_counter_ns()", ratio <= 1.3, f"{ratio:.2f}x"))
        lt_ratio = lt["times"]["Stopwatch.lap_times()"]["ratio_vs_list_comprehension"]
        checks.append(
            ("Stopwatch.lap_times() <= building the list", lt_ratio <= 1.0, f"{lt_ratio:.2f}x")
        )
    if TIMERS_BLOCK in calls:
        ns = calls[TIMERS_BLOCK]["median_ns"]
        checks.append(('with timers("x") block <= 300 ns', ns <= 300, f"{ns:.0f} ns"))
        if CODETIMING_START_STOP in calls:
            ratio = statistics.median(
                a / b
                for a, b in zip(
                    calls[TIMERS_BLOCK]["samples_ns"],
                    calls[CODETIMING_START_STOP]["samples_ns"],
                    strict=True,
                )
            )
            checks.append(("timers block < codetiming start+stop", ratio < 1.0, f"{ratio:.2f}x"))
    for what, ok, value in checks:
        print(f"target  {what:<44} {value:>9}  {'met' if ok else 'MISSED'}")

    if args.json:
        out = {
            "machine": info,
            "args": vars(args),
            "per_call": calls,
            "skipped": skipped,
            "lap_times": lt,
            "targets": [{"target": w, "met": ok, "value": v} for w, ok, v in checks],
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
