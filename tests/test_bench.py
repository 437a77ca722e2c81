"""fastpgd bench on a tiny workload: every method reported, sane numbers, valid JSON."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

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
        (dict(device="tpu"), "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        bench.run_bench(quiet=True, batch_size=2, steps=1, **kwargs)
    assert words in str(info.value)


def test_run_bench_checks_output_paths_before_measuring(tmp_path, monkeypatch):
    def no_model():
        raise AssertionError("the benchmark started before the output path was checked")

    monkeypatch.setitem(bench.WORKLOADS["madry-mnist"], "model", no_model)
    with pytest.raises(ValueError, match="json_path .* is a directory; give a file path"):
        bench.run_bench(json_path=str(tmp_path), quiet=True)
    with pytest.raises(ValueError, match="plot_path '/proc/version' cannot be written"):
        bench.run_bench(plot_path="/proc/version", quiet=True)


def test_check_device(monkeypatch):
    assert bench.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'meta'"):
        bench.check_device("meta", "--device")
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 3"):
        bench.check_device(3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda:0' needs CUDA, but torch.cuda.is_availab"):
        bench.check_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert bench.check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'cuda:2' does not exist: this machine has 2 CUDA"):
        bench.check_device("cuda:2")


@pytest.mark.parametrize(
    "text,version",
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC "
            "2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "550.54.15",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.124.06  Release Build  "
            "(dvs-builder@U16-I3-B03-4-3)  Tue Mar  4 11:12:56 UTC 2025\n",
            "570.124.06",
        ),
        ("GCC version: 12.2.0\n", None),
    ],
)
def test_driver_version_from_proc_text(text, version):
    assert bench._driver_in_proc_text(text) == version
