"""fused_pgd and reference_pgd: correctness, state hygiene, randomness, validation."""

from __future__ import annotations

import doctest
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attack_common import HostReadError, ModeRecorder, batch, gen, no_host_reads, small_cnn
from conftest import DEVICES, needs_cuda
from fastpgd.attacks import _common
from fastpgd.attacks import pgd as attack_mod
from fastpgd.attacks.pgd import fused_pgd, per_sample_view, random_delta, reference_pgd
from fastpgd.data import load_digits
from fastpgd.models import MadryCNN

ATTACKS = [fused_pgd, reference_pgd]


def _linf(a, b):
    return (a - b).flatten(1).abs().amax(dim=1)


def _l2(a, b):
    return (a - b).flatten(1).norm(dim=1)


class _Linear2(nn.Module):
    """Two-class linear model: the optimal Linf attack moves by eps * sign(w_other - w_true)."""

    def __init__(self, d: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(2, d, generator=g))
        self.b = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


# ---------------------------------------------------------------------------------------------
# Fused == reference, bounds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fused_equals_reference_bit_for_bit(norm, targeted):
    model = small_cnn()
    x, y = batch()
    eps = 0.3 if norm == "linf" else 1.5
    kw = dict(eps=eps, alpha=eps / 4, steps=6, norm=norm, targeted=targeted)
    a = fused_pgd(model, x, y, generator=gen(3), **kw)
    b = reference_pgd(model, x, y, generator=gen(3), **kw)
    assert a.dtype == torch.float32
    if norm == "linf":
        assert torch.equal(a, b)
    else:
        # The fused L2 kernel sums the norms in its own order: float32 rounding, not bits.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.equal(a, x)


def test_fused_equals_reference_per_sample_budgets_and_restarts():
    model = small_cnn()
    x, y = batch()
    eps = torch.linspace(0.0, 0.3, 6)
    kw = dict(eps=eps, alpha=0.03, steps=4, restarts=2)
    a = fused_pgd(model, x, y, generator=gen(5), **kw)
    b = reference_pgd(model, x, y, generator=gen(5), **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize("device", DEVICES)
def test_linf_result_in_ball_and_range(pgd, device):
    model = small_cnn().to(device)
    x, y = batch(device=device)
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3, 0.5], device=device)
    x_adv = pgd(model, x, y, eps=eps, alpha=0.07, steps=5)
    assert (_linf(x_adv, x) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[0], x[0])  # eps = 0 leaves the sample alone


def test_strided_and_channels_last_inputs():
    model = small_cnn().to(memory_format=torch.channels_last)
    x = torch.rand(8, 8, 6, 1, generator=gen(0)).permute(2, 3, 0, 1)  # not contiguous
    y = torch.randint(0, 10, (6,), generator=gen(1))
    for xs in (x, x.contiguous().to(memory_format=torch.channels_last)):
        a = fused_pgd(model, xs, y, eps=0.3, alpha=0.05, steps=3, generator=gen(2))
        b = reference_pgd(model, xs, y, eps=0.3, alpha=0.05, steps=3, generator=gen(2))
        assert torch.equal(a, b)
        assert (_linf(a, xs) <= 0.3 + 1e-6).all()


def test_empty_batch():
    model = small_cnn()
    x = torch.rand(0, 1, 8, 8)
    out = fused_pgd(model, x, torch.zeros(0, dtype=torch.long), eps=0.3, alpha=0.05, steps=2)
    assert out.shape == x.shape


@pytest.mark.parametrize("pgd", ATTACKS)
def test_l2_result_in_ball_and_range(pgd):
    model = small_cnn()
    x, y = batch()
    x_adv = pgd(model, x, y, eps=1.0, alpha=0.4, steps=5, norm="l2")
    assert (_l2(x_adv, x) <= 1.0 + 1e-5).all()
    assert (_l2(x_adv, x) > 0.5).all()  # it did move
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@needs_cuda
@pytest.mark.cuda
def test_cuda_fused_equals_reference():
    torch.backends.cudnn.deterministic = True
    try:
        model = small_cnn().cuda()
        x, y = batch(device="cuda")
        a = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=4, generator=gen(1, "cuda"))
        b = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=4, generator=gen(1, "cuda"))
        assert torch.equal(a, b)
    finally:
        torch.backends.cudnn.deterministic = False


