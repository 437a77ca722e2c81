"""The trainer's captured training step (``cuda_graph="step"``) and the attack graph inside
training: on the CPU over a recording stand-in for the CUDA runtime (``fake_cuda.FakeCuda``,
which replays by calling the captured step and refuses a pool that no live graph holds), on CUDA
with the real graphs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from fake_cuda import FakeCuda
from test_train_fast_path import _params, _trainer

from conftest import needs_cuda
from fastpgd.trainer.captured_step import CapturedTrainStep

SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)  # the CIFAR recipe's


def _captured(fake: FakeCuda, **kwargs):
    """A CPU trainer whose steps go through the captured step, over ``fake``."""
    t = _trainer(**kwargs)
    t.captured = CapturedTrainStep(t, runtime=fake)
    return t


def _fit_to(trainer, max_steps: int, **changes) -> None:
    trainer.config = dataclasses.replace(trainer.config, max_steps=max_steps, **changes)
    trainer.fit(evaluate=False)


@pytest.mark.parametrize("attack", ["fused", "reference", "none"])
def test_captured_step_trains_the_same_weights_as_the_eager_step(attack):
    # 50 images in batches of 20: two full batches and a partial one per epoch (two shapes),
    # and a piecewise schedule that changes the learning rate twice (each change recaptures).
    kwargs = dict(epochs=2, attack=attack, lr_schedule="piecewise")
    eager = _trainer(**kwargs)
    eager.fit(evaluate=False)
    fake = FakeCuda()
    captured = _captured(fake, **kwargs)
    captured.fit(evaluate=False)
    assert captured.step == eager.step == 6
    for a, b in zip(_params(eager.model), _params(captured.model), strict=True):
        assert torch.equal(a, b)
    # The warm-up steps were undone: the optimizer state is that of 6 steps, not more.
    steps = [s["step"] for s in captured.optimizer.state.values()]
    assert all(int(s) == 6 for s in steps)
    # One capture per (learning rate, batch shape) met: lr 1e-3 for steps 0-2 (full and partial
    # batch), 1e-4 for step 3 (full), 1e-5 for steps 4-5 (full and partial).
    assert captured.captured.captures == len(fake.captures) == 5
    names = set(captured.timers.names())
    assert "captured" in names and not {"attack", "forward", "backward", "update"} & names


def test_captured_sgd_through_learning_rate_drops_equals_eager():
    # The CIFAR recipe (SGD with momentum and weight decay, piecewise schedule) captured: each
    # drop of the learning rate drops every graph, and with them their pool.
    kwargs = dict(epochs=2, lr_schedule="piecewise", **SGD)
    eager = _trainer(**kwargs)
    eager.fit(evaluate=False)
    fake = FakeCuda()
    captured = _captured(fake, **kwargs)
    captured.fit(evaluate=False)
    assert isinstance(captured.optimizer, torch.optim.SGD)
    for a, b in zip(_params(eager.model), _params(captured.model), strict=True):
        assert torch.equal(a, b)
    pairs = zip(eager.model.parameters(), captured.model.parameters(), strict=True)
    for p, q in pairs:  # the momentum of 6 steps, not of 6 + warm-ups
        momenta = (eager.optimizer.state[p], captured.optimizer.state[q])
        assert torch.equal(*(m["momentum_buffer"] for m in momenta))
    # The partial batch shares the full batch's pool; after a drop, a new pool (the stand-in
    # refuses a capture into a pool whose graphs are gone, as PyTorch's allocator does).
    pools = [c.pool for c in fake.captures]
    first, _, _, fourth, _ = (c.new_pool for c in fake.captures)
    assert pools == [None, first, None, None, fourth]
    assert fake.live_graphs() == 2


def test_captured_step_report_says_phases_are_not_separable():
    t = _captured(FakeCuda(), max_steps=2)
    t.graph_mode = "step"  # what a CUDA run in step mode reports
    t.fit(evaluate=False)
    assert "cannot be timed apart" in t.report()


def test_captured_step_returns_its_static_outputs():
    # Documented: the loss and logits are the graph's outputs, overwritten by the next step.
    t = _captured(FakeCuda(), max_steps=1)
    x, y, _ = next(t.batches.epoch(0))
    loss, logits = t.captured(x, y)
    first = loss.clone()
    again, again_logits = t.captured(x, y)
    assert again is loss and again_logits is logits
    assert not torch.equal(again, first)  # the second step's loss, in the same tensor


def test_loading_a_checkpoint_drops_the_captured_graphs(tmp_path):
    ckpt = tmp_path / "run.pt"
    fake = FakeCuda()
    t = _captured(fake, max_steps=2, checkpoint=str(ckpt), synthetic_size=40, epochs=3)
    t.fit(evaluate=False)
    _fit_to(t, 4, checkpoint=None)
    assert fake.live_graphs() == 1 and t.captured.captures == 1
    t.resume(ckpt)  # the optimizer's state is new tensors now
    assert t.captured.graphs == {} and fake.live_graphs() == 0
    t.fit(evaluate=False)
    assert t.step == 4 and t.captured.captures == 2


def test_a_second_fit_keeps_its_graphs_unless_what_they_read_changed():
    fake = FakeCuda()
    t = _captured(fake, max_steps=1, synthetic_size=40, epochs=3)  # one batch shape
    t.fit(evaluate=False)
    _fit_to(t, 2)  # nothing changed: the graph is replayed (bench --train measures this)
    assert t.captured.captures == 1
    # The optimizer's state in new tensors, as loading a state dict from a file gives.
    t.optimizer.load_state_dict(copy.deepcopy(t.optimizer.state_dict()))
    _fit_to(t, 3)
    assert t.captured.captures == 2 and fake.live_graphs() == 1
    for p in t.model.parameters():  # an EMA-style swap of the weights
        p.data = p.data.clone()
    _fit_to(t, 4)
    assert t.captured.captures == 3
    _fit_to(t, 5, attack_steps=3)  # a setting baked into the graph
    assert t.captured.captures == 4 and fake.live_graphs() == 1


# -- on a GPU ---------------------------------------------------------------------------------
# Exactness: these runs use deterministic algorithms (``TINY``), which fix cuDNN's choice of
# kernels (heuristics, no benchmarking: the warm-up run's choice is cached and the capture, on
# the same stream, reuses it) and cuBLAS's workspace. A graph then replays the kernels the eager
# step launches, on the same values: equal weights, bit for bit, whatever the number of steps.


def _cuda_trainer(**kwargs):
    return _trainer(device="cuda", deterministic=True, **kwargs)


@needs_cuda
@pytest.mark.cuda
def test_cuda_attack_graph_trains_the_same_weights_as_eager():
    eager = _cuda_trainer(max_steps=4, cuda_graph="off")
    eager.fit(evaluate=False)
    graph = _cuda_trainer(max_steps=4, cuda_graph="attack")
    graph.fit(evaluate=False)
    for a, b in zip(_params(eager.model), _params(graph.model), strict=True):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.cuda
def test_cuda_step_graph_trains_the_same_weights_as_eager():
    # The step graph needs Adam's capturable form (its step count on the device), whose bias
    # correction rounds differently from the plain form: the eager run uses it too, so that
    # both compute the same function.
    eager = _cuda_trainer(epochs=2, cuda_graph="off")
    eager.optimizer = eager._make_optimizer(capturable=True)
    eager.fit(evaluate=False)
    graph = _cuda_trainer(epochs=2, cuda_graph="step")
    assert graph.graph_mode == "step"
    graph.fit(evaluate=False)
    for a, b in zip(_params(eager.model), _params(graph.model), strict=True):
        assert torch.equal(a, b)
    assert graph.captured.captures == 2  # a full and a partial batch shape, one pool


@needs_cuda
@pytest.mark.cuda
def test_cuda_step_graph_with_sgd_through_learning_rate_drops():
    # Each drop captures again after every graph of the pool is gone: a capture into that pool
    # would trip the allocator's assert (use_count > 0).
    kwargs = dict(epochs=2, lr_schedule="piecewise", **SGD)
    eager = _cuda_trainer(cuda_graph="off", **kwargs)
    eager.fit(evaluate=False)
    graph = _cuda_trainer(cuda_graph="step", **kwargs)
    graph.fit(evaluate=False)
    assert graph.captured.captures == 5
    for a, b in zip(_params(eager.model), _params(graph.model), strict=True):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.cuda
def test_cuda_step_graph_after_loading_a_checkpoint(tmp_path):
    # Train to step 4, load the checkpoint of step 2 into the same trainer, train to step 4
    # again: the same weights. Graphs kept across the load would update the optimizer state of
    # step 4, not the loaded one.
    ckpt = tmp_path / "run.pt"
    t = _cuda_trainer(max_steps=2, cuda_graph="step", checkpoint=str(ckpt), epochs=3)
    t.fit(evaluate=False)
    _fit_to(t, 4, checkpoint=None)
    want = _params(t.model)
    t.resume(ckpt)
    t.fit(evaluate=False)
    assert t.step == 4
    for a, b in zip(want, _params(t.model), strict=True):
        assert torch.equal(a, b)
