"""``fgsm-rs``: FGSM from a random start (Wong, Rice and Kolter, "Fast is better than free:
Revisiting adversarial training", ICLR 2020)."""

from __future__ import annotations

import torch
from torch import nn

from fastpgd.attacks.pgd import fused_pgd, random_delta
from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["FGSMRSMethod", "fgsm_rs"]


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            step: float = 1.25, noise: float = 1.0, generator: torch.Generator | None = None,
            attack_fn=fused_pgd, **attack_kwargs) -> torch.Tensor:  # fmt: skip
    """FGSM-RS adversarial examples: a uniform start in the eps box, one signed step of
    ``step * eps``, projected back into the eps ball and clamped to [0, 1].

    Wong et al. (ICLR 2020) take ``step = 1.25`` and ``noise = 1``; ``noise = 0`` is plain FGSM
    from the clean point (Goodfellow et al.), the setting that overfits catastrophically. It is
    one step of fastpgd's PGD from the given start, so the fused kernel (and a captured graph)
    computes it.

    Args:
        model (nn.Module): maps ``x`` to logits.
        x (Tensor[N, C, H, W]): clean images in [0, 1].
        y (Tensor[N]): int64 labels.
        eps (float): Linf radius.
        step (float): the step in multiples of ``eps``. Default: 1.25.
        noise (float): the start is uniform in ``[-noise * eps, noise * eps]`` per element,
            then projected into the eps ball and [0, 1]. Default: 1.
        generator (torch.Generator, optional): source of the start. Default: the global RNG.
        attack_fn (callable): :func:`~fastpgd.attacks.fused_pgd` or ``reference_pgd``.
        **attack_kwargs: passed on (``amp_dtype``, ``cuda_graph``, ``check_inputs``, ...).

    Returns:
        Tensor[N, C, H, W]: the adversarial batch.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model, x, y = MadryCNN(image_size=8), torch.rand(4, 1, 8, 8), torch.arange(4)
        >>> x_adv = fgsm_rs(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    start = random_delta(x, noise * eps, "linf", generator)
    return attack_fn(model, x, y, eps=eps, alpha=step * eps, steps=1, delta_init=start,
                     random_start=False, generator=generator, **attack_kwargs)  # fmt: skip


class FGSMRSMethod(Method):
    """FGSM-RS (Wong et al. 2020): :func:`fgsm_rs` with ``fgsm_step`` and ``fgsm_noise``."""

    name = "fgsm-rs"
    step_blocker = "fgsm-rs (only the PGD step is captured whole)"

    def step(self, batch: Batch):
        ctx, c = self.ctx, self.ctx.config
        with ctx.timers("attack"):
            start = random_delta(batch.x, c.fgsm_noise * c.eps, "linf", ctx.generator)
            x_adv = ctx.attack(batch.x, batch.y, steps=1, alpha=c.fgsm_step * c.eps,
                               delta_init=start)  # fmt: skip
        return ctx.train_on(x_adv, batch.y)

    def describe(self) -> str:
        c = self.ctx.config
        return (f"fgsm-rs: uniform start in {c.fgsm_noise:g} x eps, one step of "
                f"{c.fgsm_step:g} x eps, projected")  # fmt: skip
