"""``free``: "free" adversarial training (Shafahi et al., "Adversarial Training for Free!",
NeurIPS 2019).

Each batch is trained ``m = free_replays`` times in a row; the input gradient of each backward
pass (which also updates the weights) moves the perturbation by one signed step of ``eps``. One
perturbation buffer of batch shape carries over from batch to batch, as in the paper. The number
of passes over the data is ``ceil(epochs / m)``, so the number of weight updates stays about
that of ``epochs`` epochs; ``steps`` then counts batches, each ``m`` optimizer updates.
"""

from __future__ import annotations

import math

import torch

from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["FreeMethod"]


class FreeMethod(Method):
    """Free adversarial training: ``free_replays`` updates per batch, the perturbation a
    by-product of each update's backward pass."""

    name = "free"
    attacks = False  # no attack call of its own: the perturbation comes from training backward
    single_process = True
    step_blocker = "free training (--method free)"

    def __init__(self, ctx, size, image_shape):
        super().__init__(ctx, size, image_shape)
        self.delta = torch.zeros((ctx.config.batch_size, *self.image_shape), device=ctx.device)

    def passes(self, epochs: int) -> int:
        # Each batch is passed over free_replays times: fewer epochs, as many updates.
        return math.ceil(epochs / self.ctx.config.free_replays)

    def step(self, batch: Batch):
        ctx, c = self.ctx, self.ctx.config
        x, y = batch.x, batch.y
        delta = self.delta[: x.shape[0]]  # the last batch of an epoch may be smaller
        x0 = x.contiguous()  # the step's x0; x itself is channels_last under --channels-last
        for _ in range(c.free_replays):
            with ctx.timers("forward"):
                ctx.optimizer.zero_grad(set_to_none=True)
                x_adv = (x + delta).clamp_(0.0, 1.0).requires_grad_(True)
                logits = ctx.forward(x_adv)
                loss = ctx.loss(logits, y)
            ctx.learn(loss)
            with ctx.timers("attack"):
                grad = x_adv.grad.contiguous()  # a channels_last model's is not
                # alpha = eps: the paper's step for free training (FGSM-size on each replay).
                moved = ctx.step_fn(x_adv.detach().contiguous(), grad, x0, eps=c.eps,
                                    alpha=c.eps, norm="linf", clamp=(0.0, 1.0))  # fmt: skip
                torch.sub(moved, x, out=delta)
        return loss, logits

    def describe(self) -> str:
        c = self.ctx.config
        passes = self.passes(c.epochs)
        nbytes = self.delta.numel() * self.delta.element_size()
        return (f"free adversarial training: each batch {c.free_replays} times, {passes} "
                f"passes; perturbation buffer {nbytes:,} bytes")  # fmt: skip

    def state_dict(self) -> dict:
        return {"delta": self.delta.cpu()}

    def load_state_dict(self, state: dict | None) -> None:
        if not isinstance(state, dict) or "delta" not in state:
            raise ValueError("the checkpoint has no free-training perturbation ('delta')")
        self.delta.copy_(state["delta"])
