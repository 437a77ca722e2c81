"""The interface between the trainer and a training method.

A method turns one batch into one (or, for free training, several) optimizer updates. The trainer
gives it a :class:`MethodContext` (the model, the update through the fp16 scaler, the timers, the
attack and its generator, the configuration) and calls :meth:`Method.step` with a :class:`Batch`;
the method gives back the loss and logits of the step (for the progress bar). A method with
per-example state (a memory) also gives it for checkpoints (:meth:`Method.state_dict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.attacks._common import model_mode
from fastpgd.trainer.batches import CROP_PADDING, CropFlip
from fastpgd.trainer.numerics import autocast

__all__ = ["Batch", "Method", "MethodContext", "input_gradient"]


@dataclasses.dataclass
class Batch:
    """One training batch as a method sees it.

    Attributes:
        x (Tensor[N, C, H, W]): the (augmented) images in [0, 1], on the training device.
        y (Tensor[N]): int64 labels on the device.
        idx (Tensor[N]): the examples' indices in the training set, int64 on the CPU.
        crop (CropFlip, optional): the crops and flips that made ``x`` from the padded images
            (``None`` without augmentation): a per-example memory kept in the padded frame
            reads and writes through it.
    """

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    crop: CropFlip | None = None


class MethodContext:
    """What a training method gets from the trainer.

    Args:
        model (nn.Module): the bare network (attacks run on it: through DDP they would sync
            gradients).
        net (nn.Module): what the training forward runs (the DDP wrapper, or ``model``).
        optimizer (torch.optim.Optimizer): steps the weights.
        config (TrainConfig): the resolved run configuration.
        timers (Timers): the phase timers; a method times its phases with them.
        generator (torch.Generator): the run's attack generator (random starts, noise).
        attack_fn (callable): :func:`~fastpgd.attacks.fused_pgd` or ``reference_pgd``.
        step_fn (callable): the PGD update matching ``attack_fn``
            (:func:`~fastpgd.step.pgd_step_` or :func:`~fastpgd.step.reference_pgd_step`).
        scaler (torch.amp.GradScaler, optional): the fp16 gradient scaler.
        attack_graph (bool): attacks replay captured CUDA graphs. Default: False.
        amp_dtype (torch.dtype, optional): the autocast dtype of the attack. Default: None.
        after_update (callable, optional): called after every optimizer step (the weight
            average). Default: None.
    """

    def __init__(self, *, model, net, optimizer, config, timers, generator, attack_fn, step_fn,
                 scaler=None, attack_graph=False, amp_dtype=None, after_update=None):  # fmt: skip
        self.model = model
        self.net = net
        self.optimizer = optimizer
        self.config = config
        self.timers = timers
        self.generator = generator
        self.attack_fn = attack_fn
        self.step_fn = step_fn
        self.scaler = scaler
        self.attack_graph = attack_graph
        self.amp_dtype = amp_dtype
        self.after_update = after_update
        self.device = generator.device

    @property
    def padding(self) -> int:
        """The padding of the frame a per-example memory is kept in (0 without augmentation)."""
        return CROP_PADDING if self.config.augment else 0

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: mean cross-entropy with the run's label smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward pass (train mode, autocast as configured)."""
        with autocast(self.config.amp, x.device):
            return self.net(x)

    def backward(self, loss: torch.Tensor) -> None:
        """The backward pass, through the fp16 gradient scaler when there is one."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def optimizer_step(self) -> None:
        """The optimizer step (through the fp16 gradient scaler when there is one), then the
        weight average."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.after_update is not None:
            self.after_update()

    def learn(self, loss: torch.Tensor) -> None:
        """Backward and optimizer step on ``loss``, timed as ``backward`` and ``update``."""
        with self.timers("backward"):
            self.backward(loss)
        with self.timers("update"):
            self.optimizer_step()

    def train_on(self, x: torch.Tensor, y: torch.Tensor):
        """Forward, loss, backward and optimizer step on the batch ``(x, y)``; returns
        ``(loss, logits)``."""
        with self.timers("forward"):
            logits = self.forward(x)
            loss = self.loss(logits, y)
        self.learn(loss)
        return loss, logits

    def attack(self, x, y, *, steps: int, alpha: float | None = None, delta_init=None,
               return_delta: bool = False, loss_fn=None):  # fmt: skip
        """PGD at the run's ``eps`` from ``delta_init`` (or a random start), with the run's
        generator, precision and graph mode; the step size is ``alpha`` or the run's. The
        batch comes from a validated dataset, so no value checks (they would read the device
        on the host at every step)."""
        c = self.config
        alpha = c.alpha if alpha is None else alpha
        return self.attack_fn(self.model, x, y, eps=c.eps, alpha=alpha, steps=steps,
                              generator=self.generator, delta_init=delta_init,
                              random_start=delta_init is None, return_delta=return_delta,
                              loss_fn=loss_fn, amp_dtype=self.amp_dtype,
                              cuda_graph=self.attack_graph, check_inputs=False)  # fmt: skip


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp_dtype=None):
    """The gradient of the summed cross-entropy with respect to the input, the model in eval mode
    (as fastpgd's PGD takes it), no parameter gradient touched.

    Args:
        model (nn.Module): maps ``x`` to logits.
        x (Tensor[N, ...]): the point to differentiate at.
        y (Tensor[N]): int64 labels.
        amp_dtype (torch.dtype, optional): autocast dtype. Default: None.

    Returns:
        Tensor[N, ...]: of ``x``'s dtype and shape.
    """
    inp = x.detach().requires_grad_(True)
    cast = contextlib.nullcontext()
    if amp_dtype is not None:
        cast = torch.autocast(x.device.type, dtype=amp_dtype)
    with model_mode(model, "eval"), torch.enable_grad():
        with cast:
            loss = F.cross_entropy(model(inp), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inp)
    return grad.to(x.dtype)


