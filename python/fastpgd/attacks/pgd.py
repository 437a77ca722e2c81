"""Batched projected gradient descent (PGD) attacks: the fused one and its reference.

:func:`fused_pgd` and :func:`reference_pgd` share one loop; the only difference is the update
step. The fused attack updates its buffer in place with :func:`fastpgd.step.pgd_step_` (one
C++/CUDA kernel when the extension is in use), the reference recomputes it out of place with
plain PyTorch ops (:func:`fastpgd.step.reference_pgd_step`). With the same generator both
return equal tensors (Linf, float32/float64: bit for bit; L2: within float32 rounding, as the
kernel sums the norms in its own order).

The arguments of a call are checked once, into a frozen :class:`_PGDOptions`; the loop reads
only that. :func:`random_delta` (the random start) and :func:`per_sample_view` (a per-sample
value broadcast against a batch) are public for callers that build their own starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.attacks import graph as attack_graph
from fastpgd.attacks._common import (
    ClassCount,
    accepts_reduction,
    check_bool,
    check_budget,
    check_clamp,
    check_count,
    check_delta_init,
    check_generator,
    check_in_range,
    check_label_range,
    check_y,
    describe,
    model_device,
    model_mode,
)
from fastpgd.step import pgd_step_, reference_pgd_step

__all__ = ["fused_pgd", "per_sample_view", "random_delta", "reference_pgd"]

_NORMS = ("linf", "l2")
_MODEL_MODES = ("eval", "train", "keep")
_AMP_DTYPES = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------------
# Public pieces: the random start and the per-sample broadcast
# --------------------------------------------------------------------------------------------


def per_sample_view(v, x: torch.Tensor):
    """View one value per sample so that it broadcasts against the batch ``x``.

    Args:
        v (float or Tensor[N]): a number (returned unchanged) or one value per sample of ``x``
            (any dtype, e.g. a bool mask).
        x (Tensor[N, ...]): the batch ``v`` is to broadcast against.

    Returns:
        float or Tensor[N, 1, ..., 1]: ``v``, or a view of it with ``x.dim()`` dimensions.

    Examples::

        >>> x = torch.zeros(3, 2, 2)
        >>> per_sample_view(torch.tensor([1.0, 2.0, 3.0]), x).shape
        torch.Size([3, 1, 1])
        >>> (x + per_sample_view(torch.tensor([1.0, 2.0, 3.0]), x))[2]
        tensor([[3., 3.],
                [3., 3.]])
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a tensor with a batch dimension, got {describe(x)}")
    if isinstance(v, torch.Tensor):
        if v.shape != (x.shape[0],):
            raise ValueError(
                f"v must have one value per sample of x, shape ({x.shape[0]},), "
                f"got {tuple(v.shape)}"
            )
        return v.view((-1,) + (1,) * (x.dim() - 1))
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"v must be a number or a 1-D tensor, got {type(v).__name__}")
    return v


