"""``fastpgd bench --train``: milliseconds per adversarial training step, measured by the trainer.

Each variant is one :class:`~fastpgd.trainer.Trainer` on the same workload, data and seed: it
trains ``warmup`` untimed steps, then ``steps`` measured ones (``Trainer.fit(evaluate=False)``
both times), and its own :class:`~fastpgd.timers.Timers` give the step time and the phases
(CUDA events on CUDA, so the measurement does not stall the loop; the wall clock on the CPU).
Variants:

- ``eager``: ``cuda_graph="off"``; phases ``data``, ``setup``, ``attack``, ``forward``,
  ``backward``, ``update``.
- ``graph-attack``: ``cuda_graph="attack"``: the attack replays a captured CUDA graph of its
  step (CUDA only).
- ``graph-step``: ``cuda_graph="step"``: the whole step (attack, forward, backward, Adam) is one
  CUDA graph; phases ``data`` and ``captured``, which cannot be split further (CUDA only).
- ``bf16``: ``amp="bf16"`` on the faster of ``graph-attack`` and ``graph-step`` in this run
  (``step`` when this run measured neither; eager on the CPU).
- ``tf32``: ``tf32=True`` on the same graph mode (CUDA only).
- ``replay``, ``pgi``: the memory methods (``--method replay``, ``--method pgi``) on the default
  graph mode (attack graphs on CUDA, eager on the CPU), to measure what their per-example memory
  costs beside the step: the phases ``memory_gather`` (the fresh flags, the gather, the mix of
  random and stored starts) and ``memory_scatter`` (the write-back), reported as
  ``memory_share``, their share of the step's time (the target is 5% or less). The replay
  memory is written in the first epoch (``BATCHES_PER_EPOCH`` steps) and read after it; the
  measured steps hold both kinds when warm-up and steps pass an epoch boundary.

Variants the device cannot run are reported as ``skipped: needs CUDA``. They run one after the
other in the order above (the graph modes first: ``bf16`` and ``tf32`` build on the faster). The
first step of a graph variant captures its graphs: keep ``warmup`` at 1 or more on CUDA.

The projected time of 100,000 steps scales the wall clock of the measured steps, which also
counts the loop's work between steps that a real run pays too. Inputs are synthetic
(:func:`fastpgd.data.synthetic`): the time of a step does not depend on the pixel values.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Sequence

import torch

from fastpgd._paths import check_writable
from fastpgd.bench import _machine, check_device
from fastpgd.trainer.config import DATASET_DEFAULTS, SGD_MOMENTUM

__all__ = ["VARIANTS", "WORKLOADS", "format_train_table", "run_train_bench"]

# The TrainConfig fields that set the cost of a step, taken from a dataset's training recipe (not
# its epochs, evaluation or learning-rate schedule: a benchmark runs a few steps at one rate).
_STEP_FIELDS = ("model", "batch_size", "attack_steps", "eps", "alpha", "optimizer", "lr",
                "weight_decay", "augment")  # fmt: skip


def _step_recipe(dataset: str) -> dict:
    recipe = DATASET_DEFAULTS[dataset]
    return {name: recipe[name] for name in _STEP_FIELDS}


#: What each workload trains: the images (``channels`` x ``image_size`` x ``image_size``) and the
#: :class:`~fastpgd.trainer.TrainConfig` fields that set the cost of a step. Adding a workload is
#: adding an entry.
WORKLOADS: dict[str, dict] = {
    # The reference workload of the design notes: Madry et al.'s MNIST setting (their CNN, batch
    # 50, PGD-40 with eps 0.3 and step 0.01, Adam 1e-4), as `fastpgd train --dataset mnist`.
    "madry-mnist": dict(channels=1, image_size=28, config=_step_recipe("mnist")),
    # Rice et al.'s CIFAR-10 recipe, as `fastpgd train --dataset cifar10`: PreAct ResNet-18,
    # batch 128, PGD-10 at 8/255 with steps of 2/255, SGD with momentum and weight decay, crops
    # and flips on the device.
    "cifar-preact": dict(
        channels=3,
        image_size=32,
        config=_step_recipe("cifar10") | dict(momentum=SGD_MOMENTUM),
    ),
}

# Asks for the faster graph mode of this run (see _graph_mode_for).
FASTEST_GRAPH = "fastest"
#: Each variant's :class:`~fastpgd.trainer.TrainConfig` fields, in the order they run.
VARIANTS: dict[str, dict] = {
    "eager": dict(cuda_graph="off"),
    "graph-attack": dict(cuda_graph="attack"),
    "graph-step": dict(cuda_graph="step"),
    "bf16": dict(cuda_graph=FASTEST_GRAPH, amp="bf16"),
    "tf32": dict(cuda_graph=FASTEST_GRAPH, tf32=True),
    "replay": dict(cuda_graph="auto", method="replay"),
    "pgi": dict(cuda_graph="auto", method="pgi"),
}
MEMORY_PHASES = ("memory_gather", "memory_scatter")
MEMORY_TARGET = 0.05  # the memory's share of a step that the design aims under
CUDA_ONLY = ("graph-attack", "graph-step", "tf32")
_GRAPH_VARIANTS = {"graph-attack": "attack", "graph-step": "step"}
# When this run measured neither graph mode: the whole step in one graph, the faster of the two
# for the Madry CNN at batch 50 on an H200 (design notes, 2026-11-30).
DEFAULT_GRAPH = "step"
PROJECTED_STEPS = 100_000
# Training images per epoch, in batches: an epoch boundary (a new shuffled order) every this
# many steps, without holding warmup + steps batches of images.
BATCHES_PER_EPOCH = 20
# Every variant: natural data order, no evaluation, no reports during the run, and a constant
# learning rate (a schedule that changes it would re-capture the step graph mid-measurement,
# which a long run does only twice in all).
_COMMON = dict(dataset="synthetic", attack="fused", lr_schedule="constant", eval_every=0,
               report_every=0, quiet=True, guard=0)  # fmt: skip


def _variant_names(variants) -> list[str]:
    if variants is None:
        return list(VARIANTS)
    if isinstance(variants, str) or not isinstance(variants, Sequence):
        raise TypeError(f"variants must be a sequence of names, got {type(variants).__name__}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants must be among {', '.join(VARIANTS)}; got unknown {unknown}")
    if not variants:
        raise ValueError(f"variants must name at least one of {', '.join(VARIANTS)}")
    return [v for v in VARIANTS if v in variants]


def _graph_mode_for(device: torch.device, results: dict) -> tuple[str, str | None]:
    """The ``cuda_graph`` setting of a variant that runs on the fastest graph mode, and why
    (``None`` off CUDA, where there is no choice)."""
    if device.type != "cuda":
        return "off", None
    measured = {
        name: results[name]["ms_per_step"]
        for name in _GRAPH_VARIANTS
        if results.get(name, {}).get("status") == "ok"
    }
    if not measured:
        return DEFAULT_GRAPH, f"{DEFAULT_GRAPH!r}: no graph variant measured in this run"
    fastest = min(measured, key=measured.get)
    return _GRAPH_VARIANTS[fastest], f"{_GRAPH_VARIANTS[fastest]!r}: faster of {sorted(measured)}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fit_to(trainer, max_steps: int) -> None:
    """Train until ``max_steps`` steps in all (the trainer keeps its weights, optimizer state,
    graphs and data position between calls)."""
    # fit() reads its stopping point from the config: a copy with the new one.
    trainer.config = dataclasses.replace(trainer.config, max_steps=max_steps)
    if trainer.fit(evaluate=False).interrupted:
        raise KeyboardInterrupt


def _ms(stats: dict) -> dict:
    return {f"{key}_ms": stats[key] * 1e3 for key in ("median", "p95", "mean", "min", "max")}


def _measure(config, train_set, test_set, device: torch.device, warmup: int, steps: int) -> dict:
    """One variant: a trainer of ``config``, its warm-up, then its measured steps' figures."""
    from fastpgd.trainer import Trainer

    trainer = Trainer(config, train_set=train_set, test_set=test_set, out=io.StringIO())
    if warmup:
        _fit_to(trainer, warmup)
    _sync(device)
    trainer.timers.reset()  # the measured steps only: no capture, no first-call setup
    start = time.perf_counter()
    _fit_to(trainer, warmup + steps)
    _sync(device)
    wall = time.perf_counter() - start
    timers = trainer.timers
    summary = timers.summary(parent="step")
    parents = timers.parents()
    step = summary["step"]
    memory = [summary[name] for name in MEMORY_PHASES if name in summary]
    extra = {}
    if memory:
        # Shares of the step's total time: a per-step overhead as a ratio, whatever the mix of
        # fresh and warm steps.
        extra = {"memory_share": sum(m["share"] for m in memory),
                 "memory_ms_per_step": sum(m["total"] for m in memory) / steps * 1e3}  # fmt: skip
    return {
        **extra,
        "graph_mode": trainer.graph_mode,
        "ms_per_step": step["median"] * 1e3,
        **_ms(step),
        "step_laps_ms": [t * 1e3 for t in timers.laps("step")],
        "phases": {
            name: {**_ms(stats), "share": stats["share"]}
            for name, stats in summary.items()
            if parents[name] == "step"
        },
        "wall_s": wall,
        "wall_ms_per_step": wall / steps * 1e3,
        "projected_minutes_100k": wall / steps * PROJECTED_STEPS / 60,
        "notes": list(trainer.notes),
        "phase_table": trainer.report(),
    }


