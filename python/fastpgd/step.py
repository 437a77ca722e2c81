"""The fused PGD update step, and the plain-PyTorch reference that defines it.

``pgd_step_`` runs one C++/CUDA kernel in place of the 7-19 element-wise ops of a PGD update
(Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).
In eager mode it calls the compiled entry directly (the per-call overhead is a few microseconds);
under ``torch.compile`` it is the custom op ``torch.ops.fastpgd.pgd_step_``, one opaque node.

The compiled entry ``fastpgd._C.pgd_step_`` has a pure-PyTorch twin, ``_py_pgd_step_``: the same
positional arguments, the same checks in the same order with the same exceptions and messages
(``fastpgd._step_args``), then the reference update written in place. ``_ext.pick`` chooses
between them once, at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastpgd import _ext, _step_args

__all__ = ["pgd_step_", "reference_pgd_step"]

# The floor of both L2 norms (kL2Tiny in csrc/pgd_step/pgd_step.h).
_L2_TINY = 1e-12


def _reference_update(x_adv, grad, x0, eps, alpha, norm, clamp):
    """The PGD update out of place, on checked arguments (``eps`` a float or a per-sample
    tensor, ``clamp`` ``None`` or a pair of floats)."""
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
        x = x.clamp(clamp[0], clamp[1])
    return x.to(out_dtype) if low else x


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
    x_adv, grad, x0, eps, alpha, norm, clamp = _step_args.checked(
        x_adv, grad, x0, eps, alpha, norm, clamp, in_place=False
    )
    return _reference_update(x_adv, grad.detach(), x0.detach(), eps, alpha, norm, clamp)


def _py_pgd_step_(*args) -> None:
    """The pure-PyTorch twin of ``fastpgd._C.pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp,
    stream=None)``: every check of the compiled entry, in its order and words, before anything
    is computed; then the reference update, written into ``x_adv``. The stream is checked and
    otherwise unused: PyTorch's ops run on the current stream."""
    if len(args) not in (7, 8):
        raise TypeError(
            "pgd_step_ takes 7 or 8 positional arguments (x_adv, grad, x0, eps, alpha, norm, "
            f"clamp[, stream]), got {len(args)}"
        )
    stream = _step_args.stream_arg(args[7]) if len(args) == 8 else 0
    x_adv, grad, x0, eps, alpha, norm, clamp = _step_args.checked(
        *args[:7], in_place=True, stream=stream
    )
    if x_adv.numel() == 0:
        return
    with torch.no_grad():
        x_adv.copy_(_reference_update(x_adv, grad, x0, eps, alpha, norm, clamp))


#: The step's implementation: the compiled entry, or its pure-PyTorch twin without the extension.
_pgd_step_entry = _ext.pick("pgd_step_", _py_pgd_step_)

_Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling


def _version_bumper():
    # torch.autograd.graph.increment_version(t) wraps torch._C._increment_version, which takes a
    # tuple of tensors in recent torch (one tensor in older torch). Called directly it costs half
    # as much, on the hot path; elsewhere the public wrapper does the job.
    try:
        torch._C._increment_version((torch.zeros(()),))
    except (AttributeError, TypeError):
        public = torch.autograd.graph.increment_version
        return lambda tensors: public(tensors[0])
    return torch._C._increment_version


#: ``_bump_versions((t,))`` marks ``t`` as written in place for autograd.
_bump_versions = _version_bumper()
# Without torch's DLPack C exchange API (torch < 2.10) the compiled entry exports tensors with
# __dlpack__, which refuses tensors that require grad and cannot ask for the current CUDA stream.
_NO_EXCHANGE_API = not _step_args.TORCH_EXCHANGE_API


def _x_adv_needs_no_grad(x_adv) -> None:
    # The kernel writes behind autograd's back: with grad mode on, that would silently drop the
    # update from the graph (or corrupt a leaf). Under no_grad it is the same as any in-place op.
    if torch.is_grad_enabled():
        raise ValueError(
            "x_adv requires grad: an in-place update would bypass autograd. Call pgd_step_ "
            "under torch.no_grad(), or pass x_adv.detach()"
        )


