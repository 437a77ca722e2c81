"""What every attack checks and shares: argument checks, the class count read from the first
logits, and the model's device and mode.

The attacks check each argument once, at the call, into a frozen options object, with messages that
name the argument; these are the checks they share, so that the same mistake gets the same words
from every attack.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers

import numpy as np
import torch
from torch import nn


def describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {v.dim()}-d tensor of dtype {v.dtype}"
    return type(v).__name__


def check_bool(name: str, value) -> bool:
    if value is True or value is False:
        return value
    # A truthy string or tensor would silently flip the attack's behaviour: only real booleans.
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_count(name: str, value, least: int) -> int:
    if type(value) is int and value >= least:  # the common case, without the ABC checks
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")
    return int(value)


def check_generator(generator, x: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"generator must be on the device of x ({x.device}), got {generator.device}"
        )


def check_y(y, x: torch.Tensor, loss_fn) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor, got {type(y).__name__}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if loss_fn is not None:
        if y.dim() < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must have one entry per sample of x ({x.shape[0]}), got shape {tuple(y.shape)}"
            )
        return y
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"y must have shape ({x.shape[0]},) (one label per sample of x), got {tuple(y.shape)}"
        )
    # Cross-entropy takes int64 class indices: narrower integer labels are converted once here.
    return y if y.dtype == torch.int64 else y.to(torch.int64)


def check_budget(name: str, value, x: torch.Tensor, check_values: bool):
    """Return ``value`` as a float or as a 1-D tensor of x's dtype/device, one value per sample.

    A 0-d tensor is read with ``.item()``; a per-sample tensor's values are checked only when
    ``check_values`` (one device sync).
    """
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, without ABC checks
        return value
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
        if value.dim() == 0:
            value = value.item()
        else:
            if value.dim() != 1 or value.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{name} must be a number or a 1-D tensor with one value per sample "
                    f"({x.shape[0]}), got shape {tuple(value.shape)}"
                )
            # Detached (the attack does not differentiate through its radius) and without a
            # negative bit (the kernel reads its memory).
            value = value.detach().resolve_neg()
            if check_values and not bool((torch.isfinite(value) & (value >= 0)).all()):
                raise ValueError(f"{name} must be finite and >= 0, got {value.tolist()}")
            return value.to(dtype=x.dtype, device=x.device).contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a 1-D tensor, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite and >= 0, got {value}") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def check_clamp(clamp) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2) or not all(
        type(v) is float or (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)))
        for v in clamp
    ):
        raise TypeError(f"clamp must be None or a pair of numbers (lo, hi), got {clamp!r}")
    lo, hi = float(clamp[0]), float(clamp[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"clamp must satisfy lo <= hi, got {clamp!r}")
    return lo, hi


def check_in_range(xmin: float, xmax: float, clamp: tuple[float, float]) -> None:
    # Silently clipping a bad input would hide a caller bug.
    lo, hi = clamp
    if math.isnan(xmin) or math.isnan(xmax):
        raise ValueError("x must not hold NaN")
    if not (lo <= xmin and xmax <= hi):
        raise ValueError(
            f"x has values outside clamp=({lo}, {hi}): min {xmin}, max {xmax}; "
            "rescale x or pass clamp=None for unbounded inputs"
        )


def check_delta_init(delta_init, x0: torch.Tensor, check_values: bool) -> torch.Tensor:
    if not isinstance(delta_init, torch.Tensor):
        raise TypeError(f"delta_init must be a tensor, got {type(delta_init).__name__}")
    if not delta_init.is_floating_point():
        raise TypeError(f"delta_init must be a floating-point tensor, got dtype {delta_init.dtype}")
    if delta_init.shape != x0.shape:
        raise ValueError(
            f"delta_init must have the shape of x {tuple(x0.shape)}, got {tuple(delta_init.shape)}"
        )
    delta_init = delta_init.detach().resolve_neg().to(dtype=x0.dtype, device=x0.device)
    if check_values and not bool(torch.isfinite(delta_init).all()):
        raise ValueError("delta_init must be finite")
    return delta_init.contiguous()


def check_label_range(label_range: tuple[int, int], num_classes: int) -> None:
    """Raise unless the labels, from ``label_range[0]`` to ``[1]``, are class indices."""
    lo, hi = label_range
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"y must hold class labels in [0, {num_classes - 1}] (the model has {num_classes} "
            f"outputs), got {bad}"
        )


class ClassCount:
    """The number of classes, read from the first logits; the labels checked against it.

    The number is known only after a forward pass, and torch's cross-entropy reports an
    out-of-range label without naming it (on CUDA as a device-side assert that ruins the
    context). So the first forward pass of a call checks the label range, read beforehand with
    the other value checks, before its loss: a comparison of Python ints, no device access.
    """

    def __init__(self, label_range: tuple[int, int] | None):
        self.label_range = label_range
        self.num_classes: int | None = None

    def __call__(self, logits: torch.Tensor) -> None:
        if self.num_classes is None and logits.dim() >= 2:
            if self.label_range is not None:
                check_label_range(self.label_range, logits.shape[-1])
            self.num_classes = logits.shape[-1]


def model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def accepts_reduction(loss_fn) -> bool:
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False
    return "reduction" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


@contextlib.contextmanager
def model_mode(model, mode: str):
    """Put the model in eval/train mode and restore every submodule's flag exactly afterwards."""
    if not isinstance(model, nn.Module) or mode == "keep":
        yield
        return
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train(mode == "train")
        yield
    finally:
        for m, flag in saved:
            m.training = flag


