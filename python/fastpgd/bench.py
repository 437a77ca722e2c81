"""``fastpgd bench``: the PGD attack timed side by side with its baselines, in one process.

Methods (all on the same model, batch and budget):

- ``per-example``: the naive loop this project started from: each example attacked alone
  (batch of one, ``steps`` forward/backward passes each) with plain PyTorch ops. It is slow, so
  it runs on the first ``per_example_subset`` examples of the batch and its times are scaled
  by ``batch_size / per_example_subset`` (examples are independent, so the cost is linear).
- ``reference``: :func:`fastpgd.reference_pgd`, batched, out-of-place PyTorch update.
- ``fused``: :func:`fastpgd.fused_pgd`, batched, fused in-place update.
- ``fused-graph``: ``fused_pgd(cuda_graph=True)`` (CUDA only).
- ``torchattacks``: ``torchattacks.PGD`` where installed (mean cross-entropy: the same gradient
  sign, so the same Linf attack up to rounding).
- ``floor``: ``steps`` x (forward + backward w.r.t. the input) of the model alone, the time no
  attack can beat without changing the model's arithmetic.

Inputs are synthetic (uniform in [0, 1], random labels): timing does not depend on the data.

With ``--train``, the adversarial training step instead: milliseconds per step of the trainer in
each of its speed settings (eager, the attack or the whole step as a CUDA graph, bf16, TF32),
timed by its own phase timers (see :mod:`fastpgd.bench_train`).

A bad flag is one line on stderr, ``fastpgd bench: error: ...``, and exit code 2, before anything
is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastpgd import _table
from fastpgd._paths import check_writable
from fastpgd._plot import bar_chart

__all__ = ["WORKLOADS", "METHODS", "run_bench", "check_device", "add_parser", "main"]

METHODS = ("per-example", "reference", "fused", "fused-graph", "torchattacks", "floor")
BASELINES = ("per-example", "reference", "torchattacks")


def _madry():
    from fastpgd.models import MadryCNN

    return MadryCNN(in_channels=1, image_size=28, num_classes=10)


def _resnet():
    from fastpgd.models import SmallResNet

    return SmallResNet()


def _preact():
    from fastpgd.models import PreActResNet18

    return PreActResNet18(num_classes=10)


# Batch 128, PGD-10 at eps 8/255 in steps of 2/255: the usual CIFAR-10 training attack.
_CIFAR_ATTACK = dict(shape=(3, 32, 32), batch_size=128, eps=8 / 255, alpha=2 / 255, steps=10,
                     classes=10)  # fmt: skip

WORKLOADS = {
    "madry-mnist": dict(
        model=_madry, shape=(1, 28, 28), batch_size=50, eps=0.3, alpha=0.01, steps=40, classes=10
    ),
    "cifar": dict(model=_resnet, **_CIFAR_ATTACK),
    # The CIFAR-10 setting most adversarial-training papers report (Rice et al., 2020).
    "cifar-preact": dict(model=_preact, **_CIFAR_ATTACK),
}

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _per_example_pgd(model, x, y, eps, alpha, steps, generator):
    """The naive attack: one example at a time, the classic PyTorch update chain."""
    out = []
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        u = torch.rand(xi.shape, generator=generator, device=xi.device, dtype=torch.float32)
        xa = (xi + ((u * 2 - 1) * eps).to(xi.dtype)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), yi)
            (grad,) = torch.autograd.grad(loss, xa)
            xa = xa.detach() + alpha * grad.sign()
            xa = torch.min(torch.max(xa, xi - eps), xi + eps).clamp(0, 1)
        out.append(xa.detach())
    return torch.cat(out)


def _floor(model, x, y, steps):
    for _ in range(steps):
        inp = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(inp), y, reduction="sum")
        torch.autograd.grad(loss, inp)


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver's version (``/proc/driver/nvidia/version``, else
    ``nvidia-smi``), or ``None`` where neither says."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = _driver_in_proc_text(f.read())
        if found:
            return found
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.split()
    return lines[0] if lines else None


def _driver_in_proc_text(text: str) -> str | None:
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..." (or "... Open
    # Kernel Module for x86_64  ..."): the first dotted number on the NVRM line.
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            return match.group(1) if match else None
    return None


def _machine(device: torch.device) -> dict:
    """The machine a benchmark ran on: host, CPU, torch, the extension, the date; on CUDA the
    GPU's name, its driver and torch's CUDA version."""
    from fastpgd import extension_info

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "extension_info": extension_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_driver"] = nvidia_driver_version()
        info["cuda_runtime"] = torch.version.cuda
    return info


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` that exists on this machine.

    Args:
        device (str or torch.device): ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        name (str): what the caller calls it, for the messages. Default: ``"device"``.

    Raises:
        ValueError: naming ``name``: not a CPU or CUDA device, CUDA not available, or a CUDA
            index this machine does not have.
    """
    need = f"{name} must be cpu, cuda or cuda:N, got {device!r}"
    if not isinstance(device, (str, torch.device)):
        raise ValueError(need)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(need) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(need)
    if not torch.cuda.is_available():
        raise ValueError(
            f"{name} {str(device)!r} needs CUDA, but torch.cuda.is_available() is False on this "
            "machine; use cpu"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"{name} {str(device)!r} does not exist: this machine has {count} CUDA device(s)"
        )
    return dev