def random_delta(x: torch.Tensor, eps, norm: str, generator: torch.Generator | None):
    """A random start for PGD: a perturbation uniform in the Linf box or in the L2 ball.

    Linf: each element uniform in ``[-eps, eps]``. L2: a Gaussian direction scaled to radius
    ``eps * U^(1/d)`` (``d`` = numel per sample), which is uniform in the ball's volume. The
    numbers are drawn in float32 at least, so float16/bfloat16 inputs consume the generator
    exactly as float32 ones do. Not clamped: add it to ``x`` and clamp to the valid range.

    Args:
        x (Tensor[N, ...]): the batch to perturb, floating point; gives shape, dtype, device.
        eps (float or Tensor[N]): radius, one value or one per sample (floating point, on
            ``x``'s device; cast to ``x``'s dtype). ``>= 0``; a tensor's values are not
            checked (that would need a device sync).
        norm (str): ``"linf"`` or ``"l2"``.
        generator (torch.Generator, optional): the source of randomness, on ``x``'s device;
            the global RNG when ``None``.

    Returns:
        Tensor[N, ...]: the perturbation, of ``x``'s dtype and device.

    Examples::

        >>> x = torch.rand(4, 3)
        >>> delta = random_delta(x, 0.3, "linf", torch.Generator().manual_seed(0))
        >>> bool((delta.abs() <= 0.3).all())
        True
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(
            f"x must be a floating-point tensor with a batch dimension, got {describe(x)}"
        )
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    check_generator(generator, x)
    if isinstance(eps, torch.Tensor):
        if not eps.is_floating_point():
            raise TypeError(f"eps must be a floating-point tensor, got dtype {eps.dtype}")
        if eps.device != x.device:
            raise ValueError(f"eps must be on the device of x ({x.device}), got {eps.device}")
        if eps.shape != (x.shape[0],):
            raise ValueError(
                f"eps must be a number or one value per sample of x, shape ({x.shape[0]},), "
                f"got {tuple(eps.shape)}"
            )
        eps = eps.to(x.dtype)
    elif isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a number or a 1-D tensor, got {type(eps).__name__}")
    return _random_delta(x, eps, norm, generator)


def _random_delta(x: torch.Tensor, eps, norm: str, generator) -> torch.Tensor:
    """random_delta without its checks, for arguments checked already."""
    e = per_sample_view(eps, x)
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
    delta = direction * per_sample_view(radius * eps_t, x)
    return delta.to(x.dtype)


def _draw_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: random draws for fp16/bf16 inputs come from the float32 stream."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _uniform(x: torch.Tensor, generator) -> torch.Tensor:
    """U[0, 1) of x's shape, drawn in float32 at least so that fp16/bf16 get the same stream."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=_draw_dtype(x))
    return u.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Checking the arguments, once per call
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _PGDOptions:
    """The arguments of one attack call, checked and converted by :func:`_pgd_options`."""

    model: Callable
    x: torch.Tensor  # detached, dense row-major, no negative bit: the kernel reads its memory
    y: torch.Tensor  # int64 labels with the default loss
    eps: float | torch.Tensor  # a float, or Tensor[N] of x's dtype and device
    alpha: float
    steps: int
    norm: str
    random_start: bool
    loss_fn: Callable | None
    targeted: bool
    clamp: tuple[float, float] | None
    generator: torch.Generator | None
    model_mode: str
    delta_init: torch.Tensor | None  # like x
    return_delta: bool
    restarts: int
    amp_dtype: torch.dtype | None
    cuda_graph: bool
    track_best: bool
    check_inputs: bool
    # (min, max) of the labels, read with the other value checks; checked against the class
    # count on the first forward pass. None with a custom loss or check_inputs=False.
    label_range: tuple[int, int] | None = None


def _pgd_options(
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
    check_inputs,
) -> _PGDOptions:
    """Check every argument of :func:`fused_pgd` / :func:`reference_pgd`; convert once."""
    check_inputs = check_bool("check_inputs", check_inputs)
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    y = check_y(y, x, loss_fn)
    steps = check_count("steps", steps, least=0)
    restarts = check_count("restarts", restarts, least=1)
    random_start = check_bool("random_start", random_start)
    targeted = check_bool("targeted", targeted)
    return_delta = check_bool("return_delta", return_delta)
    cuda_graph = check_bool("cuda_graph", cuda_graph)
    track_best = check_bool("track_best", track_best)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if model_mode not in _MODEL_MODES:
        raise ValueError(f"model_mode must be one of {_MODEL_MODES}, got {model_mode!r}")
    if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
        raise ValueError(
            f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {amp_dtype}"
        )
    check_generator(generator, x)
    if isinstance(model, nn.Module):
        device = model_device(model)
        if device is not None and device != x.device:
            raise ValueError(f"model is on {device} but x is on {x.device}; move one of them")
    eps = check_budget("eps", eps, x, check_inputs)
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        # The fused kernel takes one step size; per-sample radii cover the per-sample use case.
        raise TypeError(
            "alpha must be a number (one step size for the batch), got a tensor "
            f"of shape {tuple(alpha.shape)}"
        )
    alpha = check_budget("alpha", alpha, x, check_inputs)
    clamp = check_clamp(clamp)
    if cuda_graph:
        attack_graph.check_cuda_graph(x, model)
        if track_best:
            raise ValueError("track_best=True is not supported with cuda_graph=True")
    if track_best and loss_fn is not None and not accepts_reduction(loss_fn):
        raise ValueError(
            "track_best=True with a custom loss_fn needs loss_fn(logits, y, reduction='none') "
            "to return one loss per example"
        )
    # The fused kernel reads dense row-major memory and ignores a negative-bit view's flag:
    # one copy here for strided or negative-bit inputs, none otherwise.
    x0 = x.detach().resolve_neg().contiguous()
    if delta_init is not None:
        delta_init = check_delta_init(delta_init, x0, check_inputs)
    # The ranges of x and of the labels are both queued before either is read: the call waits
    # for the device once, before its first forward pass rather than inside the loop.
    x_range = torch.aminmax(x0) if check_inputs and clamp is not None and x0.numel() else None
    y_range = torch.aminmax(y) if check_inputs and loss_fn is None and y.numel() else None
    if x_range is not None:
        check_in_range(x_range[0].item(), x_range[1].item(), clamp)
    label_range = None if y_range is None else (y_range[0].item(), y_range[1].item())
    return _PGDOptions(
        model=model,
        x=x0,
        y=y,
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
        label_range=label_range,
    )