def test_clamp_none_allows_unbounded_inputs():
    model = small_cnn()
    x, y = batch()
    x = x * 10 - 5
    x_adv = fused_pgd(model, x, y, eps=2.0, alpha=1.0, steps=3, clamp=None)
    assert (_linf(x_adv, x) <= 2.0 + 1e-5).all()
    assert x_adv.min() < 0 or x_adv.max() > 1


# ---------------------------------------------------------------------------------------------
# The attack is effective
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
def test_linear_model_reaches_the_analytic_optimum(pgd):
    model = _Linear2()
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(8, 16, generator=g)  # far enough from 0 and 1 not to clamp
    y = torch.randint(0, 2, (8,), generator=g)
    w = model.w.detach()
    direction = torch.sign(w[1 - y] - w[y])  # increases the other logit minus the true one
    eps = 0.1
    x_adv = pgd(model, x, y, eps=eps, alpha=0.03, steps=10)
    torch.testing.assert_close(x_adv, x + eps * direction, rtol=0, atol=1e-6)
    # Targeted towards y: the opposite corner of the box.
    x_tgt = pgd(model, x, y, eps=eps, alpha=0.03, steps=10, targeted=True)
    torch.testing.assert_close(x_tgt, x - eps * direction, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def digits_model():
    images, labels = load_digits()  # the real 8x8 digits shipped with fastpgd
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[:1500]), y[:1500]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, x[1500:], y[1500:]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 2.0)])
def test_attack_lowers_accuracy_on_digits(digits_model, norm, eps):
    model, x, y = digits_model
    clean = _accuracy(model, x, y)
    assert clean > 0.9
    x_adv = fused_pgd(model, x, y, eps=eps, alpha=eps / 8, steps=20, norm=norm, generator=gen(0))
    noise = x + eps * torch.sign(torch.randn(x.shape, generator=gen(1)))
    if norm == "l2":
        d = torch.randn(x.shape, generator=gen(1))
        noise = x + eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    noisy = _accuracy(model, noise.clamp(0, 1), y)
    adversarial = _accuracy(model, x_adv, y)
    assert adversarial < 0.25 < noisy


# ---------------------------------------------------------------------------------------------
# Model state: gradients, requires_grad, training flags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
def test_parameters_untouched(pgd):
    model = small_cnn()
    x, y = batch()
    frozen = model.features[0].weight
    frozen.requires_grad_(False)
    before = [(p.requires_grad, p.detach().clone()) for p in model.parameters()]
    weight_grads = []
    hooks = [
        p.register_hook(lambda g: weight_grads.append(g))
        for p in model.parameters()
        if p.requires_grad
    ]
    x_req = x.clone().requires_grad_(True)
    x_adv = pgd(model, x_req, y, eps=0.3, alpha=0.05, steps=3)
    for h in hooks:
        h.remove()
    assert weight_grads == []  # no weight-gradient was computed at all
    for p, (req, value) in zip(model.parameters(), before, strict=True):
        assert p.grad is None
        assert p.requires_grad is req
        assert torch.equal(p, value)
    assert x_req.grad is None
    assert not x_adv.requires_grad and x_adv.grad_fn is None


@pytest.mark.parametrize(
    "mode,expected",
    [("eval", (False, False, False)), ("train", (True, True, True)), ("keep", (True, False, True))],
)
def test_model_mode_applied_and_restored(mode, expected):
    model = ModeRecorder()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    x, y = batch(4)
    fused_pgd(model, x, y, eps=0.1, alpha=0.05, steps=2, model_mode=mode)
    assert model.seen and all(s == expected for s in model.seen)
    assert model.training and not model.bn.training and model.drop.training


def test_model_mode_restored_on_error():
    model = ModeRecorder()
    model.train()
    model.drop.eval()
    x, y = batch(4)

    def bad_loss(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fused_pgd(model, x, y, eps=0.1, alpha=0.05, steps=2, loss_fn=bad_loss)
    assert model.training and model.bn.training and not model.drop.training


# ---------------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------------


def test_generator_is_the_only_source_and_is_not_reseeded():
    model = small_cnn()
    x, y = batch()
    state = torch.get_rng_state()
    g = gen(7)
    a = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=g)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    b = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=g)
    assert not torch.equal(a, b)  # the generator advanced: no reseeding
    c = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=gen(7))
    assert torch.equal(a, c)


