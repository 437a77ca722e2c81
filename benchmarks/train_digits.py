"""The digits acceptance run: robustness against natural training, and attack time per step.

Trains the default ``fastpgd train`` configuration (8x8 digits, see
``fastpgd.trainer.DATASET_DEFAULTS``) three times with the same seed and budget:

1. ``--attack fused`` (fastpgd's attack) and a naturally trained twin (``--attack none``);
2. ``--attack reference`` (the pure-PyTorch attack).

and writes ``benchmarks/results/train_digits.json`` (and prints a summary): clean and PGD
accuracy at the training eps, the PGD gain over natural training, wall time, and the median
and mean ``attack`` and ``step`` laps of each run.

Usage::

    python benchmarks/train_digits.py [--threads 1] [--epochs N] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def _laps(timers, name):
    laps = timers.laps(name) if name in timers.names() else []
    if not laps:
        return None
    return {"count": len(laps), "median_ms": statistics.median(laps) * 1e3,
            "mean_ms": statistics.fmean(laps) * 1e3}  # fmt: skip


def _run(attack: str, epochs: int | None, compare_natural: bool) -> dict:
    from fastpgd.trainer import train

    log = io.StringIO()
    t0 = time.perf_counter()
    result = train(attack=attack, epochs=epochs, compare_natural=compare_natural, quiet=True,
                   out=log)  # fmt: skip
    wall = time.perf_counter() - t0
    entry = {
        "attack": attack,
        "clean_acc": result.clean_acc,
        "pgd_acc": result.pgd_acc,
        "steps": result.steps,
        "wall_s": wall,
        "attack_lap": _laps(result.timers, "attack"),
        "step_lap": _laps(result.timers, "step"),
        "log": log.getvalue(),
    }
    if result.natural is not None:
        entry["natural"] = {"clean_acc": result.natural.clean_acc,
                            "pgd_acc": result.natural.pgd_acc,
                            "step_lap": _laps(result.natural.timers, "step")}  # fmt: skip
    print(log.getvalue(), flush=True)
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest on a small shared CPU (default: 1)",
    )
    parser.add_argument("--epochs", type=int, help="override the default epochs (for a quick look)")
    day = datetime.date.today().isoformat()
    default_out = Path(__file__).parent / "results" / f"train-digits-cpu-{day}.json"
    parser.add_argument("--out", default=str(default_out))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import fastpgd
    from fastpgd.bench import cpu_model
    from fastpgd.trainer import TrainConfig

    config = TrainConfig(epochs=args.epochs).resolved()
    runs = [_run("fused", args.epochs, compare_natural=True), _run("reference", args.epochs, False)]
    fused, reference = runs
    summary = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },  # fmt: skip
        "fastpgd": fastpgd.extension_info(),
        "config": {
            k: getattr(config, k)
            for k in (
                "dataset",
                "epochs",
                "batch_size",
                "lr",
                "eps",
                "alpha",
                "attack_steps",
                "eval_steps",
                "eval_restarts",
                "seed",
            )
        },  # fmt: skip
        "runs": runs,
        "pgd_gain_points": (fused["pgd_acc"] - fused["natural"]["pgd_acc"]) * 100,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))

    print(
        f"PGD accuracy at eps {config.eps:g}: adversarial (fused) {fused['pgd_acc']:.1%}, "
        f"natural {fused['natural']['pgd_acc']:.1%}: {summary['pgd_gain_points']:+.1f} points"
    )
    for run in runs:
        attack_ms = run["attack_lap"]["median_ms"]
        print(
            f"attack {run['attack']:<9}: attack lap median {attack_ms:.2f} ms"
            f" (step {run['step_lap']['median_ms']:.2f} ms), wall {run['wall_s']:.0f} s"
        )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
