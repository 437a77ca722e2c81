"""Fast adversarial training methods against PGD-k, judged by AutoAttack.

Trains every method of ``fastpgd train --method`` under one recipe on two datasets, with several
seeds, and reports per method: training time as a ratio to PGD-k's (the sum of the trainer's
``step`` laps: evaluation and the overfitting guard excluded), clean accuracy, PGD accuracy,
AutoAttack accuracy (``fastpgd.autoattack``, standard version, Linf), each with its spread over
seeds, and whether the catastrophic-overfitting guard saw a collapse.

=============  ======================================================================
``pgd``        PGD-k (the dataset's k), no weight average: the reference of time
``pgd+ema``    PGD-k with the recipe's weight average (does averaging alone help?)
``fgsm-rs``    Wong et al. 2020, with the recipe
``n-fgsm``     de Jorge et al. 2022
``free``       Shafahi et al. 2019, m = 4
``replay``     PGD warm-started from the replay memory, ``--replay-steps`` steps
``pgi``        FGSM-PGI (Jia et al. 2022)
``trades``     Zhang et al. 2019, beta 6
=============  ======================================================================

The recipe (every configuration but ``pgd``): weight average ``--ema`` (default 0.99: about a
hundred steps, for runs of a few hundred to a few thousand steps), ``--label-smoothing``
(default 0), ``--lr-schedule`` (default cosine). Datasets:

- ``digits``: the 8x8 digits shipped with fastpgd, ``fastpgd train``'s defaults (Madry CNN,
  Adam 1e-3, eps 0.2, PGD-7 of 0.05, 30 epochs); evaluation PGD-14, 3 restarts, 360 test images.
- ``fashion``: a fixed subset of Fashion-MNIST (Debian's ``dataset-fashion-mnist`` files, or
  ``--fashion-dir``): ``--fashion-train`` training and ``--fashion-test`` test images, 28x28,
  eps 0.1, PGD-10 of 0.025 (k = 10 rather than Madry et al.'s 40, to fit a small CPU), Madry CNN,
  Adam 1e-3, ``--fashion-epochs`` epochs; evaluation PGD-20, 3 restarts.

AutoAttack runs on the first ``--aa-limit`` test images; ``--quick`` skips it (PGD evaluation
only), takes one seed and a few epochs: a check that everything runs, not a measurement.

Writes ``benchmarks/results/methods-<date>.{json,md,png}`` (or ``--json PATH``)::

    python benchmarks/methods.py                       # 2 datasets x 8 configurations x 3 seeds
    python benchmarks/methods.py --quick               # minutes: PGD evaluation, one seed
    python benchmarks/methods.py --datasets digits --methods pgd,replay,pgi --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
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

#: Each configuration's :class:`~fastpgd.trainer.TrainConfig` fields; ``recipe`` says whether
#: the recipe's weight average, label smoothing and schedule apply.
CONFIGS: dict[str, dict] = {
    "pgd": dict(method="pgd", recipe=False),
    "pgd+ema": dict(method="pgd", recipe=True),
    "fgsm-rs": dict(method="fgsm-rs", recipe=True),
    "n-fgsm": dict(method="n-fgsm", recipe=True),
    "free": dict(method="free", free_replays=4, recipe=True),
    "replay": dict(method="replay", recipe=True),
    "pgi": dict(method="pgi", recipe=True),
    "trades": dict(method="trades", recipe=True),
}
REFERENCE = "pgd"  # train time ratios and accuracy gaps are taken against it
DATASET_SETTINGS = {
    "digits": dict(dataset="digits", eval_restarts=3),
    "fashion": dict(
        dataset="fashion-mnist",
        eps=0.1,
        alpha=0.025,
        attack_steps=10,
        eval_steps=20,
        eval_restarts=3,
        lr=1e-3,
    ),  # fmt: skip
}
SUBSET_SEED = 0  # the Fashion-MNIST subset is the same for every run


def autoattack_accuracy(model, x, y, *, eps: float, n_classes: int, seed: int,
                        batch_size: int = 500) -> float:  # fmt: skip
    """Robust accuracy of ``model`` on ``(x, y)`` under AutoAttack (standard, Linf).

    The one place the benchmark calls AutoAttack: ``fastpgd.autoattack``, imported here so that
    the rest of the benchmark runs without it.

    Raises:
        RuntimeError: ``fastpgd.autoattack`` is not there (run with ``--quick``, or without
            ``--autoattack``).
    """
    try:
        from fastpgd import autoattack
    except ImportError as exc:
        raise RuntimeError(
            "fastpgd.autoattack is not available in this fastpgd; run with --quick (PGD "
            "evaluation only) or install a fastpgd that has the AutoAttack evaluation"
        ) from exc
    was_training = model.training
    model.eval()
    try:
        result = autoattack(model, x, y, eps=eps, norm="linf", version="standard",
                            n_classes=n_classes, seed=seed, batch_size=batch_size)  # fmt: skip
    finally:
        model.train(was_training)
    return float(result.robust_accuracy)


def fashion_subset(n_train: int, n_test: int, data_dir: str | None):
    """A fixed subset of Fashion-MNIST: ``n_train`` training and ``n_test`` test images, drawn
    by a fixed permutation of each split."""
    from fastpgd.data import ImageDataset, load_dataset

    subsets = []
    for split, n in (("train", n_train), ("test", n_test)):
        ds = load_dataset("fashion-mnist", split, data_dir=data_dir)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
        subsets.append(ImageDataset(ds.images[order].clone(), ds.labels[order].clone(),
                                    scale=ds.scale, num_classes=ds.num_classes,
                                    name=f"fashion-mnist subset {n}"))  # fmt: skip
    return subsets


def run_one(dataset: str, name: str, seed: int, args, data) -> dict:
    """Train one configuration on one seed; return its figures."""
    from fastpgd.trainer import TrainConfig, Trainer

    spec = dict(CONFIGS[name])
    recipe = spec.pop("recipe")
    settings = dict(DATASET_SETTINGS[dataset])
    if dataset == "fashion":
        settings["epochs"] = args.fashion_epochs
    elif args.epochs:
        settings["epochs"] = args.epochs
    if recipe:
        spec.update(ema=args.ema, label_smoothing=args.label_smoothing,
                    lr_schedule=args.lr_schedule)  # fmt: skip
    if spec["method"] == "replay":
        spec["replay_steps"] = args.replay_steps
    if spec["method"] == "pgi" and args.pgi_lambda is not None:
        spec["pgi_lambda"] = args.pgi_lambda
    config = TrainConfig(**settings, **spec, seed=seed, quiet=True)
    train_set, test_set = data
    log = io.StringIO()
    t0 = time.perf_counter()
    trainer = Trainer(config, train_set=train_set, test_set=test_set, out=log)
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.interrupted:
        # A half-trained run would enter the table as NaN accuracies: stop the benchmark.
        raise KeyboardInterrupt(f"{dataset} {name} seed {seed} stopped by a signal")
    c = trainer.config
    entry = {
        "dataset": dataset,
        "config": name,
        "seed": seed,
        "settings": {
            k: v for k, v in dataclasses.asdict(c).items() if k not in ("data_dir", "quiet")
        },  # fmt: skip
        "train_s": sum(result.timers.laps("step")),
        "wall_s": wall,
        "steps": result.steps,
        "clean_acc": result.clean_acc,
        "pgd_acc": result.pgd_acc,
        "collapsed": result.collapse is not None,
        "collapse": result.collapse,
        "aa_acc": None,
    }
    if args.autoattack:
        n = min(args.aa_limit, len(test_set))
        x, y = test_set[list(range(n))]
        entry["aa_acc"] = autoattack_accuracy(
            result.model, x.to(trainer.device), y.to(trainer.device), eps=c.eps,
            n_classes=test_set.num_classes, seed=seed,
        )  # fmt: skip
        entry["aa_images"] = n
    aa = "" if entry["aa_acc"] is None else f"  AA {entry['aa_acc']:6.1%}"
    print(f"{dataset:<8} seed {seed} {name:<8} clean {entry['clean_acc']:6.1%}  PGD "
          f"{entry['pgd_acc']:6.1%}{aa}  train {entry['train_s']:7.1f} s"
          f"{'  COLLAPSED' if entry['collapsed'] else ''}", flush=True)  # fmt: skip
    return entry


def _spread(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "all": values}


def summarize(runs: list[dict]) -> list[dict]:
    """One row per dataset and configuration: means and spreads over seeds, the time ratio and
    the accuracy gaps to PGD-k of the same dataset."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]
        ref = [r for r in mine if r["config"] == REFERENCE]
        ref_time = statistics.fmean(r["train_s"] for r in ref) if ref else None
        ref_pgd = statistics.fmean(r["pgd_acc"] for r in ref) if ref else None
        ref_aa = [r["aa_acc"] for r in ref if r["aa_acc"] is not None]
        ref_aa = statistics.fmean(ref_aa) if ref_aa else None
        for name in dict.fromkeys(r["config"] for r in mine):
            rs = [r for r in mine if r["config"] == name]
            row = {"dataset": dataset, "config": name, "seeds": [r["seed"] for r in rs],
                   "collapsed": sum(r["collapsed"] for r in rs)}  # fmt: skip
            for key in ("train_s", "clean_acc", "pgd_acc"):
                row[key] = _spread([r[key] for r in rs])
            aa = [r["aa_acc"] for r in rs if r["aa_acc"] is not None]
            row["aa_acc"] = _spread(aa) if aa else None
            row["time_vs_pgd"] = row["train_s"]["mean"] / ref_time if ref_time else None
            row["pgd_vs_pgd_points"] = (
                (row["pgd_acc"]["mean"] - ref_pgd) * 100 if ref_pgd is not None else None
            )
            row["aa_vs_pgd_points"] = (
                (row["aa_acc"]["mean"] - ref_aa) * 100 if aa and ref_aa is not None else None
            )
            rows.append(row)
    return rows