def test_global_rng_used_without_generator():
    model = small_cnn()
    x, y = batch()
    torch.manual_seed(11)
    a = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    b = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    torch.manual_seed(11)
    c = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_steps_zero_returns_the_random_start():
    model = small_cnn()
    x, y = batch()
    out = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=0, generator=gen(2))
    u = torch.rand(x.shape, generator=gen(2))
    torch.testing.assert_close(out, (x + (u * 2 - 1) * 0.3).clamp(0, 1), rtol=0, atol=0)
    assert torch.equal(fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=0, random_start=False), x)


def test_l2_random_start_is_uniform_in_the_ball():
    d, n, eps = 4, 4000, 0.5
    model = nn.Linear(d, 3)
    x = torch.zeros(n, d)
    y = torch.zeros(n, dtype=torch.long)
    start = fused_pgd(
        model, x, y, eps=eps, alpha=0.1, steps=0, norm="l2", clamp=None, generator=gen(0)
    )
    r = start.norm(dim=1) / eps
    assert r.max() <= 1 + 1e-6
    # Uniform in the volume <=> (r/eps)^d is uniform on [0, 1]: mean 1/2, variance 1/12.
    v = r.pow(d)
    assert abs(v.mean().item() - 0.5) < 0.03
    assert abs(v.var().item() - 1 / 12) < 0.01
    # Directions are isotropic: each coordinate's mean is near 0.
    assert (start.mean(dim=0).abs() < 0.03).all()


# ---------------------------------------------------------------------------------------------
# Restarts, warm start, returned perturbation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_keep_the_best_per_example(targeted):
    model = small_cnn()
    x, y = batch(8)
    kw = dict(eps=0.3, alpha=0.02, steps=2, targeted=targeted)
    g = gen(9)
    singles = [fused_pgd(model, x, y, generator=g, **kw) for _ in range(3)]
    best = fused_pgd(model, x, y, generator=gen(9), restarts=3, **kw)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(s), y, reduction="none") for s in singles])
    pick = losses.argmin(0) if targeted else losses.argmax(0)
    expected = torch.stack([singles[int(k)][i] for i, k in enumerate(pick)])
    assert torch.equal(best, expected)
    assert len(set(pick.tolist())) > 1  # the test is only meaningful if restarts differ


def test_restarts_with_custom_loss_without_reduction():
    model = small_cnn()
    x, y = batch(5)

    def margin(logits, y):  # reduces only: restarts evaluate it per example
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, 10).bool(), -1e9).amax(1)
        return (other - true).sum()

    g = gen(4)
    singles = [
        fused_pgd(model, x, y, eps=0.3, alpha=0.02, steps=2, loss_fn=margin, generator=g)
        for _ in range(2)
    ]
    best = fused_pgd(
        model, x, y, eps=0.3, alpha=0.02, steps=2, loss_fn=margin, generator=gen(4), restarts=2
    )
    with torch.no_grad():
        losses = torch.stack(
            [
                torch.stack([margin(model(s[i : i + 1]), y[i : i + 1]) for i in range(5)])
                for s in singles
            ]
        )
    pick = losses.argmax(0)
    expected = torch.stack([singles[int(k)][i] for i, k in enumerate(pick)])
    assert torch.equal(best, expected)


@pytest.mark.parametrize("targeted", [False, True])
def test_track_best_returns_the_best_iterate_per_example(targeted):
    model = small_cnn()
    x, y = batch(8)
    kw = dict(eps=0.3, alpha=0.3, targeted=targeted)  # large steps: the loss is not monotone
    steps = 4
    # Every iterate, from the same start: k steps for k = 0..steps.
    iterates = [fused_pgd(model, x, y, steps=k, generator=gen(3), **kw) for k in range(steps + 1)]
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(it), y, reduction="none") for it in iterates])
    pick = losses.argmin(0) if targeted else losses.argmax(0)
    expected = torch.stack([iterates[int(k)][i] for i, k in enumerate(pick)])
    best = fused_pgd(model, x, y, steps=steps, generator=gen(3), track_best=True, **kw)
    assert torch.equal(best, expected)
    assert (pick != steps).any()  # meaningful only if the last iterate is not always best
    ref = reference_pgd(model, x, y, steps=steps, generator=gen(3), track_best=True, **kw)
    assert torch.equal(best, ref)


