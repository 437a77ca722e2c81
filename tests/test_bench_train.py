"""fastpgd bench --train: the training step of each variant timed by the trainer, with tiny
settings on the CPU (eager and bf16 measured, the CUDA variants reported as skipped), and on a GPU
every variant."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics

import pytest
import torch

from conftest import needs_cuda
from fastpgd import bench, bench_train, cli

TINY = ["--steps", "2", "--warmup", "1", "--batch-size", "4", "--image-size", "8",
        "--attack-steps", "2"]  # fmt: skip
EAGER_PHASES = {"data", "setup", "attack", "forward", "backward", "update"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_train") / "train.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["bench", "--train", *TINY, "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text()), out.getvalue()


def check_measured(r: dict, steps: int) -> None:
    """The figures of one measured variant agree with each other."""
    assert r["status"] == "ok"
    laps = r["step_laps_ms"]
    assert len(laps) == steps  # the warm-up steps are not among them
    assert r["ms_per_step"] == r["median_ms"] == pytest.approx(statistics.median(laps))
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p95_ms"] <= r["max_ms"]
    assert r["mean_ms"] == pytest.approx(statistics.fmean(laps))
    assert r["wall_ms_per_step"] == pytest.approx(r["wall_s"] / steps * 1e3)
    assert r["projected_minutes_100k"] == pytest.approx(r["wall_s"] / steps * 100_000 / 60)
    # The wall clock holds the timed steps and a little loop work between them.
    assert r["wall_s"] * 1e3 >= sum(laps) * 0.99
    shares = [p["share"] for p in r["phases"].values()]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9
    for p in r["phases"].values():
        assert 0 <= p["min_ms"] <= p["median_ms"] <= p["p95_ms"] <= p["max_ms"] <= r["max_ms"]
    assert "step" in r["phase_table"]


def test_cpu_measures_eager_and_bf16_and_skips_the_cuda_variants(tiny_run):
    result, _ = tiny_run
    variants = result["variants"]
    assert list(variants) == list(bench_train.VARIANTS)
    for name in ("graph-attack", "graph-step", "tf32"):
        assert variants[name] == {"status": "skipped: needs CUDA"}
    eager, bf16 = variants["eager"], variants["bf16"]
    for r in (eager, bf16):
        check_measured(r, steps=2)
        assert set(r["phases"]) == EAGER_PHASES
        assert (r["cuda_graph"], r["graph_mode"], r["tf32"]) == ("off", "off", False)
        assert "cuda_graph_choice" not in r  # no choice to make on the CPU
    assert (eager["amp"], bf16["amp"]) == ("off", "bf16")
    assert eager["vs_eager"] == 1.0
    assert bf16["vs_eager"] == pytest.approx(eager["ms_per_step"] / bf16["ms_per_step"])


def test_memory_variants_report_their_share_of_the_step(tiny_run):
    result, table = tiny_run
    for name in ("replay", "pgi"):
        r = result["variants"][name]
        check_measured(r, steps=2)
        assert {"memory_gather", "memory_scatter"} <= set(r["phases"])
        shares = sum(r["phases"][p]["share"] for p in ("memory_gather", "memory_scatter"))
        assert r["memory_share"] == pytest.approx(shares) and 0 < r["memory_share"] < 1
        assert r["memory_ms_per_step"] > 0
        assert f"{name}: memory (gather, scatter, bookkeeping)" in table
    assert "memory_share" not in result["variants"]["eager"]


def test_json_records_the_workload_and_the_machine(tiny_run):
    result, _ = tiny_run
    assert (result["benchmark"], result["workload"]) == ("train-step", "madry-mnist")
    cfg = result["config"]
    assert (cfg["steps"], cfg["warmup"], cfg["batch_size"], cfg["attack_steps"]) == (2, 1, 4, 2)
    assert cfg["image_shape"] == [1, 8, 8]
    assert (cfg["device"], cfg["sync"], cfg["model"], cfg["optimizer"]) == (
        "cpu", "none", "madry-cnn", "adam")  # fmt: skip
    assert (cfg["eps"], cfg["alpha"], cfg["lr"]) == (0.3, 0.01, 1e-4)
    # The machine as the attack benchmark records it.
    assert set(result["machine"]) == set(bench._machine(torch.device("cpu")))
    for key in ("cpu", "torch", "extension_info", "date"):
        assert result["machine"][key]


def test_table_shows_every_variant(tiny_run):
    result, table = tiny_run
    assert "madry-cnn on 1x8x8 synthetic images, batch 4, PGD-2" in table
    for name in ("graph-attack", "graph-step", "tf32"):
        assert f"{name}: skipped: needs CUDA" in table
    lines = table.splitlines()
    for name in ("eager", "bf16"):
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{result['variants'][name]['median_ms']:.3f}" in row
        assert f"{result['variants'][name]['vs_eager']:.2f}x" in row
    with_attack = [r for r in result["variants"].values() if "attack" in r.get("phases", {})]
    assert sum(line.startswith("  attack ") for line in lines) == len(with_attack) == 4


def test_workload_overrides_reach_the_trainer(monkeypatch):
    seen = []

    def fake_measure(config, train_set, test_set, device, warmup, steps):
        seen.append((config, train_set.images.shape))
        return {"graph_mode": "off", "ms_per_step": 1.0}

    monkeypatch.setattr(bench_train, "_measure", fake_measure)
    bench_train.run_train_bench(variants=["bf16"], steps=30, warmup=3, batch_size=6,
                                image_size=12, attack_steps=3, seed=4, quiet=True)  # fmt: skip
    ((config, shape),) = seen
    assert (config.batch_size, config.attack_steps, config.image_size, config.seed) == (6, 3, 12, 4)
    assert (config.amp, config.cuda_graph, config.sync, config.lr_schedule) == (
        "bf16", "off", "none", "constant")  # fmt: skip
    # Whole batches of images, enough epochs for every step.
    assert shape == (6 * bench_train.BATCHES_PER_EPOCH, 1, 12, 12)
    assert config.epochs * bench_train.BATCHES_PER_EPOCH >= 33 and config.max_steps == 33


def test_variants_run_in_table_order_once_each():
    assert bench_train._variant_names(["tf32", "eager", "tf32"]) == ["eager", "tf32"]
    assert bench_train._variant_names(None) == list(bench_train.VARIANTS)


def test_bf16_and_tf32_run_on_the_faster_graph_mode():
    cuda = torch.device("cuda")  # a device object only: nothing runs
    ok = {"status": "ok"}
    assert bench_train._graph_mode_for(torch.device("cpu"), {}) == ("off", None)
    results = {
        "graph-attack": {**ok, "ms_per_step": 12.8},
        "graph-step": {**ok, "ms_per_step": 9.9},
    }
    mode, why = bench_train._graph_mode_for(cuda, results)
    assert mode == "step" and "faster of ['graph-attack', 'graph-step']" in why
    results["graph-attack"]["ms_per_step"] = 8.0
    assert bench_train._graph_mode_for(cuda, results)[0] == "attack"
    only_attack = {"graph-attack": {**ok, "ms_per_step": 12.8}}
    assert bench_train._graph_mode_for(cuda, only_attack)[0] == "attack"
    mode, why = bench_train._graph_mode_for(cuda, {"graph-step": {"status": "skipped: x"}})
    assert mode == bench_train.DEFAULT_GRAPH and "no graph variant measured" in why


def gpu_like_result() -> dict:
    def measured(name, graph, amp, tf32, ms, phases, **extra):
        return {"status": "ok", "cuda_graph": graph, "amp": amp, "tf32": tf32,
                "graph_mode": graph, "ms_per_step": ms, "median_ms": ms, "p95_ms": ms * 1.1,
                "projected_minutes_100k": ms * 100_000 / 60_000, "notes": [],
                "phases": {p: {"median_ms": ms / len(phases), "p95_ms": ms, "share": 0.5}
                           for p in phases}, **extra}  # fmt: skip

    return {
        "workload": "madry-mnist",
        "config": dict(device="cuda", steps=50, warmup=5, image_shape=[1, 28, 28], batch_size=50,
                       attack_steps=40, eps=0.3, alpha=0.01, optimizer="adam", lr=1e-4,
                       model="madry-cnn", projected_steps=100_000),  # fmt: skip
        "machine": {"cpu": "some CPU", "gpu": "some GPU"},
        "variants": {
            "graph-attack": measured("graph-attack", "attack", "off", False, 12.8, EAGER_PHASES),
            "graph-step": measured("graph-step", "step", "off", False, 9.9, ["data", "captured"]),
            "bf16": measured("bf16", "step", "bf16", False, 8.1, ["data", "captured"],
                             cuda_graph_choice="'step': faster of ['graph-attack', 'graph-step']"),
            "tf32": {"status": "skipped: needs CUDA"},
        },
    }  # fmt: skip


def test_table_without_eager_and_with_the_step_graph():
    table = bench_train.format_train_table(gpu_like_result())
    lines = table.splitlines()
    assert "cuda (some CPU, some GPU)" in lines[0]
    row = next(line for line in lines if line.startswith("graph-step "))
    assert row.split()[1:5] == ["step", "off", "off", "9.900"]
    assert row.split()[6] == "-"  # no eager measured: no ratio
    assert "tf32: skipped: needs CUDA" in lines
    assert "bf16 runs on cuda graph 'step': faster of ['graph-attack', 'graph-step']" in lines
    assert any(line.startswith("graph-step: captured = attack + forward") for line in lines)
    assert sum(line.startswith("  captured ") for line in lines) == 2


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(workload="imagenet"), ValueError, "workload must be one of madry-mnist"),
        (dict(variants=["eager", "fast"]), ValueError, "got unknown ['fast']"),
        (dict(variants=[]), ValueError, "variants must name at least one"),
        (dict(variants="eager"), TypeError, "variants must be a sequence of names"),
        (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
        (dict(steps=2.0), TypeError, "steps must be an int, got float"),
        (dict(warmup=-1), ValueError, "warmup must be >= 0, got -1"),
        (dict(batch_size=True), TypeError, "batch_size must be an int, got bool"),
        (dict(image_size=0), ValueError, "image_size must be >= 1, got 0"),
        (dict(device="cuda:x"), ValueError, "device must be cpu, cuda or cuda:N"),
        (dict(json_path="/proc/version"), ValueError, "json_path '/proc/version' cannot be"),
    ],
)
def test_bad_arguments_fail_before_measuring(kwargs, error, words, monkeypatch):
    def measured(*args, **kwargs):
        raise AssertionError("a variant was measured despite a bad argument")

    monkeypatch.setattr(bench_train, "_measure", measured)
    with pytest.raises(error) as info:
        bench_train.run_train_bench(quiet=True, **kwargs)
    assert words in str(info.value)


def test_cuda_device_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
        bench_train.run_train_bench(device="cuda", quiet=True)


@needs_cuda
@pytest.mark.cuda
def test_every_variant_on_cuda():
    result = bench_train.run_train_bench(device="cuda", steps=3, warmup=2, batch_size=4,
                                         image_size=8, attack_steps=2, quiet=True)  # fmt: skip
    v = result["variants"]
    assert all(r["status"] == "ok" for r in v.values()), v
    for r in v.values():
        check_measured(r, steps=3)
        assert r["notes"] == []
    assert result["config"]["sync"] == "events"
    assert result["machine"]["gpu"] == torch.cuda.get_device_name()
    assert "gpu_driver" in result["machine"]
    assert [v[n]["graph_mode"] for n in ("eager", "graph-attack", "graph-step")] == [
        "off", "attack", "step"]  # fmt: skip
    assert set(v["eager"]["phases"]) == set(v["graph-attack"]["phases"]) == EAGER_PHASES
    assert set(v["graph-step"]["phases"]) == {"data", "captured"}
    faster = min(("graph-attack", "graph-step"), key=lambda n: v[n]["ms_per_step"])
    for name in ("bf16", "tf32"):
        assert v[name]["graph_mode"] == v[faster]["graph_mode"]
        assert v[name]["cuda_graph_choice"].startswith(f"{v[faster]['graph_mode']!r}: faster")
    assert (v["bf16"]["amp"], v["tf32"]["tf32"]) == ("bf16", True)
    assert all(math.isfinite(r["vs_eager"]) and r["vs_eager"] > 0 for r in v.values())


def test_cifar_preact_workload_trains_the_recipe(tmp_path):
    path = tmp_path / "preact.json"
    argv = ["bench", "--train", "--workload", "cifar-preact", "--steps", "1", "--warmup", "1",
            "--batch-size", "2", "--attack-steps", "1", "--variants", "eager", "--quiet",
            "--json", str(path)]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(path.read_text())
    cfg = result["config"]
    assert (cfg["model"], cfg["optimizer"], tuple(cfg["image_shape"])) == (
        "preact-resnet18", "sgd", (3, 32, 32))  # fmt: skip
    check_measured(result["variants"]["eager"], steps=1)
    spec = bench_train.WORKLOADS["cifar-preact"]["config"]
    assert (spec["batch_size"], spec["attack_steps"]) == (128, 10)
