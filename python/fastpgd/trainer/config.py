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
LR_SCHEDULES = ("constant", "piecewise", "cosine", "onecycle")
ATTACKS = ("fused", "reference", "none")
REPLAY_DTYPES = ("input", "float16", "int8")
SYNCS = ("auto", "none", "cuda", "events")
CUDA_GRAPHS = ("auto", "off", "attack", "step")
AMPS = ("off", "bf16", "fp16")
#: The training methods, one module each under :mod:`fastpgd.trainer.methods`.
METHODS = ("pgd", "fgsm-rs", "n-fgsm", "free", "replay", "pgi", "trades")
ON_COLLAPSE = ("report", "stop", "restore")
#: Each method's own settings and their defaults; a setting given for a method not listed here
#: is refused (it would be ignored). ``replay_steps`` is filled from ``attack_steps``.
METHOD_SETTINGS = {
    "fgsm_step": {"fgsm-rs": 1.25, "n-fgsm": 1.0, "pgi": 1.0},  # Wong et al.; de Jorge et al.
    "fgsm_noise": {"fgsm-rs": 1.0, "n-fgsm": 2.0},
    "free_replays": {"free": 4},  # Shafahi et al. find m = 4 to 10 works; m = 4 is the cheapest
    "pgi_momentum": {"pgi": 0.3},  # Jia et al.'s CIFAR-10 settings
    "pgi_lambda": {"pgi": 10.0},
    "pgi_reset": {"pgi": 40},
    "trades_beta": {"trades": 6.0},  # Zhang et al.'s beta for CIFAR-10 (1/lambda in the paper)
    "replay_steps": {"replay": None},
}
#: The single-step methods, prone to catastrophic overfitting: the guard is on by default.
GUARDED_METHODS = ("fgsm-rs", "n-fgsm", "pgi")
GUARD_IMAGES = 256  # the guard's default slice: a few hundred images, a few batches of PGD

# Settings that shape the sequence of weights: a checkpoint continues only under the same ones.
# (deterministic is checked on its own, with its own message; cuda_graph is not here: the
# captured step computes what the eager one does.)
TRAJECTORY_FIELDS = (
    "dataset", "image_size", "synthetic_size", "batch_size", "lr", "eps", "alpha",
    "attack_steps", "attack", "seed", "replay", "replay_steps", "replay_reset", "replay_dtype",
    "free_replays", "model", "optimizer", "momentum", "weight_decay", "lr_schedule", "augment",
    "amp", "tf32",
    # the methods and their recipe
    "method", "fgsm_step", "fgsm_noise", "pgi_momentum", "pgi_lambda", "pgi_reset",
    "trades_beta", "label_smoothing", "ema", "guard", "on_collapse",
)  # fmt: skip
# Settings added after the first checkpoint version, with the value older checkpoints imply.
TRAJECTORY_DEFAULTS = {
    "replay": False, "replay_steps": None, "replay_reset": 0, "replay_dtype": "input",
    "free_replays": 1, "model": "madry-cnn", "optimizer": "adam", "momentum": 0.0,
    "weight_decay": 0.0, "lr_schedule": "constant", "augment": False, "amp": "off",
    "tf32": False,
    "fgsm_step": None, "fgsm_noise": None, "pgi_momentum": None, "pgi_lambda": None,
    "pgi_reset": None, "trades_beta": None, "label_smoothing": 0.0, "ema": None, "guard": 0,
    "on_collapse": "report",
}  # fmt: skip