def _check_valid(name, x_adv, x, eps, tol):
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{name}: output shape {tuple(x_adv.shape)} != {tuple(x.shape)}")
    dist = (x_adv.float() - x.float()).abs().max().item()
    lo, hi = x_adv.min().item(), x_adv.max().item()
    if dist > eps + tol or lo < 0 or hi > 1 or not torch.isfinite(x_adv).all():
        raise RuntimeError(
            f"{name}: not a valid attack: max |x_adv - x| = {dist} (eps {eps}), range [{lo}, {hi}]"
        )
    return {"max_linf": dist, "min": lo, "max": hi}


def run_bench(
    workload: str = "madry-mnist",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
    steps: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    methods: Sequence[str] | None = None,
    per_example_subset: int = 10,
    seed: int = 0,
    json_path: str | None = None,
    plot_path: str | None = None,
    quiet: bool = False,
) -> dict:
    """Time the PGD attack and its baselines side by side on one workload.

    Args:
        workload (str): ``"madry-mnist"`` (MadryCNN, 1x28x28, batch 50, eps 0.3, alpha 0.01,
            40 steps) or ``"cifar"`` (SmallResNet, 3x32x32, batch 128, eps 8/255, alpha 2/255,
            10 steps). Default: ``"madry-mnist"``.
        device (str): where the model and batch live. Default: ``"cpu"``.
        dtype (str): ``float32``, ``float64``, ``float16`` or ``bfloat16`` (model and inputs).
            Default: ``"float32"``.
        batch_size (int, optional): overrides the workload's batch size.
        steps (int, optional): overrides the workload's number of steps.
        repeats (int): timed runs per method. Default: 5.
        warmup (int): untimed runs per method before timing. Default: 1.
        methods (sequence of str, optional): subset of :data:`METHODS`. Default: all.
        per_example_subset (int): examples the per-example loop attacks; its times are scaled
            by ``batch_size / per_example_subset``. Default: 10.
        seed (int): seeds the model, the synthetic batch and the attacks' generators.
        json_path (str, optional): write every figure and the machine description there (a
            file in an existing directory; checked before anything is measured).
        plot_path (str, optional): a bar chart of the median times (needs matplotlib; checked
            like ``json_path``).
        quiet (bool): no table and no progress bar. Default: ``False``.

    Returns:
        dict: ``config``, ``machine``, ``checks`` and per method ``status`` (``"ok"`` or
        ``"skipped: ..."``), ``times_s``, ``median_s``, ``min_s``, ``max_s``, ``speedup_vs``
        (per baseline, ratio of medians), ``x_floor`` (median / floor's median), and the same
        two from the best times, ``speedup_vs_min`` and ``x_floor_min``.

    Raises:
        ValueError: naming the argument: an unknown workload, dtype or method, a count out of
            range, a device this machine does not have, an output path that cannot be written.

    Examples::

        >>> result = run_bench(batch_size=2, steps=1, repeats=1, warmup=0, quiet=True,
        ...                    methods=["fused", "floor"])
        >>> result["methods"]["fused"]["status"]
        'ok'
    """
    from fastpgd.attacks.pgd import fused_pgd, reference_pgd

    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {sorted(WORKLOADS)}, got {workload!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {METHODS}, got unknown {unknown}")
    for name, value, least in (
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        ("per_example_subset", per_example_subset, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")

    spec = WORKLOADS[workload]
    dev = check_device(device)
    # Before any work: a bad output path fails now, not after the benchmark.
    for name, path in (("json_path", json_path), ("plot_path", plot_path)):
        if path:
            check_writable(name, path)
    tdtype = _DTYPES[dtype]
    n = spec["batch_size"] if batch_size is None else int(batch_size)
    n_steps = spec["steps"] if steps is None else int(steps)
    if n < 1 or n_steps < 0:
        raise ValueError(f"batch_size must be >= 1 and steps >= 0, got {n} and {n_steps}")
    eps, alpha = spec["eps"], spec["alpha"]
    subset = min(per_example_subset, n)

    torch.manual_seed(seed)
    model = spec["model"]().to(device=dev, dtype=tdtype).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *spec["shape"]), generator=g).to(device=dev, dtype=tdtype)
    y = torch.randint(0, spec["classes"], (n,), generator=g).to(dev)

    def gen():
        return torch.Generator(device=dev).manual_seed(seed + 1)

    kw = dict(eps=eps, alpha=alpha, steps=n_steps)
    runners: dict[str, Callable] = {
        "per-example": lambda: _per_example_pgd(
            model, x[:subset], y[:subset], eps, alpha, n_steps, gen()
        ),
        "reference": lambda: reference_pgd(model, x, y, generator=gen(), **kw),
        "fused": lambda: fused_pgd(model, x, y, generator=gen(), **kw),
        "fused-graph": lambda: fused_pgd(model, x, y, generator=gen(), cuda_graph=True, **kw),
        "floor": lambda: _floor(model, x, y, n_steps),
    }
    skipped: dict[str, str] = {}
    if dev.type != "cuda":
        skipped["fused-graph"] = "skipped: no CUDA"
    try:
        import torchattacks
    except ImportError:
        skipped["torchattacks"] = "skipped: torchattacks not installed"
    else:
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=n_steps, random_start=True)
        runners["torchattacks"] = lambda: atk(x, y)
    scale = {"per-example": n / subset}

    # Before timing: every method must return a valid attack, fused must equal reference.
    tol = 4 * torch.finfo(tdtype).eps
    checks: dict = {"valid": {}}
    outputs = {}
    for name in methods:
        if name in skipped or name == "floor":
            continue
        out = runners[name]()
        ref_x = x[:subset] if name == "per-example" else x
        checks["valid"][name] = _check_valid(name, out, ref_x, eps, tol)
        outputs[name] = out
    if "fused" in outputs and "reference" in outputs:
        diff = (outputs["fused"].float() - outputs["reference"].float()).abs().max().item()
        equal = torch.equal(outputs["fused"], outputs["reference"])
        checks["fused_equals_reference"] = {"equal": equal, "max_abs_diff": diff}
        # On CPU both backends run the same deterministic kernels: any difference is a bug.
        # On CUDA nondeterministic cuDNN backward kernels may flip a few near-zero signs.
        if dev.type == "cpu" and tdtype in (torch.float32, torch.float64) and not equal:
            raise RuntimeError(f"fused_pgd and reference_pgd differ (max |diff| {diff})")
    del outputs

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    timed = [m for m in methods if m not in skipped]
    total = len(timed) * (warmup + repeats)
    progress = None
    if not quiet and total:
        from tqdm import tqdm

        progress = tqdm(total=total, desc=f"bench {workload}", file=sys.stderr, leave=False)

    def once(name):
        if progress is not None:
            progress.set_postfix_str(name)
        sync()
        start = time.perf_counter()
        runners[name]()
        sync()
        elapsed = time.perf_counter() - start
        if progress is not None:
            progress.update(1)
        return elapsed * scale.get(name, 1.0)

    # Round robin (each repeat runs every method once) rather than method after method: on a
    # shared, noisy machine a burst of load then hits all methods alike, not one of them.
    times: dict[str, list[float]] = {name: [] for name in timed}
    for name in timed:
        for _ in range(warmup):
            once(name)
    for _ in range(repeats):
        for name in timed:
            times[name].append(once(name))
    results: dict[str, dict] = {}
    for name in methods:
        if name in skipped:
            results[name] = {"status": skipped[name]}
            continue
        t = times[name]
        results[name] = {
            "status": "ok",
            "times_s": t,
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
        }
    if progress is not None:
        progress.close()

    # Ratios of medians, and of best times: on a shared machine the best of a few runs is the
    # least disturbed one, so both are kept.
    for stat, suffix in (("median_s", ""), ("min_s", "_min")):
        floor = results.get("floor", {}).get(stat)
        for r in results.values():
            if r["status"] != "ok":
                continue
            r["speedup_vs" + suffix] = {
                base: results[base][stat] / r[stat]
                for base in BASELINES
                if results.get(base, {}).get("status") == "ok" and r[stat] > 0
            }
            r["x_floor" + suffix] = r[stat] / floor if floor else None

    result = {
        "workload": workload,
        "config": {
            "device": str(dev),
            "dtype": dtype,
            "batch_size": n,
            "steps": n_steps,
            "eps": eps,
            "alpha": alpha,
            "shape": list(spec["shape"]),
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "per_example_subset": subset,
            "per_example_scale": n / subset,
            "inputs": "synthetic: uniform [0, 1] inputs, random labels",
        },
        "machine": _machine(dev),
        "checks": checks,
        "methods": results,
    }
    if not quiet:
        print(format_table(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    if plot_path:
        _plot(result, plot_path)
    return result


def format_table(result: dict) -> str:
    """The benchmark as a text table: medians, spread, speed-ups (of medians) and time / floor."""
    cfg = result["config"]
    head = (
        f"{result['workload']}: batch {cfg['batch_size']}, {cfg['steps']} steps, "
        f"{cfg['dtype']} on {cfg['device']} ({result['machine']['cpu']}"
        f"{', ' + result['machine']['gpu'] if 'gpu' in result['machine'] else ''}); "
        f"per-example: {cfg['per_example_subset']} examples x {cfg['per_example_scale']:g}"
    )
    cols = (
        ["method", "median s", "min-max s"]
        + [f"vs {b}" for b in BASELINES]
        + ["x floor", "x floor (min)"]
    )
    rows = []
    for name, r in result["methods"].items():
        if r["status"] != "ok":
            rows.append([name, r["status"]] + [""] * (len(cols) - 2))
            continue
        speed = [f"{r['speedup_vs'][b]:.2f}x" if b in r["speedup_vs"] else "-" for b in BASELINES]
        xf = f"{r['x_floor']:.2f}" if r.get("x_floor") else "-"
        xfm = f"{r['x_floor_min']:.2f}" if r.get("x_floor_min") else "-"
        rows.append(
            [name, f"{r['median_s']:.4f}", f"{r['min_s']:.4f}-{r['max_s']:.4f}", *speed, xf, xfm]
        )
    return _table.format_table(cols, rows, title=head)


def _plot(result: dict, path: str) -> None:
    ok = [(k, v["median_s"]) for k, v in result["methods"].items() if v["status"] == "ok"]
    try:
        bar_chart(
            path,
            [k for k, _ in ok],
            [t for _, t in ok],
            xlabel="median seconds per batch",
            title=f"{result['workload']} on {result['config']['device']}",
        )
    except ImportError as exc:  # the plot is optional: the table and JSON are written anyway
        print(f"fastpgd bench: not writing {path}: {exc}", file=sys.stderr)


# Flags of one mode only: given with the other, they are an error rather than ignored.
_ATTACK_ONLY = ("dtype", "repeats", "methods", "per_example_subset", "plot")
_TRAIN_ONLY = ("variants", "image_size", "attack_steps")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _fail(message: str) -> int:
    # What a user can fix: one line and argparse's exit code, no traceback.
    print(f"fastpgd bench: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _check_flags(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags together (a flag of the other mode, a device or output
    path that cannot be used), or ``None``."""
    from fastpgd import bench_train

    if args.train:
        other, other_name, workloads = _ATTACK_ONLY, "the attack benchmark", bench_train.WORKLOADS
    else:
        other, other_name, workloads = _TRAIN_ONLY, "--train", WORKLOADS
    given = [_flag(d) for d in other if getattr(args, d) is not None]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        return f"{', '.join(given)} only {verb} to {other_name}"
    if args.workload not in workloads:
        mode = "--train" if args.train else "the attack benchmark"
        return f"argument --workload: {mode} has {', '.join(workloads)}; got {args.workload!r}"
    try:
        check_device(args.device, "--device")
        for dest in ("json", "plot"):
            if getattr(args, dest):
                check_writable(_flag(dest), getattr(args, dest))
    except ValueError as exc:
        return str(exc)
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    problem = _check_flags(args)
    if problem:
        return _fail(problem)
    # A flag left out (None) is left out of the call too: the function's default applies (a
    # mode-dependent one, such as --steps, 50 with --train and the workload's otherwise).
    common = dict(
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        seed=args.seed,
        json_path=args.json,
        quiet=args.quiet,
    )
    if args.train:
        mode = dict(
            variants=args.variants, image_size=args.image_size, attack_steps=args.attack_steps
        )
    else:
        mode = dict(
            dtype=args.dtype,
            repeats=args.repeats,
            methods=args.methods,
            per_example_subset=args.per_example_subset,
            plot_path=args.plot,
        )
    given = {k: v for k, v in (common | mode).items() if v is not None}
    try:
        if args.train:
            from fastpgd.bench_train import run_train_bench

            run_train_bench(args.workload, **given)
        else:
            run_bench(args.workload, **given)
    except (ValueError, TypeError) as exc:
        # A setting the benchmark or the trainer refuses; anything else is a bug and keeps its
        # traceback.
        return _fail(exc)
    except KeyboardInterrupt:
        print("fastpgd bench: interrupted", file=sys.stderr)
        return 130  # the shell's convention for "stopped by a signal"
    return 0


def _names(choices: Sequence[str], what: str):
    """An argparse type: a comma-separated list of ``choices`` (repeats dropped, order kept)."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",")]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from {','.join(choices)}"
            )
        return list(dict.fromkeys(names))

    return parse


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from fastpgd import bench_train
    from fastpgd.trainer.cli import nonneg_int, positive_int

    # argparse prints its whole usage block before a bad flag's message: one line says it.
    def error(message: str):
        p.exit(2, f"{p.prog}: error: {message}\n")

    p.error = error
    p.add_argument(
        "--train",
        action="store_true",
        help="time the adversarial training step instead of the attack: ms per step of each "
        f"variant ({', '.join(bench_train.VARIANTS)}) with the trainer's own phase timers",
    )
    p.add_argument(
        "--workload",
        choices=sorted({*WORKLOADS, *bench_train.WORKLOADS}),
        default="madry-mnist",
        help=f"attack: {', '.join(WORKLOADS)}; --train: {', '.join(bench_train.WORKLOADS)} "
        "(default: madry-mnist)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="override the workload's batch"
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="attack: override the workload's PGD steps; --train: measured training steps per "
        "variant (default: 50)",
    )
    p.add_argument(
        "--warmup",
        type=nonneg_int,
        default=None,
        help="untimed runs first: per method (default: 1); --train: steps per variant "
        "(default: 5; the first step of a graph variant captures it)",
    )
    p.add_argument(
        "--seed", type=nonneg_int, default=0, help="seeds the model, data and attacks (default: 0)"
    )
    p.add_argument("--json", metavar="PATH", default=None, help="write all figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no table, no progress output")

    attack = p.add_argument_group("the attack benchmark only")
    attack.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="default: float32")
    attack.add_argument(
        "--repeats", type=positive_int, default=None, help="timed runs per method (default: 5)"
    )
    attack.add_argument(
        "--methods",
        type=_names(METHODS, "method"),
        default=None,
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    attack.add_argument(
        "--per-example-subset",
        type=positive_int,
        default=None,
        help="examples the per-example loop attacks; times scaled to the batch (default: 10)",
    )
    attack.add_argument("--plot", metavar="PATH", default=None, help="bar chart (needs matplotlib)")

    train = p.add_argument_group("--train only")
    train.add_argument(
        "--variants",
        type=_names(tuple(bench_train.VARIANTS), "variant"),
        default=None,
        help=f"comma-separated subset of {','.join(bench_train.VARIANTS)} (default: all; "
        "graph-attack, graph-step and tf32 need CUDA and are reported as skipped without it)",
    )
    train.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="override the workload's image side (a short run: tests use 8; the Madry CNN "
        "needs at least 4)",
    )
    train.add_argument(
        "--attack-steps", type=positive_int, default=None, help="override the workload's PGD steps"
    )
    p.set_defaults(func=_cmd_bench)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on an ``argparse`` subparsers object."""
    return _configure(
        subparsers.add_parser(
            "bench",
            help="time fused PGD against its baselines, or the training step (--train)",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``fastpgd bench`` without the main command line (``python -m fastpgd.bench``)."""
    parser = _configure(
        argparse.ArgumentParser(
            prog="fastpgd bench",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
