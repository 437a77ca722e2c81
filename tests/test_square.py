"""Square: the schedule and patterns against hand-computed values and the reference's code, the
attack's invariants (forward passes only, every query within eps, every window position
reachable), its contract (points, randomness, modes, errors), and parity with torchattacks
3.5.1's Square on an adversarially trained model."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

from attack_common import ModeRecorder, batch, gen, small_cnn
from conftest import DEVICES
from eval_common import predictions, robust_digits, still_robust_after_pgd
from fastpgd.attacks._common import per_sample_norm
from fastpgd.attacks.square import square, square_fraction

# The package exports the function square, which hides the module of the same name.
square_mod = importlib.import_module("fastpgd.attacks.square")

# --------------------------------------------------------------------------------------------
# The schedule and the patterns
# --------------------------------------------------------------------------------------------

# By hand: at 5,000 queries the reference's iteration count is doubled onto its 10,000-query
# schedule, so p halves after iterations 5, 25, 100, 250, 500, 1000, 2000, 3000 and 4000.
SCHEDULE_5000 = [
    (0, 0.8), (5, 0.8), (6, 0.4), (25, 0.4), (26, 0.2), (100, 0.2), (101, 0.1), (250, 0.1),
    (251, 0.05), (500, 0.05), (501, 0.025), (1000, 0.025), (1001, 0.0125), (2000, 0.0125),
    (2001, 0.00625), (3000, 0.00625), (3001, 0.003125), (4000, 0.003125), (4001, 0.0015625),
    (4999, 0.0015625),
]  # fmt: skip


@pytest.mark.parametrize("iteration,p", SCHEDULE_5000)
def test_schedule_at_5000_queries(iteration, p):
    assert square_fraction(iteration, 5000) == pytest.approx(p, rel=1e-12)


def test_schedule_rescales_to_the_budget_and_p_init():
    # 10,000 queries: the schedule itself; 1,000: ten times faster (iteration 1 counts as 10);
    # 100: a hundred times (iteration 1 counts as 100, past two halvings).
    assert [square_fraction(i, 10000) for i in (10, 11, 50, 51, 8000, 8001)] == pytest.approx(
        [0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512]
    )
    assert [square_fraction(i, 1000) for i in (1, 2, 5, 6, 999)] == pytest.approx(
        [0.8, 0.4, 0.4, 0.2, 0.8 / 512]
    )
    assert [square_fraction(i, 100) for i in (0, 1, 2, 3, 99)] == pytest.approx(
        [0.8, 0.2, 0.2, 0.1, 0.8 / 512]
    )
    assert square_fraction(6, 5000, p_init=0.5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "p,size,linf,l2",
    # By hand: side = round(sqrt(p * H * W)), at least 1 (Linf) or 3 and odd (L2), at most H.
    [(0.8, 32, 29, 29), (0.4, 32, 20, 21), (0.05, 32, 7, 7), (0.0015625, 32, 1, 3),
     (0.8, 8, 7, 7), (0.1, 8, 3, 3), (0.05, 8, 2, 3), (0.8, 4, 4, 4)],
)  # fmt: skip
def test_window_side(p, size, linf, l2):
    assert square_mod._window_side(p, size, size, least=1, odd=False) == linf
    assert square_mod._window_side(p, size, size, least=3, odd=True) == l2


@pytest.mark.parametrize("side", range(1, 13))
def test_l2_pattern_is_the_references(side):
    torchattacks = pytest.importorskip("torchattacks")
    peer = torchattacks.Square(small_cnn(), norm="L2", eps=1.0)
    with torch.random.fork_rng():  # the reference turns its pattern with the global RNG
        theirs = peer.eta(side).double()
    ours = square_mod._l2_pattern(side)
    assert ours.shape == (side, side)
    assert torch.allclose(ours, theirs, atol=1e-6) or torch.allclose(ours.T, theirs, atol=1e-6)


def test_l2_start_is_the_references_grid_of_tiles():
    # 32x32: tiles of side 32 // 5 = 6 from row and column (32 - 30) // 2 = 1, five each way.
    x = torch.full((2, 3, 32, 32), 0.5)
    start = square_mod._l2_start(x, 2.0, square_mod._Draws(x, gen(0)), clamp=(0.0, 1.0))
    delta = (start - x).double()
    norms = per_sample_norm(delta, "l2")
    torch.testing.assert_close(norms, torch.full((2,), 2.0).double(), rtol=1e-5, atol=0)
    assert delta[:, :, [0, 31]].abs().max() == 0 and delta[:, :, :, [0, 31]].abs().max() == 0
    pattern = square_mod._l2_pattern(6)
    scale = delta[0].norm() / 5  # 3 channels x 25 tiles of unit norm, scaled to eps
    for tile in delta[:, :, 1:31, 1:31].unfold(2, 6, 6).unfold(3, 6, 6).reshape(-1, 6, 6):
        tile = tile / scale * 75**0.5 / 5
        assert any(torch.allclose(tile, sign * p, atol=1e-5)
                   for sign in (1, -1) for p in (pattern, pattern.T))  # fmt: skip


def test_every_window_position_is_drawn():
    # The reference draws corners in [0, H - side): the last row and column are never updated.
    draws = square_mod._Draws(torch.zeros(1), gen(0))
    top, left = draws.corners(2000, 3, 8, 8)
    assert set(top.tolist()) == set(range(6)) and set(left.tolist()) == set(range(6))
    top, left = draws.corners(10, 8, 8, 8)
    assert (top == 0).all() and (left == 0).all()


# --------------------------------------------------------------------------------------------
# The attack's invariants, seen from the model
# --------------------------------------------------------------------------------------------


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("Square must not call backward")


class _Spy(nn.Module):
    """Records every input, and that no gradient is recorded, on the way to ``model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x):
        assert not torch.is_grad_enabled()
        self.inputs.append(x.clone())
        return self.model(_NoBackward.apply(x))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.3)])
