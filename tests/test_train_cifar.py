"""CIFAR training end to end on the CPU, on files the tests write in the official format: the
recipe's defaults, a few steps of PreAct ResNet-18, exact resume with augmentation and the
replay memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fastpgd.trainer import TrainConfig, Trainer, train
from test_cifar import write_archive, write_folder

# Tiny: batches of 8 from 4+5+6+7+8 = 30 training images; one attack step.
TINY = dict(dataset="cifar10", batch_size=8, attack_steps=1, eval_steps=1, eval_restarts=1,
            eval_limit=4, quiet=True, deterministic=True)  # fmt: skip


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_folder(root, "cifar10", np.random.default_rng(0))
    return root


def test_cifar_defaults_follow_the_published_recipe():
    c = TrainConfig(dataset="cifar10", data_dir="x").resolved()
    assert (c.model, c.optimizer, c.momentum, c.weight_decay, c.lr, c.lr_schedule) == (
        "preact-resnet18", "sgd", 0.9, 5e-4, 0.1, "piecewise")  # fmt: skip
    assert (c.batch_size, c.eps, c.alpha, c.attack_steps, c.eval_steps) == (
        128, 8 / 255, 2 / 255, 10, 20)  # fmt: skip
    assert c.augment and c.image_size == 32 and c.epochs == 200
    assert TrainConfig(dataset="cifar100", data_dir="x").resolved().model == "preact-resnet18"


def test_a_few_steps_of_preact_resnet18(cifar_dir):
    out = io.StringIO()
    result = train(TrainConfig(**TINY, data_dir=str(cifar_dir), max_steps=2), out=out)
    text = out.getvalue()
    assert result.steps == 2 and type(result.model).__name__ == "PreActResNet18"
    assert (
        "cifar10 test split at eps 0.03137 (8/255) (PGD 1 steps of 0.007843 (2/255)" in text
        and "PGD" in text
    )
    for phase in ("data", "attack", "forward", "backward", "update"):
        assert len(result.timers.laps(phase)) == 2, phase
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_the_archive_trains_too(cifar_dir, tmp_path):
    archive = write_archive(cifar_dir, "cifar10", tmp_path / "cifar-10-python.tar.gz")
    result = train(TrainConfig(**TINY, data_dir=str(archive), max_steps=1), out=io.StringIO())
    assert result.steps == 1


@pytest.mark.parametrize("extra", [{}, {"replay": True}], ids=["plain", "replay"])
def test_resume_is_exact_with_augmentation(cifar_dir, tmp_path, extra):
    kwargs = dict(TINY, data_dir=str(cifar_dir), epochs=2, **extra)
    straight = Trainer(TrainConfig(**kwargs, max_steps=3), out=io.StringIO())
    straight.fit(evaluate=False)
    ckpt = tmp_path / "c.pt"
    Trainer(TrainConfig(**kwargs, max_steps=2, checkpoint=str(ckpt)),
            out=io.StringIO()).fit(evaluate=False)  # fmt: skip
    resumed = Trainer(TrainConfig(**kwargs, max_steps=3, checkpoint=str(ckpt), resume=True),
                      out=io.StringIO())  # fmt: skip
    resumed.fit(evaluate=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)  # weights and batch-norm statistics


def test_cifar_models_refuse_other_image_sizes():
    with pytest.raises(ValueError, match="model 'preact-resnet18' takes 3x32x32"):
        Trainer(TrainConfig(dataset="synthetic", image_size=8, model="preact-resnet18",
                            quiet=True))  # fmt: skip
