"""FAB-T, FAB and Square, timed: fastpgd's against torchattacks 3.5.1's, at the same settings.

The model is a Madry CNN adversarially trained on the bundled 8x8 digits by ``fastpgd.train``
(PGD-7 at eps 0.2, as the tests' model), attacked on the first test images: a robust model, so
that the attacks do the work they do in an evaluation. Each attack runs with AutoAttack's
settings (FAB-T: 9 targets x 100 steps, one run each; Square: 5,000 queries) unless told
otherwise. fastpgd's and torchattacks' runs alternate, after a warm-up of each, so that drift in
the machine's load hits both alike. The script prints, per attack and norm, the median and
spread of each, the ratio of the medians and the robust accuracy each left (lower is
stronger; the two must do comparable work for the ratio to mean anything).

Usage: ``python benchmarks/fab_square.py [--quick] [--attacks fab-t square] [--norms linf l2]
[--n 300] [--repeats 3] [--threads N] [--device cpu] [--json PATH]``. ``--quick`` is a smoke
run (a briefly trained model, 64 images, few steps and queries, one repeat): its numbers say
that the script works, not how fast anything is. Needs torchattacks
(``pip install --no-deps torchattacks==3.5.1`` plus scipy).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time

import torch

import fastpgd
from fastpgd.bench import cpu_model
from fastpgd.data import load_dataset

# The L2 radius at which the digits model keeps some robust points (FAB-T: about 11%).
_EPS = {"linf": None, "l2": 1.0}  # None: the Linf eps the model was trained at
_TA_NORM = {"linf": "Linf", "l2": "L2"}


def _settings(quick: bool) -> dict:
    if quick:
        return dict(train_steps=20, n=64, fab_steps=5, targets=2, queries=50, repeats=1)
    return dict(train_steps=150, n=300, fab_steps=100, targets=9, queries=5000, repeats=3)


def _fastpgd_attack(name: str, norm: str, eps: float, s: dict):
    def run(model, x, y):
        if name == "square":
            generator = torch.Generator(x.device).manual_seed(0)
            return fastpgd.square(model, x, y, eps=eps, norm=norm, queries=s["queries"],
                                  generator=generator)  # fmt: skip
        return fastpgd.fab(model, x, y, eps=eps, norm=norm, steps=s["fab_steps"],
                           targeted=name == "fab-t", n_target_classes=s["targets"])  # fmt: skip

    return run


def _torchattacks_attack(name: str, norm: str, eps: float, s: dict, torchattacks):
    def run(model, x, y):
        if name == "square":
            attack = torchattacks.Square(model, eps=eps, norm=_TA_NORM[norm],
                                         n_queries=s["queries"], n_restarts=1, seed=0)  # fmt: skip
        else:
            attack = torchattacks.FAB(model, eps=eps, norm=_TA_NORM[norm], steps=s["fab_steps"],
                                      n_restarts=1, multi_targeted=name == "fab-t",
                                      n_classes=s["targets"] + 1)  # fmt: skip
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # torchattacks reseeds the global RNG
            return attack(x, y)

    return run


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny settings")
    parser.add_argument("--attacks", nargs="+", choices=["fab-t", "fab", "square"],
                        default=["fab-t", "square"])  # fmt: skip
    parser.add_argument("--norms", nargs="+", choices=["linf", "l2"], default=["linf", "l2"])
    parser.add_argument("--n", type=int, default=None, help="test images (default 300)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        import torchattacks
    except ImportError:
        print("skipped: torchattacks is not installed", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    s = _settings(args.quick)
    n = args.n or s["n"]
    repeats = args.repeats or s["repeats"]
    device = torch.device(args.device)

    trained = fastpgd.train(
        dataset="digits",
        max_steps=s["train_steps"],
        seed=0,
        eval_limit=1,
        eval_steps=1,
        eval_restarts=1,
        quiet=True,
        out=io.StringIO(),
    )
    model = trained.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_dataset("digits", "test")[list(range(n))]
    x, y = x.to(device), y.to(device)

    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"digits Madry CNN ({s['train_steps']} adversarial training steps), {n} test images; "
        f"FAB {s['fab_steps']} steps ({s['targets']} targets for FAB-T), Square "
        f"{s['queries']} queries; {where}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, torchattacks {torchattacks.__version__}; {repeats} alternating "
        "runs after one warm-up each"
    )
    print(f"{'attack':<8} {'norm':<5} {'fastpgd s':>10} {'torchatt. s':>11} {'ratio':>6} "
          f"{'acc fastpgd':>11} {'acc torchatt.':>13}")  # fmt: skip
    rows = []
    for name in args.attacks:
        for norm in args.norms:
            eps = _EPS[norm] if _EPS[norm] is not None else float(trained.config.eps)
            pair = {
                "fastpgd": _fastpgd_attack(name, norm, eps, s),
                "torchattacks": _torchattacks_attack(name, norm, eps, s, torchattacks),
            }
            times = {k: [] for k in pair}
            accuracy = {}
            for fn in pair.values():  # warm-up
                fn(model, x, y)
            for _ in range(repeats):
                for k, fn in pair.items():
                    seconds, x_adv = _timed(lambda fn=fn: fn(model, x, y), device)
                    times[k].append(seconds)
                    with torch.no_grad():
                        accuracy[k] = (model(x_adv).argmax(1) == y).float().mean().item()
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = med["torchattacks"] / med["fastpgd"]
            print(
                f"{name:<8} {norm:<5} {med['fastpgd']:10.3f} {med['torchattacks']:11.3f} "
                f"{ratio:6.2f} {accuracy['fastpgd']:11.4f} {accuracy['torchattacks']:13.4f}"
            )
            rows.append(
                dict(
                    attack=name,
                    norm=norm,
                    eps=eps,
                    seconds=times,
                    median=med,
                    ratio_torchattacks_over_fastpgd=ratio,
                    robust_accuracy=accuracy,
                )
            )
    print("ratio: torchattacks' median time / fastpgd's (> 1: fastpgd is faster)")
    if args.json:
        meta = dict(device=where, threads=torch.get_num_threads(), torch=torch.__version__,
                    torchattacks=torchattacks.__version__, n=n, repeats=repeats, **s)  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