class Method:
    """One way of training a batch; subclasses live one per module in this package.

    Class attributes say what the trainer may do around it: ``captures_step`` (the whole step
    can be one CUDA graph, :class:`~fastpgd.trainer.captured_step.CapturedTrainStep`),
    ``attacks`` (it calls :meth:`MethodContext.attack`, so ``cuda_graph`` ``"attack"``
    applies), ``single_process`` (its state is per example or per batch and is not sharded
    over ranks), ``step_blocker`` (what the whole-step graph cannot capture, for the note at
    start).

    Args:
        ctx (MethodContext): what it needs from the trainer.
        size (int): training examples (the keys of a per-example memory).
        image_shape (tuple of int): ``(C, H, W)`` of one image.
    """

    name: ClassVar[str] = ""
    captures_step: ClassVar[bool] = False
    attacks: ClassVar[bool] = True
    single_process: ClassVar[bool] = False
    step_blocker: ClassVar[str] = ""

    def __init__(self, ctx: MethodContext, size: int, image_shape: tuple):
        self.ctx = ctx
        self.size = size
        self.image_shape = tuple(image_shape)

    def frame_shape(self) -> tuple:
        """``(C, H, W)`` of the frame a per-example memory keeps: the padded image when the run
        augments (so that the memory follows every crop and flip), else the image."""
        c, h, w = self.image_shape
        p = self.ctx.padding
        return (c, h + 2 * p, w + 2 * p)

    def passes(self, epochs: int) -> int:
        """Passes over the data that ``epochs`` epochs of this method take."""
        return epochs

    def start_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based), also after a resume; idempotent for
        a given epoch."""

    def step(self, batch: Batch):
        """Train on one batch; returns ``(loss, logits)`` of the (last) update."""
        raise NotImplementedError

    def describe(self) -> str | None:
        """A line for the start of the run (the method's settings and memory), or ``None``."""
        return None

    def state_dict(self) -> dict | None:
        """The method's state for a checkpoint (CPU tensors, plain values), or ``None``."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: the state does not belong to this method.
        """
        if state is not None:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint has some")