def test_forward_passes_only_and_every_query_within_eps(norm, eps):
    model = _Spy(small_cnn().eval())
    x, y = batch(8)
    x = 0.3 + 0.4 * x  # no pixel moves by more than eps: no query is clamped
    y = predictions(model.model, x)
    square(model, x, y, eps=eps, norm=norm, queries=40, generator=gen(0))
    clean, queries = model.inputs[0], model.inputs[1:-1]  # the last one verifies the finds
    assert torch.equal(clean, x) and len(queries) > 1
    start = queries[0]
    if norm == "linf":
        # Vertical stripes: each column of each image moved by +-eps.
        delta = start - x
        torch.testing.assert_close(delta.abs(), torch.full_like(delta, eps))
        assert torch.equal(delta.sign(), delta[:, :, :1].sign().expand_as(delta))
    for z in queries:
        # Each query's points are some of x's: match each to the nearest.
        pairs = (z.unsqueeze(1) - x.unsqueeze(0)).flatten(0, 1)
        nearest = per_sample_norm(pairs, norm).view(len(z), len(x)).argmin(1)
        dist = per_sample_norm(z - x[nearest], norm)
        if norm == "linf":
            assert (dist <= eps + 1e-6).all()
        else:  # L2 keeps the perturbation on the sphere of radius eps
            torch.testing.assert_close(dist, torch.full_like(dist, eps))


# --------------------------------------------------------------------------------------------
# The contract: returned points, randomness, modes
# --------------------------------------------------------------------------------------------


def _distance(a, b, norm):
    return per_sample_norm((a - b).double(), norm)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 2.0)])
def test_every_returned_point_is_adversarial_within_eps_or_the_clean_one(norm, eps, device):
    model = small_cnn().to(device).eval()
    x, y = batch(16, device=device)
    y = predictions(model, x)
    y[0] = (y[0] + 1) % 10  # misclassified already: returned as it was
    x_adv = square(model, x, y, eps=eps, norm=norm, queries=100, restarts=2,
                   generator=gen(0, device))  # fmt: skip
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    changed = (x_adv != x).flatten(1).any(1)
    assert changed.sum() >= 4 and not changed[0]
    assert (_distance(x_adv, x, norm)[changed] <= eps * (1 + 1e-5)).all()  # float32 rounding
    assert (predictions(model, x_adv[changed]) != y[changed]).all()


def test_unbounded_inputs_with_clamp_none():
    model = small_cnn().eval()
    x, y = batch(16)
    x = x * 4 - 2  # outside [0, 1]
    y = predictions(model, x)
    x_adv = square(model, x, y, eps=0.5, queries=50, clamp=None, generator=gen(0))
    changed = (x_adv != x).flatten(1).any(1)
    assert changed.any()
    assert (_distance(x_adv, x, "linf") <= 0.5 + 1e-6).all()
    assert ((x_adv - x).abs()[changed] > 0.499).all()  # stripes all at +-eps: none clamped


def test_generator_gives_determinism_and_the_global_rng_is_untouched():
    model = small_cnn().eval()
    x, y = batch(8)
    y = predictions(model, x)
    state = torch.random.get_rng_state()
    kw = dict(eps=3.0, norm="l2", queries=30)
    first = square(model, x, y, generator=gen(5), **kw)
    assert torch.equal(first, square(model, x, y, generator=gen(5), **kw))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(first, square(model, x, y, generator=gen(6), **kw))


