"""The fused PGD update step, and the plain-PyTorch reference that defines it.

``pgd_step_`` runs one C++/CUDA kernel in place of the 7-19 element-wise ops of a PGD update
(Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).
In eager mode it calls the compiled core directly (the per-call overhead is a few microseconds);
under ``torch.compile`` it is the custom op ``torch.ops.fastpgd.pgd_step_``, one opaque node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastpgd import _ext

__all__ = ["pgd_step_", "reference_pgd_step"]

_NORMS = ("linf", "l2")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The floor of both L2 norms (kL2Tiny in csrc/pgd_step/pgd_step.h).
_L2_TINY = 1e-12


def _check_real(value, name: str) -> float:
    if isinstance(value, (bool, str, bytes, torch.Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"{name} is too large for a float") from None


def _check_args(x_adv, grad, x0, eps, alpha, norm, clamp):
    """The Python twin of the checks in csrc/binding/pgd_step.cpp (same types, same words)."""
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a str ('linf' or 'l2'), got {type(norm).__name__}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got '{norm}'")
    alpha_f = _check_real(alpha, "alpha")
    if not math.isfinite(alpha_f):
        raise ValueError(f"alpha must be finite, got {alpha_f}")
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {type(clamp).__name__}")
        lo, hi = _check_real(clamp[0], "clamp lo"), _check_real(clamp[1], "clamp hi")
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"clamp bounds must not be NaN, got ({lo}, {hi})")
        if lo > hi:
            raise ValueError(f"clamp must have lo <= hi, got ({lo}, {hi})")
    for name, t in (("x_adv", x_adv), ("grad", grad), ("x0", x0)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a tensor (an object supporting DLPack), got {type(t).__name__}"
            )
    if x_adv.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            "x_adv must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x_adv.dtype}"
        )
    for name, t in (("grad", grad), ("x0", x0)):
        if t.dtype != x_adv.dtype:
            raise TypeError(
                f"{name} must have the same dtype as x_adv, got {t.dtype} and {x_adv.dtype}"
            )
        if t.device != x_adv.device:
            raise ValueError(
                f"{name} must be on the same device as x_adv, got {t.device} and {x_adv.device}"
            )
        if t.shape != x_adv.shape:
            raise ValueError(
                f"{name} must have the same shape as x_adv, got {list(t.shape)} "
                f"and {list(x_adv.shape)}"
            )
    batch = x_adv.shape[0] if x_adv.dim() > 0 else 1
    if isinstance(eps, torch.Tensor):
        if eps.dtype != x_adv.dtype:
            raise TypeError(
                f"eps must have the same dtype as x_adv, got {eps.dtype} and {x_adv.dtype}"
            )
        if eps.device != x_adv.device:
            raise ValueError(
                f"eps must be on the same device as x_adv, got {eps.device} and {x_adv.device}"
            )
        if eps.dim() != 1 or eps.shape[0] != batch:
            raise ValueError(
                "eps must be a float or a 1-D tensor with one value per sample "
                f"({batch}), got shape {list(eps.shape)}"
            )
        # Checking the values of a CUDA tensor would cost a device sync: CPU only.
        if eps.device.type == "cpu" and not bool((eps >= 0).all()):
            raise ValueError("eps must be >= 0 and not NaN, got a negative or NaN value")
    else:
        eps_f = _check_real(eps, "eps")
        if not eps_f >= 0.0:
            raise ValueError(f"eps must be >= 0 and not NaN, got {eps_f}")


def _check_x_adv_grad_mode(x_adv) -> None:
    # The kernel writes behind autograd's back: with grad mode on, that would silently drop the
    # update from the graph (or corrupt a leaf). Under no_grad it is the same as any in-place op.
    if x_adv.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "x_adv requires grad: an in-place update would bypass autograd. Call pgd_step_ "
            "under torch.no_grad(), or pass x_adv.detach()"
        )


def reference_pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float,
    norm: str = "linf",
    clamp: Sequence[float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """One PGD update in plain PyTorch, out of place: the semantics every backend matches.

    Linf: ``x = x_adv + alpha * sign(grad)``, projected onto ``[x0 - eps, x0 + eps]``, then
    clamped. L2: ``x = x_adv + alpha * grad / max(||grad_i||, 1e-12)``, the displacement
    ``d = x - x0`` scaled by ``min(1, eps / max(||d_i||, 1e-12))``, then clamped. Norms run over
    all dims but the first (the batch). float16/bfloat16 inputs are computed in float32 and
    rounded once, as the fused kernel does. ``sign(0) = 0``; NaN follows PyTorch's ops.

    Args:
        x_adv (Tensor[N, ...]): the current adversarial example (floating point).
        grad (Tensor[N, ...]): the loss gradient with respect to ``x_adv``.
        x0 (Tensor[N, ...]): the clean input, the centre of the eps-ball.
        eps (float or Tensor[N]): radius of the ball, a scalar or one value per sample
            (same dtype and device as ``x_adv``), ``>= 0``.
        alpha (float): step size, finite.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        clamp (tuple of 2 floats, optional): valid input range ``(lo, hi)``, or ``None`` for
            none. Default: ``(0.0, 1.0)``.

    Returns:
        Tensor[N, ...]: the updated example, a new tensor of ``x_adv``'s dtype.

    Examples::

        >>> x0 = torch.rand(2, 3)
        >>> x = reference_pgd_step(x0, torch.randn(2, 3), x0, eps=0.3, alpha=0.1)
        >>> bool(((x - x0).abs() <= 0.3).all())
        True
    """
    _check_args(x_adv, grad, x0, eps, alpha, norm, clamp)
    grad = grad.detach()
    x0 = x0.detach()
    out_dtype = x_adv.dtype
    low = out_dtype in (torch.float16, torch.bfloat16)
    if low:
        x_adv, grad, x0 = x_adv.float(), grad.float(), x0.float()
    if isinstance(eps, torch.Tensor):
        eps = eps.detach().to(x_adv.dtype).reshape((-1,) + (1,) * max(x_adv.dim() - 1, 0))
        if x_adv.dim() == 0:
            eps = eps.reshape(())
    if norm == "linf":
        x = x_adv + alpha * grad.sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps)
    else:
        shape = (-1,) + (1,) * max(x_adv.dim() - 1, 0)
        if x_adv.dim() == 0:
            shape = ()

        def per_sample_norm(t):
            flat = t.reshape(1, 1) if t.dim() == 0 else t.reshape(t.shape[0], -1)
            # Accumulated in double like the kernel; rounded back to the compute dtype.
            return flat.double().norm(dim=1).to(t.dtype).reshape(shape)

        x = x_adv + alpha * grad / per_sample_norm(grad).clamp_min(_L2_TINY)
        d = x - x0
        factor = (eps / per_sample_norm(d).clamp_min(_L2_TINY)).clamp_max(1.0)
        x = x0 + d * factor
    if clamp is not None:
        x = x.clamp(float(clamp[0]), float(clamp[1]))
    return x.to(out_dtype) if low else x


def _fallback_(x_adv, grad, x0, eps, alpha, norm, clamp):
    if isinstance(x_adv, torch.Tensor):
        _check_x_adv_grad_mode(x_adv)
    out = reference_pgd_step(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
    # The same layout rules as the kernel, so code tested without the extension runs with it.
    for name, t in (("grad", grad), ("x0", x0), ("x_adv", x_adv)):
        if not t.is_contiguous():
            raise ValueError(
                f"{name} must be contiguous, got strides {t.stride()} for shape "
                f"{list(t.shape)} (call .contiguous())"
            )
    with torch.no_grad():
        x_adv.copy_(out)
    return x_adv


def pgd_step_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float,
    norm: str = "linf",
    clamp: Sequence[float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """One fused PGD update, in place: ``reference_pgd_step`` as a single kernel.

    Linf results equal :func:`reference_pgd_step` bit for bit in float32/float64 (up to the
    sign of zero and NaN payloads); L2 per-sample norms are accumulated in double, so they
    differ from the reference only in the last bits (relative error <= 1e-6 in float32);
    float16/bfloat16 are within one ulp. Inputs must be contiguous; ``x_adv`` must not overlap
    ``grad``, ``x0`` or ``eps``. On CUDA it runs on the current stream, and per-sample ``eps``
    values are not checked (that would need a device sync).

    Args:
        x_adv (Tensor[N, ...]): the current adversarial example, updated in place. Must not
            require grad while grad mode is on.
        grad (Tensor[N, ...]): the loss gradient with respect to ``x_adv``.
        x0 (Tensor[N, ...]): the clean input, the centre of the eps-ball.
        eps (float or Tensor[N]): radius of the ball, a scalar or one value per sample
            (same dtype and device as ``x_adv``), ``>= 0``.
        alpha (float): step size, finite.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        clamp (tuple of 2 floats, optional): valid input range ``(lo, hi)``, or ``None`` for
            none. Default: ``(0.0, 1.0)``.

    Returns:
        Tensor[N, ...]: ``x_adv``, updated.

    Examples::

        >>> x0 = torch.rand(2, 3)
        >>> x = x0.clone()
        >>> _ = pgd_step_(x, torch.randn(2, 3), x0, eps=0.3, alpha=0.1)
        >>> bool(((x - x0).abs() <= 0.3 + 1e-7).all())
        True
    """
    C = _ext._C
    if C is None:
        return _fallback_(x_adv, grad, x0, eps, alpha, norm, clamp)
    if torch.compiler.is_compiling():
        clamp_t = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        if isinstance(eps, torch.Tensor):
            torch.ops.fastpgd.pgd_step_eps_(x_adv, grad, x0, eps, float(alpha), norm, clamp_t)
        else:
            torch.ops.fastpgd.pgd_step_(x_adv, grad, x0, float(eps), float(alpha), norm, clamp_t)
        return x_adv
    if isinstance(x_adv, torch.Tensor):
        if x_adv.requires_grad:
            _check_x_adv_grad_mode(x_adv)
        # The DLPack export refuses tensors that require grad; grad and x0 are only read.
        if isinstance(grad, torch.Tensor) and grad.requires_grad:
            grad = grad.detach()
        if isinstance(x0, torch.Tensor) and x0.requires_grad:
            x0 = x0.detach()
        if isinstance(eps, torch.Tensor) and eps.requires_grad:
            eps = eps.detach()
        if not _TORCH_EXCHANGE_API and x_adv.is_cuda:
            # Without PyTorch's C exchange API the extension cannot ask for the current stream
            # itself: name it, so the kernel runs where the caller's work is queued.
            stream = torch.cuda.current_stream(x_adv.device).cuda_stream
            C.pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp, stream)
        else:
            C.pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp)
        # Autograd must see the write: a graph that saved x_adv would otherwise use new values.
        _increment_version(x_adv)
        return x_adv
    C.pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp)
    return x_adv


_increment_version = torch.autograd.graph.increment_version
# torch >= 2.10 offers the DLPack C exchange API, through which the extension reads the current
# CUDA stream itself.
_TORCH_EXCHANGE_API = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")


def _op_impl(x_adv, grad, x0, eps, alpha, norm, clamp):
    _ext.require_ext("torch.ops.fastpgd.pgd_step_").pgd_step_(
        x_adv, grad, x0, eps, alpha, norm, None if clamp is None else tuple(clamp)
    )


# The custom ops torch.compile sees: one opaque node each, mutating x_adv. A float eps and a
# per-sample tensor eps need two schemas (a custom op argument has one type).
@torch.library.custom_op("fastpgd::pgd_step_", mutates_args={"x_adv"})
def _pgd_step_op(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    eps: float,
    alpha: float,
    norm: str,
    clamp: Sequence[float] | None,
) -> None:
    _op_impl(x_adv, grad, x0, eps, alpha, norm, clamp)


@torch.library.custom_op("fastpgd::pgd_step_eps_", mutates_args={"x_adv"})
def _pgd_step_eps_op(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha: float,
    norm: str,
    clamp: Sequence[float] | None,
) -> None:
    _op_impl(x_adv, grad, x0, eps, alpha, norm, clamp)


@_pgd_step_op.register_fake
def _(x_adv, grad, x0, eps, alpha, norm, clamp):
    return None


@_pgd_step_eps_op.register_fake
def _(x_adv, grad, x0, eps, alpha, norm, clamp):
    return None
