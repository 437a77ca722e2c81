"""Batched projected gradient descent (PGD) attacks: the fused one and its reference.

:func:`fused_pgd` and :func:`reference_pgd` share one loop; the only difference is the update
step. The fused attack updates its buffer in place with :func:`fastpgd.step.pgd_step_` (one
C++/CUDA kernel when the extension is in use), the reference recomputes it out of place with
plain PyTorch ops (:func:`fastpgd.step.reference_pgd_step`). With the same generator both
return equal tensors (Linf, float32/float64: bit for bit; L2: within float32 rounding, as the
kernel sums the norms in its own order).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.step import pgd_step_, reference_pgd_step

__all__ = ["fused_pgd", "reference_pgd"]

_NORMS = ("linf", "l2")
_MODEL_MODES = ("eval", "train", "keep")
_AMP_DTYPES = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_budget(name: str, value, x: torch.Tensor):
    """Return ``value`` as a float or as a 1-D tensor of x's dtype/device, one value per sample."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.item()
        else:
            if value.dim() != 1 or value.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{name} must be a number or a 1-D tensor with one value per sample "
                    f"({x.shape[0]}), got shape {tuple(value.shape)}"
                )
            if not value.is_floating_point():
                value = value.to(torch.float64)
            if torch.isnan(value).any() or (value < 0).any() or torch.isinf(value).any():
                raise ValueError(f"{name} must be finite and >= 0, got {value.tolist()}")
            return value.to(dtype=x.dtype, device=x.device).contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a 1-D tensor, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _validate(
    model, x, y, eps, alpha, steps, norm, loss_fn, clamp, model_mode, restarts, amp_dtype, generator
):
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor, got {type(y).__name__}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if loss_fn is None:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"y must have shape ({x.shape[0]},) (one label per sample of x), "
                f"got {tuple(y.shape)}"
            )
    elif y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have one entry per sample of x ({x.shape[0]}), got shape {tuple(y.shape)}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral):
        raise TypeError(f"restarts must be an int, got {type(restarts).__name__}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if model_mode not in _MODEL_MODES:
        raise ValueError(f"model_mode must be one of {_MODEL_MODES}, got {model_mode!r}")
    if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
        raise ValueError(
            f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {amp_dtype}"
        )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator must be on the device of x ({x.device}), got {generator.device}"
            )
    if isinstance(model, nn.Module):
        device = _model_device(model)
        if device is not None and device != x.device:
            raise ValueError(f"model is on {device} but x is on {x.device}; move one of them")
    eps = _check_budget("eps", eps, x)
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        # The fused kernel takes one step size; per-sample radii cover the per-sample use case.
        raise TypeError(
            "alpha must be a number (one step size for the batch), got a tensor "
            f"of shape {tuple(alpha.shape)}"
        )
    alpha = _check_budget("alpha", alpha, x)
    if clamp is not None:
        if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2):
            raise TypeError(f"clamp must be None or a (lo, hi) pair, got {clamp!r}")
        lo, hi = float(clamp[0]), float(clamp[1])
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"clamp must satisfy lo <= hi, got {clamp!r}")
        clamp = (lo, hi)
        if x.numel() and False:
            # One sync before the loop: silently clipping a bad input would hide a caller bug.
            xmin, xmax = torch.aminmax(x)
            xmin, xmax = xmin.item(), xmax.item()
            if not (lo <= xmin and xmax <= hi):
                raise ValueError(
                    f"x has values outside clamp=({lo}, {hi}): min {xmin}, max {xmax}; "
                    "rescale x or pass clamp=None for unbounded inputs"
                )
    return eps, alpha, clamp


# --------------------------------------------------------------------------------------------
# Pieces of the attack
# --------------------------------------------------------------------------------------------


def _per_sample_view(v, x: torch.Tensor):
    """A float stays a float; a per-sample tensor is viewed as (N, 1, ..., 1) to broadcast."""
    if isinstance(v, torch.Tensor):
        return v.view((-1,) + (1,) * (x.dim() - 1))
    return v


