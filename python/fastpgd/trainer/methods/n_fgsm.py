"""``n-fgsm``: FGSM from strong noise, not projected back (de Jorge et al., "Make Some Noise:
Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022)."""

from __future__ import annotations

import torch
from torch import nn

from fastpgd.attacks.pgd import random_delta
from fastpgd.trainer.methods.base import Batch, Method, input_gradient

__all__ = ["NFGSMMethod", "n_fgsm"]


def n_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float = 1.0,
           noise: float = 2.0, generator: torch.Generator | None = None,
           amp_dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """N-FGSM adversarial examples: noise uniform in ``[-noise * eps, noise * eps]``, one signed
    step of ``step * eps`` from the noisy point, clamped to [0, 1] only: no projection back into
    the eps ball (the perturbation may reach ``(noise + step) * eps``).

    The gradient is that of the summed cross-entropy with the model in eval mode, as fastpgd's
    PGD takes it.

    Args:
        model (nn.Module): maps ``x`` to logits.
        x (Tensor[N, C, H, W]): clean images in [0, 1].
        y (Tensor[N]): int64 labels.
        eps (float): the radius the multiples refer to.
        step (float): the step in multiples of ``eps``. Default: 1 (de Jorge et al.).
        noise (float): the half-width of the noise in multiples of ``eps``. Default: 2.
        generator (torch.Generator, optional): source of the noise. Default: the global RNG.
        amp_dtype (torch.dtype, optional): autocast dtype of the gradient's forward pass.

    Returns:
        Tensor[N, C, H, W]: the adversarial batch.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model, x, y = MadryCNN(image_size=8), torch.rand(4, 1, 8, 8), torch.arange(4)
        >>> x_adv = n_fgsm(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
        >>> bool(((x_adv - x).abs() <= 0.3 + 1e-6).all()), bool(((x_adv - x).abs() > 0.1).any())
        (True, True)
    """
    start = (x + random_delta(x, noise * eps, "linf", generator)).clamp_(0.0, 1.0)
    grad = input_gradient(model, start, y, amp_dtype=amp_dtype)
    return start.add_(grad.sign_(), alpha=step * eps).clamp_(0.0, 1.0)


class NFGSMMethod(Method):
    """N-FGSM (de Jorge et al. 2022): :func:`n_fgsm` with ``fgsm_step`` and ``fgsm_noise``."""

    name = "n-fgsm"
    attacks = False  # its update is not PGD's: no attack graph to replay
    step_blocker = "n-fgsm (only the PGD step is captured whole)"

    def step(self, batch: Batch):
        ctx, c = self.ctx, self.ctx.config
        with ctx.timers("attack"):
            x_adv = n_fgsm(ctx.model, batch.x, batch.y, eps=c.eps, step=c.fgsm_step,
                           noise=c.fgsm_noise, generator=ctx.generator,
                           amp_dtype=ctx.amp_dtype)  # fmt: skip
        return ctx.train_on(x_adv, batch.y)

    def describe(self) -> str:
        c = self.ctx.config
        return (f"n-fgsm: noise uniform in {c.fgsm_noise:g} x eps, one step of "
                f"{c.fgsm_step:g} x eps, not projected")  # fmt: skip
