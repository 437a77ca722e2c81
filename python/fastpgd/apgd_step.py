"""The APGD update step, and the plain-PyTorch reference that defines it.

One iteration of APGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1) moves the iterate ``x`` with
a per-example step size ``s``, then mixes in the previous move with momentum ``a``:

- Linf, per element, with ``P(v) = min(max(min(max(v, x0 - e), x0 + e), lo), hi)``:
  ``z = P(x + s * sign(g))``; ``u = P(x + (z - x) * a + (x - x_prev) * (1 - a))``.
- L2, per example (norms over all non-batch dims), with
  ``Q(v) = clamp(x0 + (v - x0) / (||v - x0|| + 1e-12) * min(e, ||v - x0|| + t), lo, hi)``:
  ``z = Q(x + s * g / (||g|| + 1e-12))`` with ``t = 0``; ``u = Q(x + (z - x) * a +
  (x - x_prev) * (1 - a))`` with ``t = 1e-12``, the published code's arithmetic to the letter.

The step then shifts the history: ``x_prev`` takes the old ``x``, and ``x`` takes ``u``.
``a = 1`` (the first iteration) is a plain projected step. float16/bfloat16 are computed in
float32 and rounded once; ``sign(0) = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["apgd_step_", "reference_apgd_step"]

#: The constant the published L2 step adds to each norm before dividing by it.
L2_TINY = 1e-12


def _per_sample(v, x: torch.Tensor):
    """A float unchanged, or a Tensor[N] viewed to broadcast against ``x``."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    return v


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms over all non-batch dims, shaped to broadcast against ``t``."""
    flat = t.reshape(t.shape[0], -1)
    return (flat * flat).sum(dim=1).sqrt().reshape((-1,) + (1,) * (t.dim() - 1))


def _linf_project(v, x0, e, clamp):
    v = torch.minimum(torch.maximum(v, x0 - e), x0 + e)
    return v if clamp is None else v.clamp(clamp[0], clamp[1])


def _l2_project(v, x0, e, clamp, tiny):
    d = v - x0
    n = _norms(d)
    v = x0 + d / (n + L2_TINY) * torch.minimum(torch.as_tensor(e, dtype=n.dtype), n + tiny)
    return v if clamp is None else v.clamp(clamp[0], clamp[1])


def _reference_update(x_adv, x_prev, grad, x0, step_size, eps, momentum, norm, clamp):
    """The APGD update out of place, on checked arguments."""
    out_dtype = x_adv.dtype
    low = out_dtype in (torch.float16, torch.bfloat16)
    if low:
        x_adv, x_prev, grad, x0 = x_adv.float(), x_prev.float(), grad.float(), x0.float()
    s = _per_sample(step_size, x_adv)
    e = _per_sample(eps, x_adv)
    a = momentum
    if norm == "linf":
        z = _linf_project(x_adv + s * grad.sign(), x0, e, clamp)
        u = _linf_project(x_adv + (z - x_adv) * a + (x_adv - x_prev) * (1 - a), x0, e, clamp)
    else:
        z = _l2_project(x_adv + s * grad / (_norms(grad) + L2_TINY), x0, e, clamp, 0.0)
        u = x_adv + (z - x_adv) * a + (x_adv - x_prev) * (1 - a)
        u = _l2_project(u, x0, e, clamp, L2_TINY)
    return u.to(out_dtype) if low else u


def reference_apgd_step(
    x_adv: torch.Tensor,
    x_prev: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    *,
    step_size: float | torch.Tensor,
    eps: float | torch.Tensor,
    momentum: float = 0.75,
    norm: str = "linf",
    clamp: Sequence[float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """One APGD update in plain PyTorch, out of place: the semantics every backend matches.

    See the module docstring for the formulas.

    Args:
        x_adv (Tensor[N, ...]): the current iterate (floating point).
        x_prev (Tensor[N, ...]): the previous iterate (``x_adv`` itself at the first step).
        grad (Tensor[N, ...]): the loss gradient at ``x_adv``.
        x0 (Tensor[N, ...]): the clean input, the centre of the eps-ball.
        step_size (float or Tensor[N]): the step size, one value or one per example.
        eps (float or Tensor[N]): radius of the ball, one value or one per example.
        momentum (float): the weight ``a`` of the new move against the previous one (0.75 in
            APGD; 1 at its first step). Default: ``0.75``.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        clamp (tuple of 2 floats, optional): valid input range, or ``None``.
            Default: ``(0.0, 1.0)``.

    Returns:
        Tensor[N, ...]: the new iterate (the caller's ``x_prev`` becomes ``x_adv``).
    """
    return _reference_update(
        x_adv, x_prev, grad.detach(), x0.detach(), step_size, eps, momentum, norm, clamp
    )


def apgd_step_(
    x_adv: torch.Tensor,
    x_prev: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    *,
    step_size: float | torch.Tensor,
    eps: float | torch.Tensor,
    momentum: float = 0.75,
    norm: str = "linf",
    clamp: Sequence[float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """One APGD update in place: ``x_prev`` takes the old ``x_adv``, ``x_adv`` the new iterate.

    Same arguments and result as :func:`reference_apgd_step`.

    Returns:
        Tensor[N, ...]: ``x_adv``, updated.
    """
    with torch.no_grad():
        new = _reference_update(x_adv, x_prev, grad, x0, step_size, eps, momentum, norm, clamp)
        x_prev.copy_(x_adv)
        x_adv.copy_(new)
    return x_adv