def test_track_best_argument_checks():
    model = small_cnn()
    x, y = batch()

    def reducing_only(logits, y):
        return F.cross_entropy(logits, y)

    with pytest.raises(ValueError, match="reduction='none'"):
        fused_pgd(model, x, y, eps=0.3, alpha=0.1, steps=1, loss_fn=reducing_only, track_best=True)
    out = fused_pgd(
        model,
        x,
        y,
        eps=0.3,
        alpha=0.1,
        steps=2,
        loss_fn=F.cross_entropy,
        track_best=True,
        restarts=2,
    )
    assert (_linf(out, x) <= 0.3 + 1e-6).all()


def test_return_delta_and_warm_start_round_trip():
    model = _Linear2()
    x = 0.3 + 0.4 * torch.rand(4, 16, generator=gen(0))
    y = torch.tensor([0, 1, 0, 1])
    x_adv, delta = fused_pgd(
        model, x, y, eps=0.1, alpha=0.01, steps=3, random_start=False, return_delta=True
    )
    torch.testing.assert_close(x + delta, x_adv)
    # Three steps, then two more from the returned delta, equal five steps.
    cont = fused_pgd(model, x, y, eps=0.1, alpha=0.01, steps=2, delta_init=delta)
    five = fused_pgd(model, x, y, eps=0.1, alpha=0.01, steps=5, random_start=False)
    torch.testing.assert_close(cont, five, rtol=0, atol=1e-6)


def test_delta_init_is_projected_into_ball_and_range():
    model = small_cnn()
    x, y = batch()
    delta = torch.full_like(x, 0.9)
    delta[:3] = -0.9
    out = fused_pgd(model, x, y, eps=0.2, alpha=0.05, steps=0, delta_init=delta)
    expected = torch.cat([(x[:3] - 0.2).clamp(0, 1), (x[3:] + 0.2).clamp(0, 1)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out2 = fused_pgd(model, x, y, eps=1.0, alpha=0.05, steps=0, delta_init=delta * 3, norm="l2")
    assert (_l2(out2, x) <= 1.0 + 1e-5).all()


def test_delta_init_bad_shape():
    model = small_cnn()
    x, y = batch()
    with pytest.raises(ValueError, match="delta_init must have the shape"):
        fused_pgd(model, x, y, eps=0.2, alpha=0.05, steps=1, delta_init=torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# Reduced precision and autocast
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(pgd, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype)
    x, y = batch()
    x = x.to(dtype)
    x_adv = pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=gen(0))
    assert x_adv.dtype == dtype
    ulp = torch.finfo(dtype).eps
    assert (_linf(x_adv.float(), x.float()) <= 0.25 + 2 * ulp).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_fused_equals_reference_half_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(torch.bfloat16)
    x, y = batch()
    x = x.to(torch.bfloat16)
    a = fused_pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=gen(0))
    b = reference_pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=gen(0))
    # Within one bf16 ulp of the values involved: the fused kernel rounds once.
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2 * 2.0**-8)


def test_amp_dtype_runs_model_under_autocast():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            out = self.fc(x.flatten(1))
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return out

    x, y = batch()
    x_adv = fused_pgd(Probe(), x, y, eps=0.1, alpha=0.05, steps=2, amp_dtype=torch.bfloat16)
    assert x_adv.dtype == torch.float32
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert (_linf(x_adv, x) <= 0.1 + 1e-6).all()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _call(**overrides):
    model = overrides.pop("model", None) or small_cnn()
    x, y = batch()
    args = dict(x=x, y=y, eps=0.3, alpha=0.05, steps=2)
    args.update(overrides)
    return fused_pgd(model, args.pop("x"), args.pop("y"), **args)


