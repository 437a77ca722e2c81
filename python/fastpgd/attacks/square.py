"""The Square attack (Andriushchenko et al., ECCV 2020): random search with square updates.

Square needs the model's outputs only, never a gradient: it is the check against gradient
masking in AutoAttack. Each iteration proposes, for every point still robust, a change of the
best point found so far inside one random square window, and keeps it where the margin loss
drops. The window shrinks on a fixed schedule (:func:`square_fraction`). All points still
robust are queried in one batched forward pass per iteration, under ``torch.no_grad()``.
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

__all__ = ["square", "square_fraction"]

_NORMS = ("linf", "l2")
# The reference's schedule: after each of these iterations (counted on a budget of 10,000
# queries), the fraction of pixels a window covers halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SCHEDULE_QUERIES = 10000
# The reference's guard in its normalisations: a zero perturbation stays zero.
_NORM_GUARD = 1e-12


def square_fraction(iteration: int, queries: int, p_init: float = 0.8) -> float:
    """The fraction of the image's pixels that the window of an iteration covers.

    The reference's schedule (Andriushchenko et al., 2020), rescaled to the query budget as
    AutoAttack does: ``p_init`` halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    iterations out of 10,000, so for 5,000 queries after 5, 25, 100, ... iterations.

    Args:
        iteration (int): the iteration, from 0.
        queries (int): the query budget of the run.
        p_init (float): the fraction at the start. Default: ``0.8``.

    Returns:
        float: ``p_init / 2**h``, ``h`` the halvings passed.

    Examples::

        >>> [square_fraction(i, 5000) for i in (0, 5, 6, 25, 26)]
        [0.8, 0.8, 0.4, 0.4, 0.2]
    """
    scaled = int(iteration / queries * _SCHEDULE_QUERIES)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


def _window_side(fraction: float, h: int, w: int, least: int, odd: bool) -> int:
    """The side of a square window covering ``fraction`` of an ``h x w`` image, rounded as the
    reference rounds it."""
    side = max(int(round(math.sqrt(fraction * h * w))), least)
    if odd and side % 2 == 0:
        side += 1
    return min(side, h, w)


@functools.cache
def _rings(rows: int, cols: int) -> torch.Tensor:
    """Concentric rings around the centre of a ``rows x cols`` patch: each pixel holds
    ``sum 1/(r+1)^2`` over the rings ``r`` that contain it, L2-normalised (float64, CPU)."""
    if rows == 0:
        return torch.zeros(0, cols, dtype=torch.float64)
    i = (torch.arange(rows) - rows // 2).abs()
    j = (torch.arange(cols) - cols // 2).abs()
    ring = torch.maximum(i.unsqueeze(1), j.unsqueeze(0))
    outermost = max(rows // 2, cols // 2)
    weights = 1.0 / torch.arange(1, outermost + 2, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r]: the weight of rings r and outwards
    patch = tail[ring]
    return patch / patch.norm()


@functools.cache
def _l2_pattern(side: int) -> torch.Tensor:
    """The reference's L2 update pattern of a ``side x side`` window: rings of one sign in the
    top half and of the other in the bottom half, L2-normalised (float64, CPU)."""
    top = _rings(side // 2, side)
    bottom = -_rings(side - side // 2, side)
    pattern = torch.cat((top, bottom))
    return pattern / pattern.norm()


# --------------------------------------------------------------------------------------------
# Checking the arguments, once per call
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _SquareOptions:
    """The arguments of one call, checked and converted by :func:`_square_options`."""

    model: Callable
    x: torch.Tensor  # detached, contiguous, in the dtype the attack computes in
    input_dtype: torch.dtype
    y: torch.Tensor  # int64
    eps: float | torch.Tensor
    norm: str
    queries: int
    p_init: float
    restarts: int
    generator: torch.Generator | None
    clamp: tuple[float, float] | None
    model_mode: str
    amp_dtype: torch.dtype | None
    label_range: tuple[int, int] | None


def _square_options(
    model,
    x,
    y,
    *,
    eps,
    norm,
    queries,
    p_init,
    restarts,
    generator,
    clamp,
    model_mode,
    amp_dtype,
    check_inputs,
) -> _SquareOptions:
    check_inputs = check_bool("check_inputs", check_inputs)
    check_model_and_x(model, x)
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images [N, C, H, W], got shape {tuple(x.shape)}")
    y = check_y(y, x, None)
    check_choice("norm", norm, _NORMS)
    queries = check_count("queries", queries, least=0)
    p_init = check_real("p_init", p_init, 0.0, 1.0, lo_open=True)
    restarts = check_count("restarts", restarts, least=1)
    check_generator(generator, x)
    clamp = check_clamp(clamp)
    check_choice("model_mode", model_mode, MODEL_MODES)
    amp_dtype = check_amp_dtype(amp_dtype)
    x0 = working_copy(x)
    eps = check_budget("eps", eps, x0, check_inputs)  # a per-sample eps in x0's dtype
    label_range = read_value_ranges(x0, y, clamp, check_inputs)
    return _SquareOptions(
        model=model,
        x=x0,
        input_dtype=x.dtype,
        y=y,
        eps=eps,
        norm=norm,
        queries=queries,
        p_init=p_init,
        restarts=restarts,
        generator=generator,
        clamp=clamp,
        model_mode=model_mode,
        amp_dtype=amp_dtype,
        label_range=label_range,
    )


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin loss: the true class's logit minus the largest other one (< 0: fooled)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.scatter(1, y.unsqueeze(1), -math.inf).amax(1)
    return true - other


class _Draws:
    """The random numbers of one run, all drawn from the caller's generator."""

    def __init__(self, x: torch.Tensor, generator):
        self.device = x.device
        self.dtype = x.dtype
        self.generator = generator

    def signs(self, *shape) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=self.generator, device=self.device)
        return (bits * 2 - 1).to(self.dtype)

    def corners(self, m: int, side: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One window's top-left corner per point, uniform over every position that fits."""
        g, dev = self.generator, self.device
        top = torch.randint(0, h - side + 1, (m,), generator=g, device=dev)
        left = torch.randint(0, w - side + 1, (m,), generator=g, device=dev)
        return top, left

    def flips(self, *shape) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=self.generator, device=self.device) == 1


