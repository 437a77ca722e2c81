"""One way to capture a step in a CUDA graph, shared by the captured attack step and the captured
training step.

- :class:`CudaGraph`: warm-up runs, then a capture into a ``torch.cuda.CUDAGraph``; ``capture(fn)``
  and ``replay()``. The warm-up runs (lazy initialisation, cuDNN's choice of algorithms, an
  optimizer's first state) are undone for the modules and optimizers named in ``preserve``, so
  that capturing changes no weight, no BatchNorm statistic and no optimizer state.
- :class:`GraphPool`: the memory pool a family of graphs shares (graphs that never replay at the
  same time); a capture is handed the pool only while a graph captured into it is alive.
- :class:`CudaRuntime` (one instance, :data:`CUDA`): the CUDA calls a capture makes, and the one
  side stream per device that every capture on that device reuses. :class:`EagerRuntime` runs
  the same code path without CUDA (a replay calls the function again); tests build on it a
  stand-in that records the calls.

What a capture does, in order: it switches to the graph's device (``torch.cuda.device``), takes
that device's side stream, runs the warm-ups there with autocast's cache of weight casts turned
off, puts back what ``preserve`` names, and records ``fn`` on the same stream into the shared
pool. Autocast keeps its casts until the outermost autocast block exits, so a cast cached by a
warm-up or by the caller's own ``torch.autocast`` block would live outside the graph's pool and be
freed while the graph still reads it; with the cache off, the casts are recorded in the graph.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "CUDA",
    "CudaGraph",
    "CudaRuntime",
    "EagerGraph",
    "EagerRuntime",
    "GraphPool",
    "snapshot",
]


class CudaRuntime:
    """The CUDA calls a capture makes, and the side stream of each device.

    One side stream per device serves every capture on it: a new stream per capture would cost
    memory each time (cuBLAS keeps a workspace per handle and stream), and graphs that share a
    pool should be captured on the same stream (as ``torch.cuda.graph`` asks).
    """

    def __init__(self):
        self._side_streams: dict[int, object] = {}

    def side_stream(self, index: int):
        """The side stream of device ``index``, made on first use."""
        stream = self._side_streams.get(index)
        if stream is None:
            stream = self._side_streams[index] = self.new_stream(index)
        return stream

    def device(self, device: torch.device):
        """A context in which ``device`` is the current CUDA device."""
        return torch.cuda.device(device)

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def new_stream(self, index: int):
        return torch.cuda.Stream(device=index)

    def current_stream(self, index: int):
        return torch.cuda.current_stream(index)

    def stream(self, stream):
        """A context in which ``stream`` is the current stream."""
        return torch.cuda.stream(stream)

    def record(self, fn: Callable[[], None], pool, stream):
        """A new graph of the work ``fn`` queues on ``stream``, its memory from ``pool`` (a
        handle, or ``None`` for a new pool): an object with ``replay()``, ``pool()`` and
        ``reset()``. The graph keeps no reference to ``fn``."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            fn()
        return graph


#: The runtime of every :class:`CudaGraph` that names none.
CUDA = CudaRuntime()


class EagerRuntime(CudaRuntime):
    """:class:`CudaRuntime`'s calls on any device, without CUDA: a capture records the function
    (running none of it, as a real capture runs none of its kernels) and a replay calls it
    again. It runs a captured step's code path on the CPU (its warm-up, restore, pool and
    replay logic), not its speed.

    Examples::

        >>> x = torch.zeros(2)
        >>> graph = CudaGraph(x.device, runtime=EagerRuntime())
        >>> graph.capture(lambda: x.add_(1))  # three warm-up runs
        >>> graph.replay()
        >>> x
        tensor([4., 4.])
    """

    def device(self, device: torch.device):
        return contextlib.nullcontext()

    def current_device(self) -> int:
        return 0

    def new_stream(self, index: int):
        return _NoStream()

    def current_stream(self, index: int):
        return _NoStream()

    def stream(self, stream):
        return contextlib.nullcontext()

    def record(self, fn: Callable[[], None], pool, stream):
        return EagerGraph(fn, pool if pool is not None else object())


class _NoStream:
    def wait_stream(self, other) -> None:
        pass


class EagerGraph:
    """What :class:`EagerRuntime` records: ``replay`` calls the function; ``reset`` drops it."""

    def __init__(self, fn: Callable[[], None], pool):
        self.fn = fn
        self._pool = pool

    def replay(self) -> None:
        self.fn()

    def pool(self):
        return self._pool

    def reset(self) -> None:
        self.fn = None


class GraphPool:
    """The memory pool of a family of graphs that never replay at the same time.

    Graphs captured into one pool reuse each other's scratch memory: each replay writes what it
    reads before reading it, so sequential replays do not disturb each other. The pool lives as
    long as a graph captured into it: once the last one is gone, PyTorch's allocator may be
    freeing the pool and refuses a capture into it (``use_count > 0``), so :meth:`handle` then
    gives ``None`` and the next capture starts a new pool.
    """

    def __init__(self):
        self._handle = None
        self._holders: weakref.WeakSet = weakref.WeakSet()

    def handle(self):
        """The pool for the next capture: the shared one while a graph holds it, else ``None``."""
        if not self._holders:
            self._handle = None
        return self._handle

    def hold(self, graph: CudaGraph, handle) -> None:
        """Record that ``graph`` was captured into the pool ``handle`` and keeps it alive."""
        self._handle = handle
        self._holders.add(graph)

    def release(self, graph: CudaGraph) -> None:
        """Record that ``graph`` no longer holds the pool."""
        self._holders.discard(graph)

    def __len__(self) -> int:
        """The number of live graphs captured into the pool."""
        return len(self._holders)


