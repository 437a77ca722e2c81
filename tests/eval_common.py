"""What the evaluation tests share: models trained by fastpgd itself, once per test process.

The parity tests compare fastpgd's attacks with their peers on models that were really trained,
because an untrained network is fooled by any attack and cannot tell a strong one from a weak one.
Training runs once per process (per xdist worker) and is cached here.
"""

from __future__ import annotations

import functools
import io

import torch

from fastpgd import fused_pgd, train
from fastpgd.data import load_dataset


@functools.cache
def robust_digits():
    """A Madry CNN adversarially trained on the bundled 8x8 digits (PGD-7, eps 0.2; about 20 s on
    2 cores), and the first 300 test images it classifies.

    Returns:
        tuple: ``(model, x, y, eps)``: the model in eval mode, ``x`` (Tensor[300, 1, 8, 8]) in
        [0, 1], ``y`` (Tensor[300]) int64 labels, and the eps it was trained at.
    """
    result = train(dataset="digits", max_steps=150, seed=0, eval_limit=1, eval_steps=1,
                   eval_restarts=1, quiet=True, out=io.StringIO())  # fmt: skip
    model = result.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_dataset("digits", "test")[list(range(300))]
    return model, x, y, float(result.config.eps)


def predictions(model, x: torch.Tensor) -> torch.Tensor:
    """The classes ``model`` gives ``x`` (Tensor[N], int64), without a graph."""
    with torch.no_grad():
        return model(x).argmax(1)


def still_robust_after_pgd(model, x, y, eps: float, norm: str) -> torch.Tensor:
    """The indices of the points a 10-step PGD (step eps / 4, seed 0) does not fool: where
    AutoAttack's later attacks (FAB-T, Square) start, after its first one.

    Returns:
        Tensor[M]: int64 indices into ``x``.
    """
    generator = torch.Generator().manual_seed(0)
    x_adv = fused_pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm,
                      generator=generator)  # fmt: skip
    return (predictions(model, x_adv) == y).nonzero().squeeze(1)
