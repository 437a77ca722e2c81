"""Captured attack steps for ``fused_pgd(cuda_graph=True)`` / ``reference_pgd(cuda_graph=True)``.

One whole PGD step (forward, backward with respect to the input, update) is captured once per
model and key, and replayed ``steps`` times; each call copies its batch into the step's static
buffers and reads the result out. The pieces:

- :class:`CudaGraph`: warm-up on a side stream, then capture into a ``torch.cuda.CUDAGraph``.
- :class:`CapturedStep`: the static buffers, and the copy-in / replay / copy-out around a graph.
  The graph is any object with ``capture(fn)`` and ``replay()``, so the same logic runs on the
  CPU under a stand-in that replays by calling ``fn``.
- :class:`GraphCache` (one instance, :data:`GRAPH_CACHE`): captured steps per model, weak on the
  model, the least recently used evicted first.
- :func:`graph_key`: what a capture depends on; :func:`check_cuda_graph`: what it needs.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import nn

__all__ = [
    "GRAPH_CACHE",
    "CapturedStep",
    "CudaGraph",
    "GraphCache",
    "check_cuda_graph",
    "graph_key",
]


def check_cuda_graph(x: torch.Tensor, model) -> None:
    """Raise unless a captured step can serve this call: CUDA tensors and an ``nn.Module``."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, but x is on {x.device}")
    if not isinstance(model, nn.Module):
        raise TypeError("cuda_graph=True needs model to be an nn.Module (graphs are cached on it)")


def graph_key(
    step_fn: Callable,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps,
    alpha: float,
    norm: str,
    loss_fn,
    targeted: bool,
    clamp,
    amp_dtype,
) -> tuple:
    """What a captured step depends on; anything else is copied into its static buffers.

    The step function is part of the key: the fused (in place) and the reference (out of place)
    steps are captured separately. A per-sample ``eps`` is copied in, so only its presence
    counts; a scalar ``eps`` and ``alpha`` are baked into the graph. The model's training flags
    are read inside the attack's mode switch, so they are the flags the step runs with.
    """
    return (
        step_fn,
        tuple(x.shape),
        x.dtype,
        str(x.device),
        tuple(y.shape),
        y.dtype,
        ("per-sample",) if isinstance(eps, torch.Tensor) else ("scalar", eps),
        alpha,
        norm,
        # The captured step holds loss_fn, so its id cannot be reused while the entry lives.
        None if loss_fn is None else id(loss_fn),
        bool(targeted),
        clamp,
        amp_dtype,
        tuple(m.training for m in model.modules()),
    )


class CudaGraph:
    """A ``torch.cuda.CUDAGraph`` captured from a callable after warm-up runs.

    Args:
        device (torch.device): the CUDA device the work runs on.
        warmup (int): eager runs on a side stream before the capture (lazy initialisation,
            cuDNN autotuning, and any host sync the first run needs happen there, not in the
            graph), as the CUDA graph documentation prescribes. Default: 3.
    """

    def __init__(self, device: torch.device, warmup: int = 3):
        self.device = device
        self.warmup = warmup
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class CapturedStep:
    """One attack step captured in a graph, with the static buffers it reads and writes.

    ``one_step(x_adv, x0, y, eps, alpha)`` returns the next iterate: ``x_adv`` itself when the
    update works in place (the fused step), a new tensor when it works out of place (the
    reference step). A new tensor is copied back into the static ``x_adv`` as part of the
    captured work, so that each replay starts from the previous one's result.

    Args:
        one_step (callable): the step to capture.
        x0 (Tensor[N, ...]): a clean batch: shapes the buffers, and the warm-up runs on it.
        y (Tensor[N, ...]): labels of the same shape as each later call's.
        eps (float or Tensor[N]): a float is baked into the graph; a tensor is copied in.
        alpha (float): the step size, baked into the graph.
        graph: an object with ``capture(fn)`` (warm up, then record ``fn``) and ``replay()``
            (run what was recorded): a :class:`CudaGraph` on CUDA.
    """

    def __init__(self, one_step: Callable, x0, y, eps, alpha: float, graph):
        self.x_adv = x0.clone()
        self.x0 = x0.clone()
        self.y = y.clone()
        self.eps = eps.clone() if isinstance(eps, torch.Tensor) else eps
        self.alpha = alpha
        self._one_step = one_step
        self._graph = graph
        graph.capture(self._run)

    def _run(self) -> None:
        out = self._one_step(self.x_adv, self.x0, self.y, self.eps, self.alpha)
        if out is not self.x_adv:
            self.x_adv.copy_(out)

    def __call__(self, x_start, x0, y, eps, steps: int) -> torch.Tensor:
        """``steps`` replays from ``x_start``; returns the last iterate as a new tensor."""
        self.x_adv.copy_(x_start)
        self.x0.copy_(x0)
        self.y.copy_(y)
        if isinstance(eps, torch.Tensor):
            self.eps.copy_(eps)
        for _ in range(steps):
            self._graph.replay()
        return self.x_adv.clone()


class GraphCache:
    """Captured steps per model: weak on the model, least recently used evicted first.

    A dropped model frees its entries. Each CUDA graph pins its own memory pool, so each model
    keeps at most ``per_model`` entries; a lookup that hits makes its entry the most recent.

    Args:
        per_model (int): entries kept per model. Default: 8.
    """

    def __init__(self, per_model: int = 8):
        self.per_model = per_model
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, key: Hashable):
        """The entry for ``(model, key)``, now the most recently used; ``None`` on a miss."""
        entries = self._by_model.get(model)
        if entries is None or key not in entries:
            return None
        entries.move_to_end(key)
        return entries[key]

    def put(self, model: nn.Module, key: Hashable, entry) -> None:
        """Store ``entry`` as the most recent; evict the least recently used beyond the limit."""
        entries = self._by_model.setdefault(model, OrderedDict())
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.per_model:
            entries.popitem(last=False)

    def keys(self, model: nn.Module) -> list:
        """The keys cached for ``model``, least recently used first."""
        return list(self._by_model.get(model, ()))

    def __len__(self) -> int:
        """The number of models with entries."""
        return len(self._by_model)


#: The cache behind ``cuda_graph=True``.
GRAPH_CACHE = GraphCache()
