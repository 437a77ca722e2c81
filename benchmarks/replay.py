"""Attacking less: replay memory and free adversarial training against full PGD, measured.

Trains the default ``fastpgd train`` configuration (8x8 digits: batch 50, Adam 1e-3, eps 0.2,
alpha 0.05, 30 epochs; see ``fastpgd.trainer.DATASET_DEFAULTS``) four ways, with the same seed:

============  =====================================================================
``full``      PGD with the default 7 steps from a random start (the reference)
``replay``    ``--replay --replay-steps 2``: 2 steps from the example's perturbation of the
              previous epoch (the first epoch: the full 7-step attack)
``free``      ``--free-replays 4``: free adversarial training (Shafahi et al., NeurIPS 2019),
              ceil(30 / 4) = 8 passes, each batch trained 4 times
``pgd-2``     PGD with 2 steps from a random start, no memory (what replay adds to)
============  =====================================================================

All are evaluated alike: the trainer's strong attack (14 steps of 0.05, 3 restarts) on the 360
test digits. Training time is the sum of the ``step`` laps (evaluation excluded); wall time
includes the final evaluation. The configurations run back to back per seed, one torch thread.

Writes ``benchmarks/results/replay-<date>.{json,md,png}`` (or ``--json PATH``)::

    python benchmarks/replay.py [--seeds 0 1] [--epochs N] [--free-m 4] [--json PATH]
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

EVAL_STEPS = 14  # the default evaluation of the 7-step run, kept for every configuration


def _configs(replay_steps: int, free_m: int) -> dict[str, dict]:
    return {
        "full": {},
        f"replay-{replay_steps}": dict(replay=True, replay_steps=replay_steps),
        f"free-{free_m}": dict(free_replays=free_m),
        f"pgd-{replay_steps}": dict(attack_steps=replay_steps),
    }


def _run(name: str, overrides: dict, seed: int, epochs: int | None) -> dict:
    from fastpgd.trainer import train

    log = io.StringIO()
    t0 = time.perf_counter()
    result = train(seed=seed, epochs=epochs, eval_steps=EVAL_STEPS, quiet=True, out=log,
                   **overrides)  # fmt: skip
    wall = time.perf_counter() - t0
    timers = result.timers
    entry = {
        "config": name,
        "overrides": overrides,
        "seed": seed,
        "clean_acc": result.clean_acc,
        "pgd_acc": result.pgd_acc,
        "steps": result.steps,
        "train_s": sum(timers.laps("step")),
        "attack_s": sum(timers.laps("attack")) if "attack" in timers.names() else 0.0,
        "wall_s": wall,
    }
    print(
        f"seed {seed} {name:<10} clean {entry['clean_acc']:6.1%}  PGD {entry['pgd_acc']:6.1%}"
        f"  train {entry['train_s']:6.1f} s  wall {wall:6.1f} s",
        flush=True,
    )
    return entry


def _table(runs: list[dict], names: list[str]) -> list[dict]:
    full = [r for r in runs if r["config"] == "full"]
    full_time = statistics.fmean(r["train_s"] for r in full)
    full_pgd = statistics.fmean(r["pgd_acc"] for r in full)
    rows = []
    for name in names:
        rs = [r for r in runs if r["config"] == name]
        row = {"config": name, "seeds": [r["seed"] for r in rs]}
        for key in ("train_s", "wall_s", "clean_acc", "pgd_acc"):
            row[key] = statistics.fmean(r[key] for r in rs)
            row[key + "_all"] = [r[key] for r in rs]
        row["time_vs_full"] = row["train_s"] / full_time
        row["pgd_vs_full_points"] = (row["pgd_acc"] - full_pgd) * 100
        rows.append(row)
    return rows


def _markdown(rows: list[dict], machine: dict, settings: str) -> str:
    lines = [
        f"Digits, default `fastpgd train` settings ({settings}); {machine['cpu']}, "
        f"{machine['cpus']} cores, {machine['torch_threads']} torch thread, torch "
        f"{machine['torch']}, {machine['date']}. Mean over seeds {rows[0]['seeds']}.",
        "",
        "| configuration | train time (s) | vs full | clean acc | PGD acc | PGD vs full |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_seed = " / ".join(f"{v:.1%}" for v in r["pgd_acc_all"])
        lines.append(
            f"| {r['config']} | {r['train_s']:.1f} | {r['time_vs_full']:.0%} | "
            f"{r['clean_acc']:.1%} | {r['pgd_acc']:.1%} ({per_seed}) | "
            f"{r['pgd_vs_full_points']:+.1f} pts |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(rows):
        rs = [x for x in runs if x["config"] == r["config"]]
        color = f"C{i}"
        ax.scatter([x["train_s"] for x in rs], [x["pgd_acc"] * 100 for x in rs], color=color,
                   alpha=0.4, s=20)  # fmt: skip
        ax.scatter([r["train_s"]], [r["pgd_acc"] * 100], color=color, s=70, label=r["config"],
                   edgecolor="black")  # fmt: skip
    ax.set_xlabel("training time (s, sum of step laps)")
    ax.set_ylabel("PGD accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="override the default 30 epochs")
    parser.add_argument("--replay-steps", type=int, default=2)
    parser.add_argument(
        "--free-m",
        type=int,
        default=4,
        help="free replays per batch (Shafahi et al. find 4-10 works; default 4)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where the JSON goes (the .md and .png "
        "go next to it); default benchmarks/results/replay-<date>.json",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import fastpgd
    from fastpgd.bench import cpu_model
    from fastpgd.trainer import TrainConfig

    today = datetime.date.today().isoformat()
    out = Path(args.json) if args.json else (
        Path(__file__).parent / "results" / f"replay-{today}.json")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = _configs(args.replay_steps, args.free_m)
    config = TrainConfig(epochs=args.epochs).resolved()
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": args.threads,
               "torch": torch.__version__, "python": sys.version.split()[0],
               "platform": platform.platform(),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "load_avg_at_start": os.getloadavg()}  # fmt: skip

    runs = []
    for seed in args.seeds:
        for name, overrides in configs.items():
            runs.append(_run(name, overrides, seed, args.epochs))
    rows = _table(runs, list(configs))
    machine["load_avg_at_end"] = os.getloadavg()
    settings = (
        f"{config.epochs} epochs, batch {config.batch_size}, eps {config.eps:g}, alpha "
        f"{config.alpha:g}, full = {config.attack_steps} steps; evaluation PGD "
        f"{EVAL_STEPS} steps x {config.eval_restarts} restarts on the 360 test digits"
    )
    md = _markdown(rows, machine, settings)
    summary = {"machine": machine, "fastpgd": fastpgd.extension_info(), "settings": settings,
               "rows": rows, "runs": runs}  # fmt: skip
    out.write_text(json.dumps(summary, indent=2, default=str))
    out.with_suffix(".md").write_text(md)
    try:
        _plot(
            rows,
            runs,
            out.with_suffix(".png"),
            f"digits, {machine['cpu']}, 1 thread, seeds {args.seeds}",
        )
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(md)
    print(f"written: {out} (.md, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