def _pct(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.1%} ± {s['sd'] * 100:.1f}"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| dataset | method | train time (s) | vs PGD-k | clean | PGD | AutoAttack | "
             "AA vs PGD-k | collapsed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = f"{r['time_vs_pgd']:.0%}" if r["time_vs_pgd"] is not None else "-"
        gap = f"{r['aa_vs_pgd_points']:+.1f} pts" if r["aa_vs_pgd_points"] is not None else "-"
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['train_s']['mean']:.1f} ± "
            f"{r['train_s']['sd']:.1f} | {ratio} | {_pct(r['clean_acc'])} | "
            f"{_pct(r['pgd_acc'])} | {_pct(r['aa_acc'])} | {gap} | "
            f"{r['collapsed']}/{len(r['seeds'])} |"
        )
    lines.append("")
    lines.append("± is the standard deviation over seeds; vs PGD-k: mean train time / "
                 "PGD-k's (no weight average); collapsed: runs in which the guard saw a "
                 "collapse.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Robust accuracy (AutoAttack, or PGD when AutoAttack did not run) against training time,
    one point per method and seed, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    names = list(dict.fromkeys(r["config"] for r in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        mine = [r for r in runs if r["dataset"] == dataset]
        use_aa = all(r["aa_acc"] is not None for r in mine)
        key = "aa_acc" if use_aa else "pgd_acc"
        for i, name in enumerate(names):
            rs = [r for r in mine if r["config"] == name]
            if not rs:
                continue
            marker = "x" if any(r["collapsed"] for r in rs) else "o"
            ax.scatter([r["train_s"] for r in rs], [r[key] * 100 for r in rs], color=f"C{i}",
                       marker=marker, label=name, s=36)  # fmt: skip
        ax.set_xlabel("training time (s, sum of step laps)")
        ax.set_ylabel(("AutoAttack" if use_aa else "PGD") + " accuracy (%)")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine(threads: int) -> dict:
    from fastpgd.bench import cpu_model

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_at_start": os.getloadavg()}  # fmt: skip


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(CONFIGS)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, few epochs, a small Fashion-MNIST subset, PGD evaluation "
                        "only (no AutoAttack): checks that everything runs")  # fmt: skip
    parser.add_argument("--datasets", nargs="+", choices=list(DATASET_SETTINGS),
                        default=list(DATASET_SETTINGS))  # fmt: skip
    parser.add_argument(
        "--methods",
        type=_names,
        default=list(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--epochs", type=int, help="digits epochs (default: 30; --quick: 4)")
    parser.add_argument("--fashion-epochs", type=int, help="default: 10 (--quick: 1)")
    parser.add_argument("--fashion-train", type=int, help="default: 6000 (--quick: 600)")
    parser.add_argument("--fashion-test", type=int, help="default: 1000 (--quick: 200)")
    parser.add_argument("--fashion-dir", help="Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--ema", type=float, default=0.99, help="recipe: EMA decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--lr-schedule", default="cosine")
    parser.add_argument("--replay-steps", type=int, default=2)
    parser.add_argument("--pgi-lambda", type=float, help="pgi's regulariser weight (default: 10)")
    parser.add_argument("--aa-limit", type=int, default=1000, help="AutoAttack test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH",
                        help="where the JSON goes (.md and .png beside it); default "
                        "benchmarks/results/methods-<date>[-quick].json")  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    if quick and args.epochs is None:
        args.epochs = 4
    args.fashion_epochs = args.fashion_epochs or (1 if quick else 10)
    args.fashion_train = args.fashion_train or (600 if quick else 6000)
    args.fashion_test = args.fashion_test or (200 if quick else 1000)
    args.autoattack = not quick
    torch.set_num_threads(args.threads)

    import fastpgd
    from fastpgd.data import load_dataset

    if args.autoattack:
        try:
            from fastpgd import autoattack  # noqa: F401  (checked before hours of training)
        except ImportError:
            print("fastpgd.autoattack is not available: run with --quick (PGD evaluation only)",
                  file=sys.stderr)  # fmt: skip
            return 2
    today = datetime.date.today().isoformat()
    suffix = "-quick" if quick else ""
    out = Path(args.json) if args.json else (
        Path(__file__).parent / "results" / f"methods-{today}{suffix}.json")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    for dataset in args.datasets:
        if dataset == "digits":
            data[dataset] = (load_dataset("digits", "train"), load_dataset("digits", "test"))
        else:
            data[dataset] = fashion_subset(args.fashion_train, args.fashion_test,
                                           args.fashion_dir)  # fmt: skip
    machine = _machine(args.threads)
    runs = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for name in args.methods:
                runs.append(run_one(dataset, name, seed, args, data[dataset]))
    machine["load_avg_at_end"] = os.getloadavg()
    rows = summarize(runs)
    recipe = (f"recipe: EMA {args.ema:g}, label smoothing {args.label_smoothing:g}, "
              f"{args.lr_schedule} schedule (all but pgd)")  # fmt: skip
    header = (
        f"{'Quick run (not a measurement): ' if quick else ''}fast adversarial training methods; "
        f"{recipe}; seeds {args.seeds}; digits {args.epochs or 30} epochs; Fashion-MNIST "
        f"{args.fashion_train}/{args.fashion_test} images, {args.fashion_epochs} epochs; "
        f"{'AutoAttack on ' + str(args.aa_limit) + ' test images' if args.autoattack else 'no AutoAttack'}"  # noqa: E501
        f"; {machine['cpu']}, {args.threads} torch thread(s), torch {machine['torch']}, "
        f"{machine['date']}."
    )
    md = markdown(rows, header)
    summary = {"machine": machine, "fastpgd": fastpgd.extension_info(), "header": header,
               "args": {k: v for k, v in vars(args).items()}, "rows": rows,
               "runs": runs}  # fmt: skip
    out.write_text(json.dumps(summary, indent=2, default=str))
    out.with_suffix(".md").write_text(md)
    try:
        title = f"{'quick run (PGD evaluation), ' if quick else ''}{recipe}; seeds {args.seeds}"
        plot(runs, out.with_suffix(".png"), title)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(md)
    print(f"written: {out} (.md, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