@pytest.mark.parametrize(
    "overrides,exc,words",
    [
        (dict(y=torch.zeros(5, dtype=torch.long)), ValueError, "y must have shape (6,)"),
        (dict(y=torch.zeros(6, 1, dtype=torch.long)), ValueError, "y must have shape"),
        (dict(y=torch.zeros(6)), TypeError, "integer class labels"),
        (dict(y=[0] * 6), TypeError, "y must be a tensor"),
        (dict(eps=-0.1), ValueError, "eps must be finite and >= 0"),
        (dict(eps=float("nan")), ValueError, "eps must be finite"),
        (dict(eps=torch.tensor([0.1, -1, 0, 0, 0, 0])), ValueError, "eps must be finite"),
        (dict(eps=torch.zeros(3)), ValueError, "one value per sample"),
        (dict(eps="0.3"), TypeError, "eps must be a number"),
        (dict(alpha=-1.0), ValueError, "alpha must be finite and >= 0"),
        (dict(alpha=torch.full((6,), 0.1)), TypeError, "alpha must be a number"),
        (dict(alpha=math.inf), ValueError, "alpha must be finite"),
        (dict(steps=-1), ValueError, "steps must be >= 0"),
        (dict(steps=2.0), TypeError, "steps must be an int"),
        (dict(steps=True), TypeError, "steps must be an int"),
        (dict(norm="l1"), ValueError, "norm must be one of"),
        (dict(restarts=0), ValueError, "restarts must be >= 1"),
        (dict(model_mode="test"), ValueError, "model_mode must be one of"),
        (dict(x=torch.randint(0, 2, (6, 1, 8, 8))), TypeError, "x must be a floating-point"),
        (dict(x=torch.rand(6, 1, 8, 8) + 1), ValueError, "x has values outside clamp=(0.0, 1.0)"),
        (dict(clamp=(1.0, 0.0)), ValueError, "clamp must satisfy lo <= hi"),
        (dict(amp_dtype=torch.float64), ValueError, "amp_dtype must be"),
        (dict(generator=1), TypeError, "generator must be a torch.Generator"),
        (
            dict(loss_fn=lambda logits, y: F.cross_entropy(logits, y, reduction="none")),
            ValueError,
            "loss_fn must return a scalar",
        ),
        (dict(cuda_graph=True), ValueError, "cuda_graph=True needs CUDA tensors"),
        (dict(model=MadryCNN(image_size=8).to("meta")), ValueError, "model is on meta"),
        (dict(clamp=("a", "b")), TypeError, "clamp must be None or a pair of numbers"),
        (dict(clamp=(0.0,)), TypeError, "clamp must be None or a pair of numbers"),
        (dict(clamp=(torch.tensor(0.0), 1.0)), TypeError, "clamp must be None or a pair"),
        (dict(clamp=(False, True)), TypeError, "clamp must be None or a pair of numbers"),
        (dict(eps=10**400), ValueError, "eps must be finite and >= 0"),
        (dict(eps=torch.ones(6, dtype=torch.bool)), TypeError, "eps must hold real numbers"),
        (dict(eps=torch.ones(6, dtype=torch.complex64)), TypeError, "eps must hold real numbers"),
        (dict(eps=torch.tensor([0.1, math.inf, 0, 0, 0, 0])), ValueError, "eps must be finite"),
        (dict(alpha="0.1"), TypeError, "alpha must be a number"),
        (dict(targeted="no"), TypeError, "targeted must be a bool"),
        (dict(random_start=1), TypeError, "random_start must be a bool"),
        (dict(return_delta=None), TypeError, "return_delta must be a bool"),
        (dict(cuda_graph="yes"), TypeError, "cuda_graph must be a bool"),
        (dict(track_best=torch.tensor(True)), TypeError, "track_best must be a bool"),
        (dict(check_inputs=0), TypeError, "check_inputs must be a bool"),
        (dict(restarts=1.0), TypeError, "restarts must be an int"),
        (dict(x=torch.full((6, 1, 8, 8), math.nan)), ValueError, "x must not hold NaN"),
        (dict(delta_init=torch.zeros(6, 1, 8, 8, dtype=torch.long)), TypeError, "delta_init"),
        (dict(delta_init=torch.full((6, 1, 8, 8), math.inf)), ValueError, "delta_init must be"),
        (dict(delta_init=[0.0]), TypeError, "delta_init must be a tensor"),
        (dict(y=torch.zeros(6, dtype=torch.bool)), TypeError, "integer class labels"),
        (dict(loss_fn=1), TypeError, "loss_fn must be callable"),
        (dict(model=1), TypeError, "model must be a callable"),
    ],
)
def test_bad_input(overrides, exc, words):
    with pytest.raises(exc) as info:
        _call(**overrides)
    assert words in str(info.value)


