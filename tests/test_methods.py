"""The training methods: each update against a reference written out from its paper's code, the
PGI memory through crops and flips, and the interface the trainer calls."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.attacks import fused_pgd, reference_pgd
from fastpgd.step import reference_pgd_step
from fastpgd.timers import Timers
from fastpgd.trainer import TrainConfig
from fastpgd.trainer.batches import CROP_PADDING, CropFlip, augment_crop_flip
from fastpgd.trainer.methods import (
    METHOD_CLASSES,
    Batch,
    MethodContext,
    fgsm_rs,
    n_fgsm,
    trades_loss,
)

EPS = 0.1
BASE = dict(dataset="synthetic", synthetic_size=40, image_size=8, batch_size=6, lr=0.1, eps=EPS,
            alpha=0.03, attack_steps=2, quiet=True)  # fmt: skip


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 8 * 8, 4))  # fmt: skip


def _batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def _method(name: str, net: nn.Module, **config):
    """A method on ``net`` with plain SGD, the reference attack and a seeded generator."""
    c = TrainConfig(**{**BASE, "method": name, **config}).resolved()
    ctx = MethodContext(model=net, net=net, optimizer=torch.optim.SGD(net.parameters(), lr=c.lr),
                        config=c, timers=Timers(), generator=torch.Generator().manual_seed(5),
                        attack_fn=reference_pgd, step_fn=reference_pgd_step)  # fmt: skip
    return METHOD_CLASSES[name](ctx, c.synthetic_size, (1, 8, 8))


def _step(method, batch: Batch):
    """One training step as the trainer runs it: gradients zeroed, then the method."""
    method.ctx.optimizer.zero_grad(set_to_none=True)
    return method.step(batch)


def _grad_sum(net, x, y):
    """The input gradient of the summed cross-entropy, the model in eval mode (PGD's)."""
    net.eval()
    inp = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(inp), y, reduction="sum"), inp)
    net.train()
    return g


def _sgd(net, loss, lr=0.1):
    net.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= lr * p.grad


def _assert_same_net(a, b):
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


# -- each method's update against its reference -----------------------------------------------


def test_fgsm_rs_is_wong_et_al():
    # Wong et al.'s loop: delta ~ U(-eps, eps), clipped to the image; one step of 1.25 eps along
    # the gradient's sign; clipped to the eps box and the image.
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("fgsm-rs", net)
    g = method.ctx.generator.clone_state()
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * EPS
    start = (x + delta).clamp(0, 1)
    moved = start + 1.25 * EPS * _grad_sum(ref, start, y).sign()
    x_adv = torch.min(torch.max(moved, x - EPS), x + EPS).clamp(0, 1)
    _sgd(ref, F.cross_entropy(ref(x_adv), y))
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)
    # The function for users' own loops computes the same points, with either attack.
    for attack_fn in (fused_pgd, reference_pgd):
        got = fgsm_rs(ref_copy := copy.deepcopy(net), x, y, eps=EPS,
                      generator=torch.Generator().manual_seed(9), attack_fn=attack_fn)  # fmt: skip
        g = torch.Generator().manual_seed(9)
        start = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * EPS).clamp(0, 1)
        moved = start + 1.25 * EPS * _grad_sum(ref_copy, start, y).sign()
        torch.testing.assert_close(got, torch.min(torch.max(moved, x - EPS), x + EPS).clamp(0, 1))


def test_n_fgsm_is_de_jorge_et_al_and_not_projected():
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("n-fgsm", net)
    g = method.ctx.generator.clone_state()
    start = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 2 * EPS).clamp(0, 1)
    x_adv = (start + EPS * _grad_sum(ref, start, y).sign()).clamp(0, 1)
    assert (x_adv - x).abs().max() > 1.5 * EPS  # outside the eps ball: no projection back
    _sgd(ref, F.cross_entropy(ref(x_adv), y))
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)
    got = n_fgsm(ref, x, y, eps=EPS, generator=torch.Generator().manual_seed(3))
    assert (got - x).abs().max() <= 3 * EPS + 1e-6 and ((got >= 0) & (got <= 1)).all()


