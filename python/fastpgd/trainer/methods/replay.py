"""``replay``: PGD warm-started from a per-example replay memory (the accumulated perturbations of
Zheng et al., "Efficient Adversarial Training with Transferable Adversarial Examples", CVPR 2020).

A :class:`~fastpgd.replay.ReplayMemory` keeps each training example's last perturbation; the next
epoch's attack on that example starts from it and takes only ``replay_steps`` steps. A batch with
entries never written (the first epoch, or the first after a ``replay_reset`` epoch) gets the
full attack from a random start. With augmentation the memory keeps the padded frame, so a stored
perturbation follows its image through every crop and flip.
"""

from __future__ import annotations

import torch

from fastpgd.attacks.pgd import per_sample_view, random_delta
from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["ReplayMethod"]


class ReplayMethod(Method):
    """PGD from the stored perturbation: ``replay_steps`` steps warm, ``attack_steps`` fresh."""

    name = "replay"
    single_process = True
    step_blocker = "the replay memory's warm starts (--method replay)"

    def __init__(self, ctx, size, image_shape):
        super().__init__(ctx, size, image_shape)
        from fastpgd.replay import ReplayMemory

        c = ctx.config
        self.memory = ReplayMemory(size, self.frame_shape(), eps=c.eps, dtype=c.replay_dtype,
                                   device=ctx.device, reset_every=c.replay_reset)  # fmt: skip

    def start_epoch(self, epoch: int) -> None:
        self.memory.start_epoch(epoch)

    def step(self, batch: Batch):
        ctx, c, memory = self.ctx, self.ctx.config, self.memory
        x, y, idx = batch.x, batch.y, batch.idx
        with ctx.timers("memory_gather"):
            fresh = memory.fresh(idx)  # host flags: no device sync
            n_fresh = int(fresh.sum())
            stored = None
            if n_fresh == len(idx):
                # Nothing stored yet (first epoch, or just reset): the full attack, random start.
                delta_init, steps = None, c.attack_steps
            else:
                stored = memory.gather(idx)
                delta_init = stored if batch.crop is None else batch.crop.crop(stored)
                steps = c.replay_steps
                if n_fresh:
                    # Some entries were never written: random starts for them, the full attack.
                    start = random_delta(x, c.eps, "linf", ctx.generator)
                    mask = per_sample_view(fresh.to(ctx.device, non_blocking=True), x)
                    delta_init = torch.where(mask, start, delta_init)
                    steps = c.attack_steps
        with ctx.timers("attack"):
            x_adv, delta = ctx.attack(x, y, steps=steps, delta_init=delta_init,
                                      return_delta=True)  # fmt: skip
        with ctx.timers("memory_scatter"):
            if batch.crop is not None:
                # Written into the padded frame; what lies outside this crop keeps its value.
                if stored is None:
                    stored = x.new_zeros((len(idx), *memory.shape))
                batch.crop.paste(stored, delta)
                delta = stored
            memory.scatter(idx, delta)
        return ctx.train_on(x_adv, y)

    def describe(self) -> str:
        m, c = self.memory, self.ctx.config
        reset = f"reset every {c.replay_reset} epochs" if c.replay_reset else "never reset"
        return (f"replay memory: {m.size} x {list(m.shape)} {m.storage_dtype} on "
                f"{m.data.device} = {m.nbytes:,} bytes; {c.replay_steps} attack steps from a "
                f"warm start, {reset}")  # fmt: skip

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if not isinstance(state, dict) or "memory" not in state:
            raise ValueError("the checkpoint has no replay memory ('memory')")
        self.memory.load_state_dict(state["memory"])