def snapshot(owners: Iterable) -> Callable[[], None]:
    """Copies of what running a step may change in ``owners``; returns what puts them back.

    Args:
        owners (iterable of nn.Module or torch.optim.Optimizer): modules (their parameters and
            buffers: weights, BatchNorm statistics and ``num_batches_tracked``) and optimizers
            (their per-parameter state).

    Returns:
        callable: restores every saved tensor in place (a graph holds these storages). Optimizer
        state that did not exist when the copies were taken is zeroed: zero moments and step 0 are
        what a first step starts from (Adam; SGD's first momentum is the gradient itself, which
        zero momentum gives too when ``dampening`` is 0).

    Examples::

        >>> bn = nn.BatchNorm1d(2)
        >>> restore = snapshot([bn])
        >>> _ = bn(torch.randn(4, 2))
        >>> restore()
        >>> int(bn.num_batches_tracked)
        0
    """
    saved = []
    for owner in owners:
        if isinstance(owner, nn.Module):
            tensors = [*owner.parameters(), *owner.buffers()]
            saved.append((owner, [t.detach().clone() for t in tensors]))
        elif isinstance(owner, torch.optim.Optimizer):
            state = {
                p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                for p, s in owner.state.items()
            }
            saved.append((owner, state))
        else:
            raise TypeError(
                f"owners must hold nn.Module or torch.optim.Optimizer objects, got "
                f"{type(owner).__name__}"
            )

    @torch.no_grad()
    def restore() -> None:
        for owner, copies in saved:
            if isinstance(owner, nn.Module):
                tensors = [*owner.parameters(), *owner.buffers()]
                for t, copy in zip(tensors, copies, strict=True):
                    t.copy_(copy)
                continue
            for p, state in owner.state.items():
                before = copies.get(p)
                for key, value in state.items():
                    if not isinstance(value, torch.Tensor):
                        if before is not None:
                            state[key] = before[key]
                    elif before is None:
                        value.zero_()
                    else:
                        value.copy_(before[key])

    return restore


@contextlib.contextmanager
def _autocast_cache_off():
    """Autocast without its cache of weight casts; the caller's setting is put back after."""
    before = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(before)


class CudaGraph:
    """A CUDA graph captured from a callable after warm-up runs; ``capture(fn)``, ``replay()``.

    Args:
        device (torch.device): the CUDA device the work runs on; the capture runs with it as
            the current device, on its side stream.
        warmup (int): eager runs of ``fn`` on the side stream before the capture (lazy
            initialisation, cuDNN's choice of algorithms and any host sync a first run needs
            happen there, not in the graph), as the CUDA graph documentation prescribes.
            Default: 3.
        pool (GraphPool, optional): the pool to share with other graphs that never replay at
            the same time as this one. Default: a pool of its own.
        preserve (iterable of nn.Module or torch.optim.Optimizer): what the warm-up runs must
            leave as they found it (see :func:`snapshot`). Held until the capture, not after:
            a graph cached for a model must not keep it alive. Default: nothing.
        runtime (CudaRuntime, optional): where the CUDA calls go. Default: :data:`CUDA`.

    Examples::

        >>> if torch.cuda.is_available():
        ...     x = torch.zeros(4, device="cuda")
        ...     graph = CudaGraph(x.device)
        ...     graph.capture(lambda: x.add_(1))
        ...     graph.replay()
    """

    def __init__(
        self,
        device: torch.device,
        warmup: int = 3,
        *,
        pool: GraphPool | None = None,
        preserve: Iterable = (),
        runtime: CudaRuntime | None = None,
    ):
        self.device = torch.device(device)
        self.warmup = warmup
        self.pool = pool if pool is not None else GraphPool()
        self._preserve = tuple(preserve)
        self._runtime = runtime if runtime is not None else CUDA
        self.graph = None

    def capture(self, fn: Callable[[], None]) -> None:
        """Warm up with ``fn``, undo what the warm-up changed in ``preserve``, record ``fn``."""
        if self.graph is not None:
            raise RuntimeError("this CudaGraph holds a capture already; make a new one")
        rt = self._runtime
        preserve, self._preserve = self._preserve, ()
        with rt.device(self.device):
            index = rt.current_device()
            side = rt.side_stream(index)
            current = rt.current_stream(index)
            with _autocast_cache_off():
                side.wait_stream(current)
                with rt.stream(side):
                    restore = snapshot(preserve)
                    for _ in range(self.warmup):
                        fn()
                    restore()
                current.wait_stream(side)
                graph = rt.record(fn, self.pool.handle(), side)
        self.graph = graph
        self.pool.hold(self, graph.pool())

    def replay(self) -> None:
        """Run the recorded work on the current stream."""
        self.graph.replay()

    def release(self) -> None:
        """Drop the recorded graph now (and its hold on the pool); :meth:`replay` no longer
        works."""
        if self.graph is not None:
            self.graph.reset()
            self.graph = None
        self.pool.release(self)
