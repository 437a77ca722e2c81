"""``pgi``: FGSM with prior-guided initialisation (FGSM-PGI; Jia et al., "Prior-Guided
Adversarial Initialization for Fast Adversarial Training", ECCV 2022), as the FastAT benchmark
runs it.

Each training example keeps a perturbation and a momentum from its last visit (the prior). A
step:

1. the prior point ``x + delta`` is forwarded in train mode; the gradient ``g`` of its loss with
   respect to the input gives the momentum ``m = g / ||g||_1 + mu * m`` (the L1 norm over the
   whole batch, as the benchmarked code takes it);
2. the training point takes a full step from the prior: ``delta + s * eps * sign(g)``, clipped to
   the eps box and to [0, 1]; the next visit's prior takes it along the momentum instead:
   ``delta + s * eps * sign(m)``;
3. the loss is the cross-entropy at the training point plus ``lambda`` times the mean squared
   distance between its logits and the prior point's (gradients through both);
4. every ``pgi_reset`` epochs the priors are drawn anew: each element ``+-eps`` with
   probability 1/2, the momentum zero.

With augmentation the memory keeps the padded frame (see
:class:`~fastpgd.trainer.batches.CropFlip`), so each stored perturbation follows its image
through every crop and flip, exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpgd.attacks._common import check_count
from fastpgd.trainer.methods.base import Batch, Method

__all__ = ["PGIMemory", "PGIMethod", "pgi_examples", "pgi_regulariser"]

_STATE_KEYS = ("delta", "momentum", "epoch", "resets")


def pgi_examples(prior_logits: torch.Tensor, prior_loss: torch.Tensor, x_prior: torch.Tensor,
                 x: torch.Tensor, delta: torch.Tensor, momentum: torch.Tensor, *, eps: float,
                 step: float = 1.0, decay: float = 0.3):  # fmt: skip
    """The PGI update from a prior point whose forward pass has run.

    Args:
        prior_logits (Tensor[N, K]): the model's logits at ``x_prior`` (kept for the
            regulariser; its graph is retained).
        prior_loss (Tensor[]): the training loss at ``x_prior``.
        x_prior (Tensor[N, C, H, W]): ``clamp(x + delta, 0, 1)``, a leaf that requires grad.
        x (Tensor[N, C, H, W]): the clean batch.
        delta (Tensor[N, C, H, W]): the stored perturbation.
        momentum (Tensor[N, C, H, W]): the stored momentum.
        eps (float): Linf radius.
        step (float): the step in multiples of ``eps``. Default: 1.
        decay (float): the momentum's decay ``mu``. Default: 0.3.

    Returns:
        tuple: ``(x_adv, next_delta, next_momentum)``: the training point, and what the memory
        keeps for the next visit.

    Examples::

        >>> from fastpgd.models import MadryCNN
        >>> net, x, y = MadryCNN(image_size=8), torch.rand(4, 1, 8, 8), torch.arange(4)
        >>> delta, momentum = torch.full_like(x, 0.1), torch.zeros_like(x)
        >>> x_prior = (x + delta).clamp(0, 1).requires_grad_(True)
        >>> logits = net(x_prior)
        >>> loss = F.cross_entropy(logits, y)
        >>> x_adv, nxt, mom = pgi_examples(logits, loss, x_prior, x, delta, momentum, eps=0.1)
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    (grad,) = torch.autograd.grad(prior_loss, x_prior, retain_graph=True)
    grad = grad.detach()
    momentum = grad / grad.abs().sum() + momentum * decay
    lo, hi = -x, 1.0 - x
    a = step * eps
    next_delta = (delta + a * momentum.sign()).clamp_(-eps, eps)
    next_delta = torch.clamp(next_delta, lo, hi)
    new = (delta + a * grad.sign()).clamp_(-eps, eps)
    new = torch.clamp(new, lo, hi)
    return (x + new).detach(), next_delta.detach(), momentum