def _negated_x_adv() -> ValueError:
    return ValueError(
        "x_adv has its negative bit set (a lazily negated view, x_adv.is_neg()), which DLPack "
        "cannot carry: the step would write un-negated values. Call x_adv = x_adv.resolve_neg() "
        "first (a new tensor) and step that"
    )


def _readable(t: torch.Tensor) -> torch.Tensor:
    # A read-only argument as the compiled entry can borrow it: the negative bit resolved (DLPack
    # would drop it), detached where __dlpack__ would refuse it for requiring grad.
    return t.detach().resolve_neg()


def _stream_args(x_adv: torch.Tensor) -> tuple:
    # Without the exchange API the entry cannot ask for the current stream itself: name it, so
    # the kernel runs where the caller's work is queued (never on the legacy default stream).
    if x_adv.is_cuda:
        return (torch.cuda.current_stream(x_adv.device).cuda_stream,)
    return ()


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
    values are not checked (that would need a device sync). Tensors are torch tensors (convert
    other DLPack producers with ``torch.from_dlpack``). Lazily negated views
    (``t.is_neg()``, e.g. ``c.conj().imag``) are resolved (copied) for ``grad``, ``x0`` and
    ``eps``, and refused for ``x_adv``, since DLPack cannot carry the negative bit.

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
    if _is_compiling():
        eps_value, alpha, norm, clamp = _step_args.scalars(eps, alpha, norm, clamp)
        if isinstance(eps, torch.Tensor):
            torch.ops.fastpgd.pgd_step_eps_(x_adv, grad, x0, eps, alpha, norm, clamp)
        else:
            torch.ops.fastpgd.pgd_step_(x_adv, grad, x0, eps_value, alpha, norm, clamp)
        return x_adv
    # Settled here, the same for both backends: torch tensors only, and what DLPack cannot carry
    # (the negative bit; requires_grad through __dlpack__). Every other check is the entry's.
    if not isinstance(x_adv, _Tensor):
        if _step_args.is_tensor_like(x_adv):
            raise _step_args.not_torch(x_adv, "x_adv")
        _pgd_step_entry(x_adv, grad, x0, eps, alpha, norm, clamp)  # raises: x_adv is no tensor
        return x_adv
    x = x_adv
    if x_adv.requires_grad:
        _x_adv_needs_no_grad(x_adv)
        if _NO_EXCHANGE_API:
            x = x_adv.detach()  # shares the storage and the version counter
    if x_adv.is_neg():
        raise _negated_x_adv()
    if isinstance(grad, _Tensor):
        if grad.is_neg() or _NO_EXCHANGE_API and grad.requires_grad:
            grad = _readable(grad)
    elif _step_args.is_tensor_like(grad):
        raise _step_args.not_torch(grad, "grad")
    if isinstance(x0, _Tensor):
        if x0.is_neg() or _NO_EXCHANGE_API and x0.requires_grad:
            x0 = _readable(x0)
    elif _step_args.is_tensor_like(x0):
        raise _step_args.not_torch(x0, "x0")
    if isinstance(eps, _Tensor):
        if eps.is_neg() or _NO_EXCHANGE_API and eps.requires_grad:
            eps = _readable(eps)
    elif type(eps) is not float and _step_args.is_tensor_like(eps):
        raise _step_args.not_torch(eps, "eps")
    if _NO_EXCHANGE_API:
        _pgd_step_entry(x, grad, x0, eps, alpha, norm, clamp, *_stream_args(x))
    else:
        _pgd_step_entry(x, grad, x0, eps, alpha, norm, clamp)
    # Autograd must see the write: a graph that saved x_adv would otherwise use new values.
    _bump_versions((x_adv,))
    return x_adv


def _op_impl(x_adv, grad, x0, eps, alpha, norm, clamp):
    # The custom ops' kernel is the eager step itself (the op runs on real tensors, outside
    # tracing), so both modes make the same checks and launch on the same stream.
    pgd_step_(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)


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
