"""fused_pgd and reference_pgd: correctness, state hygiene, randomness, validation."""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DEVICES, needs_cuda
from fastpgd import attack as attack_mod
from fastpgd.attack import fused_pgd, reference_pgd
from fastpgd.data import load_digits
from fastpgd.models import MadryCNN

ATTACKS = [fused_pgd, reference_pgd]


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MadryCNN(image_size=8)


def _batch(n: int = 6, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def _gen(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


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


class _ModeRecorder(nn.Module):
    """BatchNorm + Dropout, and a record of each submodule's mode seen during forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, self.bn.training, self.drop.training))
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


# ---------------------------------------------------------------------------------------------
# Fused == reference, bounds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fused_equals_reference_bit_for_bit(norm, targeted):
    model = _small_cnn()
    x, y = _batch()
    eps = 0.3 if norm == "linf" else 1.5
    kw = dict(eps=eps, alpha=eps / 4, steps=6, norm=norm, targeted=targeted)
    a = fused_pgd(model, x, y, generator=_gen(3), **kw)
    b = reference_pgd(model, x, y, generator=_gen(3), **kw)
    assert a.dtype == torch.float32
    if norm == "linf":
        assert torch.equal(a, b)
    else:
        # The fused L2 kernel sums the norms in its own order: float32 rounding, not bits.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.equal(a, x)


def test_fused_equals_reference_per_sample_budgets_and_restarts():
    model = _small_cnn()
    x, y = _batch()
    eps = torch.linspace(0.0, 0.3, 6)
    kw = dict(eps=eps, alpha=0.03, steps=4, restarts=2)
    a = fused_pgd(model, x, y, generator=_gen(5), **kw)
    b = reference_pgd(model, x, y, generator=_gen(5), **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize("device", DEVICES)
def test_linf_result_in_ball_and_range(pgd, device):
    model = _small_cnn().to(device)
    x, y = _batch(device=device)
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3, 0.5], device=device)
    x_adv = pgd(model, x, y, eps=eps, alpha=0.07, steps=5)
    assert (_linf(x_adv, x) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[0], x[0])  # eps = 0 leaves the sample alone


def test_strided_and_channels_last_inputs():
    model = _small_cnn().to(memory_format=torch.channels_last)
    x = torch.rand(8, 8, 6, 1, generator=_gen(0)).permute(2, 3, 0, 1)  # not contiguous
    y = torch.randint(0, 10, (6,), generator=_gen(1))
    for xs in (x, x.contiguous().to(memory_format=torch.channels_last)):
        a = fused_pgd(model, xs, y, eps=0.3, alpha=0.05, steps=3, generator=_gen(2))
        b = reference_pgd(model, xs, y, eps=0.3, alpha=0.05, steps=3, generator=_gen(2))
        assert torch.equal(a, b)
        assert (_linf(a, xs) <= 0.3 + 1e-6).all()


def test_empty_batch():
    model = _small_cnn()
    x = torch.rand(0, 1, 8, 8)
    out = fused_pgd(model, x, torch.zeros(0, dtype=torch.long), eps=0.3, alpha=0.05, steps=2)
    assert out.shape == x.shape


@pytest.mark.parametrize("pgd", ATTACKS)
def test_l2_result_in_ball_and_range(pgd):
    model = _small_cnn()
    x, y = _batch()
    x_adv = pgd(model, x, y, eps=1.0, alpha=0.4, steps=5, norm="l2")
    assert (_l2(x_adv, x) <= 1.0 + 1e-5).all()
    assert (_l2(x_adv, x) > 0.5).all()  # it did move
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_clamp_none_allows_unbounded_inputs():
    model = _small_cnn()
    x, y = _batch()
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
    x_adv = fused_pgd(model, x, y, eps=eps, alpha=eps / 8, steps=20, norm=norm, generator=_gen(0))
    noise = x + eps * torch.sign(torch.randn(x.shape, generator=_gen(1)))
    if norm == "l2":
        d = torch.randn(x.shape, generator=_gen(1))
        noise = x + eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    noisy = _accuracy(model, noise.clamp(0, 1), y)
    adversarial = _accuracy(model, x_adv, y)
    assert adversarial < 0.25 < noisy


# ---------------------------------------------------------------------------------------------
# Model state: gradients, requires_grad, training flags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
def test_parameters_untouched(pgd):
    model = _small_cnn()
    x, y = _batch()
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
    model = _ModeRecorder()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    x, y = _batch(4)
    fused_pgd(model, x, y, eps=0.1, alpha=0.05, steps=2, model_mode=mode)
    assert model.seen and all(s == expected for s in model.seen)
    assert model.training and not model.bn.training and model.drop.training


def test_model_mode_restored_on_error():
    model = _ModeRecorder()
    model.train()
    model.drop.eval()
    x, y = _batch(4)

    def bad_loss(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fused_pgd(model, x, y, eps=0.1, alpha=0.05, steps=2, loss_fn=bad_loss)
    assert model.training and model.bn.training and not model.drop.training


# ---------------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------------


def test_generator_is_the_only_source_and_is_not_reseeded():
    model = _small_cnn()
    x, y = _batch()
    state = torch.get_rng_state()
    g = _gen(7)
    a = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=g)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    b = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=g)
    assert not torch.equal(a, b)  # the generator advanced: no reseeding
    c = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, generator=_gen(7))
    assert torch.equal(a, c)


def test_global_rng_used_without_generator():
    model = _small_cnn()
    x, y = _batch()
    torch.manual_seed(11)
    a = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    b = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    torch.manual_seed(11)
    c = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_steps_zero_returns_the_random_start():
    model = _small_cnn()
    x, y = _batch()
    out = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=0, generator=_gen(2))
    u = torch.rand(x.shape, generator=_gen(2))
    torch.testing.assert_close(out, (x + (u * 2 - 1) * 0.3).clamp(0, 1), rtol=0, atol=0)
    assert torch.equal(fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=0, random_start=False), x)


def test_l2_random_start_is_uniform_in_the_ball():
    d, n, eps = 4, 4000, 0.5
    model = nn.Linear(d, 3)
    x = torch.zeros(n, d)
    y = torch.zeros(n, dtype=torch.long)
    start = fused_pgd(
        model, x, y, eps=eps, alpha=0.1, steps=0, norm="l2", clamp=None, generator=_gen(0)
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
    model = _small_cnn()
    x, y = _batch(8)
    kw = dict(eps=0.3, alpha=0.02, steps=2, targeted=targeted)
    g = _gen(9)
    singles = [fused_pgd(model, x, y, generator=g, **kw) for _ in range(3)]
    best = fused_pgd(model, x, y, generator=_gen(9), restarts=3, **kw)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(s), y, reduction="none") for s in singles])
    pick = losses.argmin(0) if targeted else losses.argmax(0)
    expected = torch.stack([singles[int(k)][i] for i, k in enumerate(pick)])
    assert torch.equal(best, expected)
    assert len(set(pick.tolist())) > 1  # the test is only meaningful if restarts differ


def test_restarts_with_custom_loss_without_reduction():
    model = _small_cnn()
    x, y = _batch(5)

    def margin(logits, y):  # reduces only: restarts evaluate it per example
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, 10).bool(), -1e9).amax(1)
        return (other - true).sum()

    g = _gen(4)
    singles = [
        fused_pgd(model, x, y, eps=0.3, alpha=0.02, steps=2, loss_fn=margin, generator=g)
        for _ in range(2)
    ]
    best = fused_pgd(
        model, x, y, eps=0.3, alpha=0.02, steps=2, loss_fn=margin, generator=_gen(4), restarts=2
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
    model = _small_cnn()
    x, y = _batch(8)
    kw = dict(eps=0.3, alpha=0.3, targeted=targeted)  # large steps: the loss is not monotone
    steps = 4
    # Every iterate, from the same start: k steps for k = 0..steps.
    iterates = [fused_pgd(model, x, y, steps=k, generator=_gen(3), **kw) for k in range(steps + 1)]
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(it), y, reduction="none") for it in iterates])
    pick = losses.argmin(0) if targeted else losses.argmax(0)
    expected = torch.stack([iterates[int(k)][i] for i, k in enumerate(pick)])
    best = fused_pgd(model, x, y, steps=steps, generator=_gen(3), track_best=True, **kw)
    assert torch.equal(best, expected)
    assert (pick != steps).any()  # meaningful only if the last iterate is not always best
    ref = reference_pgd(model, x, y, steps=steps, generator=_gen(3), track_best=True, **kw)
    assert torch.equal(best, ref)


def test_track_best_argument_checks():
    model = _small_cnn()
    x, y = _batch()

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
    x = 0.3 + 0.4 * torch.rand(4, 16, generator=_gen(0))
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
    model = _small_cnn()
    x, y = _batch()
    delta = torch.full_like(x, 0.9)
    delta[:3] = -0.9
    out = fused_pgd(model, x, y, eps=0.2, alpha=0.05, steps=0, delta_init=delta)
    expected = torch.cat([(x[:3] - 0.2).clamp(0, 1), (x[3:] + 0.2).clamp(0, 1)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out2 = fused_pgd(model, x, y, eps=1.0, alpha=0.05, steps=0, delta_init=delta * 3, norm="l2")
    assert (_l2(out2, x) <= 1.0 + 1e-5).all()


def test_delta_init_bad_shape():
    model = _small_cnn()
    x, y = _batch()
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
    x, y = _batch()
    x = x.to(dtype)
    x_adv = pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=_gen(0))
    assert x_adv.dtype == dtype
    ulp = torch.finfo(dtype).eps
    assert (_linf(x_adv.float(), x.float()) <= 0.25 + 2 * ulp).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_fused_equals_reference_half_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(torch.bfloat16)
    x, y = _batch()
    x = x.to(torch.bfloat16)
    a = fused_pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=_gen(0))
    b = reference_pgd(model, x, y, eps=0.25, alpha=0.05, steps=3, generator=_gen(0))
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

    x, y = _batch()
    x_adv = fused_pgd(Probe(), x, y, eps=0.1, alpha=0.05, steps=2, amp_dtype=torch.bfloat16)
    assert x_adv.dtype == torch.float32
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert (_linf(x_adv, x) <= 0.1 + 1e-6).all()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _call(**overrides):
    model = overrides.pop("model", None) or _small_cnn()
    x, y = _batch()
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


# ---------------------------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------------------------


def test_graph_key_separates_what_a_capture_depends_on():
    model = _small_cnn().eval()
    x, y = _batch()
    base = dict(
        eps=0.3,
        alpha=0.01,
        norm="linf",
        loss_fn=None,
        targeted=False,
        clamp=(0.0, 1.0),
        amp_dtype=None,
    )
    key = attack_mod._graph_key(model, x, y, **base)
    assert key == attack_mod._graph_key(model, x.clone(), y.clone(), **base)
    # Per-sample budgets are copied into the graph's buffers, so their values do not matter.
    per = dict(base, eps=torch.full((6,), 0.3))
    assert attack_mod._graph_key(model, x, y, **per) == attack_mod._graph_key(
        model, x, y, **dict(base, eps=torch.full((6,), 0.1))
    )
    for change in (
        dict(eps=0.2),
        dict(alpha=0.02),
        dict(norm="l2"),
        dict(targeted=True),
        dict(loss_fn=F.cross_entropy),
        dict(clamp=None),
        dict(amp_dtype=torch.bfloat16),
    ):
        assert attack_mod._graph_key(model, x, y, **dict(base, **change)) != key
    assert attack_mod._graph_key(model, x[:3], y[:3], **base) != key
    assert attack_mod._graph_key(model, x.double(), y, **base) != key
    model.train()
    assert attack_mod._graph_key(model, x, y, **base) != key


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cuda_graph_matches_eager(norm):
    model = _small_cnn().cuda()
    x, y = _batch(device="cuda")
    kw = dict(eps=0.3 if norm == "linf" else 1.0, alpha=0.05, steps=5, norm=norm)
    eager = fused_pgd(model, x, y, generator=_gen(0, "cuda"), **kw)
    graphed = fused_pgd(model, x, y, generator=_gen(0, "cuda"), cuda_graph=True, **kw)
    # Same start, same steps; cuDNN may pick other kernels under capture, so sign flips of
    # near-zero gradients can differ in a few elements.
    assert (graphed - eager).abs().gt(1e-5).float().mean() < 0.01
    assert len(attack_mod._GRAPH_CACHE[model]) == 1
    again = fused_pgd(model, x, y, generator=_gen(0, "cuda"), cuda_graph=True, **kw)
    assert torch.equal(again, graphed)
    assert len(attack_mod._GRAPH_CACHE[model]) == 1  # replayed from the cache
    before = len(attack_mod._GRAPH_CACHE)
    del model
    gc.collect()
    assert len(attack_mod._GRAPH_CACHE) == before - 1  # the cache does not keep models alive


@needs_cuda
@pytest.mark.cuda
def test_cuda_fused_equals_reference():
    torch.backends.cudnn.deterministic = True
    try:
        model = _small_cnn().cuda()
        x, y = _batch(device="cuda")
        a = fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=4, generator=_gen(1, "cuda"))
        b = reference_pgd(model, x, y, eps=0.3, alpha=0.05, steps=4, generator=_gen(1, "cuda"))
        assert torch.equal(a, b)
    finally:
        torch.backends.cudnn.deterministic = False
