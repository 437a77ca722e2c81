"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020), untargeted and targeted.

FAB looks for the adversarial example nearest to ``x`` rather than for the highest loss within a
budget: at each step it linearises the model around the current iterate, projects both the
iterate and ``x`` onto the nearest linearised decision boundary within the input box (the
projection is the heart of the attack: :func:`hyperplane_box_step`), moves to a combination of
the two projections biased towards ``x``, and, once it crosses the boundary, steps back towards
``x``. A point counts as fooled when its best find is misclassified and within ``eps``.

:func:`fab` is what AutoAttack runs: untargeted with restarts, or targeted (FAB-T), one run per
target class on the points still robust.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from fastpgd.attacks._common import (
    MODEL_MODES,
    Logits,
    attack_robust,
    check_amp_dtype,
    check_bool,
    check_budget,
    check_choice,
    check_clamp,
    check_count,
    check_generator,
    check_model_and_x,
    check_real,
    check_y,
    model_mode,
    per_sample_norm,
    read_value_ranges,
    take,
    working_copy,
)
from fastpgd.attacks.pgd import per_sample_view

__all__ = ["fab", "hyperplane_box_step"]

_NORMS = ("linf", "l2")
# The reference's guards: the floor on a projection's length (so that the bias towards x is
# defined when both projections are zero) and the term that keeps a zero gradient's distance
# finite.
_MIN_STEP = 1e-8
_DIST_GUARD = 1e-12


# --------------------------------------------------------------------------------------------
# The projection onto a hyperplane within a box
# --------------------------------------------------------------------------------------------


