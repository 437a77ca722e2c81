"""fastpgd.cuda_graph, the one capture helper of the attack and the trainer: the device a capture
runs on, its side stream, the pool it is handed, and the warm-up runs it undoes. On the CPU the
CUDA calls go to a recording stand-in (``fake_cuda.FakeCuda``); on CUDA the real ones run."""

from __future__ import annotations

import copy
import doctest
import gc

import pytest
import torch
import torch.nn.functional as F
from fake_cuda import FakeCuda
from torch import nn

from conftest import needs_cuda
from fastpgd import cuda_graph
from fastpgd.cuda_graph import CudaGraph, GraphPool, snapshot


def test_docstring_examples_run():
    result = doctest.testmod(cuda_graph)
    assert result.attempted > 0 and result.failed == 0


# -- the device and the stream -----------------------------------------------------------------


def test_capture_runs_on_its_device_and_that_devices_side_stream():
    fake = FakeCuda()
    seen = []

    def fn():
        seen.append((fake.current_device(), fake.stream_now))

    graph = CudaGraph(torch.device("cuda", 1), runtime=fake)
    assert fake.current_device() == 0
    graph.capture(fn)
    assert fake.current_device() == 0  # put back
    (side,) = fake.streams_made
    assert side.device == 1  # a stream of the graph's device, not of the current one
    assert seen == [(1, side)] * 3  # three warm-up runs there
    (capture,) = fake.captures
    assert (capture.device, capture.stream) == (1, side)
    # The side stream starts after the work queued before the capture, and the current stream
    # goes on after the warm-up.
    current = fake.current_stream(1)
    assert side.waited_for == [current] and current.waited_for == [side]
    graph.replay()
    assert fake.graphs[0]().replays == 1 and len(seen) == 4


def test_one_side_stream_per_device_serves_every_capture():
    fake = FakeCuda()
    for index in (0, 1, 0, 1, 0):
        CudaGraph(torch.device("cuda", index), runtime=fake).capture(lambda: None)
    assert [s.device for s in fake.streams_made] == [0, 1]
    assert [c.stream.device for c in fake.captures] == [0, 1, 0, 1, 0]
    assert len({id(c.stream) for c in fake.captures}) == 2
    # A device given without an index is the current device.
    with fake.device(torch.device("cuda", 1)):
        CudaGraph(torch.device("cuda"), runtime=fake).capture(lambda: None)
    assert fake.captures[-1].stream is fake.streams_made[1]


def test_a_graph_captures_once():
    graph = CudaGraph(torch.device("cuda", 0), runtime=FakeCuda())
    graph.capture(lambda: None)
    with pytest.raises(RuntimeError, match="holds a capture already; make a new one"):
        graph.capture(lambda: None)


# -- the pool -----------------------------------------------------------------------------------


def test_a_pool_is_handed_on_only_while_a_graph_holds_it():
    fake = FakeCuda()
    pool = GraphPool()
    first = CudaGraph(torch.device("cuda", 0), pool=pool, runtime=fake)
    first.capture(lambda: None)
    second = CudaGraph(torch.device("cuda", 0), pool=pool, runtime=fake)
    second.capture(lambda: None)
    assert fake.captures[0].pool is None and fake.captures[1].pool is fake.captures[0].new_pool
    assert len(pool) == 2
    first.release()
    assert len(pool) == 1 and pool.handle() is fake.captures[0].new_pool
    del second  # dropped without release: gone all the same
    gc.collect()
    assert len(pool) == 0 and pool.handle() is None
    # The next capture starts a new pool (the stand-in, like PyTorch, refuses the dead one).
    third = CudaGraph(torch.device("cuda", 0), pool=pool, runtime=fake)
    third.capture(lambda: None)
    assert fake.captures[2].pool is None
    assert fake.live_graphs() == 1 and pool.handle() is fake.captures[2].new_pool


def test_release_drops_the_graph():
    fake = FakeCuda()
    graph = CudaGraph(torch.device("cuda", 0), runtime=fake)
    graph.capture(lambda: None)
    graph.release()
    assert graph.graph is None and fake.live_graphs() == 0
    graph.release()  # twice is harmless


# -- the warm-up runs and what they leave ---------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


def _training_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _tensors(model, optimizer) -> list[torch.Tensor]:
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers(), *state)]


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
], ids=["adam", "sgd"])  # fmt: skip
def test_warm_up_is_undone_for_what_preserve_names(make):
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    model = Net()
    optimizer = make(model.parameters())
    _training_step(model, optimizer, x, y)()  # an optimizer state exists before the capture
    before = _tensors(model, optimizer)
    graph = CudaGraph(torch.device("cuda", 0), preserve=[model, optimizer], runtime=FakeCuda())
    graph.capture(_training_step(model, optimizer, x, y))
    after = _tensors(model, optimizer)
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert graph._preserve == ()  # not held after the capture

    # Unnamed, the warm-up runs are three training steps.
    tracked = int(model.bn.num_batches_tracked)
    graph = CudaGraph(torch.device("cuda", 0), runtime=FakeCuda())
    graph.capture(_training_step(model, optimizer, x, y))
    assert int(model.bn.num_batches_tracked) == tracked + 3
    assert not torch.equal(model.fc.weight, before[0])


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
], ids=["adam", "sgd"])  # fmt: skip
def test_state_first_made_by_the_warm_up_starts_from_zero(make):
    # The first step from zeroed state is the first step from no state (Adam; SGD with no
    # dampening), so a graph captured before any step takes the eager run's first step.
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    eager_model = Net()
    eager_opt = make(eager_model.parameters())
    model = copy.deepcopy(eager_model)
    optimizer = make(model.parameters())
    fake = FakeCuda()
    graph = CudaGraph(torch.device("cuda", 0), preserve=[model, optimizer], runtime=fake)
    graph.capture(_training_step(model, optimizer, x, y))
    assert all(
        not v.any() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    for _ in range(3):
        graph.replay()
        _training_step(eager_model, eager_opt, x, y)()
    for a, b in zip(_tensors(eager_model, eager_opt), _tensors(model, optimizer), strict=True):
        assert torch.equal(a, b)


def test_snapshot_refuses_what_it_cannot_restore():
    with pytest.raises(TypeError, match="owners must hold nn.Module or torch.optim.Optimizer"):
        snapshot([torch.zeros(3)])


def test_capture_turns_autocast_caching_off_and_back_on():
    seen = []
    graph = CudaGraph(torch.device("cuda", 0), runtime=FakeCuda())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        graph.capture(lambda: seen.append(torch.is_autocast_cache_enabled()))
        assert torch.is_autocast_cache_enabled()
    assert seen == [False] * 3
    with pytest.raises(ValueError, match="boom"):
        CudaGraph(torch.device("cuda", 0), runtime=FakeCuda()).capture(_raise)
    assert torch.is_autocast_cache_enabled()


def _raise():
    raise ValueError("boom")


# -- CUDA ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.cuda
def test_cuda_graphs_recaptured_after_their_pool_died():
    # The trainer's learning-rate change: every graph of a pool dropped, then a new capture.
    # Capturing into the dead pool trips PyTorch's allocator (use_count > 0).
    x = torch.zeros(1024, device="cuda")
    pool = GraphPool()
    out = []
    for _ in range(3):
        graphs = [CudaGraph(x.device, pool=pool) for _ in range(2)]
        for g in graphs:
            g.capture(lambda: out.append(x * 2 + 1))  # an output allocated in the pool
        for g in graphs:
            g.release()
    torch.cuda.synchronize()
    assert len(pool) == 0