def test_model_modes_are_restored_and_no_parameter_gradient_is_touched():
    model = ModeRecorder()
    model.train()
    model.drop.eval()
    flags = [m.training for m in model.modules()]
    x, y = batch(6)
    square(model, x, y, eps=0.1, queries=5, generator=gen(0))
    assert [m.training for m in model.modules()] == flags
    assert set(model.seen) == {(False, False, False)}
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_any_callable_empty_batches_dtypes_and_no_queries():
    model = small_cnn().eval()
    x, y = batch(6)
    kw = dict(eps=0.1, queries=5)
    assert torch.equal(
        square(lambda z: model(z), x, y, generator=gen(0), **kw),
        square(model, x, y, generator=gen(0), **kw),
    )
    assert square(model, x[:0], y[:0], eps=0.1).shape == (0, 1, 8, 8)
    assert square(model.double(), x.double(), y, **kw).dtype == torch.float64
    model.float()
    adv16 = square(model, x.bfloat16(), y, amp_dtype=torch.bfloat16, **kw)
    assert adv16.dtype == torch.bfloat16 and adv16.shape == x.shape
    # No queries: only the start is tried.
    spy = _Spy(model)
    square(spy, x, y, eps=0.1, queries=0)
    assert len(spy.inputs) == 3  # clean, start, verification


def test_per_sample_eps():
    model = small_cnn().eval()
    x, y = batch(16)
    y = predictions(model, x)
    eps = torch.tensor([0.0, 0.3] * 8)
    adv = square(model, x, y, eps=eps, queries=50, generator=gen(0))
    changed = (adv != x).flatten(1).any(1)
    assert not changed[::2].any() and changed[1::2].any()
    assert (_distance(adv, x, "linf") <= eps.double() + 1e-6).all()


@pytest.mark.parametrize(
    "args,exc,words",
    [
        (dict(model="model"), TypeError, "model must be a callable"),
        (dict(x=torch.rand(6, 64)), ValueError, "x must be a batch of images [N, C, H, W]"),
        (dict(x=torch.full((6, 1, 8, 8), -1.0)), ValueError, "x has values outside clamp"),
        (dict(y=torch.zeros(6, 1, dtype=torch.long)), ValueError, "y must have shape (6,)"),
        (dict(y=torch.full((6,), -1)), ValueError, "y must hold class labels in [0, 9]"),
        (dict(eps=float("nan")), ValueError, "eps must be finite and >= 0"),
        (dict(eps=torch.zeros(2)), ValueError, "eps must be a number or a 1-D tensor"),
        (dict(norm="L2"), ValueError, "norm must be one of"),
        (dict(queries=-1), ValueError, "queries must be >= 0"),
        (dict(queries=10.0), TypeError, "queries must be an int"),
        (dict(p_init=0.0), ValueError, "p_init must be in (0, 1]"),
        (dict(p_init="0.8"), TypeError, "p_init must be a real number"),
        (dict(restarts=0), ValueError, "restarts must be >= 1"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(clamp=(0.0,)), TypeError, "clamp must be None or a pair"),
        (dict(model_mode=None), ValueError, "model_mode must be one of"),
        (dict(amp_dtype="bf16"), ValueError, "amp_dtype must be None"),
        (dict(check_inputs=None), TypeError, "check_inputs must be a bool"),
        (dict(model=lambda z: z), ValueError, "the model's output must be logits"),
        (dict(model=lambda z: [z]), TypeError, "the model's output must be a tensor"),
    ],
)
def test_bad_input(args, exc, words):
    x, y = batch(6)
    call = dict(model=small_cnn().eval(), x=x, y=y, eps=0.1, queries=2)
    call.update(args)
    with pytest.raises(exc) as info:
        square(call.pop("model"), call.pop("x"), call.pop("y"), **call)
    assert words in str(info.value)


def test_module_examples_run():
    result = doctest.testmod(square_mod)
    assert result.attempted >= 4 and result.failed == 0


# --------------------------------------------------------------------------------------------
# Parity with torchattacks 3.5.1 on an adversarially trained model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", None), ("l2", 1.0)])
def test_robust_accuracy_is_no_higher_than_torchattacks(norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y, trained_eps = robust_digits()
    eps = trained_eps if eps is None else eps
    # As AutoAttack runs it: Square on the points earlier attacks leave robust. 500 queries
    # (not 5,000) keep the file near a minute on two cores; the schedule rescales to them.
    index = still_robust_after_pgd(model, x, y, eps, norm)
    xs, ys = x[index], y[index]
    ours = square(model, xs, ys, eps=eps, norm=norm, queries=500, generator=gen(0))
    peer = torchattacks.Square(model, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm],
                               n_queries=500, n_restarts=1, seed=0)  # fmt: skip
    with torch.random.fork_rng():  # torchattacks reseeds the global RNG
        theirs = peer(xs, ys)
    assert (_distance(ours, xs, norm) <= eps * (1 + 1e-5)).all()  # float32 rounding
    ours_robust = (predictions(model, ours) == ys).sum().item()
    peer_robust = (predictions(model, theirs) == ys).sum().item()
    # On 8x8 images fastpgd's Square is the stronger by several points: the reference never
    # moves its window onto the last row or column (a quarter of the pixels), fastpgd does.
    # Measured over seeds 0-3 (see the report), the gap exceeds the seed-to-seed spread of
    # either attack (about 2 points), so one seed each holds the 0.5-point bound.
    assert ours_robust <= peer_robust + 0.005 * len(x)
