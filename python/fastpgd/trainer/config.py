"""What defines a training run: :class:`TrainConfig`, its per-dataset defaults, its checks, and
:class:`TrainResult`, what a run returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from fastpgd.data import DATASETS

__all__ = ["DATASET_DEFAULTS", "TrainConfig", "TrainResult"]

#: Per-dataset defaults of the settings left as ``None`` in :class:`TrainConfig`.
#:
#: - ``mnist``: Madry et al.: their CNN, batch 50, Adam lr 1e-4, eps 0.3, step 0.01, 40 steps;
#:   84 epochs is their 100,000 iterations at batch 50.
#: - ``fashion-mnist``: the MNIST recipe at eps 0.1, the radius commonly used for Fashion-MNIST
#:   (0.3 erases most of the texture that tells a shirt from a pullover).
#: - ``digits`` (8x8, pixels in steps of 1/16; 1437 training images): eps 0.2 (about three grey
#:   levels), alpha 0.05, 7 steps, Adam lr 1e-3, 30 epochs (870 steps), measured on a shared
#:   2-core CPU (one thread), evaluating with 14 steps and 3 restarts: eps 0.3 does not train
#:   (16% PGD accuracy after 20 epochs: on 64 pixels it erases too much of the digit), eps 0.2
#:   reaches about 47% PGD accuracy (natural training: below 1%), eps 0.1 about 89%. 10 steps or
#:   40 epochs gave no gain; lr 1e-4 needs about ten times the epochs on so few images.
#: - ``cifar10``, ``cifar100``: the recipe of Rice et al. ("Overfitting in adversarially robust
#:   deep learning", ICML 2020) that most later work follows, with Madry et al.'s CIFAR threat
#:   model (eps 8/255; they trained with 7 steps of 2/255): PreAct ResNet-18, batch 128, SGD
#:   with momentum 0.9 and weight decay 5e-4, learning rate 0.1 divided by 10 at 50% and 75% of
#:   training (their epochs 100 and 150 of 200), PGD with eps 8/255, step 2/255, 10 steps,
#:   random crops of 4-pixel padding and horizontal flips;
#:   evaluated with PGD-20 (here with 3 restarts).
#: - ``synthetic``: the MNIST attack on random 28x28 images, for benchmarks; 1 epoch.
DATASET_DEFAULTS: dict[str, dict] = {
    "digits": dict(batch_size=50, lr=1e-3, eps=0.2, alpha=0.05, attack_steps=7, epochs=30),
    "mnist": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=84),
    "fashion-mnist": dict(batch_size=50, lr=1e-4, eps=0.1, alpha=0.01, attack_steps=40, epochs=84),
    "synthetic": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=1),
}
_CIFAR = dict(
    batch_size=128, lr=0.1, eps=8 / 255, alpha=2 / 255, attack_steps=10, epochs=200,
    eval_steps=20, model="preact-resnet18", optimizer="sgd", weight_decay=5e-4,
    lr_schedule="piecewise", augment=True,
)  # fmt: skip
DATASET_DEFAULTS["cifar10"] = dict(_CIFAR)
DATASET_DEFAULTS["cifar100"] = dict(_CIFAR)
# What the MNIST-size datasets use for the settings only CIFAR changes.
_SMALL_IMAGE_DEFAULTS = dict(model="madry-cnn", optimizer="adam", weight_decay=0.0,
                             lr_schedule="constant", augment=False)  # fmt: skip
SGD_MOMENTUM = 0.9  # the default momentum of optimizer="sgd" (Adam has none)
for _name, _defaults in DATASET_DEFAULTS.items():
    for _key, _value in _SMALL_IMAGE_DEFAULTS.items():
        _defaults.setdefault(_key, _value)

MODELS = ("madry-cnn", "preact-resnet18", "wrn-34-10")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "piecewise")
ATTACKS = ("fused", "reference", "none")
REPLAY_DTYPES = ("input", "float16", "int8")
SYNCS = ("auto", "none", "cuda", "events")
CUDA_GRAPHS = ("auto", "off", "attack", "step")
AMPS = ("off", "bf16", "fp16")

# Settings that shape the sequence of weights: a checkpoint continues only under the same ones.
# (deterministic is checked on its own, with its own message; cuda_graph is not here: the
# captured step computes what the eager one does.)
TRAJECTORY_FIELDS = (
    "dataset", "image_size", "synthetic_size", "batch_size", "lr", "eps", "alpha",
    "attack_steps", "attack", "seed", "replay", "replay_steps", "replay_reset", "replay_dtype",
    "free_replays", "model", "optimizer", "momentum", "weight_decay", "lr_schedule", "augment",
    "amp", "tf32",
)  # fmt: skip
# Settings added after the first checkpoint version, with the value older checkpoints imply.
TRAJECTORY_DEFAULTS = {
    "replay": False, "replay_steps": None, "replay_reset": 0, "replay_dtype": "input",
    "free_replays": 1, "model": "madry-cnn", "optimizer": "adam", "momentum": 0.0,
    "weight_decay": 0.0, "lr_schedule": "constant", "augment": False, "amp": "off",
    "tf32": False,
}  # fmt: skip
EVAL_SEED_OFFSET = 1_000_003  # evaluation draws from its own generator, never the training one


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means the dataset's default.

    Args:
        dataset (str): ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar100"`` or ``"synthetic"``. Default: ``"digits"``.
        data_dir (str, optional): the directory (or CIFAR archive) of ``mnist``,
            ``fashion-mnist``, ``cifar10``, ``cifar100``; refused for ``digits`` and
            ``synthetic``.
        epochs (int, optional): passes over the training split. Default: per dataset.
        max_steps (int, optional): stop after this many optimizer steps in all (counting
            those before a resume). Default: no limit.
        batch_size (int, optional): per process. Default: per dataset (50; 128 for CIFAR).
        lr (float, optional): learning rate. Default: per dataset.
        eps (float, optional): Linf radius, for training and evaluation. Default: per dataset.
        alpha (float, optional): PGD step size. Default: per dataset.
        attack_steps (int, optional): PGD steps during training. Default: per dataset.
        attack (str): ``"fused"``, ``"reference"`` or ``"none"`` (natural training).
            Default: ``"fused"``.
        model (str, optional): ``"madry-cnn"`` (Madry et al.'s CNN, sized to the input),
            ``"preact-resnet18"`` or ``"wrn-34-10"`` (CIFAR-size inputs, normalisation inside).
            Default: per dataset (madry-cnn; preact-resnet18 for CIFAR).
        optimizer (str, optional): ``"adam"`` or ``"sgd"``. Default: per dataset.
        momentum (float, optional): SGD momentum. Default: 0.9 with ``"sgd"``, 0 with
            ``"adam"`` (which takes none).
        weight_decay (float, optional): Default: per dataset (5e-4 for CIFAR, else 0).
        lr_schedule (str, optional): ``"constant"`` or ``"piecewise"`` (the learning rate
            divided by 10 after 50% and again after 75% of the steps). Default: per dataset.
        augment (bool, optional): random crops (4-pixel zero padding) and horizontal flips,
            drawn on the device from the run's seed. Default: per dataset (CIFAR only).
        eval_every (int): evaluate every this many epochs (0: only at the end). Default: 0.
        eval_steps (int, optional): PGD steps of the evaluation. Default: 2 * attack_steps
            (20 for CIFAR).
        eval_restarts (int): random restarts of the evaluation attack. Default: 3.
        eval_batch_size (int): Default: 500.
        eval_limit (int, optional): evaluate on the first this many test images only.
        seed (int): seeds the model, data order, augmentation and attack. Default: 0.
        device (str): ``"auto"`` (CUDA when available; ``cuda:LOCAL_RANK`` under
            ``torchrun``), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        cuda_graph (str): ``"auto"``: on CUDA, the attack (training and evaluation) replays a
            captured CUDA graph of its step; off on the CPU. ``"attack"``: the same, and an
            error on the CPU. ``"step"``: the whole training step (attack, forward, backward,
            optimizer) is one graph per batch shape; evaluation as ``"attack"``. ``"off"``:
            eager. Combinations that cannot be captured fall back (said once at start).
            Default: ``"auto"``.
        amp (str): ``"off"``, ``"bf16"`` or ``"fp16"``: autocast for the attack and the training
            forward (fp16 with a gradient scaler). Default: ``"off"``.
        tf32 (bool): allow TF32 in float32 matmuls and convolutions on CUDA. Default: False.
        channels_last (bool): model and inputs in channels-last memory format. Default: False.
        deterministic (bool): deterministic algorithms (``torch.use_deterministic_algorithms``,
            cuDNN deterministic without benchmarking, a fixed cuBLAS workspace), so that CUDA
            runs repeat and resume bit for bit. Default: False.
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
        num_workers (int): DataLoader worker processes; 0 indexes the in-memory dataset
            directly (on the device when it fits). Default: 0.
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
    model: str | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_schedule: str | None = None
    augment: bool | None = None
    eval_every: int = 0
    eval_steps: int | None = None
    eval_restarts: int = 3
    eval_batch_size: int = 500
    eval_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    cuda_graph: str = "auto"
    amp: str = "off"
    tf32: bool = False
    channels_last: bool = False
    deterministic: bool = False
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
        _check_choice("dataset", self.dataset, DATASETS)
        c = dataclasses.replace(self)
        for key, value in DATASET_DEFAULTS[c.dataset].items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if c.momentum is None:
            c.momentum = SGD_MOMENTUM if c.optimizer == "sgd" else 0.0
        if c.eval_steps is None:
            c.eval_steps = 2 * c.attack_steps
        if c.replay and c.replay_steps is None:
            if isinstance(c.attack_steps, int) and not isinstance(c.attack_steps, bool):
                c.replay_steps = max(1, math.ceil(c.attack_steps / 4))
        if c.dataset != "synthetic":
            c.image_size = {"digits": 8, "cifar10": 32, "cifar100": 32}.get(c.dataset, 28)
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
        for name in ("replay", "augment", "tf32", "channels_last", "deterministic", "resume",
                     "quiet", "compare_natural"):  # fmt: skip
            if not isinstance(getattr(c, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(c, name)).__name__}")
        for name, choices in (("attack", ATTACKS), ("model", MODELS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("replay_dtype", REPLAY_DTYPES),
                              ("sync", SYNCS), ("cuda_graph", CUDA_GRAPHS),
                              ("amp", AMPS)):  # fmt: skip
            _check_choice(name, getattr(c, name), choices)
        if c.replay and c.free_replays > 1:
            raise ValueError("replay and free_replays > 1 exclude each other: free adversarial "
                             "training keeps its own perturbation buffer")  # fmt: skip
        if (c.replay or c.free_replays > 1) and c.attack == "none":
            what = "replay" if c.replay else "free_replays"
            raise ValueError(f"{what} needs an attack; got attack='none'")
        for name in ("lr", "eps", "alpha"):
            setattr(c, name, _check_float(name, getattr(c, name), positive=True))
        for name in ("momentum", "weight_decay"):
            setattr(c, name, _check_float(name, getattr(c, name), positive=False))
        if c.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {c.momentum}")
        if c.optimizer == "adam" and c.momentum != 0.0:
            raise ValueError("momentum applies to optimizer='sgd' (Adam has betas); got "
                             f"momentum={c.momentum} with optimizer='adam'")  # fmt: skip
        if c.data_dir is not None and c.dataset in ("digits", "synthetic"):
            raise ValueError(f"data_dir does not apply to dataset {c.dataset!r} (it ships with "
                             "fastpgd or is generated); drop it or pick a dataset read from "
                             "files")  # fmt: skip
        if c.resume and not c.checkpoint:
            raise ValueError("resume needs checkpoint: the file to continue from")
        if c.checkpoint_every and not c.checkpoint:
            raise ValueError("checkpoint_every needs checkpoint: the file to write")
        return c


def pixel_budget(value: float) -> str:
    """``value`` for a report: a budget of whole grey levels that has no short decimal form is
    also written as a fraction of 255 (8/255 is 0.03137 (8/255); 0.2 stays 0.2)."""
    levels = value * 255
    if round(value, 4) != value and abs(levels - round(levels)) < 1e-9 and round(levels):
        return f"{value:.4g} ({round(levels)}/255)"
    return f"{value:g}"


def _check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a positive finite number" if positive else "a finite number >= 0"
        raise ValueError(f"{name} must be {need}, got {value}")
    return float(value)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model (nn.Module): the trained network (not the DDP wrapper).
        clean_acc (float): accuracy on the test split, in [0, 1] (NaN when interrupted or
            not evaluated).
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
