"""A CPU stand-in for :class:`fastpgd.cuda_graph.CudaRuntime` that records what a capture asks of
CUDA: the device it makes current, the streams it makes and runs on, the pool each capture is
handed. It replays a graph by calling the recorded function again (a real replay runs the
recorded kernels, which read and write the same buffers), and, like PyTorch's allocator, it
refuses a capture into a pool that no live graph holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref

import torch

from fastpgd.cuda_graph import EagerGraph, EagerRuntime


class FakeStream:
    """A stream of one device; remembers which streams it was told to wait for."""

    def __init__(self, device: int, name: str):
        self.device = device
        self.name = name
        self.waited_for: list[FakeStream] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_for.append(other)

    def __repr__(self) -> str:
        return f"FakeStream({self.name}, device {self.device})"


@dataclasses.dataclass
class Capture:
    """One call of ``record``: the current device and stream then, and the pool handed in."""

    device: int
    stream: FakeStream
    current: FakeStream | None
    pool: object | None
    new_pool: object


class FakeGraph(EagerGraph):
    """What ``record`` returns: ``replay`` calls the recorded function (flagging the runtime as
    inside a replay); ``reset`` ends it."""

    def __init__(self, runtime: FakeCuda, fn, pool):
        super().__init__(fn, pool)
        self._runtime = runtime
        self.alive = True
        self.replays = 0

    def replay(self) -> None:
        assert self.alive, "replay of a graph that was reset"
        self.replays += 1
        if self.fn is not None:
            with self._runtime.replaying():
                super().replay()

    def reset(self) -> None:
        super().reset()
        self.alive = False


class FakeCuda(EagerRuntime):
    """Records a capture's CUDA calls on the CPU (an :class:`EagerRuntime` that keeps a log).

    With ``keep_fn=False`` a graph keeps no reference to its function (as a real graph keeps
    none) and ``replay`` only counts.

    Args:
        keep_fn (bool): replay by calling the recorded function. Default: True.
    """

    def __init__(self, keep_fn: bool = True):
        super().__init__()
        self.keep_fn = keep_fn
        self.devices = [0]  # the current device, innermost last
        self.streams_made: list[FakeStream] = []
        self._current_streams: dict[int, FakeStream] = {}
        self.stream_now: FakeStream | None = None
        self.captures: list[Capture] = []
        self.graphs: list[weakref.ref] = []
        self.inside = False  # True while a replay runs
        self._pools: dict[object, weakref.WeakSet] = {}

    @contextlib.contextmanager
    def replaying(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    @contextlib.contextmanager
    def device(self, device: torch.device):
        index = device.index if device.type == "cuda" and device.index is not None else None
        self.devices.append(self.devices[-1] if index is None else index)
        try:
            yield
        finally:
            self.devices.pop()

    def current_device(self) -> int:
        return self.devices[-1]

    def new_stream(self, index: int) -> FakeStream:
        stream = FakeStream(index, f"side-{len(self.streams_made)}")
        self.streams_made.append(stream)
        return stream

    def current_stream(self, index: int) -> FakeStream:
        if index not in self._current_streams:
            self._current_streams[index] = FakeStream(index, "current")
        return self._current_streams[index]

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        before, self.stream_now = self.stream_now, stream
        try:
            yield
        finally:
            self.stream_now = before

    def record(self, fn, pool, stream):
        if pool is not None:
            # A graph nothing refers to is destroyed: a real graph holds no Python reference,
            # so the cycles through ``fn`` that this stand-in makes are collected first.
            gc.collect()
            holders = [g for g in self._pools.get(pool, ()) if g.alive]
            assert holders, "capture into a pool that no live graph holds (use_count > 0)"
        token = pool if pool is not None else object()
        self.captures.append(
            Capture(self.devices[-1], stream, self.stream_now, pool, new_pool=token)
        )
        graph = FakeGraph(self, fn if self.keep_fn else None, token)
        self._pools.setdefault(token, weakref.WeakSet()).add(graph)
        self.graphs.append(weakref.ref(graph))
        return graph

    def live_graphs(self) -> int:
        """Graphs recorded and neither reset nor destroyed."""
        gc.collect()
        return sum(1 for ref in self.graphs if ref() is not None and ref().alive)
