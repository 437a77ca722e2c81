"""torchattacks-style attack objects, ``PGD`` (Linf) and ``PGDL2``, backed by :func:`fused_pgd`.

Code written for torchattacks 3.5.1 switches with one line::

    atk = torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    atk = fastpgd.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    adv_images = atk(images, labels)

The constructors take torchattacks' arguments with its defaults, and the mode setters keep their
names and meaning (targeted by label, by function, random and least likely; normalisation;
the model's mode during the attack). Each attack runs :func:`fastpgd.fused_pgd` on the whole
batch. Where the two libraries differ, the class docstrings say how.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import sys
from collections.abc import Callable

import torch
from torch import nn

from fastpgd.attacks._common import check_count, model_device, model_mode
from fastpgd.attacks.pgd import fused_pgd

__all__ = ["PGD", "PGDL2"]

_AMP_DTYPES = (torch.float16, torch.bfloat16)
# torchattacks' PGDL2 default; the only value fastpgd can honour (see the PGDL2 docstring).
_TORCHATTACKS_EPS_FOR_DIVISION = 1e-10

# Arguments of other torchattacks attacks (or of fused_pgd) that people pass by habit, and where
# fastpgd offers the feature instead.
_UNSUPPORTED_HINTS = {
    "norm": "fastpgd.PGD is the Linf attack and fastpgd.PGDL2 the L2 one",
    "eps_for_division": "only PGDL2 takes eps_for_division",
    "n_restarts": "for random restarts call fastpgd.fused_pgd(..., restarts=n)",
    "restarts": "for random restarts call fastpgd.fused_pgd(..., restarts=n)",
    "loss": "for another loss call fastpgd.fused_pgd(..., loss_fn=...)",
    "loss_fn": "for another loss call fastpgd.fused_pgd(..., loss_fn=...)",
    "seed": "pass generator=torch.Generator(device).manual_seed(seed)",
    "targeted": "call set_mode_targeted_by_label() or another set_mode_targeted_* method",
    "device": "the attack runs on the model's device; see set_device()",
    "verbose": "fastpgd attacks print nothing",
}


# --------------------------------------------------------------------------------------------
# Checked attributes: the constructor and later assignments (atk.eps = 4/255) share the checks
# --------------------------------------------------------------------------------------------


class _Checked:
    """An attribute whose every assignment goes through ``check(qualified_name, value)``."""

    def __init__(self, check: Callable):
        self.check = check

    def __set_name__(self, owner, name: str):
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj, value):
        setattr(obj, self.slot, self.check(f"{type(obj).__name__}.{self.name}", value))


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _module(name: str, value) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def _amp_dtype(name: str, value):
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be None or a torch.dtype, got {type(value).__name__}")
    if value is not None and value not in _AMP_DTYPES:
        raise ValueError(f"{name} must be None, torch.float16 or torch.bfloat16, got {value}")
    return value


def _generator(name: str, value):
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be None or a torch.Generator, got {type(value).__name__}")
    return value


def _eps_for_division(name: str, value) -> float:
    value = _real(name, value)
    if value != _TORCHATTACKS_EPS_FOR_DIVISION:
        raise ValueError(
            f"{name} must be {_TORCHATTACKS_EPS_FOR_DIVISION:g} (torchattacks' default), got "
            f"{value:g}: fastpgd's L2 step divides by max(||g||, 1e-12) and cannot use another "
            "guard; see the PGDL2 docstring"
        )
    return value


def _bool_args(call: str, **flags) -> None:
    for key, value in flags.items():
        _flag(f"{call}: {key}", value)


# --------------------------------------------------------------------------------------------
# Model modes and normalisation
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool, batchnorm: bool = False, dropout: bool = False):
    """torchattacks' rule for the model's mode during an attack; every flag restored after.

    ``training=False``: the whole model in eval mode. ``training=True``: train mode, except
    modules whose class name contains ``BatchNorm`` (``Dropout``), which follow ``batchnorm``
    (``dropout``). torchattacks matches class names, so a user's ``MyBatchNorm`` counts too.
    """
    with model_mode(model, "train" if training else "eval"):
        if training:
            for m in model.modules():
                kind = type(m).__name__
                if "BatchNorm" in kind:
                    m.train(batchnorm)
                elif "Dropout" in kind:
                    m.train(dropout)
        yield


class _Normalized(nn.Module):
    """``model((x - mean) / std)``: the model as the attack sees it, in pixel space."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def _channel_values(call: str, name: str, values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    elif isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{call}: {name} must be a sequence of numbers, one per channel")
    try:
        t = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{call}: {name} must be a sequence of numbers, one per channel") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{call}: {name} must be 1-D with one value per channel, got {values!r}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{call}: {name} must be finite, got {t.tolist()}")
    return t