def _draw_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: random draws for fp16/bf16 inputs come from the float32 stream."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _uniform(x: torch.Tensor, generator) -> torch.Tensor:
    """U[0, 1) of x's shape, drawn in float32 at least so that fp16/bf16 get the same stream."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=_draw_dtype(x))
    return u.to(x.dtype)


def _random_delta(x: torch.Tensor, eps, norm: str, generator) -> torch.Tensor:
    """A random start: uniform in the Linf box, or uniform in the L2 ball."""
    e = _per_sample_view(eps, x)
    if norm == "linf":
        return (_uniform(x, generator) * 2 - 1) * e
    n = x.shape[0]
    d = x[0].numel()
    dtype = _draw_dtype(x)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
    norms = direction.reshape(n, -1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    u = torch.rand(n, generator=generator, device=x.device, dtype=dtype)
    # Radius eps * U^(1/d) makes the point uniform in the ball's volume, not just its shell.
    radius = u.pow(1.0 / max(d, 1)) / norms
    eps_t = eps.to(dtype) if isinstance(eps, torch.Tensor) else eps
    delta = direction * _per_sample_view(radius * eps_t, x)
    return delta.to(x.dtype)


def _project(delta: torch.Tensor, x0: torch.Tensor, eps, norm: str, clamp) -> torch.Tensor:
    """Project a perturbation into the eps ball, then the point into the clamp range."""
    e = _per_sample_view(eps, x0)
    if norm == "linf":
        if isinstance(e, torch.Tensor):
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-e, e)
    else:
        n = x0.shape[0]
        norms = delta.reshape(n, -1).norm(dim=1).clamp_min(torch.finfo(delta.dtype).tiny)
        factor = torch.clamp((eps / norms), max=1.0)
        delta = delta * _per_sample_view(factor, x0)
    x = x0 + delta
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    return x


def _accepts_reduction(loss_fn) -> bool:
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False
    return "reduction" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def _per_example_loss(loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One loss value per example, used to pick the best restart."""
    if loss_fn is None:
        return F.cross_entropy(logits.float(), y, reduction="none")
    if _accepts_reduction(loss_fn):
        out = loss_fn(logits, y, reduction="none")
        if out.shape != (logits.shape[0],):
            raise ValueError(
                "loss_fn(logits, y, reduction='none') must return one value per example, "
                f"got shape {tuple(out.shape)}"
            )
        return out.float()
    # A loss that only reduces: evaluate it on each example alone (once per restart, not per step).
    return torch.stack([loss_fn(logits[i : i + 1], y[i : i + 1]) for i in range(len(y))]).float()


@contextlib.contextmanager
def _model_mode(model, mode: str):
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
# CUDA graphs
# --------------------------------------------------------------------------------------------

# model -> {key: _CapturedStep}; weak on the model so that a dropped model frees its graphs.
_GRAPH_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRAPH_CACHE_SIZE = 8  # graphs per model


def _check_cuda_graph(x: torch.Tensor, model) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, but x is on {x.device}")
    if not isinstance(model, nn.Module):
        raise TypeError("cuda_graph=True needs model to be an nn.Module (graphs are cached on it)")


def _graph_key(model, x, y, eps, alpha, norm, loss_fn, targeted, clamp, amp_dtype) -> tuple:
    """What a captured step depends on; anything else is copied into its static buffers."""

    def budget(v):
        return ("per-sample",) if isinstance(v, torch.Tensor) else ("scalar", v)

    return (
        tuple(x.shape),
        x.dtype,
        str(x.device),
        tuple(y.shape),
        y.dtype,
        budget(eps),
        budget(alpha),
        norm,
        None if loss_fn is None else id(loss_fn),
        bool(targeted),
        clamp,
        amp_dtype,
        tuple(m.training for m in model.modules()),
    )


class _CapturedStep:
    """One whole PGD step (forward, backward w.r.t. the input, fused update) in a CUDA graph."""

    def __init__(self, one_step, x, y, eps, alpha, warmup: int = 3):
        self.x_adv = torch.empty_like(x)
        self.x0 = torch.empty_like(x)
        self.y = torch.empty_like(y)
        self.eps = eps.clone() if isinstance(eps, torch.Tensor) else eps
        self.alpha = alpha.clone() if isinstance(alpha, torch.Tensor) else alpha
        self.x_adv.copy_(x)
        self.x0.copy_(x)
        self.y.copy_(y)
        self._one_step = one_step
        # Warm-up on a side stream (lazy init, cuDNN autotuning) before capturing, as the CUDA
        # graph documentation prescribes.
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    def _run(self):
        self._one_step(self.x_adv, self.x0, self.y, self.eps, self.alpha)

    def __call__(self, x_start, x0, y, eps, alpha, steps: int) -> torch.Tensor:
        self.x_adv.copy_(x_start)
        self.x0.copy_(x0)
        self.y.copy_(y)
        if isinstance(eps, torch.Tensor):
            self.eps.copy_(eps)
        if isinstance(alpha, torch.Tensor):
            self.alpha.copy_(alpha)
        for _ in range(steps):
            self.graph.replay()
        return self.x_adv.clone()