def test_free_replays_each_batch_m_times_from_the_carried_perturbation():
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("free", net, free_replays=3)
    delta = torch.zeros_like(x)
    for _ in range(3):
        x_adv = (x + delta).clamp(0, 1).requires_grad_(True)
        _sgd(ref, F.cross_entropy(ref(x_adv), y))
        moved = x_adv.detach() + EPS * x_adv.grad.sign()
        delta = torch.min(torch.max(moved, x - EPS), x + EPS).clamp(0, 1) - x
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)
    torch.testing.assert_close(method.delta, delta)


def test_pgi_follows_the_benchmarked_code():
    # Jia et al.'s FGSM-PGI as the FastAT benchmark writes it, two steps on overlapping batches
    # so that the second starts from what the first stored (perturbation and momentum).
    net = _net()
    ref = copy.deepcopy(net)
    method = _method("pgi", net)
    g = method.ctx.generator.clone_state()
    method.start_epoch(0)
    all_delta = (torch.rand(40, 1, 8, 8, generator=g) * 2 - 1).sign() * EPS
    all_momentum = torch.zeros_like(all_delta)
    batches = ((1, torch.tensor([0, 3, 5, 7, 9, 11])), (2, torch.tensor([3, 4, 5, 6, 7, 8])))
    for seed, idx in batches:
        x, y = _batch(seed=seed)
        delta, momentum = all_delta[idx].clone(), all_momentum[idx].clone()
        adv = (x + delta).clamp(0, 1).requires_grad_(True)
        ori_output = ref(adv)
        ori_loss = F.cross_entropy(ori_output, y)
        ori_loss.backward(retain_graph=True)
        x_grad = adv.grad.detach()
        momentum = x_grad / torch.norm(x_grad, p=1) + momentum * 0.3
        next_delta = torch.clamp(delta + EPS * torch.sign(momentum), -EPS, EPS)
        next_delta = torch.clamp(next_delta, -x, 1 - x)
        delta = torch.clamp(delta + EPS * torch.sign(x_grad), -EPS, EPS)
        delta = torch.clamp(delta, -x, 1 - x)
        output = ref(x + delta)
        _sgd(ref, F.cross_entropy(output, y) + 10 * F.mse_loss(output, ori_output))
        all_momentum[idx], all_delta[idx] = momentum.detach(), next_delta.detach()
        _step(method, Batch(x, y, idx))
        _assert_same_net(net, ref)
        torch.testing.assert_close(method.memory.delta, all_delta)
        torch.testing.assert_close(method.memory.momentum, all_momentum)


def test_pgi_memory_resets_every_r_epochs_and_only_then():
    method = _method("pgi", _net(), pgi_reset=2)
    method.start_epoch(0)
    first = method.memory.delta.clone()
    assert set(first.abs().unique().tolist()) == {torch.tensor(EPS).item()}
    method.start_epoch(0)  # a resumed run calls it again: nothing changes
    method.start_epoch(1)
    assert torch.equal(method.memory.delta, first) and method.memory.resets == 1
    method.start_epoch(2)
    assert not torch.equal(method.memory.delta, first) and method.memory.resets == 2


def test_trades_follows_the_papers_code():
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("trades", net, trades_beta=6.0)
    g = method.ctx.generator.clone_state()
    # The paper's attack (its start also projected into the ball and [0, 1] here).
    ref.eval()
    p_natural = F.softmax(ref(x), dim=1).detach()
    x_adv = x + 0.001 * torch.randn(x.shape, generator=g)
    x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    for _ in range(2):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(ref(x_adv), dim=1), p_natural, reduction="sum")
        (grad,) = torch.autograd.grad(kl, [x_adv])
        x_adv = x_adv.detach() + 0.03 * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    ref.train()
    logits = ref(x)
    robust = F.kl_div(F.log_softmax(ref(x_adv), dim=1), F.softmax(logits, dim=1), reduction="sum")
    _sgd(ref, F.cross_entropy(logits, y) + 6.0 * robust / len(y))
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)