def _torchattacks_caller() -> str | None:
    """The torchattacks function that called into this module, if one did.

    torchattacks' wrappers (MultiAttack, LGV) call their attacks from their own ``forward`` and
    pass their setters (normalisation, model mode, device) only to ``torchattacks.Attack``
    instances: a fastpgd attack inside one would run with other settings than the wrapper's,
    silently. The caller's module is the only sign of that, hence the look at the stack.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    if module == "torchattacks" or module.startswith("torchattacks."):
        return f"{module}.{frame.f_code.co_name}"
    return None


# --------------------------------------------------------------------------------------------
# The attacks
# --------------------------------------------------------------------------------------------


class _TorchattacksStylePGD:
    """What PGD and PGDL2 share: torchattacks' object interface over :func:`fused_pgd`."""

    _norm: str  # each attack's norm for fused_pgd: "linf" or "l2"

    model = _Checked(_module)
    eps = _Checked(_real)
    alpha = _Checked(_real)
    steps = _Checked(functools.partial(check_count, least=0))
    random_start = _Checked(_flag)
    cuda_graph = _Checked(_flag)
    amp_dtype = _Checked(_amp_dtype)
    generator = _Checked(_generator)

    def __init__(
        self, model, eps, alpha, steps, random_start, cuda_graph, amp_dtype, generator, unsupported
    ):
        name = type(self).__name__
        if unsupported:
            key = next(iter(unsupported))
            hint = _UNSUPPORTED_HINTS.get(key, "it is not an option of torchattacks' " + name)
            raise TypeError(f"{name}() got an unsupported keyword argument {key!r}: {hint}")
        self.attack = name
        self.model = model
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.random_start = random_start
        self.cuda_graph = cuda_graph
        self.amp_dtype = amp_dtype
        self.generator = generator
        self.supported_mode = ["default", "targeted"]
        self.attack_mode = "default"
        self.normalization_used = None
        self._device = None
        self._target_map_function = None
        self._kth_min = 1
        self._model_training = False
        self._batchnorm_training = False
        self._dropout_training = False
        self._normalized = None  # kept between calls: cuda_graph caches its graphs per model

    # -- torchattacks' setters -------------------------------------------------------------

    @property
    def targeted(self) -> bool:
        """Whether the attack aims at target labels (set by the ``set_mode_targeted_*`` calls)."""
        return self.attack_mode != "default"

    @property
    def device(self) -> torch.device:
        """Where the attack runs: the :meth:`set_device` choice, else the model's device (the
        CPU for a model without parameters or buffers, until images show another)."""
        return self._run_device(None)

    def get_mode(self) -> str:
        """The attack mode: ``"default"``, ``"targeted(label)"``, ``"targeted(custom)"``,
        ``"targeted(random)"`` or ``"targeted(least-likely)"``."""
        return self.attack_mode

    def set_mode_default(self) -> None:
        """Untargeted: ascend the loss of the true labels (the mode a new attack starts in)."""
        self.attack_mode = "default"
        self._target_map_function = None

    def set_mode_targeted_by_label(self, quiet: bool = False) -> None:
        """Targeted: the labels passed to the call are the targets, and the attack descends
        their loss.

        Args:
            quiet (bool): accepted for torchattacks' signature; fastpgd never prints.
                Default: ``False``.
        """
        _bool_args("set_mode_targeted_by_label", quiet=quiet)
        self.attack_mode = "targeted(label)"
        self._target_map_function = None

    def set_mode_targeted_by_function(self, target_map_function, quiet: bool = False) -> None:
        """Targeted: ``target_map_function(images, labels)`` gives the targets.

        Args:
            target_map_function (callable): maps pixel-space ``images`` (Tensor[N, ...]) and
                ``labels`` (Tensor[N]) to integer targets (Tensor[N]), e.g.
                ``lambda images, labels: (labels + 1) % 10``.
            quiet (bool): accepted for torchattacks' signature; fastpgd never prints.
                Default: ``False``.
        """
        if not callable(target_map_function):
            raise TypeError(
                "set_mode_targeted_by_function: target_map_function must be callable, "
                f"got {type(target_map_function).__name__}"
            )
        _bool_args("set_mode_targeted_by_function", quiet=quiet)
        self.attack_mode = "targeted(custom)"
        self._target_map_function = target_map_function

    def set_mode_targeted_random(self, quiet: bool = False) -> None:
        """Targeted: each target is drawn uniformly from the classes other than the label.

        The draws come from ``generator`` (or the global RNG of the model's device); on the CPU
        with the global RNG they are the draws torchattacks makes, so the same seed gives the
        same targets.

        Args:
            quiet (bool): accepted for torchattacks' signature; fastpgd never prints.
                Default: ``False``.
        """
        _bool_args("set_mode_targeted_random", quiet=quiet)
        self.attack_mode = "targeted(random)"
        self._target_map_function = None

    def set_mode_targeted_least_likely(self, kth_min: int = 1, quiet: bool = False) -> None:
        """Targeted: the target is the class with the ``kth_min``-th smallest logit among the
        classes other than the label (the model in eval mode, on the clean images).

        Args:
            kth_min (int): ``1`` for the least likely class; at most the number of classes
                minus one (checked at the call). Default: ``1``.
            quiet (bool): accepted for torchattacks' signature; fastpgd never prints.
                Default: ``False``.
        """
        if isinstance(kth_min, bool) or not isinstance(kth_min, numbers.Integral):
            raise TypeError(
                f"set_mode_targeted_least_likely: kth_min must be an int, "
                f"got {type(kth_min).__name__}"
            )
        if kth_min < 1:
            raise ValueError(f"set_mode_targeted_least_likely: kth_min must be >= 1, got {kth_min}")
        _bool_args("set_mode_targeted_least_likely", quiet=quiet)
        self.attack_mode = "targeted(least-likely)"
        self._target_map_function = None
        self._kth_min = int(kth_min)

    def set_normalization_used(self, mean, std) -> None:
        """The model expects ``(pixels - mean) / std`` per channel (dim 1).

        From then on the call takes normalised images and returns normalised adversarial images,
        as torchattacks does: it undoes the normalisation, attacks in pixel space (``eps`` and
        ``alpha`` are in pixel units, pixels stay in [0, 1]) and feeds the model normalised
        inputs.

        Args:
            mean (sequence of float): one value per channel.
            std (sequence of float): one positive value per channel.
        """
        mean = _channel_values("set_normalization_used", "mean", mean)
        std = _channel_values("set_normalization_used", "std", std)
        if mean.numel() != std.numel():
            raise ValueError(
                "set_normalization_used: mean and std must have one value per channel each, "
                f"got {mean.numel()} and {std.numel()}"
            )
        if not (std > 0).all():
            raise ValueError(f"set_normalization_used: std must be > 0, got {std.tolist()}")
        shape = (1, mean.numel(), 1, 1)  # the shape torchattacks stores
        self.normalization_used = {"mean": mean.reshape(shape), "std": std.reshape(shape)}
        self._normalized = None

    def set_model_training_mode(
        self,
        model_training: bool = False,
        batchnorm_training: bool = False,
        dropout_training: bool = False,
    ) -> None:
        """The model's mode during the attack (every submodule's flag is restored after it).

        Args:
            model_training (bool): run the model in train mode; otherwise in eval mode.
                Default: ``False``.
            batchnorm_training (bool): with ``model_training``, also batch norm layers (class
                name containing ``BatchNorm``) in train mode. Default: ``False``.
            dropout_training (bool): with ``model_training``, also dropout layers (class name
                containing ``Dropout``) in train mode. Default: ``False``.
        """
        _bool_args(
            "set_model_training_mode",
            model_training=model_training,
            batchnorm_training=batchnorm_training,
            dropout_training=dropout_training,
        )
        self._model_training = model_training
        self._batchnorm_training = batchnorm_training
        self._dropout_training = dropout_training

    def set_model(self, model: nn.Module) -> None:
        """Attack another model (the same as assigning ``atk.model``)."""
        self.model = model

    def set_device(self, device) -> None:
        """Run on ``device`` (images and labels are moved there) instead of the model's device.

        Args:
            device (str or torch.device or None): ``None`` goes back to the model's device.
        """
        if device is not None and not isinstance(device, (str, torch.device)):
            raise TypeError(
                f"set_device: device must be a str, torch.device or None, "
                f"got {type(device).__name__}"
            )
        self._device = None if device is None else torch.device(device)

    def get_target_label(self, inputs: torch.Tensor, labels: torch.Tensor | None = None):
        """The targets the attack would aim at for these inputs.

        Args:
            inputs (Tensor[N, ...]): images as passed to the call (normalised when
                :meth:`set_normalization_used` was called).
            labels (Tensor[N], optional): the true labels; for the random and least-likely modes
                ``None`` uses the model's predictions, as torchattacks does.

        Returns:
            Tensor[N]: int64 targets on the attack's device.

        Raises:
            ValueError: the attack is not in a targeted mode.
        """
        if not self.targeted:
            raise ValueError(
                "get_target_label needs a targeted mode: call set_mode_targeted_by_label() or "
                "another set_mode_targeted_* method first"
            )
        device = self._run_device(inputs)
        images = self._check_images(inputs, "get_target_label: inputs").to(device)
        if labels is not None:
            labels = self._check_labels(labels, images, "get_target_label: labels").to(device)
        return self._target_labels(self._to_pixels(images, "get_target_label: inputs"), labels)

    # -- what fastpgd does not offer -------------------------------------------------------

    def save(self, *args, **kwargs):
        """Not supported: loop over your DataLoader, call the attack and ``torch.save``."""
        raise TypeError(
            f"{self.attack}.save is not supported by fastpgd: loop over the data loader, call "
            "the attack on each batch and torch.save the results"
        )

    def load(self, *args, **kwargs):
        """Not supported (torchattacks' companion of :meth:`save`)."""
        raise TypeError(
            f"{self.attack}.load is not supported by fastpgd: torch.load what you saved and "
            "wrap it in a torch.utils.data.TensorDataset"
        )

    def set_return_type(self, *args, **kwargs):
        """Not supported: the attack returns floating-point images in the input's dtype."""
        raise TypeError(
            f"{self.attack}.set_return_type is not supported by fastpgd: the attack returns "
            "floating-point images; convert them yourself, e.g. (adv * 255).round().to(torch.uint8)"
        )

    # -- the call --------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Attack a batch: the adversarial images (see :meth:`forward`)."""
        return self.forward(images, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Attack a batch.

        Args:
            images (Tensor[N, ...]): floating point, pixels in [0, 1] (normalised images after
                :meth:`set_normalization_used`). Moved to the attack's device.
            labels (Tensor[N]): integer class labels (the targets in
                ``set_mode_targeted_by_label`` mode).

        Returns:
            Tensor[N, ...]: the adversarial images on the attack's device (normalised after
            :meth:`set_normalization_used`).
        """
        wrapper = _torchattacks_caller()
        if wrapper is not None:
            raise TypeError(
                f"fastpgd.{self.attack} cannot run inside a torchattacks wrapper (called from "
                f"{wrapper}): torchattacks passes its mode, normalisation and device settings "
                "only to torchattacks attacks. Call the attacks one after another yourself, or "
                "use fastpgd.fused_pgd(..., restarts=n)"
            )
        call = f"{self.attack}()"
        device = self._run_device(images)
        images = self._check_images(images, f"{call}: images").to(device)
        labels = self._check_labels(labels, images, f"{call}: labels").to(device)
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(
                f"{self.attack}.generator is on {self.generator.device} but the attack runs on "
                f"{device}"
            )
        pixels = self._to_pixels(images, f"{call}: images")
        y = self._target_labels(pixels, labels) if self.targeted else labels
        with _modes(
            self.model, self._model_training, self._batchnorm_training, self._dropout_training
        ):
            adv = fused_pgd(
                self._attacked_model(device),
                pixels,
                y,
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
                norm=self._norm,
                random_start=self.random_start,
                targeted=self.targeted,
                clamp=(0.0, 1.0),
                generator=self.generator,
                model_mode="keep",
                amp_dtype=self.amp_dtype,
                cuda_graph=self.cuda_graph,
            )
        if self.normalization_used is not None:
            mean, std = self._mean_std(adv)
            adv = (adv - mean) / std
        return adv

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._repr_fields().items())
        return f"{self.attack}({fields})"

    # -- pieces ----------------------------------------------------------------------------

    def _repr_fields(self) -> dict:
        return {
            "model_name": type(self.model).__name__,
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "random_start": self.random_start,
            "attack_mode": self.attack_mode,
            "normalization_used": self.normalization_used is not None,
        }

    def _run_device(self, images) -> torch.device:
        if self._device is not None:
            return self._device
        device = model_device(self.model)
        if device is not None:
            return device
        return images.device if isinstance(images, torch.Tensor) else torch.device("cpu")

    def _check_images(self, images, name: str) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {images.dtype}")
        if images.dim() < 2:
            raise ValueError(f"{name} must have shape [N, ...], got {tuple(images.shape)}")
        if self.normalization_used is not None:
            channels = self.normalization_used["mean"].shape[1]
            if images.shape[1] != channels:
                raise ValueError(
                    f"{name} must have {channels} channels (dim 1) to match "
                    f"set_normalization_used, got shape {tuple(images.shape)}"
                )
        return images.detach()

    @staticmethod
    def _check_labels(labels, images: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(
                f"{name} must be a tensor of class indices, got {type(labels).__name__}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{name} must have shape ({images.shape[0]},), one per image, "
                f"got {tuple(labels.shape)}"
            )
        return labels.detach()

    def _mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = self.normalization_used["mean"].reshape(view).to(device=x.device, dtype=x.dtype)
        std = self.normalization_used["std"].reshape(view).to(device=x.device, dtype=x.dtype)
        return mean, std

    def _to_pixels(self, images: torch.Tensor, name: str) -> torch.Tensor:
        """Pixel-space images in [0, 1]; refuses images outside it rather than clipping them.

        Undoing a normalisation rounds, so a pixel at 0 or 1 may come back a few ulps outside
        [0, 1]; that rounding (and only that) is clamped away.
        """
        if self.normalization_used is None:
            pixels, tol = images, 0.0
        else:
            mean, std = self._mean_std(images)
            pixels = images * std + mean
            # (p - m) / s * s + m rounds at most four times on values of size <= 1 + |m|.
            biggest = 1.0 + float(self.normalization_used["mean"].abs().max())
            tol = 8 * torch.finfo(images.dtype).eps * biggest
        if pixels.numel():
            # One read on the host (a device sync on CUDA): a silently clipped input would hide
            # a caller's bug, such as images in [0, 255] or normalised twice.
            lo, hi = (float(v) for v in torch.aminmax(pixels))
            if not (lo >= -tol and hi <= 1.0 + tol):
                where = " after undoing set_normalization_used" if tol else ""
                raise ValueError(
                    f"{name} must hold pixels in [0, 1]{where}, got values in [{lo:g}, {hi:g}]"
                )
        return pixels.clamp(0.0, 1.0) if tol else pixels

    def _attacked_model(self, device: torch.device) -> nn.Module:
        if self.normalization_used is None:
            return self.model
        if self._normalized is None or self._normalized.model is not self.model:
            self._normalized = _Normalized(
                self.model, self.normalization_used["mean"], self.normalization_used["std"]
            )
        n = self._normalized
        n.mean, n.std = n.mean.to(device), n.std.to(device)  # no-ops after the first call
        return n

    @torch.no_grad()
    def _eval_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        # torchattacks computes these logits with the model in eval mode, whatever the mode
        # of the attack itself.
        with _modes(self.model, False):
            model = self._attacked_model(pixels.device)
            return model(pixels)

    def _target_labels(self, pixels: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        mode = self.attack_mode
        if mode == "targeted(label)":
            if labels is None:
                raise ValueError("targeted by label: labels (the targets) must be given")
            return labels
        if mode == "targeted(custom)":
            targets = self._target_map_function(pixels, labels)
            if not isinstance(targets, torch.Tensor):
                raise TypeError(
                    "target_map_function must return a tensor of class indices, "
                    f"got {type(targets).__name__}"
                )
            if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
                raise TypeError(
                    f"target_map_function must return integer class indices, got {targets.dtype}"
                )
            if targets.shape != (pixels.shape[0],):
                raise ValueError(
                    f"target_map_function must return shape ({pixels.shape[0]},), "
                    f"got {tuple(targets.shape)}"
                )
            return targets.to(device=pixels.device, dtype=torch.int64)
        logits = self._eval_logits(pixels)
        classes = logits.shape[-1]
        if labels is None:
            labels = logits.argmax(dim=1)
        labels = labels.to(torch.int64)
        if mode == "targeted(random)":
            if classes < 2:
                raise ValueError(
                    f"targeted random needs at least 2 classes, the model has {classes}"
                )
            # torchattacks draws int((K - 1) * U) per example in float32 and skips the label;
            # one vector of the same float32 draws does the same for the batch.
            u = torch.rand(labels.shape[0], generator=self.generator, device=labels.device)
            t = (u * (classes - 1)).to(torch.int64)
            return t + (t >= labels).to(torch.int64)
        if self._kth_min > classes - 1:
            raise ValueError(
                f"set_mode_targeted_least_likely: kth_min={self._kth_min} needs more than "
                f"{self._kth_min} classes, the model has {classes}"
            )
        ranked = logits.float().clone()
        ranked[torch.arange(labels.shape[0], device=labels.device), labels] = math.inf
        return ranked.kthvalue(self._kth_min, dim=1).indices


_DOC = """{summary}

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018):
    {method}

    Where fastpgd differs from torchattacks 3.5.1, on purpose:

    - Loss: cross-entropy summed over the batch (Madry et al.), not averaged. The update does
      not see the scale: the Linf step takes the gradient's sign, and the L2 step divides each
      example's gradient by its own norm.
{norm_notes}    - Model mode: torchattacks puts the model in eval mode and afterwards calls
      ``model.train()`` if the model was training, which turns every submodule to train mode;
      fastpgd restores every submodule's own flag exactly.
    - Randomness: the random start comes from ``generator`` (or the global RNG of the model's
      device), never from a reseeded RNG, and is not the same stream as torchattacks'.
      {start}
    - Input checks: images outside [0, 1] raise ``ValueError`` (torchattacks clips them
      silently); labels must be a tensor of class indices.
    - Nothing is printed: the ``quiet`` arguments of the mode setters are accepted and change
      nothing.
    - ``forward(images, labels)`` does what the call does (torchattacks' ``forward`` skips the
      mode switch and the normalisation).
    - Not offered: ``save``/``load``, ``set_return_type`` (raise ``TypeError`` saying what to do
      instead); torchattacks' wrappers (``MultiAttack``, ``LGV``) cannot drive a fastpgd attack
      (``TypeError`` at the call); other attacks' options (``TypeError`` at construction).

    Args:
        model (nn.Module): maps images to logits.
{args}        cuda_graph (bool): keyword only; capture one whole step in a CUDA graph and replay it
            (CUDA only; see :func:`fastpgd.fused_pgd`). Default: ``False``.
        amp_dtype (torch.dtype, optional): keyword only; run the model under autocast in
            ``torch.float16`` or ``torch.bfloat16``. Default: ``None``.
        generator (torch.Generator, optional): keyword only; the source of the random start and
            of random targets, on the model's device. Default: ``None`` (the global RNG).

    Every argument is also an attribute (``atk.eps = 4/255``), checked on assignment.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model = MadryCNN(image_size=8)
        >>> images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> atk = {example}
        >>> adv_images = atk(images, labels)
        >>> {check}
        True
    """


class PGD(_TorchattacksStylePGD):
    __doc__ = _DOC.format(
        summary="Linf PGD with torchattacks' interface: ``torchattacks.PGD`` backed by "
        ":func:`fastpgd.fused_pgd`.",
        method="from a random point in the eps box (or from the images), ``steps`` times: "
        "step by ``alpha``\n    along the sign of the loss gradient, project into the box and "
        "into [0, 1].",
        norm_notes="",
        start="Both draw the start uniformly in the box.",
        args="""        eps (float): radius of the Linf ball. Default: ``8/255``.
        alpha (float): step size. Default: ``2/255``.
        steps (int): number of steps. Default: ``10``.
        random_start (bool): start at a uniformly random point of the box. Default: ``True``.
