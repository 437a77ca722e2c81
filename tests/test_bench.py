"""fastpgd bench on a tiny workload: every method reported, sane numbers, valid JSON."""

from __future__ import annotations

import argparse
import json

import pytest

from fastpgd import bench

TINY = [
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--per-example-subset",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    assert bench.main([*TINY, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_has_every_method_with_sane_numbers(tiny_result):
    methods = tiny_result["methods"]
    assert set(methods) == set(bench.METHODS)
    assert methods["fused-graph"]["status"] == "skipped: no CUDA"
    ran = [m for m, r in methods.items() if r["status"] == "ok"]
    assert {"per-example", "reference", "fused", "floor"} <= set(ran)
    for name in ran:
        r = methods[name]
        assert len(r["times_s"]) == 1
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] < 120
        assert r["x_floor"] == pytest.approx(r["median_s"] / methods["floor"]["median_s"])
        assert r["speedup_vs"]["reference"] == pytest.approx(
            methods["reference"]["median_s"] / r["median_s"]
        )
        assert r["x_floor_min"] == pytest.approx(r["min_s"] / methods["floor"]["min_s"])
        assert r["speedup_vs_min"]["per-example"] == pytest.approx(
            methods["per-example"]["min_s"] / r["min_s"]
        )
    for r in methods.values():
        if r["status"] != "ok":
            assert r["status"].startswith("skipped: ")


def test_json_records_config_machine_and_checks(tiny_result):
    cfg = tiny_result["config"]
    assert (cfg["batch_size"], cfg["steps"], cfg["per_example_subset"]) == (4, 2, 2)
    assert cfg["per_example_scale"] == 2.0
    assert tiny_result["workload"] == "madry-mnist"
    machine = tiny_result["machine"]
    for key in ("cpu", "torch", "extension_info", "date", "hostname"):
        assert machine[key]
    assert tiny_result["checks"]["fused_equals_reference"]["equal"] is True
    for name, valid in tiny_result["checks"]["valid"].items():
        assert valid["max_linf"] <= 0.3 + 1e-6, name
        assert 0 <= valid["min"] and valid["max"] <= 1, name


def test_add_parser_registers_the_subcommand(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fastpgd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    path = tmp_path / "r.json"
    args = parser.parse_args(
        [
            "bench",
            "--workload",
            "cifar",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--methods",
            "fused,reference,floor",
            "--json",
            str(path),
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "fused" in out and "x floor" in out
    result = json.loads(path.read_text())
    assert set(result["methods"]) == {"fused", "reference", "floor"}
    assert result["config"]["shape"] == [3, 32, 32]


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(workload="imagenet"), "workload must be one of"),
        (dict(methods=["fused", "pgd"]), "unknown ['pgd']"),
        (dict(repeats=0), "repeats must be an int >= 1"),
        (dict(dtype="int8"), "dtype must be one of"),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        bench.run_bench(quiet=True, batch_size=2, steps=1, **kwargs)
    assert words in str(info.value)
