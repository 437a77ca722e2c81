"""Captured attack steps for ``fused_pgd(cuda_graph=True)`` / ``reference_pgd(cuda_graph=True)``.

One whole PGD step (forward, backward with respect to the input, update) is captured once per
model and key, and replayed ``steps`` times; each call copies its batch into the step's static
buffers and reads the result out. The pieces:

- :class:`CudaGraph` (from :mod:`fastpgd.cuda_graph`): warm-up on the device's side stream, with
  what ``preserve`` names put back afterwards, then a capture into a shared pool.
- :class:`CapturedStep`: the static buffers, and the copy-in / replay / copy-out around a graph.
  The graph is any object with ``capture(fn)`` and ``replay()``.
- :class:`GraphCache` (one instance, :data:`GRAPH_CACHE`): captured steps per model, weak on the
  model, the least recently used evicted first, and one :class:`GraphPool` per model that all the
  model's graphs share (they never replay at the same time). A model's graph is made as
  ``CudaGraph(device, pool=GRAPH_CACHE.pool(model), preserve=[model])``: its warm-up leaves the
  model's buffers (BatchNorm statistics) and parameters as it found them.
- :func:`graph_key`: what a capture depends on; :func:`check_cuda_graph`: what it needs.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import nn

from fastpgd.cuda_graph import CudaGraph, GraphPool

__all__ = [
    "GRAPH_CACHE",
    "CapturedStep",
    "CudaGraph",
    "GraphCache",
    "GraphPool",
    "WeakIdentity",
    "check_cuda_graph",
    "graph_key",
]


def check_cuda_graph(x: torch.Tensor, model) -> None:
    """Raise unless a captured step can serve this call: CUDA tensors and an ``nn.Module``."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, but x is on {x.device}")
    if not isinstance(model, nn.Module):
        raise TypeError("cuda_graph=True needs model to be an nn.Module (graphs are cached on it)")


class WeakIdentity:
    """Names an object in a key by identity without keeping it alive.

    Equal to another only while both name the same live object: once the object is gone, no
    new object (even one at the same address) matches it. A bound method is named by its
    object and function, so ``model.loss`` names the same thing at every access. An object
    that cannot be weakly referenced (a builtin function) is held.

    Args:
        obj (object): what to name.

    Examples::

        >>> import torch.nn.functional as F
        >>> WeakIdentity(F.cross_entropy) == WeakIdentity(F.cross_entropy)
        True
        >>> WeakIdentity(F.cross_entropy) == WeakIdentity(F.mse_loss)
        False
    """

    __slots__ = ("_refs", "_hash")

    def __init__(self, obj):
        parts = (obj.__self__, obj.__func__) if inspect.ismethod(obj) else (obj,)
        self._refs = tuple(_weak_or_held(part) for part in parts)
        self._hash = hash(tuple(id(part) for part in parts))

    def _targets(self) -> tuple | None:
        targets = tuple(ref() for ref in self._refs)
        return None if any(t is None for t in targets) else targets

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if not isinstance(other, WeakIdentity):
            return NotImplemented
        mine, theirs = self._targets(), other._targets()
        return (
            mine is not None
            and theirs is not None
            and len(mine) == len(theirs)
            and all(a is b for a, b in zip(mine, theirs, strict=True))
        )


def _weak_or_held(obj) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _ambient_autocast(device_type: str):
    """The dtype of an autocast block the call runs inside (on ``device_type``), or ``None``."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


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
    are read inside the attack's mode switch, so they are the flags the step runs with. A graph
    reads the model's parameters and buffers at the addresses they had at the capture, so their
    addresses and dtypes are part of the key: ``model.half()``, ``.cpu().cuda()``,
    ``load_state_dict(assign=True)`` or a swap of ``p.data`` (EMA, SWA) captures again instead
    of replaying against freed memory. An autocast block around the call is part of the key too:
    a graph captured inside one computes in its dtype. ``loss_fn`` is named by identity, weakly
    (:class:`WeakIdentity`): the cache must not keep a loss that refers to the model alive.
    """
    storage = tuple((t.data_ptr(), t.dtype) for t in (*model.parameters(), *model.buffers()))
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
        None if loss_fn is None else WeakIdentity(loss_fn),
        bool(targeted),
        clamp,
        amp_dtype,
        _ambient_autocast(x.device.type),
        tuple(m.training for m in model.modules()),
        storage,
    )


class CapturedStep:
    """One attack step captured in a graph, with the static buffers it reads and writes.

    ``one_step(x_adv, x0, y, eps, alpha)`` returns the next iterate: ``x_adv`` itself when the
    update works in place (the fused step), a new tensor when it works out of place (the
    reference step). A new tensor is copied back into the static ``x_adv`` as part of the
    captured work, so that each replay starts from the previous one's result.

    ``one_step`` is held by the capture alone: a CUDA graph replays kernels, not Python, so once
    captured, the step function (and the loss function and model it refers to) is let go; a
    cached step keeps nothing alive but its buffers and its graph.

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
        self._graph = graph
        graph.capture(
            functools.partial(_advance, one_step, self.x_adv, self.x0, self.y, self.eps, alpha)
        )

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


def _advance(one_step: Callable, x_adv, x0, y, eps, alpha) -> None:
    """One step from the static ``x_adv``, its result left in ``x_adv``."""
    out = one_step(x_adv, x0, y, eps, alpha)
    if out is not x_adv:
        x_adv.copy_(out)


class _ModelGraphs:
    """A model's captured steps (least recently used first) and the pool their graphs share."""

    __slots__ = ("entries", "pool")

    def __init__(self):
        self.entries: OrderedDict = OrderedDict()
        self.pool = GraphPool()


class GraphCache:
    """Captured steps per model: weak on the model, least recently used evicted first.

    A dropped model frees its entries. A model's graphs share one memory pool (:meth:`pool`):
    they never replay at the same time (each replays on the caller's stream, within one call),
    so the pool is as large as the largest of them, not their sum. Each entry keeps its static
    buffers, so each model keeps at most ``per_model`` entries; a lookup that hits makes its
    entry the most recent.

    Args:
        per_model (int): entries kept per model. Default: 8.
    """

    def __init__(self, per_model: int = 8):
        self.per_model = per_model
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _graphs(self, model: nn.Module) -> _ModelGraphs:
        graphs = self._by_model.get(model)
        if graphs is None:
            graphs = self._by_model[model] = _ModelGraphs()
        return graphs

    def get(self, model: nn.Module, key: Hashable):
        """The entry for ``(model, key)``, now the most recently used; ``None`` on a miss."""
        graphs = self._by_model.get(model)
        if graphs is None or key not in graphs.entries:
            return None
        graphs.entries.move_to_end(key)
        return graphs.entries[key]

    def put(self, model: nn.Module, key: Hashable, entry) -> None:
        """Store ``entry`` as the most recent; evict the least recently used beyond the limit."""
        entries = self._graphs(model).entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.per_model:
            entries.popitem(last=False)

    def pool(self, model: nn.Module) -> GraphPool:
        """The memory pool every graph of ``model`` is captured into."""
        return self._graphs(model).pool

    def keys(self, model: nn.Module) -> list:
        """The keys cached for ``model``, least recently used first."""
        graphs = self._by_model.get(model)
        return [] if graphs is None else list(graphs.entries)

    def __len__(self) -> int:
        """The number of models with entries."""
        return sum(1 for graphs in self._by_model.values() if graphs.entries)


#: The cache behind ``cuda_graph=True``.
GRAPH_CACHE = GraphCache()
