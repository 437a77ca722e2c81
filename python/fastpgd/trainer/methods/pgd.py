"""``pgd``: adversarial training on PGD examples (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018): ``attack_steps`` signed steps of ``alpha`` from a
random start in the eps ball. With ``attack="none"``, natural training."""

from __future__ import annotations

from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["PGDMethod"]


class PGDMethod(Method):
    """Madry et al.'s PGD adversarial training: the attack, then the update on its output.

    The only method the whole-step CUDA graph captures (``cuda_graph="step"``).
    """

    name = "pgd"
    captures_step = True

    def step(self, batch: Batch):
        ctx = self.ctx
        x = batch.x
        if ctx.config.attack != "none":
            with ctx.timers("attack"):
                x = ctx.attack(batch.x, batch.y, steps=ctx.config.attack_steps)
        return ctx.train_on(x, batch.y)
