"""The one-line switch, timed: ``torchattacks.PGD`` against ``fastpgd.PGD``, side by side.

Both attack objects are built with the same arguments on the same model and batch, in one
process. Runs alternate between the two (so that drift in the machine's load hits both alike);
each is warmed up first. The script prints the median and spread of each and the ratio of the
medians; it writes nothing.

Usage: ``python benchmarks/torchattacks_switch.py [--workload madry-mnist|cifar]
[--repeats 7] [--device cpu] [--threads N] [--norm linf|l2]``. Needs torchattacks
(``pip install --no-deps torchattacks==3.5.1`` plus scipy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fastpgd
from fastpgd.bench import WORKLOADS, cpu_model


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="madry-mnist")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    args = parser.parse_args(argv)
    try:
        import torchattacks
    except ImportError:
        print("skipped: torchattacks is not installed", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = WORKLOADS[args.workload]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = spec["model"]().to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((spec["batch_size"], *spec["shape"]), generator=g).to(device)
    y = torch.randint(0, spec["classes"], (spec["batch_size"],), generator=g).to(device)
    if args.norm == "linf":
        kw = dict(eps=spec["eps"], alpha=spec["alpha"], steps=spec["steps"], random_start=True)
        pair = (torchattacks.PGD, fastpgd.PGD)
    else:
        # An L2 budget of the same order: the Linf box's radius times sqrt(d) / 4.
        eps = spec["eps"] * x[0].numel() ** 0.5 / 4
        kw = dict(eps=eps, alpha=eps / 4, steps=spec["steps"], random_start=True)
        pair = (torchattacks.PGDL2, fastpgd.PGDL2)
    attacks = {f"{cls.__module__.split('.')[0]}.{cls.__name__}": cls(model, **kw) for cls in pair}

    times: dict[str, list[float]] = {name: [] for name in attacks}
    for _ in range(args.warmup):
        for atk in attacks.values():
            atk(x, y)
    for _ in range(args.repeats):
        for name, atk in attacks.items():
            times[name].append(_timed(lambda atk=atk: atk(x, y), device))

    ext = fastpgd.extension_info()["backend_in_use"]
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"{args.workload}, {args.norm}: batch {spec['batch_size']}, {kw['steps']} steps, "
        f"eps {kw['eps']:.4g}, alpha {kw['alpha']:.4g}; {where}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, fastpgd backend {ext}, "
        f"torchattacks {torchattacks.__version__}; {args.repeats} alternating runs"
    )
    print(f"{'attack':<20} {'median s':>9} {'min s':>8} {'max s':>8}")
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts)
        print(f"{name:<20} {medians[name]:9.4f} {min(ts):8.4f} {max(ts):8.4f}")
    theirs, ours = medians.values()
    print(f"ratio of medians (torchattacks / fastpgd): {theirs / ours:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
