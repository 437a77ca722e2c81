"""``trades``: TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and
Accuracy", ICML 2019).

The loss is the cross-entropy on the clean batch plus ``beta`` times the KL divergence from the
model's clean prediction to its prediction at the adversarial point; the attack maximises that
KL divergence (PGD on the KL, from a small Gaussian start of standard deviation 0.001, with the
model in eval mode, as the paper's code does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.attacks.pgd import fused_pgd
from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["TRADESMethod", "trades_attack", "trades_loss"]

START_STD = 0.001  # the paper's code: x + 0.001 * randn


def _kl_sum(logits: torch.Tensor, p_natural: torch.Tensor) -> torch.Tensor:
    # KL(p_natural || softmax(logits)), summed over the batch: the paper's attack objective.
    return F.kl_div(F.log_softmax(logits.float(), dim=1), p_natural, reduction="sum")


def trades_attack(model: nn.Module, x: torch.Tensor, *, eps: float, alpha: float, steps: int,
                  generator: torch.Generator | None = None, attack_fn=fused_pgd,
                  amp_dtype: torch.dtype | None = None,
                  **attack_kwargs) -> torch.Tensor:  # fmt: skip
    """TRADES's adversarial examples: PGD maximising ``KL(p(x) || p(x_adv))``.

    ``p(x)`` is the softmax of the model's clean logits in eval mode; the start is
    ``x + 0.001 * N(0, 1)`` (projected into the eps ball and [0, 1]); each step moves by
    ``alpha`` along the sign of the KL's gradient and projects, with fastpgd's PGD step.

    Args:
        model (nn.Module): maps ``x`` to logits.
        x (Tensor[N, C, H, W]): clean images in [0, 1].
        eps (float): Linf radius.
        alpha (float): step size.
        steps (int): PGD steps (the paper: 10 on CIFAR-10, 40 on MNIST).
        generator (torch.Generator, optional): source of the start. Default: the global RNG.
        attack_fn (callable): :func:`~fastpgd.attacks.fused_pgd` or ``reference_pgd``.
        amp_dtype (torch.dtype, optional): autocast dtype.
        **attack_kwargs: passed on (``cuda_graph``, ``check_inputs``).

    Returns:
        Tensor[N, C, H, W]: the adversarial batch.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> model, x = MadryCNN(image_size=8), torch.rand(4, 1, 8, 8)
        >>> x_adv = trades_attack(model, x, eps=0.1, alpha=0.02, steps=3,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    from fastpgd.attacks._common import model_mode

    with torch.no_grad(), model_mode(model, "eval"):
        if amp_dtype is not None:
            with torch.autocast(x.device.type, dtype=amp_dtype):
                logits = model(x)
        else:
            logits = model(x)
        p_natural = F.softmax(logits.float(), dim=1)
    start = torch.randn(x.shape, generator=generator, device=x.device).mul_(START_STD)
    return attack_fn(model, x, p_natural, eps=eps, alpha=alpha, steps=steps, loss_fn=_kl_sum,
                     delta_init=start.to(x.dtype), random_start=False, generator=generator,
                     amp_dtype=amp_dtype, **attack_kwargs)  # fmt: skip


def trades_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, *,
                beta: float = 6.0, label_smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """The TRADES objective: ``CE(logits_natural, y) + beta * KL(p_natural || p_adv)``, the KL
    averaged over the batch, gradients through both logits.

    Args:
        logits_natural (Tensor[N, K]): the model's logits on the clean batch.
        logits_adv (Tensor[N, K]): its logits on the adversarial batch.
        y (Tensor[N]): int64 labels.
        beta (float): weight of the KL term. Default: 6.
        label_smoothing (float): of the cross-entropy. Default: 0.

    Returns:
        Tensor[]: the loss.

    Examples::

        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> float(trades_loss(logits, logits, torch.tensor([0]))) == float(
        ...     F.cross_entropy(logits, torch.tensor([0])))
        True
    """
    natural = F.cross_entropy(logits_natural, y, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(logits_adv.float(), dim=1),
                      F.softmax(logits_natural.float(), dim=1), reduction="batchmean")  # fmt: skip
    return natural + beta * robust


class TRADESMethod(Method):
    """TRADES (Zhang et al. 2019): :func:`trades_attack` with ``attack_steps`` steps of
    ``alpha``, then :func:`trades_loss` with ``trades_beta``."""

    name = "trades"
    single_process = True  # two forward passes before one backward: not through DDP for now
    step_blocker = "trades (only the PGD step is captured whole)"

    def step(self, batch: Batch):
        ctx, c = self.ctx, self.ctx.config
        with ctx.timers("attack"):
            x_adv = trades_attack(ctx.model, batch.x, eps=c.eps, alpha=c.alpha,
                                  steps=c.attack_steps, generator=ctx.generator,
                                  attack_fn=ctx.attack_fn, amp_dtype=ctx.amp_dtype,
                                  cuda_graph=ctx.attack_graph, check_inputs=False)  # fmt: skip
        with ctx.timers("forward"):
            logits_natural = ctx.forward(batch.x)
            logits_adv = ctx.forward(x_adv)
            loss = trades_loss(logits_natural, logits_adv, batch.y, beta=c.trades_beta,
                               label_smoothing=c.label_smoothing)  # fmt: skip
        ctx.learn(loss)
        return loss, logits_adv

    def describe(self) -> str:
        c = self.ctx.config
        return (f"trades: beta {c.trades_beta:g}, the attack maximises the KL with "
                f"{c.attack_steps} steps of {c.alpha:g}")  # fmt: skip