""",
        example="PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)",
        check="bool(((adv_images - images).abs() <= 8/255 + 1e-6).all())",
    )

    _norm = "linf"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        *,
        cuda_graph: bool = False,
        amp_dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        **unsupported,
    ):
        super().__init__(
            model, eps, alpha, steps, random_start, cuda_graph, amp_dtype, generator, unsupported
        )


class PGDL2(_TorchattacksStylePGD):
    __doc__ = _DOC.format(
        summary="L2 PGD with torchattacks' interface: ``torchattacks.PGDL2`` backed by "
        ":func:`fastpgd.fused_pgd`.",
        method="from a random point in the eps ball (or from the images), ``steps`` times: "
        "step by ``alpha``\n    along the loss gradient divided by its norm (per example), "
        "project into the ball and\n    into [0, 1].",
        norm_notes="""    - The guard against a zero gradient: torchattacks divides by
      ``||g_i|| + eps_for_division`` (``1e-10``), with ``g`` the gradient of the *mean* loss
      (``1/N`` of each example's own); fastpgd divides by ``max(||g_i||, 1e-12)`` of the summed
      loss. So torchattacks' step is shorter by the factor ``||g_i|| / (||g_i|| + 1e-10)``:
      within float32 rounding of 1 while its ``||g_i||`` exceeds about ``2e-3``, under 1% short
      down to ``1e-8``, half of ``alpha`` at ``1e-10``. The two part only where an example's
      gradient almost vanishes (a very confidently classified example): there fastpgd takes
      the full ``alpha`` (down to a summed-loss gradient norm of ``1e-12``) where torchattacks
      barely moves. Only ``eps_for_division=1e-10`` is accepted; another value raises
      ``ValueError``, since the fused step cannot honour it.
""",
        start="The L2 start's radius: torchattacks draws it uniformly in ``[0, eps]``, fastpgd\n"
        "      as ``eps * U**(1/d)`` (uniform in the ball's volume: in high dimension nearly on\n"
        "      its surface).",
        args="""        eps (float): radius of the L2 ball (norm over all non-batch dims).
            Default: ``1.0``.
        alpha (float): step size. Default: ``0.2``.
        steps (int): number of steps. Default: ``10``.
        random_start (bool): start at a random point of the ball. Default: ``True``.
        eps_for_division (float): torchattacks' guard against dividing by a zero gradient norm;
            must be ``1e-10`` (see above). Default: ``1e-10``.
""",
        example="PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True)",
        check="bool(((adv_images - images).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all())",
    )

    _norm = "l2"
    eps_for_division = _Checked(_eps_for_division)

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        alpha: float = 0.2,
        steps: int = 10,
        random_start: bool = True,
        eps_for_division: float = _TORCHATTACKS_EPS_FOR_DIVISION,
        *,
        cuda_graph: bool = False,
        amp_dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        **unsupported,
    ):
        super().__init__(
            model, eps, alpha, steps, random_start, cuda_graph, amp_dtype, generator, unsupported
        )
        self.eps_for_division = eps_for_division

    def _repr_fields(self) -> dict:
        return {**super()._repr_fields(), "eps_for_division": self.eps_for_division}
