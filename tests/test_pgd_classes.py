"""fastpgd.PGD and fastpgd.PGDL2: torchattacks' interface over fused_pgd, compared with
torchattacks itself where it is installed; every setter and every refused argument."""

from __future__ import annotations

import doctest
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attack_common import ModeRecorder
from conftest import needs_cuda
from fastpgd import PGD, PGDL2, fused_pgd
from fastpgd.attacks import classes as pgd_classes
from fastpgd.data import load_dataset
from fastpgd.models import MadryCNN

ATTACKS = {"PGD": (PGD, dict(eps=0.1, alpha=0.02, steps=10)),
           "PGDL2": (PGDL2, dict(eps=0.5, alpha=0.1, steps=10))}  # fmt: skip
# Targets are further away than other classes: a larger budget.
TARGETED = {"PGD": dict(eps=0.3, alpha=0.05, steps=10),
            "PGDL2": dict(eps=2.0, alpha=0.4, steps=10)}  # fmt: skip
MEAN, STD = [0.25], [0.3]


def _gen(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture(scope="module")
def digits():
    """A MadryCNN trained naturally on the shipped digits (a few seconds), and the test split."""
    torch.manual_seed(0)
    x, y = load_dataset("digits", "train")[:]
    model = MadryCNN(image_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = _gen(0)
    for _ in range(3):
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), 100):
            batch = perm[i : i + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    xt, yt = load_dataset("digits", "test")[:]
    assert _accuracy(model, xt, yt) > 0.9
    return model, xt, yt


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _torchattacks():
    return pytest.importorskip("torchattacks")


class _Denormalize(nn.Module):
    """Makes a pixel-space model into one that expects normalised inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x * STD[0] + MEAN[0])


# ---------------------------------------------------------------------------------------------
# The one-line switch: same arguments, same defaults, same results as torchattacks
# ---------------------------------------------------------------------------------------------


def test_defaults_are_torchattacks_defaults():
    model = MadryCNN(image_size=8)
    pgd, l2 = PGD(model), PGDL2(model)
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.random_start) == (8 / 255, 2 / 255, 10, True)
    assert (l2.eps, l2.alpha, l2.steps, l2.random_start) == (1.0, 0.2, 10, True)
    assert l2.eps_for_division == 1e-10
    assert pgd.get_mode() == "default" and not pgd.targeted
    assert pgd.cuda_graph is False and pgd.amp_dtype is None and pgd.generator is None


@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_signature_matches_torchattacks(name):
    torchattacks = _torchattacks()

    def positional(cls):
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [(p.name, p.default) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]

    import fastpgd

    assert positional(getattr(fastpgd, name)) == positional(getattr(torchattacks, name))


@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_the_call_is_fused_pgd(name):
    cls, kw = ATTACKS[name]
    torch.manual_seed(0)
    model = MadryCNN(image_size=8)
    x, y = torch.rand(6, 1, 8, 8, generator=_gen(1)), torch.arange(6)
    adv = cls(model, **kw, generator=_gen(2))(x, y)
    norm = "linf" if name == "PGD" else "l2"
    expected = fused_pgd(model, x, y, **kw, norm=norm, generator=_gen(2))
    assert torch.equal(adv, expected)
    assert torch.equal(cls(model, **kw, generator=_gen(2)).forward(x, y), expected)
    assert not torch.equal(adv, x)


@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_robust_accuracy_matches_torchattacks(digits, name):
    torchattacks = _torchattacks()
    model, x, y = digits
    cls, kw = ATTACKS[name]
    theirs = getattr(torchattacks, name)(model, **kw, random_start=False)(x, y)
    ours = cls(model, **kw, random_start=False)(x, y)
    clean = _accuracy(model, x, y)
    robust_theirs, robust_ours = _accuracy(model, theirs, y), _accuracy(model, ours, y)
    assert robust_ours < clean - 0.2  # the attack bites
    assert abs(robust_ours - robust_theirs) <= 0.01
    # Not only the totals: the same examples fall.
    with torch.no_grad():
        same = (model(ours).argmax(1) == model(theirs).argmax(1)).float().mean().item()
    assert same >= 0.98


@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_random_start_stays_in_the_ball_and_changes_the_result(digits, name):
    model, x, y = digits
    x, y = x[:60], y[:60]
    cls, kw = ATTACKS[name]
    a = cls(model, **kw, generator=_gen(0))(x, y)
    b = cls(model, **kw, generator=_gen(1))(x, y)
    again = cls(model, **kw, generator=_gen(0))(x, y)
    assert torch.equal(a, again) and not torch.equal(a, b)
    d = (a - x).flatten(1)
    size = d.abs().amax(1) if name == "PGD" else d.norm(dim=1)
    assert (size <= kw["eps"] + 1e-5).all()
    assert a.min() >= 0 and a.max() <= 1


def test_l2_step_where_the_gradient_almost_vanishes():
    """The documented difference of the L2 guards: torchattacks divides by ||g|| + 1e-10 of the
    mean loss, fastpgd by max(||g||, 1e-12) of the summed loss."""
    torchattacks = _torchattacks()
    model = nn.Linear(16, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(16), torch.ones(16)]))
        # Class 0 wins by a margin of 24.4: p(class 1) = 2.5e-11, so ||grad|| = 4 * 2.5e-11.
        model.bias.copy_(torch.tensor([8.0 + 24.412, 0.0]))
    x, y = torch.full((1, 16), 0.5), torch.tensor([0])
    inp = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(inp), y), inp)
    norm = g.norm().item()
    assert 5e-11 < norm < 2e-10
    kw = dict(eps=1.0, alpha=0.4, steps=1, random_start=False)
    ours = (PGDL2(model, **kw)(x, y) - x).norm().item()
    theirs = (torchattacks.PGDL2(model, **kw)(x, y) - x).norm().item()
    assert ours == pytest.approx(0.4, rel=1e-5)
    assert theirs == pytest.approx(0.4 * norm / (norm + 1e-10), rel=1e-4)
    assert theirs < 0.3


# ---------------------------------------------------------------------------------------------
# Targeted modes
# ---------------------------------------------------------------------------------------------


def _success(model, adv, targets) -> float:
    with torch.no_grad():
        return (model(adv).argmax(1) == targets).float().mean().item()


def _set_mode(atk, mode):
    if mode == "label":
        atk.set_mode_targeted_by_label(quiet=True)
    elif mode == "function":
        atk.set_mode_targeted_by_function(lambda images, labels: (labels + 3) % 10, quiet=True)
    elif mode == "least-likely":
        atk.set_mode_targeted_least_likely(kth_min=2, quiet=True)
    else:
        atk.set_mode_targeted_random(quiet=True)


@pytest.mark.parametrize("mode", ["label", "function", "least-likely", "random"])
@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_targeted_modes_aim_where_torchattacks_aims(digits, name, mode):
    torchattacks = _torchattacks()
    model, x, y = digits
    cls = ATTACKS[name][0]
    kw = dict(TARGETED[name], random_start=False)
    theirs, ours = getattr(torchattacks, name)(model, **kw), cls(model, **kw)
    _set_mode(theirs, mode)
    _set_mode(ours, mode)
    assert ours.get_mode() == theirs.get_mode() and ours.targeted and theirs.targeted
    labels = (y + 1) % 10 if mode == "label" else y
    # Random targets: on the CPU with the global RNG, fastpgd makes torchattacks' draws.
    torch.manual_seed(5)
    targets_theirs = theirs.get_target_label(x, labels)
    torch.manual_seed(5)
    targets = ours.get_target_label(x, labels)
    assert torch.equal(targets, targets_theirs)
    if mode != "label":
        assert (targets != y).all()
    torch.manual_seed(5)  # the same targets again: no random start draws after them
    adv_theirs = theirs(x, labels)
    torch.manual_seed(5)
    adv = ours(x, labels)
    hit, hit_theirs = _success(model, adv, targets), _success(model, adv_theirs, targets)
    assert hit > 0.5  # the attack goes somewhere, and to the targets
    assert abs(hit - hit_theirs) <= 0.01


def test_targeted_by_label_descends_towards_the_labels(digits):
    model, x, y = digits
    targets = (y + 1) % 10
    atk = PGD(model, eps=0.2, alpha=0.04, steps=10, random_start=False)
    atk.set_mode_targeted_by_label()
    adv = atk(x, targets)
    assert _success(model, adv, targets) > 0.3 > 0.05 > _success(model, x, targets)
    expected = fused_pgd(model, x, targets, eps=0.2, alpha=0.04, steps=10, random_start=False,
                         targeted=True)  # fmt: skip
    assert torch.equal(adv, expected)


def test_random_targets_are_uniform_over_the_other_classes(digits):
    model, x, y = digits
    atk = PGD(model, generator=_gen(3))
    atk.set_mode_targeted_random()
    targets = torch.cat([atk.get_target_label(x, y) for _ in range(20)])
    labels = y.repeat(20)
    assert (targets != labels).all() and targets.min() >= 0 and targets.max() <= 9
    # Each label's targets spread over the 9 other classes: 20 x ~36 draws per label.
    for label in range(10):
        counts = torch.bincount(targets[labels == label], minlength=10).float()
        counts = torch.cat([counts[:label], counts[label + 1 :]])
        assert counts.min() > 0.5 * counts.mean()
    again = PGD(model, generator=_gen(3))
    again.set_mode_targeted_random()
    assert torch.equal(again.get_target_label(x, y), targets[: len(y)])


def test_least_likely_targets_and_predictions_when_labels_are_none(digits):
    model, x, y = digits
    atk = PGD(model)
    atk.set_mode_targeted_least_likely(kth_min=1)
    with torch.no_grad():
        logits = model(x)
    for labels, given in ((y, y), (None, logits.argmax(1))):
        targets = atk.get_target_label(x, labels)
        expected = logits.clone()
        expected[torch.arange(len(y)), given] = math.inf
        assert torch.equal(targets, expected.argmin(1))


def test_target_function_receives_pixels_under_normalization(digits):
    model, x, y = digits
    seen = []

    def target_of(images, labels):
        seen.append(images)
        return (labels + 1) % 10

    atk = PGD(_Denormalize(model), eps=0.1, alpha=0.02, steps=2)
    atk.set_normalization_used(MEAN, STD)
    atk.set_mode_targeted_by_function(target_of)
    atk((x - MEAN[0]) / STD[0], y)
    torch.testing.assert_close(seen[0], x, rtol=0, atol=1e-6)


def test_set_mode_default_goes_back_to_untargeted(digits):
    model, x, y = digits
    x, y = x[:60], y[:60]
    atk = PGD(model, random_start=False)
    untargeted = atk(x, y)
    atk.set_mode_targeted_by_label()
    assert not torch.equal(atk(x, y), untargeted)
    atk.set_mode_default()
    assert atk.get_mode() == "default" and not atk.targeted
    assert torch.equal(atk(x, y), untargeted)
    with pytest.raises(ValueError, match="get_target_label needs a targeted mode"):
        atk.get_target_label(x, y)


def test_mode_names_follow_torchattacks():
    atk = PGD(MadryCNN(image_size=8))
    names = []
    for mode in ("label", "function", "least-likely", "random"):
        _set_mode(atk, mode)
        names.append(atk.get_mode())
    assert names == ["targeted(label)", "targeted(custom)", "targeted(least-likely)",
                     "targeted(random)"]  # fmt: skip


def test_setters_print_nothing(capsys):
    atk = PGD(MadryCNN(image_size=8))
    for quiet in (False, True):
        atk.set_mode_targeted_by_label(quiet=quiet)
        atk.set_mode_targeted_random(quiet=quiet)
        atk.set_mode_targeted_least_likely(quiet=quiet)
        atk.set_mode_targeted_by_function(lambda images, labels: labels, quiet=quiet)
        atk.set_mode_default()
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_normalization_matches_torchattacks(digits, name):
    torchattacks = _torchattacks()
    model, x, y = digits
    cls, kw = ATTACKS[name]
    normed_model = _Denormalize(model)
    normed = (x - MEAN[0]) / STD[0]
    theirs, ours = (
        getattr(torchattacks, name)(normed_model, **kw, random_start=False),
        cls(normed_model, **kw, random_start=False),
    )
    theirs.set_normalization_used(MEAN, STD)
    ours.set_normalization_used(MEAN, STD)
    adv_theirs, adv = theirs(normed, y), ours(normed, y)
    acc_theirs, acc = _accuracy(normed_model, adv_theirs, y), _accuracy(normed_model, adv, y)
    assert acc < _accuracy(normed_model, normed, y) - 0.2
    assert abs(acc - acc_theirs) <= 0.01
    # The result is normalised: in pixel space it lies in the ball around the clean images.
    pixels = adv * STD[0] + MEAN[0]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    d = (pixels - x).flatten(1)
    size = d.abs().amax(1) if name == "PGD" else d.norm(dim=1)
    assert (size <= kw["eps"] + 1e-5).all()


def test_normalization_per_channel_and_pixels_at_the_ends():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's
    x = torch.rand(8, 3, 4, 4, generator=_gen(0))
    x[0], x[1] = 0.0, 1.0  # pixels at the ends come back a few ulps outside [0, 1]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    atk = PGD(model, eps=0.05, alpha=0.01, steps=3, generator=_gen(1))
    atk.set_normalization_used(mean, std)
    adv = atk((x - m) / s, torch.arange(8))
    pixels = adv * s + m
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert ((pixels - x).abs() <= 0.05 + 1e-6).all()
    assert atk.normalization_used["mean"].shape == (1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"images must hold pixels in \[0, 1\] after undoing"):
        atk((x * 255 - m) / s, torch.arange(8))  # normalised from [0, 255]
    with pytest.raises(ValueError, match="3 channels"):
        atk(torch.rand(8, 1, 4, 4), torch.arange(8))


# ---------------------------------------------------------------------------------------------
# Model mode during the attack, and after it
# ---------------------------------------------------------------------------------------------


MODE_CASES = [
    (None, (False, False, False)),
    ((False, True, True), (False, False, False)),
    ((True, False, False), (True, False, False)),
    ((True, True, False), (True, True, False)),
    ((True, False, True), (True, False, True)),
]


@pytest.mark.parametrize("setting, during", MODE_CASES)
def test_model_mode_during_the_attack_and_restored_after(setting, during):
    model = ModeRecorder()
    model.train()
    model.bn.eval()  # a mixed state: torchattacks would turn it all to train afterwards
    atk = PGD(model, steps=2)
    if setting is not None:
        atk.set_model_training_mode(*setting)
    atk(torch.rand(4, 1, 8, 8, generator=_gen(0)), torch.arange(4))
    assert model.seen == [during, during]
    assert model.training and not model.bn.training and model.drop.training


@pytest.mark.parametrize("setting, during", MODE_CASES)
def test_model_mode_during_the_attack_is_torchattacks_mode(setting, during):
    torchattacks = _torchattacks()
    model = ModeRecorder()
    atk = torchattacks.PGD(model, steps=2)
    if setting is not None:
        atk.set_model_training_mode(*setting)
    atk(torch.rand(4, 1, 8, 8, generator=_gen(0)), torch.arange(4))
    assert model.seen == [during, during]


def test_targets_use_eval_mode_and_modes_are_restored_on_errors():
    model = ModeRecorder()
    model.train()
    atk = PGD(model, steps=1)
    atk.set_model_training_mode(model_training=True)
    atk.set_mode_targeted_least_likely()
    atk(torch.rand(4, 1, 8, 8, generator=_gen(0)), torch.arange(4))
    assert model.seen == [(False, False, False), (True, False, False)]
    atk.set_mode_targeted_by_function(lambda images, labels: labels.float())
    with pytest.raises(TypeError, match="target_map_function must return integer"):
        atk(torch.rand(4, 1, 8, 8), torch.arange(4))
    assert model.training and model.bn.training and model.drop.training


# ---------------------------------------------------------------------------------------------
# Model, device, attributes, fastpgd's own options
# ---------------------------------------------------------------------------------------------


def test_set_model_and_checked_attributes():
    torch.manual_seed(0)
    a, b = MadryCNN(image_size=8), MadryCNN(image_size=8)
    x, y = torch.rand(4, 1, 8, 8, generator=_gen(0)), torch.arange(4)
    atk = PGD(a, random_start=False)
    atk.set_model(b)
    assert atk.model is b
    assert torch.equal(atk(x, y), PGD(b, random_start=False)(x, y))
    atk.eps, atk.alpha, atk.steps = 0.2, 0.05, 3
    assert torch.equal(atk(x, y), PGD(b, eps=0.2, alpha=0.05, steps=3, random_start=False)(x, y))
    with pytest.raises(ValueError, match="PGD.eps must be a finite number >= 0"):
        atk.eps = -0.1
    with pytest.raises(TypeError, match="PGD.steps must be an int"):
        atk.steps = 2.5
    with pytest.raises(TypeError, match="PGD.model must be a torch.nn.Module"):
        atk.set_model(lambda t: t)
    assert atk.eps == 0.2 and atk.steps == 3 and atk.model is b  # refused writes change nothing


def test_set_device_and_repr():
    model = MadryCNN(image_size=8)
    atk = PGDL2(model, steps=1)
    assert atk.device == torch.device("cpu")
    atk.set_device("cpu")
    assert atk(torch.rand(2, 1, 8, 8), torch.arange(2)).device.type == "cpu"
    atk.set_device(None)
    with pytest.raises(TypeError, match="set_device: device must be"):
        atk.set_device(0)
    text = repr(atk)
    assert text.startswith("PGDL2(model_name=MadryCNN, eps=1.0, alpha=0.2, steps=1")
    assert "attack_mode=default" in text and "eps_for_division=1e-10" in text


def test_amp_dtype_is_passed_to_fused_pgd():
    torch.manual_seed(0)
    model = MadryCNN(image_size=8)
    x, y = torch.rand(4, 1, 8, 8, generator=_gen(0)), torch.arange(4)
    adv = PGD(model, amp_dtype=torch.bfloat16, generator=_gen(1))(x, y)
    expected = fused_pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10,
                         amp_dtype=torch.bfloat16, generator=_gen(1))  # fmt: skip
    assert torch.equal(adv, expected)
    assert not torch.equal(adv, PGD(model, generator=_gen(1))(x, y))  # autocast was on


def test_cuda_graph_without_cuda_is_refused():
    atk = PGD(MadryCNN(image_size=8), cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors"):
        atk(torch.rand(2, 1, 8, 8), torch.arange(2))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["PGD", "PGDL2"])
def test_cuda_graph_and_cpu_images_on_a_cuda_model(name):
    cls, kw = ATTACKS[name]
    torch.manual_seed(0)
    model = MadryCNN(image_size=8).cuda()
    x, y = torch.rand(8, 1, 8, 8, generator=_gen(0)), torch.arange(8)
    eager = cls(model, **kw, generator=_gen(1, "cuda"))(x, y)  # CPU batch, as torchattacks allows
    assert eager.device.type == "cuda"
    parameterless = cls(nn.Flatten())
    assert parameterless.device.type == "cpu"
    parameterless.set_device("cuda")
    assert parameterless.device.type == "cuda"
    atk = cls(model, **kw, cuda_graph=True, generator=_gen(1, "cuda"))
    graphed = atk(x.cuda(), y.cuda())
    # cuDNN may pick other kernels under capture: sign flips of near-zero gradients.
    assert (graphed - eager).abs().gt(1e-5).float().mean() < 0.01
    with pytest.raises(ValueError, match="generator is on cpu but the attack runs on cuda"):
        cls(model, generator=_gen(0))(x, y)


# ---------------------------------------------------------------------------------------------
# Refused arguments and what fastpgd does not offer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, error, words",
    [
        (PGD, dict(model=lambda t: t), TypeError, "PGD.model must be a torch.nn.Module"),
        (PGD, dict(eps="8/255"), TypeError, "PGD.eps must be a real number"),
        (PGD, dict(eps=True), TypeError, "PGD.eps must be a real number"),
        (PGD, dict(eps=-0.1), ValueError, "PGD.eps must be a finite number >= 0"),
        (PGD, dict(eps=math.nan), ValueError, "PGD.eps must be a finite"),
        (PGD, dict(eps=torch.tensor(0.1)), TypeError, "PGD.eps must be a real number"),
        (PGD, dict(alpha=math.inf), ValueError, "PGD.alpha must be a finite"),
        (PGD, dict(steps=2.0), TypeError, "PGD.steps must be an int"),
        (PGD, dict(steps=-1), ValueError, "PGD.steps must be >= 0"),
        (PGD, dict(random_start=1), TypeError, "PGD.random_start must be a bool"),
        (PGD, dict(cuda_graph="yes"), TypeError, "PGD.cuda_graph must be a bool"),
        (PGD, dict(amp_dtype=torch.float32), ValueError, "PGD.amp_dtype must be None, torch"),
        (PGD, dict(amp_dtype="bf16"), TypeError, "PGD.amp_dtype must be None or a torch.dtype"),
        (PGD, dict(generator=0), TypeError, "PGD.generator must be None or a torch.Generator"),
        (PGDL2, dict(eps_for_division=1e-8), ValueError, "eps_for_division must be 1e-10"),
        (PGDL2, dict(eps_for_division="0"), TypeError, "PGDL2.eps_for_division must be a real"),
        (PGDL2, dict(steps=None), TypeError, "PGDL2.steps must be an int"),
        (PGD, dict(norm="L2"), TypeError, "unsupported keyword argument 'norm'.*PGDL2"),
        (PGD, dict(eps_for_division=1e-10), TypeError, "only PGDL2 takes eps_for_division"),
        (PGD, dict(n_restarts=2), TypeError, "'n_restarts'.*restarts=n"),
        (PGDL2, dict(loss="ce"), TypeError, "'loss'.*loss_fn"),
        (PGD, dict(seed=0), TypeError, "'seed'.*generator="),
        (PGD, dict(targeted=True), TypeError, "'targeted'.*set_mode_targeted_by_label"),
        (PGD, dict(device="cpu"), TypeError, "'device'.*set_device"),
        (PGD, dict(decay=1.0), TypeError, "'decay': it is not an option of torchattacks' PGD"),
    ],
)
def test_constructor_refuses_bad_arguments(cls, kwargs, error, words):
    args = {"model": MadryCNN(image_size=8), **kwargs}
    with pytest.raises(error, match=words):
        cls(**args)


def _bad_setter_calls():
    return [
        (lambda a: a.set_mode_targeted_by_function(3), TypeError,
         "target_map_function must be callable"),
        (lambda a: a.set_mode_targeted_by_label(quiet="no"), TypeError,
         "set_mode_targeted_by_label: quiet must be a bool"),
        (lambda a: a.set_mode_targeted_random(quiet=None), TypeError, "quiet must be a bool"),
        (lambda a: a.set_mode_targeted_least_likely(kth_min=0), ValueError, "kth_min must be >= 1"),
        (lambda a: a.set_mode_targeted_least_likely(kth_min=1.5), TypeError,
         "kth_min must be an int"),
        (lambda a: a.set_normalization_used([0.5, 0.5], [0.2]), ValueError,
         "mean and std must have one value per channel each"),
        (lambda a: a.set_normalization_used([0.5], [0.0]), ValueError, "std must be > 0"),
        (lambda a: a.set_normalization_used([math.nan], [1.0]), ValueError, "mean must be finite"),
        (lambda a: a.set_normalization_used("0.5", [1.0]), TypeError,
         "mean must be a sequence of numbers"),
        (lambda a: a.set_normalization_used(0.5, [1.0]), TypeError,
         "mean must be a sequence of numbers"),
        (lambda a: a.set_normalization_used([0.5], [["a"]]), TypeError,
         "std must be a sequence of numbers"),
        (lambda a: a.set_normalization_used([[0.5]], [[1.0]]), ValueError, "mean must be 1-D"),
        (lambda a: a.set_normalization_used([], []), ValueError, "mean must be 1-D"),
        (lambda a: a.set_model_training_mode(model_training=1), TypeError,
         "set_model_training_mode: model_training must be a bool"),
        (lambda a: a.set_model_training_mode(True, dropout_training="yes"), TypeError,
         "dropout_training must be a bool"),
    ]  # fmt: skip


@pytest.mark.parametrize("call, error, words", _bad_setter_calls())
def test_setters_refuse_bad_arguments_and_change_nothing(call, error, words):
    atk = PGD(MadryCNN(image_size=8))
    before = (atk.get_mode(), atk.normalization_used, atk._model_training, atk._kth_min)
    with pytest.raises(error, match=words):
        call(atk)
    assert (atk.get_mode(), atk.normalization_used, atk._model_training, atk._kth_min) == before


def _bad_calls():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    return [
        ((x.tolist(), y), TypeError, r"PGD\(\): images must be a tensor"),
        (((x * 255).to(torch.uint8), y), TypeError, "images must be a floating-point tensor"),
        ((x.flatten(), y), ValueError, r"images must have shape \[N, ...\]"),
        ((x * 255, y), ValueError, r"images must hold pixels in \[0, 1\], got values in"),
        ((x - 0.5, y), ValueError, r"images must hold pixels in \[0, 1\]"),
        ((x, None), TypeError, "labels must be a tensor of class indices"),
        ((x, y.float()), TypeError, "labels must hold integer class indices"),
        ((x, y[:3]), ValueError, r"labels must have shape \(4,\), one per image"),
        ((x, y.view(4, 1)), ValueError, r"labels must have shape \(4,\)"),
    ]


@pytest.mark.parametrize("args, error, words", _bad_calls())
def test_call_refuses_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        PGD(MadryCNN(image_size=8))(*args)


@pytest.mark.parametrize(
    "function, error, words",
    [
        (lambda images, labels: labels.tolist(), TypeError, "must return a tensor"),
        (lambda images, labels: labels.float(), TypeError, "must return integer class indices"),
        (lambda images, labels: labels[:2], ValueError, r"must return shape \(4,\)"),
    ],
)
def test_target_function_results_are_checked(function, error, words):
    atk = PGD(MadryCNN(image_size=8))
    atk.set_mode_targeted_by_function(function)
    with pytest.raises(error, match="target_map_function " + words):
        atk(torch.rand(4, 1, 8, 8), torch.arange(4))


def test_target_modes_refuse_what_the_model_cannot_give():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    atk = PGD(MadryCNN(image_size=8, num_classes=3))
    atk.set_mode_targeted_least_likely(kth_min=3)
    with pytest.raises(ValueError, match="kth_min=3 needs more than 3 classes, the model has 3"):
        atk(x, y % 3)
    one = PGD(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)))
    one.set_mode_targeted_random()
    with pytest.raises(ValueError, match="targeted random needs at least 2 classes"):
        one(x, torch.zeros(4, dtype=torch.int64))
    by_label = PGD(MadryCNN(image_size=8))
    by_label.set_mode_targeted_by_label()
    with pytest.raises(ValueError, match="labels \\(the targets\\) must be given"):
        by_label.get_target_label(x)


@pytest.mark.parametrize(
    "method, words",
    [
        ("save", "PGD.save is not supported by fastpgd: loop over the data loader"),
        ("load", "PGD.load is not supported by fastpgd"),
        ("set_return_type", "PGD.set_return_type is not supported by fastpgd"),
    ],
)
def test_unsupported_methods_raise(method, words):
    atk = PGD(MadryCNN(image_size=8))
    with pytest.raises(TypeError, match=words):
        getattr(atk, method)("int")


def test_torchattacks_wrappers_cannot_drive_fastpgd_attacks():
    torchattacks = _torchattacks()
    model = MadryCNN(image_size=8)
    multi = torchattacks.MultiAttack([PGD(model), PGDL2(model)])
    words = r"cannot run inside a torchattacks wrapper \(called from torchattacks.wrappers.multi"
    with pytest.raises(TypeError, match=words):
        multi(torch.rand(4, 1, 8, 8), torch.arange(4))


def test_docstring_examples_run():
    result = doctest.testmod(pgd_classes)
    assert result.attempted >= 10 and result.failed == 0