def pgi_regulariser(logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """The logit regulariser of FGSM-PGI: the mean squared distance between the logits at the
    training point and at the prior point, in float32."""
    return F.mse_loss(logits.float(), prior_logits.float())


class PGIMemory:
    """Per-example perturbation and momentum, gathered and scattered a batch at a time.

    Args:
        size (int): training examples (indices ``0 .. size - 1``).
        shape (tuple of int): shape of one entry (the padded frame when augmenting).
        eps (float): Linf radius of the drawn priors.
        device (torch.device): where the entries live.
        reset_every (int): draw new priors at every epoch that is a multiple of this (0: only
            at epoch 0).

    Examples::

        >>> mem = PGIMemory(10, (1, 4, 4), eps=0.1, device="cpu", reset_every=0)
        >>> mem.start_epoch(0, torch.Generator().manual_seed(0))
        True
        >>> delta, momentum = mem.gather(torch.tensor([2, 5]))
        >>> sorted(set(delta.abs().flatten().tolist())) == [0.1], bool((momentum == 0).all())
        (True, True)
    """

    def __init__(self, size: int, shape, *, eps: float, device, reset_every: int):
        self.size = size
        self.shape = tuple(shape)
        self.eps = float(eps)
        self.reset_every = reset_every
        self.delta = torch.zeros((size, *self.shape), device=device)
        self.momentum = torch.zeros_like(self.delta)
        self.epoch: int | None = None
        self.resets = 0

    @property
    def nbytes(self) -> int:
        return 2 * self.delta.numel() * self.delta.element_size()

    def reset(self, generator: torch.Generator) -> None:
        """New priors: each element ``+-eps`` with probability 1/2; zero momentum."""
        u = torch.rand(self.delta.shape, generator=generator, device=self.delta.device)
        self.delta.copy_((u * 2 - 1).sign_().mul_(self.eps))
        self.momentum.zero_()
        self.resets += 1

    def start_epoch(self, epoch: int, generator: torch.Generator) -> bool:
        """Draw new priors at epoch 0 and every ``reset_every`` epochs; idempotent for a given
        epoch (a run resumed mid-epoch keeps what its checkpoint restored). Returns whether it
        drew."""
        if epoch == self.epoch:
            return False
        self.epoch = epoch
        if epoch == 0 or (self.reset_every and epoch % self.reset_every == 0):
            self.reset(generator)
            return True
        return False

    def gather(self, idx: torch.Tensor):
        """``(delta, momentum)`` of the examples ``idx`` (CPU or device int64)."""
        idx = idx.to(self.delta.device, non_blocking=True)
        return self.delta.index_select(0, idx), self.momentum.index_select(0, idx)

    def scatter(self, idx: torch.Tensor, delta: torch.Tensor, momentum: torch.Tensor) -> None:
        """Store the entries of the (distinct) examples ``idx``."""
        idx = idx.to(self.delta.device, non_blocking=True)
        self.delta.index_copy_(0, idx, delta)
        self.momentum.index_copy_(0, idx, momentum)

    def state_dict(self) -> dict:
        return {"delta": self.delta.cpu().clone(), "momentum": self.momentum.cpu().clone(),
                "epoch": self.epoch, "resets": self.resets}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; everything is checked before anything changes.

        Raises:
            ValueError: keys are missing or the entries have another shape or dtype.
        """
        if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
            raise ValueError(f"a PGI memory state needs the keys {list(_STATE_KEYS)}")
        for key in ("delta", "momentum"):
            t = state[key]
            if not isinstance(t, torch.Tensor) or t.shape != self.delta.shape or (
                t.dtype != self.delta.dtype
            ):  # fmt: skip
                raise ValueError(f"state['{key}'] must be a {self.delta.dtype} tensor of shape "
                                 f"{tuple(self.delta.shape)}")  # fmt: skip
        if state["epoch"] is not None:
            check_count("state['epoch']", state["epoch"], 0)
        check_count("state['resets']", state["resets"], 0)
        self.delta.copy_(state["delta"])
        self.momentum.copy_(state["momentum"])
        self.epoch = state["epoch"]
        self.resets = state["resets"]


class PGIMethod(Method):
    """FGSM-PGI (Jia et al. 2022): full-eps steps from a per-example prior with momentum, and
    the logit regulariser between the prior point and the training point."""

    name = "pgi"
    attacks = False  # the attack's gradient is a by-product of the prior's training forward
    single_process = True
    step_blocker = "the PGI memory (--method pgi)"

    def __init__(self, ctx, size, image_shape):
        super().__init__(ctx, size, image_shape)
        c = ctx.config
        self.memory = PGIMemory(size, self.frame_shape(), eps=c.eps, device=ctx.device,
                                reset_every=c.pgi_reset)  # fmt: skip

    def start_epoch(self, epoch: int) -> None:
        self.memory.start_epoch(epoch, self.ctx.generator)

    def step(self, batch: Batch):
        ctx, c = self.ctx, self.ctx.config
        x, y, crop = batch.x, batch.y, batch.crop
        with ctx.timers("memory_gather"):
            stored = self.memory.gather(batch.idx)
            delta, momentum = stored if crop is None else (crop.crop(t) for t in stored)
        with ctx.timers("attack"):
            x_prior = (x + delta).clamp_(0.0, 1.0).requires_grad_(True)
            prior_logits = ctx.forward(x_prior)
            prior_loss = ctx.loss(prior_logits, y)
            x_adv, next_delta, momentum = pgi_examples(
                prior_logits, prior_loss, x_prior, x, delta, momentum, eps=c.eps,
                step=c.fgsm_step, decay=c.pgi_momentum,
            )  # fmt: skip
        with ctx.timers("forward"):
            logits = ctx.forward(x_adv)
            loss = ctx.loss(logits, y) + c.pgi_lambda * pgi_regulariser(logits, prior_logits)
        ctx.learn(loss)
        with ctx.timers("memory_scatter"):
            if crop is not None:
                # Into the padded frame; what lies outside this crop keeps its value.
                crop.paste(stored[0], next_delta)
                crop.paste(stored[1], momentum)
                next_delta, momentum = stored
            self.memory.scatter(batch.idx, next_delta, momentum)
        return loss, logits

    def describe(self) -> str:
        m, c = self.memory, self.ctx.config
        reset = f"new priors every {c.pgi_reset} epochs" if c.pgi_reset else "priors drawn once"
        return (f"pgi memory: {m.size} x {list(m.shape)} perturbation + momentum on "
                f"{m.delta.device} = {m.nbytes:,} bytes; step {c.fgsm_step:g} x eps, momentum "
                f"{c.pgi_momentum:g}, lambda {c.pgi_lambda:g}, {reset}")  # fmt: skip

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if not isinstance(state, dict) or "memory" not in state:
            raise ValueError("the checkpoint has no PGI memory ('memory')")
        self.memory.load_state_dict(state["memory"])