def run_train_bench(
    workload: str = "madry-mnist",
    *,
    device: str = "cpu",
    variants: Sequence[str] | None = None,
    steps: int = 50,
    warmup: int = 5,
    batch_size: int | None = None,
    image_size: int | None = None,
    attack_steps: int | None = None,
    seed: int = 0,
    json_path: str | None = None,
    quiet: bool = False,
) -> dict:
    """Time the adversarial training step of each variant on one workload.

    Args:
        workload (str): a key of :data:`WORKLOADS`. Default: ``"madry-mnist"`` (Madry CNN,
            1x28x28, batch 50, PGD-40, Adam).
        device (str): ``"cpu"``, ``"cuda"``, ``"cuda:N"``. Default: ``"cpu"``.
        variants (sequence of str, optional): a subset of :data:`VARIANTS`; they run in the
            order of :data:`VARIANTS` whatever the order given. Default: all.
        steps (int): measured training steps per variant. Default: 50.
        warmup (int): untimed steps before them (graph capture, lazy initialisation).
            Default: 5.
        batch_size (int, optional): overrides the workload's batch size.
        image_size (int, optional): overrides the workload's image side (to keep a run short:
            tests use 8).
        attack_steps (int, optional): overrides the workload's PGD steps.
        seed (int): seeds the data, the initial weights and the attack. Default: 0.
        json_path (str, optional): write the result there as JSON (a file in an existing
            directory; checked before anything is measured).
        quiet (bool): no table, no progress lines. Default: ``False``.

    Returns:
        dict: ``benchmark`` (``"train-step"``), ``workload``, ``config``, ``machine`` (as
        :func:`fastpgd.bench.run_bench` records it) and ``variants``: per variant ``status``
        (``"ok"`` or ``"skipped: ..."``) and, when measured, ``cuda_graph``, ``amp``, ``tf32``
        (the settings asked for), ``graph_mode`` (what the trainer captured), ``ms_per_step``
        (the median step), ``median_ms``, ``p95_ms``, ``mean_ms``, ``min_ms``, ``max_ms``,
        ``step_laps_ms``, ``phases`` (per phase inside the step: the same statistics and
        ``share`` of the step's total), ``wall_s``, ``wall_ms_per_step``,
        ``projected_minutes_100k``, ``vs_eager`` (eager's median step / this one's, where eager
        ran), ``notes`` (the trainer's), ``phase_table`` (the trainer's report); for the memory
        variants also ``memory_share`` (the memory phases' share of the step's time) and
        ``memory_ms_per_step``.

    Raises:
        TypeError, ValueError: naming the argument: an unknown workload or variant, a count
            out of range, a device this machine does not have, a path that cannot be written,
            a setting the trainer refuses (an image too small for the model).

    Examples::

        >>> r = run_train_bench(variants=["eager"], steps=2, warmup=1, batch_size=4,
        ...                     image_size=8, attack_steps=2, quiet=True)
        >>> r["variants"]["eager"]["status"], len(r["variants"]["eager"]["step_laps_ms"])
        ('ok', 2)
    """
    from fastpgd.data import synthetic
    from fastpgd.trainer import TrainConfig
    from fastpgd.trainer.config import _check_int

    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}; got {workload!r}")
    names = _variant_names(variants)
    _check_int("steps", steps, 1)
    _check_int("warmup", warmup, 0)
    _check_int("seed", seed, 0)
    for name, value in (("batch_size", batch_size), ("image_size", image_size),
                        ("attack_steps", attack_steps)):  # fmt: skip
        if value is not None:
            _check_int(name, value, 1)
    dev = check_device(device)
    if json_path:
        check_writable("json_path", json_path)

    spec = WORKLOADS[workload]
    settings = dict(spec["config"])
    if batch_size is not None:
        settings["batch_size"] = batch_size
    if attack_steps is not None:
        settings["attack_steps"] = attack_steps
    side = spec["image_size"] if image_size is None else image_size
    total = warmup + steps
    per_epoch = min(total, BATCHES_PER_EPOCH)
    images = dict(image_size=side, channels=spec["channels"], seed=seed)
    train_set = synthetic(settings["batch_size"] * per_epoch, **images)
    test_set = synthetic(1, **images)  # the trainer wants one; the benchmark never evaluates
    base = TrainConfig(
        **_COMMON, **settings, image_size=side, synthetic_size=len(train_set),
        epochs=math.ceil(total / per_epoch), max_steps=total, seed=seed, device=str(dev),
        sync="events" if dev.type == "cuda" else "none",
    )  # fmt: skip
    base.resolved()  # a setting TrainConfig refuses fails here, before any variant runs

    results: dict[str, dict] = {}
    for name in names:
        if name in CUDA_ONLY and dev.type != "cuda":
            results[name] = {"status": "skipped: needs CUDA"}
            continue
        asked = dict(VARIANTS[name])
        why = None
        if asked["cuda_graph"] == FASTEST_GRAPH:
            asked["cuda_graph"], why = _graph_mode_for(dev, results)
        if not quiet:
            print(f"bench --train: {name}: {warmup} warm-up + {steps} measured steps",
                  file=sys.stderr)  # fmt: skip
        config = dataclasses.replace(base, **asked)
        measured = _measure(config, train_set, test_set, dev, warmup, steps)
        results[name] = {
            "status": "ok",
            "cuda_graph": config.cuda_graph,
            "amp": config.amp,
            "tf32": config.tf32,
            **({"cuda_graph_choice": why} if why else {}),
            **measured,
        }
    eager = results.get("eager", {}).get("ms_per_step")
    if eager:
        for r in results.values():
            if r["status"] == "ok":
                r["vs_eager"] = eager / r["ms_per_step"]

    result = {
        "benchmark": "train-step",
        "workload": workload,
        "config": {
            "device": str(dev),
            "steps": steps,
            "warmup": warmup,
            "seed": seed,
            "sync": base.sync,
            "image_shape": [spec["channels"], side, side],
            **settings,
            **{k: v for k, v in _COMMON.items() if k in ("attack", "lr_schedule")},
            "training_images": len(train_set),
            "inputs": "synthetic: class templates plus uniform noise (fastpgd.data.synthetic)",
            "projected_steps": PROJECTED_STEPS,
        },
        "machine": _machine(dev),
        "variants": results,
    }
    if not quiet:
        print(format_train_table(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def describe_workload(config: dict) -> str:
    """One line: the model, images, batch, attack and optimizer of a result's ``config``."""
    c, side = config["image_shape"][0], config["image_shape"][1]
    return (
        f"{config['model']} on {c}x{side}x{side} synthetic images, batch {config['batch_size']}, "
        f"PGD-{config['attack_steps']} (eps {config['eps']:g}, step {config['alpha']:g}), "
        f"{config['optimizer']} lr {config['lr']:g}"
    )


def format_train_table(result: dict) -> str:
    """The training-step benchmark as a text table: per variant its median and p95 step, the
    phases inside it, the ratio to eager and the projected minutes of 100,000 steps."""
    from fastpgd._table import format_table

    cfg, machine = result["config"], result["machine"]
    where = machine["cpu"] + (f", {machine['gpu']}" if "gpu" in machine else "")
    title = (
        f"fastpgd bench --train {result['workload']}: {describe_workload(cfg)}; {cfg['device']} "
        f"({where}); {cfg['steps']} steps after {cfg['warmup']} warm-up"
    )
    header = ["variant", "cuda graph", "amp", "tf32", "median ms", "p95 ms", "share",
              "vs eager", f"min / {cfg['projected_steps'] // 1000}k steps"]  # fmt: skip
    rows, skipped, notes = [], [], []
    for name, r in result["variants"].items():
        if r["status"] != "ok":
            skipped.append(f"{name}: {r['status']}")
            continue
        vs = f"{r['vs_eager']:.2f}x" if "vs_eager" in r else "-"
        rows.append([name, r["graph_mode"], r["amp"], "on" if r["tf32"] else "off",
                     f"{r['median_ms']:.3f}", f"{r['p95_ms']:.3f}", "", vs,
                     f"{r['projected_minutes_100k']:,.1f}"])  # fmt: skip
        for phase, p in r["phases"].items():
            share = "nan" if math.isnan(p["share"]) else f"{p['share'] * 100:.1f}%"
            rows.append([f"  {phase}", "", "", "", f"{p['median_ms']:.3f}", f"{p['p95_ms']:.3f}",
                         share, "", ""])  # fmt: skip
        if "memory_share" in r:
            verdict = "within" if r["memory_share"] <= MEMORY_TARGET else "over"
            notes.append(f"{name}: memory (gather, scatter, bookkeeping) "
                         f"{r['memory_ms_per_step']:.3f} ms per step = {r['memory_share']:.1%} "
                         f"of the step ({verdict} the {MEMORY_TARGET:.0%} target)")  # fmt: skip
        if "cuda_graph_choice" in r:
            notes.append(f"{name} runs on cuda graph {r['cuda_graph_choice']}")
        notes += [f"{name}: {note}" for note in r["notes"]]
        if r["graph_mode"] == "step":
            notes.append(f"{name}: captured = attack + forward + backward + update, replayed as "
                         "one CUDA graph (not timed apart)")  # fmt: skip
    lines = [format_table(header, rows, title=title), *skipped, *notes]
    lines.append(
        "vs eager: eager's median step / the variant's; min / 100k steps: wall clock of the "
        "measured steps, scaled"
    )
    return "\n".join(lines)