# --------------------------------------------------------------------------------------------
# The shared implementation
# --------------------------------------------------------------------------------------------


def _pgd(
    step_fn,
    model,
    x,
    y,
    *,
    eps,
    alpha,
    steps,
    norm,
    random_start,
    loss_fn,
    targeted,
    clamp,
    generator,
    model_mode,
    delta_init,
    return_delta,
    restarts,
    amp_dtype,
    cuda_graph,
    track_best,
    check_inputs=True,
):
    eps, alpha, clamp = _validate(
        model,
        x,
        y,
        eps,
        alpha,
        steps,
        norm,
        loss_fn,
        clamp,
        model_mode,
        restarts,
        amp_dtype,
        generator,
    )
    if cuda_graph:
        _check_cuda_graph(x, model)
        if track_best:
            raise ValueError("track_best=True is not supported with cuda_graph=True")
    if track_best and loss_fn is not None and not _accepts_reduction(loss_fn):
        raise ValueError(
            "track_best=True with a custom loss_fn needs loss_fn(logits, y, reduction='none') "
            "to return one loss per example"
        )
    # Parameters keep requires_grad: autograd.grad(loss, inp) already skips every weight-gradient
    # kernel (the engine only runs what leads to inp), and freezing them measured no faster on
    # the Madry CNN (CPU, 10 steps: 0.177 s vs 0.183 s best of 12, within noise).
    # The fused kernel works on dense row-major memory: one copy here for strided inputs.
    x0 = x.detach().contiguous()
    if delta_init is not None:
        if not isinstance(delta_init, torch.Tensor):
            raise TypeError(f"delta_init must be a tensor, got {type(delta_init).__name__}")
        if delta_init.shape != x.shape:
            raise ValueError(
                f"delta_init must have the shape of x {tuple(x.shape)}, "
                f"got {tuple(delta_init.shape)}"
            )
        delta_init = delta_init.detach().to(dtype=x.dtype, device=x.device).contiguous()
        if check_inputs and not torch.isfinite(delta_init).all():
            raise ValueError("delta_init must be finite")

    loss_of = loss_fn if loss_fn is not None else _sum_cross_entropy
    autocast = (
        (lambda: torch.autocast(device_type=x.device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )

    def make_step(net):
        def one_step(x_buf, x0_, y_, eps_, alpha_, track=None):
            # A fresh leaf sharing x_buf's storage: autograd.grad frees the graph before the
            # update writes into x_buf, so no copy of x_adv is made per step.
            inp = x_buf.detach().requires_grad_(True)
            with autocast():
                logits = net(inp)
                loss = loss_of(logits, y_)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
            if targeted:
                loss = -loss  # descend the loss towards the target labels
            if track is not None:
                # The loss of the iterate the step starts from, before the update overwrites it.
                with torch.no_grad():
                    track.update(x_buf, _per_example_loss(loss_fn, logits.detach(), y_))
            (grad,) = torch.autograd.grad(loss, inp)
            if grad.dtype != x_buf.dtype:
                grad = grad.to(x_buf.dtype)
            if not grad.is_contiguous():  # e.g. a channels_last model's input gradient
                grad = grad.contiguous()
            return step_fn(x_buf, grad, x0_, eps=eps_, alpha=alpha_, norm=norm, clamp=clamp)

        return one_step

    one_step = make_step(model)

    def final_loss(x_adv):
        with torch.no_grad(), autocast():
            return _per_example_loss(loss_fn, model(x_adv), y)

    best_x = None
    best_loss = None
    with _model_mode(model, model_mode):
        captured = None
        if cuda_graph and steps > 0:
            key = _graph_key(model, x, y, eps, alpha, norm, loss_fn, targeted, clamp, amp_dtype)
            per_model = _GRAPH_CACHE.setdefault(model, {})
            captured = per_model.get(key)
            if captured is None:
                # The cache is weak on the model: its entry must not hold the model strongly.
                captured = _CapturedStep(make_step(weakref.proxy(model)), x0, y, eps, alpha)
                if len(per_model) >= _GRAPH_CACHE_SIZE:
                    # Each graph pins its own memory pool: keep the most recent few only.
                    per_model.pop(next(iter(per_model)))
                per_model[key] = captured
        for r in range(restarts):
            if r == 0 and delta_init is not None:
                x_adv = _project(delta_init, x0, eps, norm, clamp)
            elif random_start:
                x_adv = _project(_random_delta(x0, eps, norm, generator), x0, eps, norm, clamp)
            else:
                x_adv = x0.clone()
            track = _BestIterate(targeted) if track_best else None
            if captured is not None:
                x_adv = captured(x_adv, x0, y, eps, alpha, steps)
            else:
                for _ in range(steps):
                    x_adv = one_step(x_adv, x0, y, eps, alpha, track)
            if track is not None:
                track.update(x_adv, final_loss(x_adv))
                x_adv, per_example = track.x, track.loss
            elif restarts == 1:
                best_x = x_adv
                break
            else:
                per_example = final_loss(x_adv)
                if targeted:
                    per_example = -per_example
            if best_x is None:
                best_x, best_loss = x_adv, per_example
            else:
                better = per_example > best_loss
                best_x = torch.where(_per_sample_view(better, x0), x_adv, best_x)
                best_loss = torch.where(better, per_example, best_loss)
    x_adv = best_x.detach()
    if return_delta:
        return x_adv, x_adv - x0
    return x_adv


class _BestIterate:
    """Per example, the iterate with the highest loss seen so far (lowest when targeted)."""

    def __init__(self, targeted: bool):
        self.sign = -1.0 if targeted else 1.0
        self.x = None
        self.loss = None

    def update(self, x: torch.Tensor, per_example: torch.Tensor) -> None:
        per_example = per_example * self.sign
        if self.x is None:
            self.x, self.loss = x.clone(), per_example
            return
        better = per_example > self.loss  # ties keep the earlier iterate
        self.x = torch.where(_per_sample_view(better, x), x, self.x)
        self.loss = torch.where(better, per_example, self.loss)


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Summed, not averaged (Madry et al.): the per-example gradients keep their scale with N.
    return F.cross_entropy(logits, y, reduction="sum")


_DOC = """{summary}

    Projected gradient descent (PGD) from Madry et al., "Towards Deep Learning Models
    Resistant to Adversarial Attacks" (ICLR 2018): from a random point in the eps ball around
    ``x``, repeat ``steps`` times: take the gradient of the loss with respect to the input,
    step by ``alpha`` along its sign (Linf) or its direction (L2), project back into the eps
    ball and into the ``clamp`` range. The whole batch is attacked at once; the gradient is
    taken with respect to the input only (no parameter ``.grad`` is created or changed, each
    parameter's ``requires_grad`` and each submodule's ``training`` flag are restored exactly,
    even on errors).

    {backend}

    Args:
        model (nn.Module): maps ``x`` to logits ``Tensor[N, K]``; on the device of ``x``.
        x (Tensor[N, ...]): clean inputs, floating point, within ``clamp``.
        y (Tensor[N]): integer labels (the true class, or the target when ``targeted``).
            With a custom ``loss_fn``, anything with ``N`` rows that it accepts.
        eps (float or Tensor[N]): radius of the perturbation ball, one value or one per sample.
        alpha (float): step size.
        steps (int): number of gradient steps; ``0`` returns the (random) start point.
        norm (str): ``"linf"`` or ``"l2"`` (norms over all non-batch dims of each sample).
            Default: ``"linf"``.
        random_start (bool): start uniformly in the Linf box, or uniformly in the L2 ball
            (Gaussian direction, radius ``eps * U^(1/d)``, ``d`` = numel per sample), clamped
            into range; else start at ``x``. Default: ``True``.
        loss_fn (callable, optional): ``loss_fn(logits, y) -> scalar`` to ascend. Default:
            cross-entropy summed over the batch. With ``restarts > 1`` the best restart per
            example is chosen by ``loss_fn(logits, y, reduction="none")`` when ``loss_fn``
            accepts ``reduction``, else by calling it on each example alone.
        targeted (bool): descend the loss towards ``y`` instead of ascending. Default: ``False``.
        clamp (tuple of float, optional): valid input range ``(lo, hi)``; ``None`` for
            unbounded inputs. ``x`` outside it raises ``ValueError``. Default: ``(0.0, 1.0)``.
        generator (torch.Generator, optional): the only source of randomness (on ``x``'s
            device); the global RNG when ``None``. Never reseeded. Default: ``None``.
        model_mode (str): ``"eval"``, ``"train"`` or ``"keep"``: the mode the model runs in
            during the attack. Default: ``"eval"``.
        delta_init (Tensor[N, ...], optional): warm start for the first restart, projected
            into the eps ball and the clamp range. Default: ``None``.
        return_delta (bool): also return ``x_adv - x``. Default: ``False``.
        restarts (int): independent random starts; per example the one with the highest final
            loss (lowest when ``targeted``) is kept. Default: ``1``.
        amp_dtype (torch.dtype, optional): run the model and loss under
            ``torch.autocast(x.device.type, amp_dtype)`` (``float16`` or ``bfloat16``); the
            gradient is cast to ``x``'s dtype before the step. Default: ``None``.
        cuda_graph (bool): CUDA only: capture one whole step in a CUDA graph (after warm-up
            on a side stream) and replay it ``steps`` times. The graph is cached per model,
            shape, dtype, device, norm, loss, alpha and a scalar eps; the model's parameters must
            keep their storage between calls (in-place optimizer updates are fine); pass
            the same ``loss_fn`` object each call (a new one means a new capture).
            Default: ``False``.
        track_best (bool): return, per example, the iterate with the highest loss (lowest
            when ``targeted``) over all steps, start and end included, rather than the last
            one; restarts then compare these best losses. Costs one ``torch.where`` per step
            and one extra forward pass. A custom ``loss_fn`` must accept ``reduction="none"``.
            Not with ``cuda_graph``. Default: ``False``.

    Returns:
        Tensor[N, ...]: the adversarial batch, or ``(x_adv, delta)`` when ``return_delta``.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model = MadryCNN(image_size=8)
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> x_adv = {name}(model, x, y, eps=0.3, alpha=0.01, steps=5)
        >>> bool(((x_adv - x).abs() <= 0.3 + 1e-6).all())
        True
    """


def fused_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps,
    alpha,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: Callable | None = None,
    targeted: bool = False,
    clamp=(0.0, 1.0),
    generator: torch.Generator | None = None,
    model_mode: str = "eval",
    delta_init: torch.Tensor | None = None,
    return_delta: bool = False,
    restarts: int = 1,
    amp_dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
    track_best: bool = False,
    check_inputs: bool = True,
):
    return _pgd(
        pgd_step_,
        model,
        x,
        y,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        random_start=random_start,
        loss_fn=loss_fn,
        targeted=targeted,
        clamp=clamp,
        generator=generator,
        model_mode=model_mode,
        delta_init=delta_init,
        return_delta=return_delta,
        restarts=restarts,
        amp_dtype=amp_dtype,
        cuda_graph=cuda_graph,
        track_best=track_best,
        check_inputs=check_inputs,
    )


def reference_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps,
    alpha,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: Callable | None = None,
    targeted: bool = False,
    clamp=(0.0, 1.0),
    generator: torch.Generator | None = None,
    model_mode: str = "eval",
    delta_init: torch.Tensor | None = None,
    return_delta: bool = False,
    restarts: int = 1,
    amp_dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
    track_best: bool = False,
    check_inputs: bool = True,
):
    return _pgd(
        reference_pgd_step,
        model,
        x,
        y,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        random_start=random_start,
        loss_fn=loss_fn,
        targeted=targeted,
        clamp=clamp,
        generator=generator,
        model_mode=model_mode,
        delta_init=delta_init,
        return_delta=return_delta,
        restarts=restarts,
        amp_dtype=amp_dtype,
        cuda_graph=cuda_graph,
        track_best=track_best,
        check_inputs=check_inputs,
    )


fused_pgd.__doc__ = _DOC.format(
    summary="Batched PGD attack whose update step is one fused, in-place kernel.",
    backend="The update uses :func:`fastpgd.step.pgd_step_` (the compiled kernel when the "
    "extension is in use, else its pure-PyTorch twin) on one reused buffer.",
    name="fused_pgd",
)
reference_pgd.__doc__ = _DOC.format(
    summary="Batched PGD attack in plain PyTorch: the baseline :func:`fused_pgd` must match.",
    backend="The update uses :func:`fastpgd.step.reference_pgd_step` (out of place). With the "
    "same generator it returns what :func:`fused_pgd` returns (Linf: bit for bit).",
    name="reference_pgd",
)

random_delta = _random_delta
per_sample_view = _per_sample_view