def hyperplane_box_step(
    t: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    norm: str,
    lo: float = 0.0,
    hi: float = 1.0,
) -> torch.Tensor:
    """The shortest step from each point to a hyperplane without leaving a box.

    For each row, the step ``d`` of least Linf or L2 norm with ``<w, t + d> = b`` and
    ``lo <= t + d <= hi``. When no point of the box lies on the hyperplane, the step to the
    box's corner nearest to it (each coordinate moved to the bound that brings ``<w, z>``
    closer to ``b``; coordinates with ``w = 0`` stay). This is the projection FAB makes of its
    iterate and of the clean point onto the linearised decision boundary.

    The solution moves every coordinate towards the hyperplane by ``min(lam * g_i, room_i)``
    (``g_i = 1`` for Linf, ``|w_i|`` for L2; ``room_i`` the distance to the bound it moves
    towards) for the least ``lam >= 0`` that reaches the hyperplane. The distance covered grows
    piecewise linearly in ``lam``, with a knee where a coordinate reaches its bound: sorting
    the knees finds the segment and the exact ``lam`` in one pass, for the whole batch.

    Args:
        t (Tensor[N, D]): the points, within ``[lo, hi]``, floating point.
        w (Tensor[N, D]): the hyperplanes' normals, like ``t``.
        b (Tensor[N]): their offsets.
        norm (str): ``"linf"`` or ``"l2"``.
        lo (float): the box's lower bound. Default: ``0.0``.
        hi (float): its upper bound. Default: ``1.0``.

    Returns:
        Tensor[N, D]: the steps ``d``.

    Examples::

        >>> t = torch.tensor([[0.5, 0.5]])
        >>> hyperplane_box_step(t, torch.tensor([[1.0, 1.0]]), torch.tensor([1.5]), "linf")
        tensor([[0.2500, 0.2500]])
        >>> # The box stops the first coordinate at 1: the second one covers the rest.
        >>> t = torch.tensor([[0.8, 0.5]])
        >>> hyperplane_box_step(t, torch.tensor([[1.0, 1.0]]), torch.tensor([1.9]), "linf")
        tensor([[0.2000, 0.4000]])
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    n, dim = t.shape
    gap = (w * t).sum(1) - b
    # Orient each hyperplane so that its point lies on the positive side: the step lowers
    # <w, z> by gap >= 0, each coordinate towards the bound that lowers it.
    w = torch.where((gap < 0).unsqueeze(1), -w, w)
    gap = gap.abs()
    room = torch.where(w > 0, t - lo, hi - t).clamp_min(0)
    aw = w.abs()
    # Coordinate i lowers <w, z> by min(lam * rate_i, cap_i); its knee is at cap_i / rate_i.
    rate = aw if norm == "linf" else aw * aw
    cap = aw * room
    moving = rate > 0
    knee = torch.where(moving, cap / torch.where(moving, rate, 1), math.inf)
    knee, order = knee.sort(dim=1)
    zero = t.new_zeros(n, 1)
    # Before knee k: the caps of the coordinates already at their bound, and the total rate of
    # the coordinates still moving (a suffix sum, so that no cancellation creeps in).
    capped = torch.cat((zero, cap.gather(1, order).cumsum(1)), 1)
    free_rate = torch.cat((rate.gather(1, order).flip(1).cumsum(1).flip(1), zero), 1)
    finite = knee < math.inf
    covered = capped[:, :dim] + torch.where(finite, knee, 0) * free_rate[:, :dim]
    covered = torch.where(finite, covered, math.inf)
    k = (covered < gap.unsqueeze(1)).sum(1, keepdim=True)  # knees passed before the hyperplane
    reachable = k.squeeze(1) < moving.sum(1)
    lam = (gap - capped.gather(1, k).squeeze(1)) / free_rate.gather(1, k).squeeze(1).clamp_min(
        torch.finfo(t.dtype).tiny
    )
    lam = torch.where(reachable, lam.clamp_min(0), math.inf).unsqueeze(1)
    growth = lam if norm == "linf" else lam * aw
    move = torch.where(moving, torch.minimum(growth, room), 0)
    return -torch.sign(w) * move


# --------------------------------------------------------------------------------------------
# Checking the arguments, once per call
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _FABOptions:
    """The arguments of one call, checked and converted by :func:`_fab_options`."""

    model: Callable
    x: torch.Tensor  # detached, contiguous, in the dtype the attack computes in
    input_dtype: torch.dtype  # the dtype of x as given: the model receives this
    y: torch.Tensor  # int64
    eps: float | torch.Tensor
    norm: str
    steps: int
    restarts: int
    targeted: bool
    n_target_classes: int
    alpha_max: float
    eta: float
    beta: float
    generator: torch.Generator | None
    clamp: tuple[float, float]
    model_mode: str
    amp_dtype: torch.dtype | None
    label_range: tuple[int, int] | None


def _fab_options(
    model,
    x,
    y,
    *,
    eps,
    norm,
    steps,
    restarts,
    targeted,
    n_target_classes,
    alpha_max,
    eta,
    beta,
    generator,
    clamp,
    model_mode,
    amp_dtype,
    check_inputs,
) -> _FABOptions:
    check_inputs = check_bool("check_inputs", check_inputs)
    check_model_and_x(model, x)
    y = check_y(y, x, None)
    check_choice("norm", norm, _NORMS)
    steps = check_count("steps", steps, least=0)
    restarts = check_count("restarts", restarts, least=1)
    targeted = check_bool("targeted", targeted)
    n_target_classes = check_count("n_target_classes", n_target_classes, least=1)
    alpha_max = check_real("alpha_max", alpha_max, 0.0, 1.0)
    eta = check_real("eta", eta, 0.0, math.inf, lo_open=True)
    beta = check_real("beta", beta, 0.0, 1.0, lo_open=True)
    check_generator(generator, x)
    clamp = check_clamp(clamp)
    if clamp is None:
        raise ValueError(
            "clamp=None is not supported by fab: it projects onto the decision boundary within "
            "the input box; pass the inputs' range as clamp=(lo, hi)"
        )
    check_choice("model_mode", model_mode, MODEL_MODES)
    amp_dtype = check_amp_dtype(amp_dtype)
    x0 = working_copy(x)
    eps = check_budget("eps", eps, x0, check_inputs)  # a per-sample eps in x0's dtype
    label_range = read_value_ranges(x0, y, clamp, check_inputs)
    return _FABOptions(
        model=model,
        x=x0,
        input_dtype=x.dtype,
        y=y,
        eps=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        targeted=targeted,
        n_target_classes=n_target_classes,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        generator=generator,
        clamp=clamp,
        model_mode=model_mode,
        amp_dtype=amp_dtype,
        label_range=label_range,
    )


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------


def _boundaries(logits_of: Logits, z, y, target):
    """The linearised decision boundaries at ``z``: ``f_k - f_y`` (Tensor[M, H]) and its
    gradient (Tensor[M, H, D]), for every class ``k`` (``H = K``; the row of ``y`` is zero)
    or for the target alone (``H = 1``)."""
    inp = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = logits_of(inp)
        if target is not None:
            diff = out.gather(1, target.unsqueeze(1)) - out.gather(1, y.unsqueeze(1))
            (grad,) = torch.autograd.grad(diff.sum(), inp)
            return diff.detach().to(z.dtype), grad.to(z.dtype).reshape(len(z), 1, -1)
        # One backward pass per class, each through the graph of one forward pass.
        true_class = torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
        grads = []
        for k in range(out.shape[1]):
            seed = -true_class
            seed[:, k] += 1
            (grad,) = torch.autograd.grad(out, inp, seed, retain_graph=k < out.shape[1] - 1)
            grads.append(grad.to(z.dtype).reshape(len(z), -1))
    out = out.detach().to(z.dtype)
    return out - out.gather(1, y.unsqueeze(1)), torch.stack(grads, 1)


def _random_start(x0: torch.Tensor, eps, norm: str, generator) -> torch.Tensor:
    """The reference's restart: a random direction scaled to half of eps in the attack's norm."""
    draw = x0.dtype if x0.dtype == torch.float64 else torch.float32
    if norm == "linf":
        t = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=draw) * 2 - 1
    else:
        t = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=draw)
    t = t.to(x0.dtype)
    scale = per_sample_view(0.5 * eps / per_sample_norm(t, norm), x0)
    return x0 + t * scale


def _fab_run(o: _FABOptions, logits_of: Logits, x0, y, eps, target, random_start: bool):
    """One run of FAB from ``x0`` (or a random start near it): per point, the nearest
    misclassified iterate found, or ``x0`` when none was."""
    m = x0.shape[0]
    lo, hi = o.clamp
    flat0 = x0.reshape(m, -1)
    x1 = _random_start(x0, eps, o.norm, o.generator).clamp(lo, hi) if random_start else x0
    best = x0.clone()
    best_dist = x0.new_full((m,), math.inf)
    rows = torch.arange(m, device=x0.device)
    dual = 1 if o.norm == "linf" else 2
    for _ in range(o.steps):
        diff, grad = _boundaries(logits_of, x1, y, target)
        if target is None:
            # The nearest linearised boundary in the attack's norm: |f_k - f_y| / ||grad||_dual.
            dist = diff.abs() / (grad.norm(p=dual, dim=2) + _DIST_GUARD)
            dist = dist.scatter(1, y.unsqueeze(1), math.inf)
            nearest = dist.argmin(1)
        else:
            nearest = torch.zeros_like(y)
        w = grad[rows, nearest]
        flat1 = x1.reshape(m, -1)
        b = (w * flat1).sum(1) - diff[rows, nearest]
        # Both projections in one call: of the iterate, and of the clean point.
        moves = hyperplane_box_step(
            torch.cat((flat1, flat0)), torch.cat((w, w)), torch.cat((b, b)), o.norm, lo, hi
        )
        length = per_sample_norm(moves, o.norm).clamp_min(_MIN_STEP)
        bias = (length[:m] / (length[:m] + length[m:])).clamp(0.0, o.alpha_max)
        bias = per_sample_view(bias, x0)
        step1, step0 = moves[:m].view_as(x0), moves[m:].view_as(x0)
        x1 = ((x1 + o.eta * step1) * (1 - bias) + (x0 + o.eta * step0) * bias).clamp(lo, hi)
        fooled = logits_of(x1).argmax(1) != y
        dist = per_sample_norm(x1 - x0, o.norm)
        better = fooled & (dist < best_dist)
        best = torch.where(per_sample_view(better, x0), x1, best)
        best_dist = torch.where(better, dist, best_dist)
        # Past the boundary: back towards x, to look for a nearer crossing.
        x1 = torch.where(per_sample_view(fooled, x0), x0 + (x1 - x0) * o.beta, x1)
    return best


def _fab(o: _FABOptions) -> torch.Tensor:
    x0, y = o.x, o.y
    result = x0.clone()
    if x0.shape[0] == 0:
        return result.to(o.input_dtype)
    logits_of = Logits(o.model, o.input_dtype, o.amp_dtype, o.label_range)
    with model_mode(o.model, o.model_mode), torch.no_grad():
        clean = logits_of(x0)
        robust = clean.argmax(1) == y
        targets = None
        if o.targeted:
            if o.n_target_classes > clean.shape[1] - 1:
                raise ValueError(
                    f"n_target_classes must be at most {clean.shape[1] - 1} (the model has "
                    f"{clean.shape[1]} classes), got {o.n_target_classes}"
                )
            # The classes ranked 2nd, 3rd, ... by the clean logits (the first is y itself on
            # every point attacked, which the model classifies correctly).
            targets = clean.topk(o.n_target_classes + 1, dim=1).indices[:, 1:]

        def attempt(index, column, restart):
            xs, ys, eps = x0[index], y[index], take(o.eps, index)
            target = None if column is None else targets[index, column]
            adv = _fab_run(o, logits_of, xs, ys, eps, target, random_start=restart > 0)
            fooled = logits_of(adv).argmax(1) != ys
            return adv, fooled & (per_sample_norm(adv - xs, o.norm) <= eps)

        for column in range(o.n_target_classes) if o.targeted else [None]:
            for restart in range(o.restarts):
                run = functools.partial(attempt, column=column, restart=restart)
                if not attack_robust(robust, result, run):
                    break
    return result.to(o.input_dtype)


def fab(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    n_target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
    model_mode: str = "eval",
    amp_dtype: torch.dtype | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """FAB, the fast adaptive boundary attack, untargeted or targeted (FAB-T), Linf or L2.

    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack" (ICML 2020), as AutoAttack runs it. Each run starts at ``x`` (a restart: at a
    random point at half of ``eps`` from it) and repeats ``steps`` times: linearise the model
    at the iterate; take the nearest linearised boundary between the true class and another
    (untargeted: the nearest of all, in the attack's norm; targeted: the target's); project the
    iterate and ``x`` onto it within the ``clamp`` box (:func:`hyperplane_box_step`); move to
    ``(1 - a) (x1 + eta d1) + a (x + eta d0)`` with ``a = min(|d1| / (|d1| + |d0|),
    alpha_max)``; when the new iterate is misclassified, keep it if it is the nearest yet and
    step back to ``x + beta (x1 - x)``. Untargeted FAB needs one backward pass per class per
    step, FAB-T one.

    Only the points the model classifies correctly are attacked, and each run only the points
    still robust: untargeted, ``restarts`` runs; targeted, for each of the classes ranked 2nd
    to ``n_target_classes + 1``-th by the clean logits, ``restarts`` runs. A point is fooled
    when its find is misclassified and within ``eps`` of ``x``. The gradient is taken with
    respect to the input only (no parameter ``.grad`` is touched); each submodule's
    ``training`` flag is restored exactly.

    Args:
        model (callable): maps ``x`` to logits ``Tensor[N, K]``, differentiably; an
            ``nn.Module`` on the device of ``x``.
        x (Tensor[N, ...]): clean inputs, floating point, within ``clamp``. float16 and
            bfloat16 inputs are attacked in float32 and given to the model in their dtype.
        y (Tensor[N]): the true class labels, integers in ``[0, K)``.
        eps (float or Tensor[N]): the radius within which a find counts, in the attack's norm;
            it also scales the random restarts.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        steps (int): iterations per run. Default: ``100``.
        restarts (int): runs (per target when ``targeted``); all but the first start at a
            random point. Default: ``1``.
        targeted (bool): FAB-T, as AutoAttack runs it. Default: ``False``.
        n_target_classes (int): with ``targeted``, how many target classes (at most ``K - 1``).
            Default: ``9``.
        alpha_max (float): the largest bias towards ``x``, in ``[0, 1]``. Default: ``0.1``.
        eta (float): the overshoot of each projection, ``> 0``. Default: ``1.05``.
        beta (float): the step back towards ``x`` after a crossing, in ``(0, 1]``.
            Default: ``0.9``.
        generator (torch.Generator, optional): the only source of randomness (on ``x``'s
            device), used by the restarts; the global RNG when ``None``. Never reseeded.
            Default: ``None``.
        clamp (tuple of float): the valid input range ``(lo, hi)``, the box the projections
            stay in; ``None`` is refused. Default: ``(0.0, 1.0)``.
        model_mode (str): ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        amp_dtype (torch.dtype, optional): run the model under ``torch.autocast`` with
            ``float16`` or ``bfloat16``; the boundaries are then linearised in that precision,
            which may weaken the attack. Default: ``None``.
        check_inputs (bool): check the values of ``x`` (within ``clamp``), a per-sample
            ``eps`` and the labels (in ``[0, K)``), which waits for the device once.
            Default: ``True``.

    Returns:
        Tensor[N, ...]: per point, the nearest adversarial example found within ``eps``, or
        ``x`` itself where none was (and where the model misclassifies ``x`` already); of
        ``x``'s dtype.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model = MadryCNN(image_size=8).eval()
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> x_adv = fab(model, x, y, eps=0.3, steps=10, targeted=True, n_target_classes=2)
        >>> bool(((x_adv - x).abs() <= 0.3).all())
        True
    """
    return _fab(_fab_options(**locals()))  # locals() holds exactly the arguments
