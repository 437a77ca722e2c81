"""The one text table and the one chart module, as Timers.report/plot and fastpgd bench use them."""

from __future__ import annotations

import doctest
import sys

import pytest

from fastpgd import _plot, _table, bench, timer_stats

PNG = b"\x89PNG\r\n\x1a\n"


def test_table_pads_columns_names_left_numbers_right():
    text = _table.format_table(["name", "count", "ms"], [["step", "3", "12.5"], ["x", "10", "7"]])
    assert text.splitlines() == [
        "name  count    ms",
        "----  -----  ----",
        "step      3  12.5",
        "x        10     7",
    ]
    assert not text.endswith("\n")


def test_table_title_and_no_rows():
    assert _table.format_table(["name", "total"], [], title="Timers") == (
        "Timers\nname  total\n----  -----"
    )


def test_table_rejects_a_row_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"rows\[1\] has 1 cells, header has 2"):
        _table.format_table(["a", "b"], [["1", "2"], ["3"]])


@pytest.mark.parametrize("module", [_table, timer_stats])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


def bench_result() -> dict:
    ok = {"status": "ok", "median_s": 0.5, "min_s": 0.4, "max_s": 0.6, "x_floor": 1.25,
          "x_floor_min": 1.2, "speedup_vs": {"reference": 2.0}}  # fmt: skip
    floor = dict(ok, median_s=0.4, x_floor=1.0, x_floor_min=1.0, speedup_vs={"reference": 2.5})
    return {
        "workload": "madry-mnist",
        "config": {
            "batch_size": 50,
            "steps": 40,
            "dtype": "float32",
            "device": "cpu",
            "per_example_subset": 10,
            "per_example_scale": 5.0,
        },
        "machine": {"cpu": "Some CPU"},
        "methods": {"fused": ok, "fused-graph": {"status": "skipped: no CUDA"}, "floor": floor},
    }


def test_bench_table_is_the_shared_table():
    lines = bench.format_table(bench_result()).splitlines()
    assert lines[0].startswith("madry-mnist: batch 50, 40 steps, float32 on cpu (Some CPU)")
    header = lines[1].split()
    assert header[:4] == ["method", "median", "s", "min-max"]
    assert set(lines[2]) == {"-", " "}
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {"fused", "fused-graph", "floor"}
    assert rows["fused"].split()[1:3] == ["0.5000", "0.4000-0.6000"]
    assert "skipped: no CUDA" in rows["fused-graph"]
    # numbers are right-aligned: their columns end where the header's do
    assert rows["fused"].index("0.5000") + 6 == lines[1].index("median s") + 8


def test_bar_chart_writes_the_format_of_the_suffix(tmp_path):
    pytest.importorskip("matplotlib")
    _plot.bar_chart(tmp_path / "a.png", ["x", "y"], [1.0, 2.0], xlabel="ms", title="t",
                    notes=["50%", "50%"], colors=["tab:blue", "tab:gray"])  # fmt: skip
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    _plot.bar_chart(tmp_path / "a.svg", ["x"], [1.0], xlabel="ms", title="t")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:1000]


@pytest.mark.parametrize("name", ["values", "notes", "colors"])
def test_bar_chart_rejects_lengths_that_do_not_match_the_labels(tmp_path, name):
    kwargs = {"values": [1.0, 2.0], "notes": ["a", "b"], "colors": ["red", "red"]}
    kwargs[name] = kwargs[name][:1]
    with pytest.raises(ValueError, match=f"{name} has 1 entries, labels has 2"):
        _plot.bar_chart(tmp_path / "a.png", ["x", "y"], xlabel="ms", title="t", **kwargs)
    assert not (tmp_path / "a.png").exists()


def test_bench_plot_writes_a_png_of_the_methods_that_ran(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    bench._plot(bench_result(), str(path))
    assert path.read_bytes()[:8] == PNG


def without_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_bar_chart_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    without_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install fastpgd\[plot\]"):
        _plot.bar_chart(tmp_path / "a.png", ["x"], [1.0], xlabel="ms", title="t")


def test_bench_plot_without_matplotlib_warns_and_writes_nothing(tmp_path, monkeypatch, capsys):
    without_matplotlib(monkeypatch)
    path = tmp_path / "bench.png"
    bench._plot(bench_result(), str(path))
    err = capsys.readouterr().err
    assert f"not writing {path}" in err and "pip install fastpgd[plot]" in err
    assert not path.exists()