def test_outside_clamp_message_names_min_and_max():
    x = torch.rand(6, 1, 8, 8)
    x[0, 0, 0, 0] = -0.5
    with pytest.raises(ValueError, match=r"min -0\.5, max"):
        _call(x=x)


def test_accepted_number_types():
    np = pytest.importorskip("numpy")
    model = small_cnn()
    x, y = batch()
    kw = dict(eps=0.3, alpha=0.05, steps=2)
    expected = fused_pgd(model, x, y, generator=gen(0), **kw)
    out = fused_pgd(
        model,
        x,
        y,
        generator=gen(0),
        eps=np.float32(0.3),
        alpha=torch.tensor(0.05),
        steps=np.int64(2),
        clamp=[np.float64(0.0), 1],
        targeted=np.bool_(False),
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize("bad", [10, -1, -100])
@pytest.mark.parametrize(
    "kw",
    [dict(steps=2), dict(steps=0, restarts=2), dict(steps=2, track_best=True)],
    ids=["steps", "restarts-only", "track-best"],
)
def test_labels_out_of_range_name_y_and_the_range(pgd, bad, kw):
    model = small_cnn()
    x, y = batch()
    y[3] = bad
    with pytest.raises(ValueError, match=rf"y must hold class labels in \[0, 9\].*got {bad}$"):
        pgd(model, x, y, eps=0.3, alpha=0.05, **kw)


def test_labels_checked_against_the_models_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, _ = batch()
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=1)
    y[0] = 3
    with pytest.raises(ValueError, match=r"\[0, 2\] \(the model has 3 outputs\), got 3"):
        fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=1)


def test_labels_checked_once_per_call_not_per_step(monkeypatch):
    checked = []
    check = _common.check_label_range

    def spy(label_range, num_classes):
        checked.append(num_classes)
        check(label_range, num_classes)

    # ClassCount checks through _common, a cache hit through the pgd module.
    monkeypatch.setattr(_common, "check_label_range", spy)
    monkeypatch.setattr(attack_mod, "check_label_range", spy)
    model = small_cnn()
    x, y = batch()
    fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=5, restarts=3)
    assert checked == [10]
    fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=5, check_inputs=False)
    assert checked == [10]


def test_custom_loss_gets_the_labels_as_they_are():
    model = small_cnn()
    x, _ = batch()
    seen = []

    def loss(logits, y):  # its own meaning of y: any integers, any dtype
        seen.append(y)
        return logits.gather(1, (y % 10)[:, None]).sum()

    y = torch.tensor([10, 25, -1, 3, 99, 7], dtype=torch.int32)
    fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, loss_fn=loss)
    assert seen and all(s is y for s in seen)


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_narrow_integer_labels_are_converted_to_int64(pgd, dtype):
    model = small_cnn()
    x, y = batch()
    kw = dict(eps=0.3, alpha=0.05, steps=3, restarts=2)
    expected = pgd(model, x, y, generator=gen(0), **kw)
    assert torch.equal(pgd(model, x, y.to(dtype), generator=gen(0), **kw), expected)
    bad = y.to(dtype)
    bad[0] = 10
    with pytest.raises(ValueError, match="got 10"):
        pgd(model, x, bad, **kw)


# ---------------------------------------------------------------------------------------------
# Inputs the kernel cannot read as they are
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
def test_negative_bit_views_are_resolved(pgd):
    model = small_cnn()
    x, y = batch()
    eps = torch.linspace(0.05, 0.3, 6)
    delta = 0.1 * torch.randn(x.shape, generator=gen(1))
    kw = dict(alpha=0.05, steps=3)
    expected = pgd(model, x, y, eps=eps, delta_init=delta, **kw)
    x_neg, eps_neg, delta_neg = (torch._neg_view(-t) for t in (x, eps, delta))
    assert x_neg.is_neg() and eps_neg.is_neg() and delta_neg.is_neg()
    out = pgd(model, x_neg, y, eps=eps_neg, delta_init=delta_neg, **kw)
    assert torch.equal(out, expected)
    # Each one alone too: the kernel would read the stored, negated values.
    assert torch.equal(pgd(model, x_neg, y, eps=eps, delta_init=delta, **kw), expected)
    assert torch.equal(pgd(model, x, y, eps=eps_neg, delta_init=delta, **kw), expected)


