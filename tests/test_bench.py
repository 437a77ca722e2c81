"""fastpgd bench on a tiny workload: every method reported, sane numbers, valid JSON; every bad
invocation (of the attack benchmark and of --train) a one-line error with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from fastpgd import bench, bench_train, cli

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


# -- bad invocations: one line on stderr, exit code 2 -------------------------------------------


def run_cli(argv, capsys):
    """``fastpgd <argv>`` in this process: (exit code, stdout, stderr). argparse's errors exit
    through SystemExit; the command's own return the code."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastpgd bench: error: "), err
    for word in words:
        assert word in lines[0], (word, err)


BAD_FLAGS = [
    (["--repeats", "0"], ["argument --repeats", "must be an integer >= 1, got 0"]),
    (["--batch-size", "0"], ["argument --batch-size", "must be an integer >= 1, got 0"]),
    (["--steps", "-1"], ["argument --steps", "must be an integer >= 1, got -1"]),
    (["--warmup", "-1"], ["argument --warmup", "must be an integer >= 0, got -1"]),
    (["--per-example-subset", "0"], ["argument --per-example-subset", ">= 1, got 0"]),
    (["--seed", "x"], ["argument --seed", "must be an integer >= 0, got 'x'"]),
    (["--methods", "fused,pgd"], ["argument --methods", "unknown method 'pgd'", "choose from"]),
    (["--methods", "fused,"], ["argument --methods", "unknown method ''"]),
    (["--dtype", "int8"], ["argument --dtype", "invalid choice: 'int8'"]),
    (["--workload", "imagenet"], ["argument --workload", "invalid choice: 'imagenet'"]),
    (["--device", "tpu"], ["--device must be cpu, cuda or cuda:N, got 'tpu'"]),
    (["--variants", "eager"], ["--variants only applies to --train"]),
    (["--image-size", "8"], ["--image-size only applies to --train"]),
    (["--train", "--methods", "fused"], ["--methods only applies to the attack benchmark"]),
    (["--train", "--repeats", "2", "--plot", "p.png"], ["--repeats, --plot only apply to the"]),
    (["--train", "--steps", "0"], ["argument --steps", "must be an integer >= 1, got 0"]),
    (["--train", "--warmup", "-2"], ["argument --warmup", "must be an integer >= 0, got -2"]),
    (["--train", "--batch-size", "0"], ["argument --batch-size", ">= 1, got 0"]),
    (["--train", "--image-size", "0"], ["argument --image-size", ">= 1, got 0"]),
    (["--train", "--attack-steps", "0"], ["argument --attack-steps", ">= 1, got 0"]),
    (["--train", "--variants", "eager,fast"], ["argument --variants", "unknown variant 'fast'"]),
    (["--train", "--workload", "cifar"], ["argument --workload", "--train has madry-mnist"]),
    (["--train", "--device", "cuda:x"], ["--device must be cpu, cuda or cuda:N"]),
]


@pytest.mark.parametrize("argv,words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_errors(argv, words, capsys, monkeypatch):
    # Nothing may be measured: the checks come first.
    def measured(*args, **kwargs):
        raise AssertionError("a benchmark ran despite a bad flag")

    monkeypatch.setattr(bench, "run_bench", measured)
    monkeypatch.setattr(bench_train, "run_train_bench", measured)
    code, out, err = run_cli(["bench", *argv], capsys)
    assert_one_line_error(code, err, *words)
    assert out == ""


@pytest.mark.parametrize("mode", [[], ["--train"]], ids=["attack", "train"])
def test_device_without_cuda_is_one_line_error(mode, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["bench", *mode, "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "--device 'cuda' needs CUDA", "use cpu")


@pytest.mark.parametrize("mode", [[], ["--train"]], ids=["attack", "train"])
@pytest.mark.parametrize(
    "flag,path,words",
    [
        ("--json", "DIR", ["is a directory; give a file path"]),
        ("--json", "/proc/version", ["--json '/proc/version' cannot be written"]),
        ("--json", "DIR/missing/r.json", ["does not exist"]),
        ("--plot", "/proc/version", ["--plot '/proc/version' cannot be written"]),
    ],
)
def test_unwritable_output_fails_before_measuring(mode, flag, path, words, tmp_path, capsys,
                                                  monkeypatch):  # fmt: skip
    if flag == "--plot" and mode:
        words = ["--plot only applies to the attack benchmark"]

    def measured(*args, **kwargs):
        raise AssertionError("a benchmark ran before its output path was checked")

    monkeypatch.setattr(bench, "run_bench", measured)
    monkeypatch.setattr(bench_train, "run_train_bench", measured)
    argv = ["bench", *mode, flag, path.replace("DIR", str(tmp_path))]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *words)


def test_setting_refused_by_the_trainer_is_one_line_error(capsys):
    # The Madry CNN pools twice: a 2x2 image is refused when the model is built.
    argv = ["bench", "--train", "--image-size", "2", "--variants", "eager", "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "image_size must be at least 4, got 2")


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--repeats", "0"], ["argument --repeats: must be an integer >= 1, got 0"]),
        (["--train", "--device", "cuda:99"], ["--device 'cuda:99'"]),
    ],
)
def test_exit_code_and_stderr_of_the_real_command(argv, words):
    # Without the editable install's rebuild log, so that stderr holds only the command's own.
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")
    proc = subprocess.run(
        [sys.executable, "-m", "fastpgd", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_one_line_error(proc.returncode, proc.stderr, *words)
    assert proc.stdout == ""


def test_cifar_preact_workload_runs(tmp_path):
    # PreAct ResNet-18 at batch 128 and PGD-10 by default; shortened here.
    path = tmp_path / "preact.json"
    argv = [
        "--workload",
        "cifar-preact",
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
        "--quiet",
        "--json",
        str(path),
    ]
    assert bench.main(argv) == 0
    result = json.loads(path.read_text())
    assert result["workload"] == "cifar-preact"
    assert {m for m, r in result["methods"].items() if r["status"] == "ok"} == {
        "fused", "reference", "floor"}  # fmt: skip
    assert bench.WORKLOADS["cifar-preact"]["batch_size"] == 128
    assert bench.WORKLOADS["cifar-preact"]["steps"] == 10
