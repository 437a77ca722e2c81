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
  optimizer's state): they run on the first batch of each shape and are then undone (weights,
  buffers and optimizer state copied back; an optimizer state that did not exist is zeroed,
  which is what a first step starts from), so the run's sequence of weights is unchanged;
- the learning rate is baked into the captured optimizer step: when a schedule changes it, the
  graphs are captured again (twice per run for the piecewise schedule).

What it gives up: the phases inside the graph (attack, forward, backward, update) cannot be timed
apart; the step is timed as one phase, ``captured``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpgd.attacks.pgd import random_delta
from fastpgd.trainer.numerics import autocast

__all__ = ["CapturedTrainStep", "CudaGraph"]

WARMUP_STEPS = 3


class CudaGraph:
    """A CUDA graph with the two operations the captured step needs; replaced in tests by an
    object that records the body and calls it on replay."""

    def __init__(self, pool=None):
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, body) -> None:
        with torch.cuda.graph(self.graph, pool=self.pool):
            body()
        self.pool = self.graph.pool()

    def replay(self) -> None:
        self.graph.replay()


def _snapshot(trainer) -> dict:
    """Copies of everything a training step changes: parameters, buffers, optimizer state."""
    model, optimizer = trainer.model, trainer.optimizer
    return {
        "model": [t.detach().clone() for t in (*model.parameters(), *model.buffers())],
        "optimizer": {
            p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
    }


@torch.no_grad()
def _restore(trainer, snapshot: dict) -> None:
    """Put back what :func:`_snapshot` copied, in place (the graph holds these storages)."""
    model, optimizer = trainer.model, trainer.optimizer
    for t, saved in zip((*model.parameters(), *model.buffers()), snapshot["model"], strict=True):
        t.copy_(saved)
    for p, state in optimizer.state.items():
        saved = snapshot["optimizer"].get(p)
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                if saved is not None:
                    state[key] = saved[key]
            elif saved is None:
                value.zero_()  # a first step starts from zero moments and step 0
            else:
                value.copy_(saved[key])


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

    Args:
        trainer (Trainer): its model, optimizer (capturable), config, attack and generator.
        graph_factory (callable): ``graph_factory(pool)`` returns an object with
            ``capture(body)``, ``replay()`` and ``pool``. Default: :class:`CudaGraph`.
    """

    def __init__(self, trainer, graph_factory=CudaGraph):
        self.trainer = trainer
        self.graph_factory = graph_factory
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = None
        self.lrs: tuple | None = None
        self.captures = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """One training step on the batch ``(x, y)``; returns the static ``(loss, logits)``."""
        t = self.trainer
        lrs = tuple(group["lr"] for group in t.optimizer.param_groups)
        if lrs != self.lrs:
            self.graphs.clear()
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
        g = _Graph(x, y)
        saved = _snapshot(self.trainer)
        cuda = x.device.type == "cuda"
        if cuda:
            # Warm-up on a side stream, as CUDA graph capture prescribes.
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body(g)
            torch.cuda.current_stream(x.device).wait_stream(side)
        else:
            for _ in range(WARMUP_STEPS):
                self._body(g)
        _restore(self.trainer, saved)
        g.graph = self.graph_factory(self.pool)
        g.graph.capture(lambda: self._body(g))
        self.pool = g.graph.pool
        self.captures += 1
        return g
