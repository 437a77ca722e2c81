"""The ``fastpgd train`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from fastpgd.data import DATASETS
from fastpgd.trainer.config import _ATTACKS, _REPLAY_DTYPES, _SYNCS, TrainConfig
from fastpgd.trainer.run import train

__all__ = ["add_parser", "main"]

_DESCRIPTION = "Adversarial training (Madry et al.) with every phase of the step timed."


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="digits: 1797 real 8x8 digits shipped with fastpgd (default); mnist, "
        "fashion-mnist: IDX files in --data-dir; synthetic: random images",
    )
    data.add_argument(
        "--data-dir",
        help="directory of the IDX files (fashion-mnist defaults to "
        "/usr/share/datasets/fashion-mnist when it exists)",
    )
    data.add_argument(
        "--synthetic-size",
        type=_positive_int,
        default=d.synthetic_size,
        help="training images of --dataset synthetic (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=_positive_int,
        default=d.image_size,
        help="side of --dataset synthetic images (default: %(default)s)",
    )
    data.add_argument(
        "--num-workers",
        type=_nonneg_int,
        default=d.num_workers,
        help="DataLoader workers (default: %(default)s)",
    )

    opt = parser.add_argument_group(
        "training (defaults per dataset: mnist follows Madry et al. -- batch 50, Adam 1e-4, "
        "eps 0.3, alpha 0.01, 40 steps, 84 epochs; fashion-mnist the same at eps 0.1; digits: "
        "batch 50, Adam 1e-3, eps 0.2, alpha 0.05, 7 steps, 30 epochs, measured to be robust and "
        "to finish in minutes on a small CPU; eps 0.3 does not train on 8x8 images)"
    )
    opt.add_argument("--epochs", type=_positive_int)
    opt.add_argument("--max-steps", type=_positive_int, help="stop after this many steps in all")
    opt.add_argument("--batch-size", type=_positive_int, help="per process")
    opt.add_argument("--lr", type=_positive_float, help="Adam learning rate")
    opt.add_argument("--eps", type=_positive_float, help="Linf radius (training and evaluation)")
    opt.add_argument("--alpha", type=_positive_float, help="PGD step size")
    opt.add_argument("--attack-steps", type=_positive_int, help="PGD steps per training batch")
    opt.add_argument(
        "--attack",
        choices=_ATTACKS,
        default=d.attack,
        help="fused: fastpgd's fused PGD (default); reference: the pure-PyTorch "
        "PGD; none: natural training",
    )
    opt.add_argument("--seed", type=_nonneg_int, default=d.seed)
    opt.add_argument("--device", default=d.device, help="auto (default), cpu, cuda, cuda:1, ...")

    rp = parser.add_argument_group(
        "attacking less (evaluation is unchanged)",
        "--replay: warm-start each example's attack from its perturbation of the previous epoch "
        "(Zheng et al., CVPR 2020); --free-replays m: free adversarial training (Shafahi et al., "
        "NeurIPS 2019), each batch trained m times, ceil(epochs / m) passes",
    )
    rp.add_argument(
        "--replay",
        action="store_true",
        help="keep one perturbation per training example across epochs",
    )
    rp.add_argument(
        "--replay-steps",
        type=_positive_int,
        help="attack steps from a warm start (default: ceil(--attack-steps / 4))",
    )
    rp.add_argument(
        "--replay-reset",
        type=_nonneg_int,
        default=d.replay_reset,
        metavar="K",
        help="forget the memory every K epochs; 0: never (default)",
    )
    rp.add_argument(
        "--replay-dtype",
        choices=_REPLAY_DTYPES,
        default=d.replay_dtype,
        help="how the memory stores perturbations: input (exact, default), float16 "
        "(relative error 2^-11), int8 (error <= eps/254)",
    )
    rp.add_argument(
        "--free-replays",
        type=_positive_int,
        default=d.free_replays,
        metavar="M",
        help="free adversarial training with M replays per batch; 1: off (default)",
    )

    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--eval-every",
        type=_nonneg_int,
        default=d.eval_every,
        help="evaluate every N epochs; 0: only at the end (default)",
    )
    ev.add_argument(
        "--eval-steps",
        type=_positive_int,
        help="PGD steps of the evaluation (default: 2x --attack-steps)",
    )
    ev.add_argument(
        "--eval-restarts",
        type=_positive_int,
        default=d.eval_restarts,
        help="random restarts of the evaluation attack (default: %(default)s)",
    )
    ev.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size)
    ev.add_argument("--eval-limit", type=_positive_int, help="evaluate on this many test images")
    ev.add_argument(
        "--compare-natural",
        action="store_true",
        help="also train with --attack none for the same budget and print both",
    )

    rep = parser.add_argument_group("timing and output")
    rep.add_argument(
        "--sync",
        choices=_SYNCS,
        default=d.sync,
        help="GPU timing: events on CUDA and none on CPU by default",
    )
    rep.add_argument(
        "--report-every",
        type=_nonneg_int,
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
    ck.add_argument("--checkpoint-every", type=_nonneg_int, default=d.checkpoint_every)
    ck.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = train(config)
    except (ValueError, FileNotFoundError) as exc:
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