@pytest.mark.parametrize("pgd", ATTACKS)
def test_inputs_that_require_grad(pgd):
    model = small_cnn()
    x, y = batch()
    eps = torch.full((6,), 0.3)
    delta = torch.zeros_like(x)
    expected = pgd(model, x, y, eps=eps, alpha=0.05, steps=2, generator=gen(0))
    out = pgd(
        model,
        x.clone().requires_grad_(True),
        y,
        eps=eps.clone().requires_grad_(True),
        alpha=0.05,
        steps=2,
        generator=gen(0),
    )
    assert torch.equal(out, expected) and not out.requires_grad
    out = pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, delta_init=delta.requires_grad_(True))
    assert not out.requires_grad


# ---------------------------------------------------------------------------------------------
# check_inputs=False: no value checks, no host reads
# ---------------------------------------------------------------------------------------------


def test_check_inputs_false_skips_the_value_checks():
    model = small_cnn()
    x, y = batch()
    x[0, 0, 0, 0] = 1.5  # outside clamp: the caller vouches for its inputs
    out = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=1, check_inputs=False)
    assert out.max() <= 1.0  # projected into range by the step, as documented


@pytest.mark.parametrize("pgd", ATTACKS)
def test_check_inputs_false_reads_no_tensor_value(pgd):
    model = small_cnn()
    x, y = batch()
    delta = 0.1 * torch.randn(x.shape, generator=gen(1))
    kw = dict(eps=0.3, alpha=0.05, steps=3, restarts=2, delta_init=delta, generator=gen(0))
    expected = pgd(model, x, y, **kw)
    kw["generator"] = gen(0)
    with no_host_reads():
        out = pgd(model, x, y, check_inputs=False, **kw)
    assert torch.equal(out, expected)
    # The guard sees the checks that check_inputs=True makes.
    with no_host_reads(), pytest.raises(HostReadError):
        pgd(model, x, y, **kw)


def test_unchecked_options_read_no_tensor_value():
    model = small_cnn()
    x, y = batch()
    kw = dict(inspect.signature(fused_pgd).parameters)
    args = {k: p.default for k, p in kw.items() if p.default is not inspect.Parameter.empty}
    args.update(
        eps=torch.full((6,), 0.3),
        alpha=0.05,
        steps=2,
        delta_init=torch.zeros_like(x),
        y=y.int(),
    )
    y_arg = args.pop("y")
    with no_host_reads():
        options = attack_mod._pgd_options(model, x, y_arg, **dict(args, check_inputs=False))
    assert options.y.dtype == torch.int64 and options.eps.shape == (6,)
    for name in ("eps", "delta_init"):
        with no_host_reads(), pytest.raises(HostReadError):
            attack_mod._pgd_options(model, x, y_arg, **dict(args, check_inputs=True))
        args[name] = 0.3 if name == "eps" else None
    with no_host_reads(), pytest.raises(HostReadError):  # the clamp range check
        attack_mod._pgd_options(model, x, y_arg, **dict(args, check_inputs=True))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("pgd", ATTACKS)