def _window(top, left, side: int, h: int, w: int) -> torch.Tensor:
    """The mask (Tensor[M, 1, H, W], bool) of each point's square window."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top.unsqueeze(1)) & (rows < (top + side).unsqueeze(1))
    in_cols = (cols >= left.unsqueeze(1)) & (cols < (left + side).unsqueeze(1))
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def _placed(patterns, top, left, h: int, w: int) -> torch.Tensor:
    """Each point's ``side x side`` pattern (Tensor[M, S, S]) placed at its corner in an
    ``h x w`` image of zeros (Tensor[M, 1, H, W])."""
    side = patterns.shape[-1]
    rows = torch.arange(h, device=top.device) - top.unsqueeze(1)  # [M, H]
    cols = torch.arange(w, device=top.device) - left.unsqueeze(1)
    inside = ((rows >= 0) & (rows < side)).unsqueeze(2) & ((cols >= 0) & (cols < side)).unsqueeze(1)
    point = torch.arange(len(top), device=top.device).view(-1, 1, 1)
    values = patterns[
        point, rows.clamp(0, side - 1).unsqueeze(2), cols.clamp(0, side - 1).unsqueeze(1)
    ]
    return (values * inside).unsqueeze(1)


def _oriented(pattern: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """``pattern`` per point, transposed where ``flips`` (the reference turns it at random)."""
    return torch.where(flips.view(-1, *[1] * pattern.dim()), pattern.T, pattern)


def _normalized(delta: torch.Tensor, eps) -> torch.Tensor:
    """``delta`` scaled to L2 norm ``eps`` per point."""
    scale = per_sample_view(eps / (per_sample_norm(delta, "l2") + _NORM_GUARD), delta)
    return delta * scale


def _clamped(z: torch.Tensor, clamp) -> torch.Tensor:
    return z if clamp is None else z.clamp(clamp[0], clamp[1])


def _linf_start(x, eps, draws: _Draws, clamp) -> torch.Tensor:
    """Vertical stripes: each column of each channel moved by +-eps."""
    n, c, _, w = x.shape
    return _clamped(x + per_sample_view(eps, x) * draws.signs(n, c, 1, w), clamp)


def _l2_start(x, eps, draws: _Draws, clamp) -> torch.Tensor:
    """A grid of ``h // 5``-wide tiles, each the L2 pattern with a random sign per channel,
    scaled to norm eps."""
    n, c, h, w = x.shape
    side = max(h // 5, 1)
    # The reference centres the grid of h // side tiles on a 5-tile span; tiles past the edge
    # are dropped.
    first = max((h - side * 5) // 2, 0)
    tiles_h, tiles_w = (h - first) // side, (w - first) // side
    tiles_h, tiles_w = min(tiles_h, h // side), min(tiles_w, w // side)
    pattern = _l2_pattern(side).to(device=x.device, dtype=x.dtype)
    flips = draws.flips(n * tiles_h * tiles_w)
    tiles = _oriented(pattern, flips).view(n, 1, tiles_h, tiles_w, side, side)
    tiles = tiles * draws.signs(n, c, tiles_h, tiles_w, 1, 1)
    grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, tiles_h * side, tiles_w * side)
    delta = torch.zeros_like(x)
    delta[:, :, first : first + tiles_h * side, first : first + tiles_w * side] = grid
    return _clamped(x + _normalized(delta, eps), clamp)


def _linf_proposal(x, best, eps, side: int, draws: _Draws, clamp) -> torch.Tensor:
    """Move one random window of each point to the other side of the Linf box, per channel."""
    m, c, h, w = x.shape
    top, left = draws.corners(m, side, h, w)
    e = per_sample_view(eps, x)
    jump = _window(top, left, side, h, w) * (2 * e * draws.signs(m, c, 1, 1))
    new = torch.minimum(torch.maximum(best + jump, x - e), x + e)
    return _clamped(new, clamp)


def _l2_proposal(x, best, eps, side: int, draws: _Draws, clamp) -> torch.Tensor:
    """Empty a second random window into a first one: the first gets the L2 pattern (a random
    sign per channel) added to its current content, rescaled so that the perturbation keeps
    its norm eps."""
    m, c, h, w = x.shape
    delta = best - x
    top, left = draws.corners(m, side, h, w)
    top2, left2 = draws.corners(m, side, h, w)
    first = _window(top, left, side, h, w)
    both = first | _window(top2, left2, side, h, w)
    in_first = (delta * first).square().sum((2, 3), keepdim=True).sqrt()
    in_both = (delta * both).square().sum((2, 3), keepdim=True).sqrt()
    spare = per_sample_view(eps, x) ** 2 - per_sample_norm(delta, "l2").view(-1, 1, 1, 1) ** 2
    pattern = _l2_pattern(side).to(device=x.device, dtype=x.dtype)
    placed = _placed(_oriented(pattern, draws.flips(m)), top, left, h, w)
    new = placed * draws.signs(m, c, 1, 1) + delta * first / (in_first + _NORM_GUARD)
    new_norm = new.square().sum((2, 3), keepdim=True).sqrt()
    new = new / (new_norm + _NORM_GUARD) * (spare.clamp_min(0) / c + in_both**2).sqrt()
    delta = torch.where(both, 0, delta) + new
    return _clamped(x + _normalized(delta, eps), clamp)


def _square_run(o: _SquareOptions, logits_of: Logits, x, y, eps) -> torch.Tensor:
    """One run of Square on the points ``x``: per point, the best point found (a fooling one
    wherever one was found)."""
    _, c, h, w = x.shape
    draws = _Draws(x, o.generator)
    start = _linf_start if o.norm == "linf" else _l2_start
    propose = _linf_proposal if o.norm == "linf" else _l2_proposal
    best = start(x, eps, draws, o.clamp)
    margin = _margin(logits_of(best), y)
    # The points still to fool, compacted whenever one is fooled: their indices into x, and
    # their own copies of x, best, y, margin and eps.
    active = (margin > 0).nonzero().squeeze(1)
    xa, ba, ya, ma, ea = x[active], best[active], y[active], margin[active], take(eps, active)
    for i in range(o.queries):
        if active.numel() == 0:
            break
        fraction = square_fraction(i, o.queries, o.p_init)
        if o.norm == "linf":
            side = _window_side(fraction, h, w, least=1, odd=False)
        else:
            side = _window_side(fraction, h, w, least=3, odd=True)
        new = propose(xa, ba, ea, side, draws, o.clamp)
        new_margin = _margin(logits_of(new), ya)
        # The margin is the loss: keep a lower one, and any fooling point.
        better = (new_margin < ma) | (new_margin <= 0)
        ba = torch.where(per_sample_view(better, ba), new, ba)
        ma = torch.where(better, new_margin, ma)
        fooled = ma <= 0
        if bool(fooled.any()):
            best[active] = ba
            keep = ~fooled
            active, xa, ba, ya, ma = active[keep], xa[keep], ba[keep], ya[keep], ma[keep]
            ea = take(ea, keep)
    best[active] = ba
    return best


def _square(o: _SquareOptions) -> torch.Tensor:
    x0, y = o.x, o.y
    result = x0.clone()
    if x0.shape[0] == 0:
        return result.to(o.input_dtype)
    logits_of = Logits(o.model, o.input_dtype, o.amp_dtype, o.label_range)
    with model_mode(o.model, o.model_mode), torch.no_grad():
        robust = logits_of(x0).argmax(1) == y

        def attempt(index):
            xs, ys = x0[index], y[index]
            adv = _square_run(o, logits_of, xs, ys, take(o.eps, index))
            return adv, logits_of(adv).argmax(1) != ys

        for _ in range(o.restarts):
            if not attack_robust(robust, result, attempt):
                break
    return result.to(o.input_dtype)


def square(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    model_mode: str = "eval",
    amp_dtype: torch.dtype | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """The Square attack, Linf or L2: random search in square windows, forward passes only.

    Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
    random search" (ECCV 2020), untargeted with the margin loss, as AutoAttack runs it. Linf
    starts from vertical stripes (each column of each channel at ``+-eps``) and proposes, per
    iteration, to flip one random square window per channel to the other side of the box. L2
    starts from a grid of tiles of a ring pattern and proposes, per iteration, to move the mass
    of one random window into another with a fresh pattern added, keeping the norm ``eps``. A
    proposal is kept where it lowers the margin (the true logit minus the largest other) or
    fools the model; a point stops once fooled. The window's area follows
    :func:`square_fraction` (``p_init`` at the start).

    Each iteration queries all points still robust in one batched forward pass; the model is
    never differentiated (everything runs under ``torch.no_grad()``). The points the model
    misclassifies already are not attacked, and each restart attacks only the points still
    robust. Unlike the reference, which draws one window and one set of signs for the whole
    batch and never places a window on the last row or column, every point draws its own and
    every position that fits is possible: each point's search is the one the paper describes.

    Args:
        model (callable): maps ``x`` to logits ``Tensor[N, K]``; an ``nn.Module`` on the
            device of ``x``.
        x (Tensor[N, C, H, W]): clean images, floating point, within ``clamp``. float16 and
            bfloat16 images are attacked in float32 and given to the model in their dtype.
        y (Tensor[N]): the true class labels, integers in ``[0, K)``.
        eps (float or Tensor[N]): the radius of the perturbation, in the attack's norm.
        norm (str): ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        queries (int): iterations per run (each one forward pass of the points still robust).
            Default: ``5000``.
        p_init (float): the fraction of the image the first windows cover, in ``(0, 1]``.
            Default: ``0.8``.
        restarts (int): runs, each on the points still robust. Default: ``1``.
        generator (torch.Generator, optional): the only source of randomness (on ``x``'s
            device); the global RNG when ``None``. Never reseeded. Default: ``None``.
        clamp (tuple of float, optional): the valid input range ``(lo, hi)``; ``None`` for
            unbounded inputs. Default: ``(0.0, 1.0)``.
        model_mode (str): ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        amp_dtype (torch.dtype, optional): run the model under ``torch.autocast`` with
            ``float16`` or ``bfloat16``; the margins are then compared in that precision,
            which may weaken the attack. Default: ``None``.
        check_inputs (bool): check the values of ``x`` (within ``clamp``), a per-sample
            ``eps`` and the labels (in ``[0, K)``), which waits for the device once.
            Default: ``True``.

    Returns:
        Tensor[N, C, H, W]: per point, the adversarial example found (within ``eps``, up to
        the rounding of ``x``'s dtype), or ``x`` itself where none was (and where the model
        misclassifies ``x`` already); of ``x``'s dtype.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model = MadryCNN(image_size=8).eval()
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> x_adv = square(model, x, y, eps=0.3, queries=50, generator=torch.Generator())
        >>> bool(((x_adv - x).abs() <= 0.3 + 1e-6).all())
        True
    """
    return _square(_square_options(**locals()))  # locals() holds exactly the arguments