def test_trades_loss_by_hand():
    # Two classes, one example: p_natural = softmax(0, 0) = (1/2, 1/2), p_adv = softmax(ln 3, 0)
    # = (3/4, 1/4); KL(p_nat || p_adv) = 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3).
    nat, adv, y = (
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]]),
        torch.tensor([0]),
    )  # noqa: E501
    expected = torch.log(torch.tensor(2.0)) + 6.0 * 0.5 * torch.log(torch.tensor(4.0 / 3.0))
    torch.testing.assert_close(trades_loss(nat, adv, y, beta=6.0), expected)


def test_pgd_method_is_the_attack_then_the_update():
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("pgd", net)
    x_adv = reference_pgd(ref, x, y, eps=EPS, alpha=0.03, steps=2,
                          generator=method.ctx.generator.clone_state())  # fmt: skip
    _sgd(ref, F.cross_entropy(ref(x_adv), y))
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)


def test_label_smoothing_reaches_the_training_loss():
    net, (x, y) = _net(), _batch()
    ref = copy.deepcopy(net)
    method = _method("pgd", net, attack="none", label_smoothing=0.4)
    _sgd(ref, F.cross_entropy(ref(x), y, label_smoothing=0.4))
    _step(method, Batch(x, y, torch.arange(6)))
    _assert_same_net(net, ref)


# -- the memory through crops and flips -------------------------------------------------------


def test_crop_flip_paste_undoes_crop_and_matches_the_augmentation():
    x = torch.rand(5, 2, 8, 8)
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    out, crop = augment_crop_flip(x, gen, return_crop=True)
    gen.set_state(before)
    assert torch.equal(out, augment_crop_flip(x, gen))  # same draws, same images
    assert torch.equal(out, crop.crop(CropFlip.pad(x)))
    padded = torch.randn(5, 2, 16, 16)
    values = torch.randn(5, 2, 8, 8)
    pasted = padded.clone()
    crop.paste(pasted, values)
    assert torch.equal(crop.crop(pasted), values)  # one-to-one within each example
    changed = (pasted != padded).flatten(1).sum(1)
    assert (changed <= 2 * 8 * 8).all()  # only the crop's window was written


def test_pgi_memory_follows_each_image_through_its_crops():
    # With augmentation, the perturbation stored for an image pixel under one crop is the one
    # read back for the same pixel under another crop and flip.
    method = _method("pgi", _net(), augment=True)
    assert method.memory.shape == (1, 8 + 2 * CROP_PADDING, 8 + 2 * CROP_PADDING)
    method.start_epoch(0)
    x, y = _batch()
    idx = torch.arange(6)
    gen = torch.Generator().manual_seed(4)
    x1, crop1 = augment_crop_flip(x, gen, return_crop=True)
    _step(method, Batch(x1, y, idx, crop1))
    stored = method.memory.delta[idx].clone()
    # Image coordinates of every padded-frame entry: the memory keeps it where pad(x) has it.
    marker = CropFlip.pad(torch.arange(64.0).view(1, 1, 8, 8).expand(6, 1, 8, 8) + 1)
    x2, crop2 = augment_crop_flip(x, gen, return_crop=True)
    read = crop2.crop(stored)
    where = crop2.crop(marker)
    for i in range(6):
        for pixel in where[i].unique().tolist():
            if pixel == 0:
                continue  # padding
            at_frame = stored[i][marker[i] == pixel]
            assert torch.equal(read[i][where[i] == pixel], at_frame)
    # And it is what the step wrote through the first crop: x1 + delta stays in [0, 1].
    assert ((x1 + crop1.crop(stored) >= -1e-7) & (x1 + crop1.crop(stored) <= 1 + 1e-7)).all()


# -- the interface ------------------------------------------------------------------------------


def test_every_method_declares_what_the_trainer_may_do():
    assert set(METHOD_CLASSES) == {"pgd", "fgsm-rs", "n-fgsm", "free", "replay", "pgi", "trades"}
    assert [n for n, m in METHOD_CLASSES.items() if m.captures_step] == ["pgd"]
    for name, cls in METHOD_CLASSES.items():
        assert cls.name == name
        assert cls.captures_step or cls.step_blocker, name