# --------------------------------------------------------------------------------------------
# Pieces of the attack
# --------------------------------------------------------------------------------------------


def _project(delta: torch.Tensor, x0: torch.Tensor, eps, norm: str, clamp) -> torch.Tensor:
    """Project a perturbation into the eps ball, then the point into the clamp range."""
    e = per_sample_view(eps, x0)
    if norm == "linf":
        if isinstance(e, torch.Tensor):
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-e, e)
    else:
        n = x0.shape[0]
        norms = delta.reshape(n, -1).norm(dim=1).clamp_min(torch.finfo(delta.dtype).tiny)
        factor = torch.clamp((eps / norms), max=1.0)
        delta = delta * per_sample_view(factor, x0)
    x = x0 + delta
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    return x


def _per_example_loss(loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One loss value per example, used to pick the best restart."""
    if loss_fn is None:
        return F.cross_entropy(logits.float(), y, reduction="none")
    if accepts_reduction(loss_fn):
        out = loss_fn(logits, y, reduction="none")
        if out.shape != (logits.shape[0],):
            raise ValueError(
                "loss_fn(logits, y, reduction='none') must return one value per example, "
                f"got shape {tuple(out.shape)}"
            )
        return out.float()
    # A loss that only reduces: evaluate it on each example alone (once per restart, not per step).
    return torch.stack([loss_fn(logits[i : i + 1], y[i : i + 1]) for i in range(len(y))]).float()


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Summed, not averaged (Madry et al.): the per-example gradients keep their scale with N.
    return F.cross_entropy(logits, y, reduction="sum")


def _autocast(o: _PGDOptions) -> Callable:
    """A factory of the context the model and loss run in."""
    if o.amp_dtype is None:
        return contextlib.nullcontext
    device_type, dtype = o.x.device.type, o.amp_dtype
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def _make_step(step_fn, net, o: _PGDOptions, classes: ClassCount | None) -> Callable:
    """One PGD step: forward, gradient with respect to the input, update by ``step_fn``.

    The returned closure reads only the settings copied into locals here, never ``o``: a
    captured step outlives its call in the graph cache and must not keep the call's model or
    tensors alive.
    """
    loss_fn, targeted, norm, clamp = o.loss_fn, o.targeted, o.norm, o.clamp
    loss_of = loss_fn if loss_fn is not None else _sum_cross_entropy
    autocast = _autocast(o)

    def one_step(x_buf, x0, y, eps, alpha, track=None):
        # A fresh leaf sharing x_buf's storage: autograd.grad frees the graph before the
        # update writes into x_buf, so no copy of x_adv is made per step.
        inp = x_buf.detach().requires_grad_(True)
        with autocast():
            logits = net(inp)
            if classes is not None:
                classes(logits)
            loss = loss_of(logits, y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
        if targeted:
            loss = -loss  # descend the loss towards the target labels
        if track is not None:
            # The loss of the iterate the step starts from, before the update overwrites it.
            with torch.no_grad():
                track.update(x_buf, _per_example_loss(loss_fn, logits.detach(), y))
        (grad,) = torch.autograd.grad(loss, inp)
        if grad.dtype != x_buf.dtype:
            grad = grad.to(x_buf.dtype)
        if not grad.is_contiguous():  # e.g. a channels_last model's input gradient
            grad = grad.contiguous()
        return step_fn(x_buf, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)

    return one_step


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
        self.x = torch.where(per_sample_view(better, x), x, self.x)
        self.loss = torch.where(better, per_example, self.loss)


def _captured_step(step_fn, o: _PGDOptions, new_graph: Callable):
    """The captured step for this call, from the graph cache or captured now; and its class
    count (``None`` with a custom loss)."""
    cache = attack_graph.GRAPH_CACHE
    key = attack_graph.graph_key(
        step_fn,
        o.model,
        o.x,
        o.y,
        o.eps,
        o.alpha,
        o.norm,
        o.loss_fn,
        o.targeted,
        o.clamp,
        o.amp_dtype,
    )
    entry = cache.get(o.model, key)
    if entry is None:
        classes = ClassCount(o.label_range) if o.loss_fn is None else None
        # The cache is weak on the model: its entry must not hold the model strongly. The
        # labels are checked in the first warm-up run, outside the capture.
        one_step = _make_step(step_fn, weakref.proxy(o.model), o, classes)
        # The model's graphs share one memory pool (they never replay at once), and the warm-up
        # runs leave its buffers (BatchNorm statistics in training mode) as they found them.
        graph = new_graph(o.x.device, pool=cache.pool(o.model), preserve=[o.model])
        captured = attack_graph.CapturedStep(one_step, o.x, o.y, o.eps, o.alpha, graph)
        entry = (captured, classes)
        cache.put(o.model, key, entry)
    else:
        classes = entry[1]
        if o.label_range is not None and classes is not None and classes.num_classes is not None:
            # Here, not in the step: a replay runs no Python.
            check_label_range(o.label_range, classes.num_classes)
    return entry


# --------------------------------------------------------------------------------------------
# The shared implementation
# --------------------------------------------------------------------------------------------


def _pgd(step_fn, o: _PGDOptions, new_graph: Callable = attack_graph.CudaGraph):
    """The attack loop shared by both public functions; ``step_fn`` is the update.

    ``new_graph(device, pool=..., preserve=...)`` makes the graph a captured step records into
    (see :class:`fastpgd.attacks.graph.CapturedStep` and :class:`fastpgd.cuda_graph.CudaGraph`).
    """
    # Parameters keep requires_grad: autograd.grad(loss, inp) already skips every weight-gradient
    # kernel (the engine only runs what leads to inp), and freezing them measured no faster on
    # the Madry CNN (CPU, 10 steps: 0.177 s vs 0.183 s best of 12, within noise).
    model, x0, y, eps, norm, clamp = o.model, o.x, o.y, o.eps, o.norm, o.clamp
    autocast = _autocast(o)
    classes = ClassCount(o.label_range) if o.loss_fn is None else None

    def final_loss(x_adv):
        with torch.no_grad(), autocast():
            logits = model(x_adv)
            if classes is not None:
                classes(logits)
            return _per_example_loss(o.loss_fn, logits, y)

    best_x = None
    best_loss = None
    with model_mode(model, o.model_mode):
        captured = one_step = None
        if o.cuda_graph and o.steps > 0:
            captured, classes = _captured_step(step_fn, o, new_graph)
        else:
            one_step = _make_step(step_fn, model, o, classes)
        for r in range(o.restarts):
            if r == 0 and o.delta_init is not None:
                x_adv = _project(o.delta_init, x0, eps, norm, clamp)
            elif o.random_start:
                x_adv = _project(_random_delta(x0, eps, norm, o.generator), x0, eps, norm, clamp)
            else:
                x_adv = x0.clone()
            track = _BestIterate(o.targeted) if o.track_best else None
            if captured is not None:
                x_adv = captured(x_adv, x0, y, eps, o.steps)
            else:
                for _ in range(o.steps):
                    x_adv = one_step(x_adv, x0, y, eps, o.alpha, track)
            if track is not None:
                track.update(x_adv, final_loss(x_adv))
                x_adv, per_example = track.x, track.loss
            elif o.restarts == 1:
                best_x = x_adv
                break
            else:
                per_example = final_loss(x_adv)
                if o.targeted:
                    per_example = -per_example
            if best_x is None:
                best_x, best_loss = x_adv, per_example
            else:
                better = per_example > best_loss
                best_x = torch.where(per_sample_view(better, x0), x_adv, best_x)
                best_loss = torch.where(better, per_example, best_loss)
    x_adv = best_x.detach()
    if o.return_delta:
        return x_adv, x_adv - x0
    return x_adv


_DOC = """{summary}

    Projected gradient descent (PGD) from Madry et al., "Towards Deep Learning Models
    Resistant to Adversarial Attacks" (ICLR 2018): from a random point in the eps ball around
    ``x``, repeat ``steps`` times: take the gradient of the loss with respect to the input,
    step by ``alpha`` along its sign (Linf) or its direction (L2), project back into the eps
    ball and into the ``clamp`` range. The whole batch is attacked at once; the gradient is
    taken with respect to the input only: no parameter ``.grad`` is created or changed, and
    no parameter's ``requires_grad`` is touched (the gradient is asked of the input alone, so
    no weight gradient is computed). Each submodule's ``training`` flag is restored exactly,
    even on errors.

    {backend}

    Args:
        model (nn.Module): maps ``x`` to logits ``Tensor[N, K]``; on the device of ``x``.
        x (Tensor[N, ...]): clean inputs, floating point, within ``clamp``.
        y (Tensor[N]): integer class labels in ``[0, K)`` (the true class, or the target when
            ``targeted``); int64, or another integer dtype, converted to int64 once. With a
            custom ``loss_fn``, anything with ``N`` rows that it accepts, passed as is.
        eps (float or Tensor[N]): radius of the perturbation ball, one value or one per sample.
        alpha (float): step size.
        steps (int): number of gradient steps; ``0`` returns the (random) start point.
        norm (str): ``"linf"`` or ``"l2"`` (norms over all non-batch dims of each sample).
            Default: ``"linf"``.
        random_start (bool): start uniformly in the Linf box, or uniformly in the L2 ball
            (see :func:`random_delta`), clamped into range; else start at ``x``.
            Default: ``True``.
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
        cuda_graph (bool): CUDA only: capture one whole step (forward, backward, update) in a
            CUDA graph after warm-up runs on a side stream, and replay it ``steps`` times. It
            computes what the eager attack computes from the same generator state, except that
            cuDNN may pick other kernels under capture, so the signs of a few near-zero
            gradient elements can differ (tested: under 1% of elements differ by more than
            1e-5). The warm-up runs are undone: the model's buffers (BatchNorm statistics in
            training mode) and parameters end as the eager attack leaves them. Graphs are
            cached per model (the 8 most recently used per model, sharing one memory pool; a
            dropped model frees its graphs) and per attack, shape, dtype, device, training
            flags, norm, loss, ``targeted``, ``clamp``, ``amp_dtype``, an enclosing
            ``torch.autocast`` block, ``alpha``, a scalar ``eps``, and the addresses of the
            model's parameters and buffers (so ``model.half()``, moving the model or swapping
            ``p.data`` captures again; in-place updates replay); a per-sample ``eps`` is copied
            in. ``loss_fn`` is named by identity and held weakly: pass the same object each
            call (a new one means a new capture). Default: ``False``.
        track_best (bool): return, per example, the iterate with the highest loss (lowest
            when ``targeted``) over all steps, start and end included, rather than the last
            one; restarts then compare these best losses. Costs one ``torch.where`` per step
            and one extra forward pass. A custom ``loss_fn`` must accept ``reduction="none"``.
            Not with ``cuda_graph``. Default: ``False``.
        check_inputs (bool): check the values of the input tensors: ``x`` within ``clamp``
            and not NaN, a per-sample ``eps`` finite and ``>= 0``, ``delta_init`` finite, and
            (with the default loss) the labels in ``[0, K)``, ``K`` read from the first
            logits. The values are read on the host before the first forward pass, so there
            the call waits for the device and the work queued on it. ``False`` skips these
            checks, so that the attack queues all its work without waiting (as a training
            loop wants): the caller vouches for those values, and a bad one gives a wrong
            result or an error from inside torch. Checks of types, shapes, dtypes, devices and
            Python numbers always run. Pass ``eps`` and ``alpha`` as Python numbers, or
            ``eps`` as a 1-D tensor: a 0-d tensor is read with ``.item()``. Default: ``True``.

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
    eps: float | torch.Tensor,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: Callable | None = None,
    targeted: bool = False,
    clamp: tuple[float, float] | None = (0.0, 1.0),
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
    return _pgd(pgd_step_, _pgd_options(**locals()))  # locals() holds exactly the arguments


def reference_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: Callable | None = None,
    targeted: bool = False,
    clamp: tuple[float, float] | None = (0.0, 1.0),
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
    return _pgd(reference_pgd_step, _pgd_options(**locals()))  # locals(): the arguments


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
