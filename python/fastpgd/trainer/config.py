"""What defines a training run: :class:`TrainConfig`, its per-dataset defaults, its checks, and
:class:`TrainResult`, what a run returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from fastpgd.data import DATASETS

__all__ = ["DATASET_DEFAULTS", "TrainConfig", "TrainResult"]

#:
#: - ``mnist``: Madry et al.: batch 50, Adam lr 1e-4, eps 0.3, step 0.01, 40 steps; 84 epochs
#:   is their 100,000 iterations at batch 50.
#: - ``fashion-mnist``: the MNIST recipe at eps 0.1, the radius commonly used for Fashion-MNIST
#:   (0.3 erases most of the texture that tells a shirt from a pullover).
#: - ``digits`` (8x8, pixels in steps of 1/16; 1437 training images): eps 0.2 (about three grey
#:   levels), alpha 0.05, 7 steps, Adam lr 1e-3, 30 epochs (870 steps), measured on a shared
#:   2-core CPU (one thread), evaluating with 14 steps and 3 restarts: eps 0.3 does not train
#:   (16% PGD accuracy after 20 epochs: on 64 pixels it erases too much of the digit), eps 0.2
#:   reaches about 47% PGD accuracy (natural training: below 1%), eps 0.1 about 89%. 10 steps or
#:   40 epochs gave no gain; lr 1e-4 needs about ten times the epochs on so few images.
#: - ``synthetic``: the MNIST attack on random 28x28 images, for benchmarks; 1 epoch.
DATASET_DEFAULTS: dict[str, dict] = {
    "digits": dict(batch_size=50, lr=1e-3, eps=0.2, alpha=0.05, attack_steps=7, epochs=30),
    "mnist": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=84),
    "fashion-mnist": dict(batch_size=50, lr=1e-4, eps=0.1, alpha=0.01, attack_steps=40, epochs=84),
    "synthetic": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=1),
}

# Settings that shape the sequence of weights: a checkpoint continues only under the same ones.
_TRAJECTORY_FIELDS = (
    "dataset", "image_size", "synthetic_size", "batch_size", "lr", "eps", "alpha",
    "attack_steps", "attack", "seed", "replay", "replay_steps", "replay_reset", "replay_dtype",
    "free_replays",
)  # fmt: skip
_ATTACKS = ("fused", "reference", "none")
_REPLAY_DTYPES = ("input", "float16", "int8")
# Settings added after the first checkpoint version, with the value older checkpoints imply.
_TRAJECTORY_DEFAULTS = {"replay": False, "replay_steps": None, "replay_reset": 0,
                        "replay_dtype": "input", "free_replays": 1}  # fmt: skip
_SYNCS = ("auto", "none", "cuda", "events")
_EVAL_SEED_OFFSET = 1_000_003  # evaluation draws from its own generator, never the training one


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means the dataset's default.

    Args:
        dataset (str): ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"synthetic"``.
            Default: ``"digits"``.
        data_dir (str, optional): IDX directory for ``mnist`` / ``fashion-mnist``.
        epochs (int, optional): passes over the training split. Default: per dataset.
        max_steps (int, optional): stop after this many optimizer steps in all (counting
            those before a resume). Default: no limit.
        batch_size (int, optional): per process. Default: 50.
        lr (float, optional): Adam learning rate. Default: per dataset.
        eps (float, optional): Linf radius, for training and evaluation. Default: per dataset.
        alpha (float, optional): PGD step size. Default: per dataset.
        attack_steps (int, optional): PGD steps during training. Default: per dataset.
        attack (str): ``"fused"``, ``"reference"`` or ``"none"`` (natural training).
            Default: ``"fused"``.
        eval_every (int): evaluate every this many epochs (0: only at the end). Default: 0.
        eval_steps (int, optional): PGD steps of the evaluation. Default: 2 * attack_steps.
        eval_restarts (int): random restarts of the evaluation attack. Default: 3.
        eval_batch_size (int): Default: 500.
        eval_limit (int, optional): evaluate on the first this many test images only.
        seed (int): seeds the model, data order and attack. Default: 0.
        device (str): ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        sync (str): timer GPU mode: ``"auto"`` (events on CUDA, none on CPU), ``"none"``,
            ``"cuda"``, ``"events"``. Default: ``"auto"``.
        report_every (int): print the phase table every this many steps (0: only at the end).
        timing_json (str, optional): write all laps here at the end.
        plot (str, optional): draw the phase breakdown here at the end.
        checkpoint (str, optional): checkpoint file, written at the end, every
            ``checkpoint_every`` steps and on SIGINT/SIGTERM.
        checkpoint_every (int): Default: 0 (never in between).
        resume (bool): continue from ``checkpoint``. Default: False.
        quiet (bool): no progress bar. Default: False.
        compare_natural (bool): also train with ``attack="none"`` and the same budget, and
            report both. Default: False.
        synthetic_size (int): images in the synthetic training split. Default: 1000.
        image_size (int): side of synthetic images. Default: 28.
        num_workers (int): DataLoader worker processes. Default: 0.
        replay (bool): keep each example's perturbation in a
            :class:`~fastpgd.replay.ReplayMemory` and warm-start the next epoch's attack from
            it. Default: False.
        replay_steps (int, optional): attack steps from a warm start. Default:
            ``ceil(attack_steps / 4)`` (2 for digits).
        replay_reset (int): forget the memory every this many epochs (0: never). Default: 0.
        replay_dtype (str): ``"input"``, ``"float16"`` or ``"int8"``: how the memory stores
            perturbations (see :class:`~fastpgd.replay.ReplayMemory`). Default: ``"input"``.
        free_replays (int): train each batch this many times, free adversarial training
            (Shafahi et al.); 1: off. Epochs become ``ceil(epochs / free_replays)`` passes.
            Default: 1.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    eps: float | None = None
    alpha: float | None = None
    attack_steps: int | None = None
    attack: str = "fused"
    eval_every: int = 0
    eval_steps: int | None = None
    eval_restarts: int = 3
    eval_batch_size: int = 500
    eval_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    sync: str = "auto"
    report_every: int = 0
    timing_json: str | None = None
    plot: str | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    quiet: bool = False
    compare_natural: bool = False
    synthetic_size: int = 1000
    image_size: int = 28
    num_workers: int = 0
    replay: bool = False
    replay_steps: int | None = None
    replay_reset: int = 0
    replay_dtype: str = "input"
    free_replays: int = 1

    def resolved(self) -> TrainConfig:
        """A copy with the dataset's defaults filled in, every field checked.

        Raises:
            TypeError, ValueError: naming the field.
        """
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        c = dataclasses.replace(self)
        for key, value in DATASET_DEFAULTS[c.dataset].items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if c.eval_steps is None:
            c.eval_steps = 2 * c.attack_steps
        if c.replay and c.replay_steps is None:
            if isinstance(c.attack_steps, int) and not isinstance(c.attack_steps, bool):
                c.replay_steps = max(1, math.ceil(c.attack_steps / 4))
        if c.dataset != "synthetic":
            c.image_size = 8 if c.dataset == "digits" else 28
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps", "eval_restarts",
                     "eval_batch_size", "synthetic_size", "image_size"):  # fmt: skip
            _check_int(name, getattr(c, name), minimum=1)
        for name in ("max_steps", "eval_limit"):
            if getattr(c, name) is not None:
                _check_int(name, getattr(c, name), minimum=1)
        for name in ("eval_every", "report_every", "checkpoint_every", "num_workers", "seed",
                     "replay_reset"):  # fmt: skip
            _check_int(name, getattr(c, name), minimum=0)
        _check_int("free_replays", c.free_replays, minimum=1)
        if c.replay_steps is not None:
            _check_int("replay_steps", c.replay_steps, minimum=1)
        if not isinstance(c.replay, bool):
            raise TypeError(f"replay must be a bool, got {type(c.replay).__name__}")
        if c.replay_dtype not in _REPLAY_DTYPES:
            raise ValueError(f"replay_dtype must be one of {', '.join(_REPLAY_DTYPES)}; "
                             f"got {c.replay_dtype!r}")  # fmt: skip
        if c.replay and c.free_replays > 1:
            raise ValueError("replay and free_replays > 1 exclude each other: free adversarial "
                             "training keeps its own perturbation buffer")  # fmt: skip
        if (c.replay or c.free_replays > 1) and c.attack == "none":
            what = "replay" if c.replay else "free_replays"
            raise ValueError(f"{what} needs an attack; got attack='none'")
        for name in ("lr", "eps", "alpha"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value}")
            setattr(c, name, float(value))
        if c.attack not in _ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(_ATTACKS)}; got {c.attack!r}")
        if c.sync not in _SYNCS:
            raise ValueError(f"sync must be one of {', '.join(_SYNCS)}; got {c.sync!r}")
        if c.resume and not c.checkpoint:
            raise ValueError("resume needs checkpoint: the file to continue from")
        if c.checkpoint_every and not c.checkpoint:
            raise ValueError("checkpoint_every needs checkpoint: the file to write")
        return c


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model (nn.Module): the trained network (not the DDP wrapper).
        clean_acc (float): accuracy on the test split, in [0, 1] (NaN when interrupted).
        pgd_acc (float): accuracy under the evaluation PGD attack at ``config.eps``.
        steps (int): optimizer steps done in all.
        interrupted (bool): stopped by SIGINT/SIGTERM (a checkpoint was written if configured).
        history (list[dict]): one entry per evaluation: ``epoch``, ``step``, ``clean_acc``,
            ``pgd_acc``.
        timers (Timers): the phase laps.
        config (TrainConfig): the resolved configuration.
        natural (TrainResult, optional): the naturally trained model of the same budget, when
            ``compare_natural`` was set.
    """

    model: nn.Module
    clean_acc: float
    pgd_acc: float
    steps: int
    interrupted: bool
    history: list
    timers: object
    config: TrainConfig
    natural: TrainResult | None = None
