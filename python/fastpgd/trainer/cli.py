"""The ``fastpgd train`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from fastpgd.data import DATASETS
from fastpgd.trainer.config import (
    AMPS,
    ATTACKS,
    CUDA_GRAPHS,
    LR_SCHEDULES,
    METHODS,
    MODELS,
    ON_COLLAPSE,
    OPTIMIZERS,
    REPLAY_DTYPES,
    SYNCS,
    TrainConfig,
)
from fastpgd.trainer.numerics import DeterminismError
from fastpgd.trainer.run import train

__all__ = ["add_parser", "main"]

_DESCRIPTION = "Adversarial training (Madry et al.) with every phase of the step timed."


def _number(text: str, kind, need: str, ok) -> int | float:
    # argparse prints "argument --flag: <message>": the message says what the flag needs.
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _number(text, float, "a positive number", lambda v: math.isfinite(v) and v > 0)


def nonneg_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _number(text, float, "a number >= 0", lambda v: math.isfinite(v) and v >= 0)


def _configure(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="digits: 1797 real 8x8 digits shipped with fastpgd (default); mnist, "
        "fashion-mnist: IDX files in --data-dir; cifar10, cifar100: the official python "
        "version in --data-dir (the extracted folder or the .tar.gz); synthetic: random images",
    )
    data.add_argument(
        "--data-dir",
        help="directory of the IDX files, or CIFAR's folder or archive (fashion-mnist defaults "
        "to /usr/share/datasets/fashion-mnist when it exists)",
    )
    data.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random 4-pixel crops and horizontal flips on the device (default: on for CIFAR)",
    )
    data.add_argument(
        "--synthetic-size",
        type=positive_int,
        default=d.synthetic_size,
        help="training images of --dataset synthetic (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=positive_int,
        default=d.image_size,
        help="side of --dataset synthetic images (default: %(default)s)",
    )
    data.add_argument(
        "--num-workers",
        type=nonneg_int,
        default=d.num_workers,
        help="DataLoader workers (default: %(default)s)",
    )

    opt = parser.add_argument_group(
        "training (defaults per dataset: mnist follows Madry et al. -- batch 50, Adam 1e-4, "
        "eps 0.3, alpha 0.01, 40 steps, 84 epochs; fashion-mnist the same at eps 0.1; digits: "
        "batch 50, Adam 1e-3, eps 0.2, alpha 0.05, 7 steps, 30 epochs, measured to be robust and "
        "to finish in minutes on a small CPU; eps 0.3 does not train on 8x8 images; cifar10, "
        "cifar100 follow Rice et al. 2020 -- PreAct ResNet-18, batch 128, SGD 0.1 momentum 0.9 "
        "weight decay 5e-4, piecewise decay, eps 8/255, alpha 2/255, 10 steps, 200 epochs, "
        "crops and flips, evaluation with PGD-20)"
    )
    opt.add_argument("--epochs", type=positive_int)
    opt.add_argument("--max-steps", type=positive_int, help="stop after this many steps in all")
    opt.add_argument("--batch-size", type=positive_int, help="per process")
    opt.add_argument(
        "--model", choices=MODELS, help="default: madry-cnn; preact-resnet18 for CIFAR"
    )
    opt.add_argument("--optimizer", choices=OPTIMIZERS, help="default: adam; sgd for CIFAR")
    opt.add_argument("--lr", type=positive_float, help="learning rate")
    opt.add_argument("--momentum", type=nonneg_float, help="SGD momentum (default: 0.9)")
    opt.add_argument("--weight-decay", type=nonneg_float, help="default: 0; 5e-4 for CIFAR")
    opt.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="piecewise: the rate divided by 10 at 50%% and 75%% of the steps (default for "
        "CIFAR); constant (default otherwise); cosine: down to 0 along half a cosine; onecycle: "
        "torch's OneCycleLR (up from lr/25 over 30%% of the steps, then down to lr/25e4)",
    )
    opt.add_argument("--eps", type=positive_float, help="Linf radius (training and evaluation)")
    opt.add_argument("--alpha", type=positive_float, help="PGD step size")
    opt.add_argument("--attack-steps", type=positive_int, help="PGD steps per training batch")
    opt.add_argument(
        "--attack",
        choices=ATTACKS,
        default=d.attack,
        help="fused: fastpgd's fused PGD (default); reference: the pure-PyTorch "
        "PGD; none: natural training",
    )
    opt.add_argument("--seed", type=nonneg_int, default=d.seed)
    opt.add_argument("--device", default=d.device, help="auto (default), cpu, cuda, cuda:1, ...")

    fast = parser.add_argument_group("speed and numerics (CUDA)")
    fast.add_argument(
        "--cuda-graph",
        choices=CUDA_GRAPHS,
        default=d.cuda_graph,
        help="auto (default): the attack replays CUDA graphs on CUDA, eager on the CPU; step: "
        "the whole training step is one graph per batch shape (phases inside it are not timed "
        "apart); attack; off",
    )
    fast.add_argument(
        "--amp",
        choices=AMPS,
        default=d.amp,
        help="autocast for the attack and the training forward: bf16, fp16 (with a gradient "
        "scaler) or off (default)",
    )
    fast.add_argument(
        "--tf32", action="store_true", help="TF32 in float32 matmuls and convolutions"
    )
    fast.add_argument("--channels-last", action="store_true", help="channels-last model and inputs")
    fast.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms, so that CUDA runs repeat and resume bit for bit "
        "(slower; recorded in checkpoints)",
    )

    _configure_methods(parser, d)

    rp = parser.add_argument_group(
        "replay memory and free training (evaluation is unchanged)",
        "--replay: warm-start each example's attack from its perturbation of the previous epoch "
        "(Zheng et al., CVPR 2020); --free-replays m: free adversarial training (Shafahi et al., "
        "NeurIPS 2019), each batch trained m times, ceil(epochs / m) passes",
    )
    rp.add_argument(
        "--replay",
        action="store_true",
        help="the same as --method replay (kept for existing commands)",
    )
    rp.add_argument(
        "--replay-steps",
        type=positive_int,
        help="attack steps from a warm start (default: ceil(--attack-steps / 4))",
    )
    rp.add_argument(
        "--replay-reset",
        type=nonneg_int,
        default=d.replay_reset,
        metavar="K",
        help="forget the memory every K epochs; 0: never (default)",
    )
    rp.add_argument(
        "--replay-dtype",
        choices=REPLAY_DTYPES,
        default=d.replay_dtype,
        help="how the memory stores perturbations: input (exact, default), float16 "
        "(relative error 2^-11), int8 (error <= eps/254)",
    )
    rp.add_argument(
        "--free-replays",
        type=positive_int,
        default=d.free_replays,
        metavar="M",
        help="--method free: M replays per batch (default: 4); given alone (M > 1), the same as "
        "--method free --free-replays M (kept for existing commands)",
    )

    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--eval-every",
        type=nonneg_int,
        default=d.eval_every,
        help="evaluate every N epochs; 0: only at the end (default)",
    )
    ev.add_argument(
        "--eval-steps",
        type=positive_int,
        help="PGD steps of the evaluation (default: 2x --attack-steps)",
    )
    ev.add_argument(
        "--eval-restarts",
        type=positive_int,
        default=d.eval_restarts,
        help="random restarts of the evaluation attack (default: %(default)s)",
    )
    ev.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size)
    ev.add_argument("--eval-limit", type=positive_int, help="evaluate on this many test images")
    ev.add_argument(
        "--compare-natural",
        action="store_true",
        help="also train with --attack none for the same budget and print both",
    )

    rep = parser.add_argument_group("timing and output")
    rep.add_argument(
        "--sync",
        choices=SYNCS,
        default=d.sync,
        help="GPU timing: events on CUDA and none on CPU by default",
    )
    rep.add_argument(
        "--report-every",
        type=nonneg_int,
        default=d.report_every,
        help="print the phase table every N steps (default: only at the end)",
    )
    rep.add_argument("--timing-json", metavar="PATH", help="write all laps as JSON")
    rep.add_argument("--plot", metavar="PATH", help="draw the phase breakdown (needs matplotlib)")
    rep.add_argument("--quiet", action="store_true", help="no progress bar; logs only")

    ck = parser.add_argument_group("checkpoints")
    ck.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="written at the end, every --checkpoint-every steps, on SIGINT/SIGTERM",
    )
    ck.add_argument("--checkpoint-every", type=nonneg_int, default=d.checkpoint_every)
    ck.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.set_defaults(func=_cmd_train)


def _configure_methods(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The training method, its own settings, the recipe and the overfitting guard."""
    me = parser.add_argument_group(
        "training method and recipe",
        "pgd: Madry et al. 2018; fgsm-rs: FGSM from a random start, step 1.25 eps (Wong et al. "
        "2020); n-fgsm: noise of 2 eps, step eps, not projected (de Jorge et al. 2022); free: "
        "each batch m times (Shafahi et al. 2019); replay: PGD warm-started from a per-example "
        "memory; pgi: FGSM from a per-example prior with momentum and a logit regulariser (Jia "
        "et al. 2022); trades: the KL objective, beta 6 (Zhang et al. 2019)",
    )
    me.add_argument("--method", choices=METHODS, help="default: pgd")
    me.add_argument("--fgsm-step", type=positive_float, metavar="K",
                    help="fgsm-rs, n-fgsm, pgi: the step in multiples of eps "
                    "(default: 1.25 for fgsm-rs, 1 otherwise)")  # fmt: skip
    me.add_argument("--fgsm-noise", type=nonneg_float, metavar="K",
                    help="fgsm-rs, n-fgsm: the start is uniform in K x eps (default: 1 for "
                    "fgsm-rs, 2 for n-fgsm)")  # fmt: skip
    me.add_argument(
        "--pgi-momentum",
        type=nonneg_float,
        metavar="MU",
        help="pgi: decay of the stored momentum (default: 0.3)",
    )
    me.add_argument(
        "--pgi-lambda",
        type=nonneg_float,
        metavar="L",
        help="pgi: weight of the logit regulariser (default: 10)",
    )
    me.add_argument(
        "--pgi-reset",
        type=nonneg_int,
        metavar="R",
        help="pgi: new priors every R epochs; 0: only at the start (default: 40)",
    )
    me.add_argument(
        "--trades-beta",
        type=nonneg_float,
        metavar="BETA",
        help="trades: weight of the KL term (default: 6)",
    )
    me.add_argument(
        "--label-smoothing",
        type=nonneg_float,
        default=d.label_smoothing,
        metavar="S",
        help="label smoothing of the training loss (default: 0)",
    )
    me.add_argument(
        "--ema",
        type=positive_float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay "
        "per step (e.g. 0.999); it is what is evaluated and checkpointed",
    )
    me.add_argument(
        "--guard",
        type=nonneg_int,
        metavar="N",
        help="catastrophic-overfitting guard: PGD accuracy on N training images "
        "after every epoch; 0: off (default: 256 for fgsm-rs, n-fgsm, pgi; else 0)",
    )
    me.add_argument("--on-collapse", choices=ON_COLLAPSE, default=d.on_collapse,
                    help="what a collapse the guard sees does: report (one line, default), stop "
                    "training, or restore the last good epoch's weights and stop")  # fmt: skip


def _cmd_train(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = train(config)
    except (ValueError, TypeError, OSError, DeterminismError) as exc:
        # What a user can fix (a setting, a path, a file, the environment): one line, exit 2.
        # Anything else is a bug and keeps its traceback.
        print(f"fastpgd train: error: {exc}", file=sys.stderr)
        return 2
    # The shell's convention for "stopped by a signal"; the checkpoint was written.
    return 130 if result.interrupted else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        argparse.ArgumentParser: the ``train`` parser (its ``func`` default runs the command).
    """
    parser = subparsers.add_parser(
        "train",
        help="adversarial training with a phase-timing report",
        description=_DESCRIPTION,
    )
    _configure(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m fastpgd.trainer ...``: the ``train`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="fastpgd train", description=_DESCRIPTION)
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