def test_check_inputs_false_does_not_sync_on_cuda(pgd):
    model = small_cnn().cuda()
    x, y = batch(device="cuda")
    eps = torch.full((6,), 0.3, device="cuda")
    delta = torch.zeros_like(x)
    kw = dict(eps=eps, alpha=0.05, steps=3, restarts=2, delta_init=delta)
    pgd(model, x, y, generator=gen(0, "cuda"), check_inputs=False, **kw)  # lazy init first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pgd(model, x, y, generator=gen(0, "cuda"), check_inputs=False, **kw)
        with pytest.raises(RuntimeError, match="synchroniz"):
            pgd(model, x, y, generator=gen(0, "cuda"), **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------------------------
# The public helpers and the signatures
# ---------------------------------------------------------------------------------------------


def test_public_signatures_and_options_agree():
    fused = inspect.signature(fused_pgd).parameters
    reference = inspect.signature(reference_pgd).parameters
    builder = inspect.signature(attack_mod._pgd_options).parameters
    fields = [f.name for f in attack_mod._PGDOptions.__dataclass_fields__.values()]
    assert list(fused) == list(reference) == list(builder) == fields[:-1]
    assert fields[-1] == "label_range"  # derived from y, not an argument
    for name, p in fused.items():
        assert (p.default, p.kind) == (reference[name].default, reference[name].kind), name
    assert fused["check_inputs"].default is True
    assert "check_inputs (bool)" in fused_pgd.__doc__ and "vouches" in reference_pgd.__doc__


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_delta_is_the_attack_start(norm, eps, dtype):
    model = small_cnn().to(dtype)
    x, y = batch()
    x = x.to(dtype)
    start = fused_pgd(model, x, y, eps=eps, alpha=0.05, steps=0, norm=norm, generator=gen(4))
    delta = random_delta(x, eps, norm, gen(4))
    assert delta.dtype == dtype and delta.shape == x.shape
    if norm == "linf":
        assert (delta.abs() <= eps).all()
        assert torch.equal(start, (x + delta).clamp(0, 1))
    else:
        assert (delta.float().flatten(1).norm(dim=1) <= eps * (1 + 1e-2)).all()
    # One radius per sample, cast to x's dtype: bf16 rounds 0.3 itself, float32 gives equal bits.
    per_sample = random_delta(x, torch.full((6,), eps, dtype=torch.float64), norm, gen(4))
    atol = 0 if dtype == torch.float32 else eps * 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(per_sample.float(), delta.float(), rtol=0, atol=atol)


@pytest.mark.parametrize(
    "args,exc,words",
    [
        (dict(x=torch.zeros(6, dtype=torch.long)), TypeError, "x must be a floating-point"),
        (dict(x=torch.tensor(1.0)), TypeError, "batch dimension"),
        (dict(eps="0.3"), TypeError, "eps must be a number"),
        (dict(eps=torch.zeros(3)), ValueError, "eps must be a number or one value per sample"),
        (dict(eps=torch.zeros(6, dtype=torch.long)), TypeError, "eps must be a floating-point"),
        (dict(eps=torch.zeros(6, device="meta")), ValueError, "eps must be on the device"),
        (dict(norm="l1"), ValueError, "norm must be one of"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (
            dict(x=torch.empty(6, 4, device="meta"), generator=torch.Generator()),
            ValueError,
            "generator must be on the device of x (meta)",
        ),
    ],
)
def test_random_delta_bad_input(args, exc, words):
    call = dict(x=torch.rand(6, 4), eps=0.3, norm="linf", generator=None)
    call.update(args)
    with pytest.raises(exc) as info:
        random_delta(call["x"], call["eps"], call["norm"], call["generator"])
    assert words in str(info.value)


def test_per_sample_view():
    x = torch.zeros(3, 2, 4)
    mask = torch.tensor([True, False, True])
    view = per_sample_view(mask, x)
    assert view.shape == (3, 1, 1) and view.data_ptr() == mask.data_ptr()
    assert torch.equal(torch.where(view, 1.0, x)[:, 0, 0], torch.tensor([1.0, 0.0, 1.0]))
    assert per_sample_view(0.5, x) == 0.5
    with pytest.raises(ValueError, match=r"v must have one value per sample of x, shape \(3,\)"):
        per_sample_view(torch.zeros(2), x)
    with pytest.raises(TypeError, match="v must be a number or a 1-D tensor"):
        per_sample_view("0.5", x)
    with pytest.raises(TypeError, match="x must be a tensor with a batch dimension"):
        per_sample_view(0.5, torch.tensor(1.0))


def test_attack_module_examples_run():
    result = doctest.testmod(attack_mod)
    assert result.attempted >= 6 and result.failed == 0


def test_names_import_from_where_they_did_before_the_attacks_package():
    import fastpgd
    from fastpgd import attack, attack_graph, attacks, pgd_classes

    assert attack.fused_pgd is attacks.fused_pgd is fastpgd.fused_pgd
    assert attack.reference_pgd is attacks.reference_pgd
    assert attack.random_delta is attacks.random_delta
    assert pgd_classes.PGD is attacks.PGD and pgd_classes.PGDL2 is attacks.PGDL2
    assert attack_graph.GRAPH_CACHE is attacks.graph.GRAPH_CACHE
