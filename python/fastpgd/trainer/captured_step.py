"""The whole training step (attack, forward, backward, optimizer step) as one CUDA graph per batch
shape.

At batch 50 on a Madry CNN the step is latency-bound: a PGD-40 step launches about two thousand
small kernels, and replaying them from a graph removes the launch cost. A captured step owns
static buffers (the clean batch, its labels, the random start); each batch is copied in, the graph
replayed, and the loss and logits read from static outputs. It computes what the eager step
computes:

- the random start is drawn eagerly, from the run's attack generator, before each replay (a few
  kernels); the graph then projects it and runs the attack exactly as ``fused_pgd`` does;
- capturing needs a few warm-up steps (lazy initialisation, cuDNN's choice of algorithms, the
  optimizer's state): :class:`~fastpgd.cuda_graph.CudaGraph` runs them on the first batch of each
  shape and then undoes them (weights, buffers and optimizer state copied back; an optimizer
  state that did not exist is zeroed, which is what a first step starts from), so the run's
  sequence of weights is unchanged;
- the learning rate is baked into the captured optimizer step: when a schedule changes it, the
  graphs are dropped and captured again (twice per run for the piecewise schedule), into a new
  memory pool, since no graph holds the old one any more.

The graphs of a run (the full batch and the last, smaller batch of an epoch) share one memory
pool. That is safe because they never replay at the same time: the trainer replays one step at a
time, on one stream, and each replay writes every pool block it reads before reading it (its
scratch memory, its gradients); only the static inputs and outputs, allocated outside the pool,
carry values from one replay to the next.

What it gives up: the phases inside the graph (attack, forward, backward, update) cannot be timed
apart; the step is timed as one phase, ``captured``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpgd.attacks.pgd import random_delta
from fastpgd.cuda_graph import CudaGraph, CudaRuntime, GraphPool
from fastpgd.trainer.numerics import autocast

__all__ = ["CapturedTrainStep", "CudaGraph"]

WARMUP_STEPS = 3


class _Graph:
    """One captured step for one batch shape, with its static inputs and outputs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x0 = x.clone()
        self.y = y.clone()
        self.delta = torch.zeros_like(x)
        self.loss = None
        self.logits = None
        self.graph = None


class CapturedTrainStep:
    """Replays the training step of ``trainer`` from a CUDA graph, one per batch shape.

    The graphs read the model's parameters and buffers and the optimizer's state where they were
    at the capture: whatever replaces those tensors must call :meth:`reset` (loading a
    checkpoint does), and :meth:`drop_if_changed` (called by each ``fit()``) notices a change made
    between runs.

    Args:
        trainer (Trainer): its model, optimizer (capturable), config, attack and generator.
        runtime (CudaRuntime, optional): where the CUDA calls go (a recording stand-in on the
            CPU in tests). Default: :data:`fastpgd.cuda_graph.CUDA`.
    """

    def __init__(self, trainer, runtime: CudaRuntime | None = None):
        self.trainer = trainer
        self.runtime = runtime
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = GraphPool()
        self.lrs: tuple | None = None
        self.captured_with: tuple | None = None
        self.captures = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """One training step on the batch ``(x, y)``.

        Returns:
            (Tensor[], Tensor[N, K]): the loss and the logits, as the graph's static outputs:
            the same two tensors at every step of a batch shape, overwritten by the next replay.
            Read them (or ``clone()`` them) before the next step.
        """
        t = self.trainer
        lrs = tuple(group["lr"] for group in t.optimizer.param_groups)
        if lrs != self.lrs:
            self.reset()
            self.lrs = lrs
        key = (tuple(x.shape), x.dtype, tuple(y.shape))
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(x, y)
        g.x0.copy_(x)
        g.y.copy_(y)
        if t.config.attack != "none":
            c = t.config
            g.delta.copy_(random_delta(g.x0, c.eps, "linf", t.attack_gen))
        g.graph.replay()
        return g.loss, g.logits

    def reset(self) -> None:
        """Drop every captured graph now; the next step captures again."""
        for g in self.graphs.values():
            g.graph.release()
        self.graphs.clear()
        self.captured_with = None

    def drop_if_changed(self) -> bool:
        """Drop the graphs if what they read has moved or what they baked in has changed since
        they were captured (another optimizer, model or state tensors, other settings); returns
        whether they were dropped."""
        if self.graphs and self._inputs() != self.captured_with:
            self.reset()
            return True
        return False

    def _inputs(self) -> tuple:
        """What the graphs read in place or baked in: the tensors' addresses, the settings."""
        t = self.trainer
        c = t.config
        tensors = [*t.model.parameters(), *t.model.buffers()]
        tensors += [
            v for s in t.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ]
        return (
            id(t.model),
            id(t.optimizer),
            tuple((v.data_ptr(), v.dtype) for v in tensors),
            (c.attack, c.eps, c.alpha, c.attack_steps, c.amp, t.attack_fn, t.amp_dtype),
        )

    def _body(self, g: _Graph) -> None:
        t = self.trainer
        c = t.config
        t.optimizer.zero_grad(set_to_none=True)
        x_adv = g.x0
        if c.attack != "none":
            x_adv = t.attack_fn(t.model, g.x0, g.y, eps=c.eps, alpha=c.alpha,
                                steps=c.attack_steps, random_start=False, delta_init=g.delta,
                                amp_dtype=t.amp_dtype, check_inputs=False)  # fmt: skip
        with autocast(c.amp, x_adv.device):
            logits = t.model(x_adv)
            loss = F.cross_entropy(logits, g.y, label_smoothing=c.label_smoothing)
        loss.backward()
        t.optimizer.step()
        if g.loss is None:
            g.loss = torch.empty_like(loss)
            g.logits = torch.empty_like(logits)
        g.loss.copy_(loss.detach())
        g.logits.copy_(logits.detach())

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> _Graph:
        t = self.trainer
        g = _Graph(x, y)
        g.graph = CudaGraph(x.device, WARMUP_STEPS, pool=self.pool,
                            preserve=[t.model, t.optimizer], runtime=self.runtime)  # fmt: skip
        g.graph.capture(lambda: self._body(g))
        self.captured_with = self._inputs()
        self.captures += 1
        return g