def implied_method(saved: dict) -> str:
    """The method of a configuration saved before ``method`` existed: ``replay`` and
    ``free_replays`` chose it then."""
    if saved.get("replay"):
        return "replay"
    return "free" if (saved.get("free_replays") or 1) > 1 else "pgd"


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
        lr_schedule (str, optional): ``"constant"``, ``"piecewise"`` (the learning rate
            divided by 10 after 50% and again after 75% of the steps), ``"cosine"`` (from
            ``lr`` down to 0 along half a cosine) or ``"onecycle"`` (the learning rate of
            :class:`torch.optim.lr_scheduler.OneCycleLR` with its defaults: up from ``lr / 25``
            to ``lr`` over the first 30% of the steps, then down to ``lr / 25e4``, both along
            cosines; the momentum is not cycled). Default: per dataset.
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
        free_replays (int, optional): ``method="free"``: train each batch this many times
            (Shafahi et al.'s m); epochs become ``ceil(epochs / free_replays)`` passes. Given
            alone (> 1) it selects ``method="free"``. Default: 4.
        method (str, optional): how each batch is trained (one module each under
            :mod:`fastpgd.trainer.methods`): ``"pgd"`` (Madry et al.), ``"fgsm-rs"`` (Wong et
            al. 2020), ``"n-fgsm"`` (de Jorge et al. 2022), ``"free"`` (Shafahi et al. 2019),
            ``"replay"`` (the replay memory), ``"pgi"`` (FGSM-PGI, Jia et al. 2022) or
            ``"trades"`` (Zhang et al. 2019). Default: ``"replay"`` when ``replay``,
            ``"free"`` when ``free_replays > 1``, else ``"pgd"``.
        fgsm_step (float, optional): the single step of ``fgsm-rs``, ``n-fgsm`` and ``pgi``,
            in multiples of ``eps``. Default: 1.25 (fgsm-rs), 1 (n-fgsm, pgi).
        fgsm_noise (float, optional): the half-width of the uniform start of ``fgsm-rs`` and
            ``n-fgsm``, in multiples of ``eps``. Default: 1 (fgsm-rs), 2 (n-fgsm).
        pgi_momentum (float, optional): ``pgi``: decay of the stored momentum. Default: 0.3.
        pgi_lambda (float, optional): ``pgi``: weight of the logit regulariser. Default: 10.
        pgi_reset (int, optional): ``pgi``: draw a new prior every this many epochs (0: only
            at the start). Default: 40.
        trades_beta (float, optional): ``trades``: weight of the KL term. Default: 6.
        label_smoothing (float): label smoothing of the training loss, in [0, 1). Default: 0.
        ema (float, optional): keep an exponential moving average of the weights with this
            decay (per optimizer step, in (0, 1)); it is what is evaluated, returned and
            checkpointed beside the raw weights. Default: ``None`` (off).
        guard (int, optional): the catastrophic-overfitting guard: PGD accuracy on this many
            training images (a fixed slice) after every epoch; 0: off. Default: 256 for
            ``fgsm-rs``, ``n-fgsm`` and ``pgi``, else 0.
        on_collapse (str): what a collapse the guard sees does: ``"report"`` (one line),
            ``"stop"`` (stop training), ``"restore"`` (put back the weights and optimizer state
            of the last good epoch and stop, as Wong et al.'s early stopping). Default:
            ``"report"``.
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
    free_replays: int | None = None
    # -- the training method and its recipe
    method: str | None = None
    fgsm_step: float | None = None
    fgsm_noise: float | None = None
    pgi_momentum: float | None = None
    pgi_lambda: float | None = None
    pgi_reset: int | None = None
    trades_beta: float | None = None
    label_smoothing: float = 0.0
    ema: float | None = None
    guard: int | None = None
    on_collapse: str = "report"

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
        _resolve_method(c)
        if c.method == "replay" and c.replay_steps is None:
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
        if c.method != "pgd" and c.attack == "none":
            what = {"replay": "replay", "free": "free_replays"}.get(
                c.method, f"method={c.method!r}"
            )
            raise ValueError(f"{what} needs an attack; got attack='none'")
        _check_recipe(c)
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


def _resolve_method(c: TrainConfig) -> None:
    """Fill ``c.method`` (from the ``replay`` and ``free_replays`` aliases when unset) and its
    own settings; refuse a setting given for another method."""
    if not isinstance(c.replay, bool):
        raise TypeError(f"replay must be a bool, got {type(c.replay).__name__}")
    if c.free_replays is not None:
        _check_int("free_replays", c.free_replays, minimum=1)
    free_m = c.free_replays or 1
    if c.replay and free_m > 1:
        raise ValueError("replay and free_replays > 1 exclude each other: free adversarial "
                         "training keeps its own perturbation buffer")  # fmt: skip
    if c.method is None:
        c.method = "replay" if c.replay else "free" if free_m > 1 else "pgd"
    _check_choice("method", c.method, METHODS)
    if c.replay and c.method != "replay":
        raise ValueError(f"replay=True is method='replay' (its alias); got method={c.method!r}")
    if c.free_replays == 1 and c.method != "free":
        c.free_replays = None  # "1: off", as before methods existed
    for name, defaults in METHOD_SETTINGS.items():
        value = getattr(c, name)
        if value is None:
            setattr(c, name, defaults.get(c.method))
        elif c.method not in defaults:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) applies to method {' or '.join(defaults)}; got "
                             f"method={c.method!r}")  # fmt: skip
    c.replay = c.method == "replay"
    if c.method != "free":
        c.free_replays = 1  # the value that has meant "no free training" since the first version


def natural_method() -> dict:
    """The :class:`TrainConfig` fields that make a configuration's method natural training
    (``method="pgd"`` with ``attack="none"``, no method settings, no guard), for its naturally
    trained twin."""
    return {"method": "pgd", "replay": False, "free_replays": None, "guard": None,
            "on_collapse": "report", **{name: None for name in METHOD_SETTINGS}}  # fmt: skip


def _check_recipe(c: TrainConfig) -> None:
    """The method's own settings and the recipe (label smoothing, EMA, the guard)."""
    if c.fgsm_step is not None:
        c.fgsm_step = _check_float("fgsm_step", c.fgsm_step, positive=True)
    for name in ("fgsm_noise", "pgi_momentum", "pgi_lambda", "trades_beta"):
        if getattr(c, name) is not None:
            setattr(c, name, _check_float(name, getattr(c, name), positive=False))
    if c.pgi_momentum is not None and c.pgi_momentum >= 1.0:
        raise ValueError(f"pgi_momentum must be < 1, got {c.pgi_momentum}")
    if c.pgi_reset is not None:
        _check_int("pgi_reset", c.pgi_reset, minimum=0)
    c.label_smoothing = _check_float("label_smoothing", c.label_smoothing, positive=False)
    if c.label_smoothing >= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.ema is not None:
        c.ema = _check_float("ema", c.ema, positive=True)
        if c.ema >= 1.0:
            raise ValueError(f"ema must be a decay in (0, 1), got {c.ema}")
    if c.guard is None:
        c.guard = GUARD_IMAGES if c.method in GUARDED_METHODS else 0
    _check_int("guard", c.guard, minimum=0)
    _check_choice("on_collapse", c.on_collapse, ON_COLLAPSE)
    if c.on_collapse != "report" and not c.guard:
        raise ValueError(f"on_collapse={c.on_collapse!r} needs the guard: set guard > 0 (the "
                         "training images it checks after every epoch)")  # fmt: skip


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
        model (nn.Module): the evaluated network: the weight average with ``ema``, else the
            trained network (not the DDP wrapper).
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
        collapse (dict, optional): what the catastrophic-overfitting guard saw when it found a
            collapse (``epoch``, ``step``, ``pgd_acc``, ``clean_acc``, ``best_pgd_acc``,
            ``best_epoch``, ``action``); ``None`` when it found none or was off.
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
    collapse: dict | None = None