# --------------------------------------------------------------------------------------------
# What the evaluation attacks (FAB, Square) share: more checks, checked logits, the norms, and
# the loop that attacks only the points still robust
# --------------------------------------------------------------------------------------------

AMP_DTYPES = (torch.float16, torch.bfloat16)
MODEL_MODES = ("eval", "train", "keep")


def check_model_and_x(model, x) -> None:
    """Raise unless ``model`` is callable and ``x`` a floating-point batch on the model's device."""
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    if isinstance(model, nn.Module):
        device = model_device(model)
        if device is not None and device != x.device:
            raise ValueError(f"model is on {device} but x is on {x.device}; move one of them")


def check_choice(name: str, value, choices: tuple):
    # An unhashable value (a list) must get the same message, not a TypeError from `in`.
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_amp_dtype(amp_dtype) -> torch.dtype | None:
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ValueError(
            f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {amp_dtype}"
        )
    return amp_dtype


def check_real(name: str, value, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """Return ``value`` as a float, raising unless it is a real number in ``[lo, hi]``
    (``(lo, hi]`` when ``lo_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (lo < value if lo_open else lo <= value) or not value <= hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def read_value_ranges(
    x: torch.Tensor, y: torch.Tensor, clamp: tuple[float, float] | None, check_values: bool
) -> tuple[int, int] | None:
    """Check that ``x`` lies within ``clamp``; return the (min, max) of the labels ``y``.

    Both ranges are queued before either is read, so that the call waits for the device once.
    ``None`` when ``check_values`` is false or ``y`` is empty.
    """
    if not check_values:
        return None
    x_range = torch.aminmax(x) if clamp is not None and x.numel() else None
    y_range = torch.aminmax(y) if y.numel() else None
    if x_range is not None:
        check_in_range(x_range[0].item(), x_range[1].item(), clamp)
    return None if y_range is None else (y_range[0].item(), y_range[1].item())


class Logits:
    """``model(x)`` (under autocast when asked), checked to be logits ``Tensor[N, K]``.

    The first call checks the labels' range against ``K`` (see :class:`ClassCount`); the number
    of classes is then ``num_classes``. The model receives its input in ``input_dtype``.
    """

    def __init__(self, model, input_dtype: torch.dtype, amp_dtype, label_range):
        self.model = model
        self.input_dtype = input_dtype
        self.amp_dtype = amp_dtype
        self.classes = ClassCount(label_range)

    @property
    def num_classes(self) -> int | None:
        return self.classes.num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        context = (
            contextlib.nullcontext()
            if self.amp_dtype is None
            else torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)
        )
        with context:
            out = self.model(x.to(self.input_dtype))
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model's output must be a tensor of logits [N, K], got {type(out).__name__}"
            )
        if out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
            raise ValueError(
                f"the model's output must be logits of shape [N, K] with N = {x.shape[0]} and "
                f"K >= 2 classes, got shape {tuple(out.shape)}"
            )
        if not out.is_floating_point():
            raise TypeError(f"the model's output must be floating-point logits, got {out.dtype}")
        self.classes(out)
        return out


def working_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached and contiguous, in float32 at least: float16 and bfloat16 inputs are
    attacked in float32, as sums over every pixel (norms, projections) need its precision."""
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.detach().to(work).contiguous()


def per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """The Linf or L2 norm of each sample of ``t`` (over all its non-batch dims): Tensor[N]."""
    flat = t.reshape(t.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(t.shape[0])
    return flat.norm(dim=1)


def take(v, index: torch.Tensor):
    """``v[index]`` for a per-sample tensor; a number is returned as it is."""
    return v[index] if isinstance(v, torch.Tensor) else v


def attack_robust(robust: torch.Tensor, result: torch.Tensor, attempt) -> bool:
    """Attack the points still robust once; record the ones it fools.

    ``attempt(index)`` attacks the points ``index`` (Tensor[M], int64) and returns their
    candidates (Tensor[M, ...]) and which of them succeed (Tensor[M], bool). The successful
    candidates are written into ``result`` and their points marked not ``robust``.

    Returns:
        bool: ``False`` when no point was left to attack.
    """
    index = robust.nonzero().squeeze(1)
    if index.numel() == 0:
        return False
    candidates, success = attempt(index)
    won = index[success]
    result[won] = candidates[success].to(result.dtype)
    robust[won] = False
    return True
