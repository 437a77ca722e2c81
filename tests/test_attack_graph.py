"""The captured-step attack (``cuda_graph=True``) and its cache.

On the CPU the graph is :class:`fastpgd.cuda_graph.CudaGraph` itself over a recording stand-in for
the CUDA runtime (``fake_cuda.FakeCuda``) that replays by calling the captured function, so the
copy-in / replay / copy-out logic, the warm-up and what it leaves behind, the out-of-place step's
result, the cache key, the shared pool, the cache's eviction and lifetimes, and the label check
run here against eager results; on CUDA the real graph runs.
"""

from __future__ import annotations

import dataclasses
import doctest
import functools
import gc
import inspect
import weakref

import pytest
import torch
import torch.nn.functional as F
from fake_cuda import FakeCuda
from torch import nn

from attack_common import batch, gen, small_cnn
from conftest import needs_cuda
from fastpgd import PGD
from fastpgd.attacks import _common
from fastpgd.attacks import graph as attack_graph
from fastpgd.attacks import pgd as attack_mod
from fastpgd.attacks.graph import CudaGraph, GraphCache, WeakIdentity
from fastpgd.attacks.pgd import fused_pgd, reference_pgd
from fastpgd.step import pgd_step_, reference_pgd_step
from fastpgd.trainer.numerics import process_settings

ATTACKS = [fused_pgd, reference_pgd]
STEPS = {fused_pgd: pgd_step_, reference_pgd: reference_pgd_step}
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(fused_pgd).parameters.items()
    if p.default is not inspect.Parameter.empty
}


@pytest.fixture
def cache(monkeypatch):
    """A fresh, empty graph cache for the test."""
    fresh = GraphCache()
    monkeypatch.setattr(attack_graph, "GRAPH_CACHE", fresh)
    return fresh


@pytest.fixture
def fake():
    return FakeCuda()


def _graphed(step_fn, model, x, y, fake: FakeCuda, **kw):
    """The attack with ``cuda_graph=True`` on CPU tensors, its graphs over the recording runtime."""
    options = attack_mod._pgd_options(model, x, y, **dict(_DEFAULTS, **kw))
    options = dataclasses.replace(options, cuda_graph=True)  # past the check for CUDA tensors
    return attack_mod._pgd(step_fn, options, functools.partial(CudaGraph, runtime=fake))


class BatchNormNet(nn.Module):
    """conv, BatchNorm, ReLU, linear on 8x8 grey images: buffers an attack in train mode moves."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class WithLoss(nn.Module):
    """A model whose loss is one of its own methods (``loss_fn=model.loss`` refers to it)."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return self.net(x)

    def loss(self, logits, y):
        return F.cross_entropy(logits, y, reduction="sum")


class ModelLoss:
    """A loss object that holds the model, as a TRADES-style loss does."""

    def __init__(self, model):
        self.model = model

    def __call__(self, logits, y):
        return F.cross_entropy(logits, y, reduction="sum")


# ---------------------------------------------------------------------------------------------
# The captured step computes what the eager attack computes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pgd", ATTACKS)
@pytest.mark.parametrize(
    "kw",
    [
        dict(eps=0.3, alpha=0.05),
        dict(eps=1.0, alpha=0.2, norm="l2"),
        dict(eps=torch.linspace(0.0, 0.3, 6), alpha=0.05, targeted=True),
        dict(eps=0.3, alpha=0.05, restarts=2, return_delta=True),
    ],
    ids=["linf", "l2", "per-sample-targeted", "restarts"],
)
def test_captured_step_equals_eager(cache, fake, pgd, kw):
    model = small_cnn()
    x, y = batch()
    eager = pgd(model, x, y, steps=5, generator=gen(0), **kw)
    graphed = _graphed(STEPS[pgd], model, x, y, fake, steps=5, generator=gen(0), **kw)
    start = pgd(model, x, y, steps=0, generator=gen(0), **kw)
    if kw.get("return_delta"):
        torch.testing.assert_close(graphed[1], eager[1], rtol=0, atol=0)
        graphed, eager, start = graphed[0], eager[0], start[0]
    assert len(fake.captures) == 1
    assert torch.equal(graphed, eager)
    assert (graphed - start).abs().gt(1e-5).float().mean() > 0.5  # the steps moved it


@pytest.mark.parametrize("pgd", ATTACKS)
def test_captured_step_replays_from_the_cache_with_new_inputs(cache, fake, pgd):
    model = small_cnn()
    for seed in range(3):
        x, y = batch(seed=seed)
        eps = torch.full((6,), 0.1 * (seed + 1))
        kw = dict(eps=eps, alpha=0.05, steps=3)
        graphed = _graphed(STEPS[pgd], model, x, y, fake, generator=gen(seed), **kw)
        assert torch.equal(graphed, pgd(model, x, y, generator=gen(seed), **kw))
    assert len(fake.captures) == 1  # one capture, replayed with each batch, labels and eps
    assert len(cache.keys(model)) == 1


def test_the_step_function_is_part_of_the_key(cache, fake):
    model = small_cnn()
    x, y = batch()
    calls = []

    def fused(*args, **kwargs):
        calls.append("fused")
        return pgd_step_(*args, **kwargs)

    def reference(*args, **kwargs):
        calls.append("reference")
        return reference_pgd_step(*args, **kwargs)

    kw = dict(eps=0.3, alpha=0.05, steps=2, generator=gen(1))
    _graphed(fused, model, x, y, fake, **kw)
    calls.clear()
    _graphed(reference, model, x, y, fake, **kw)
    assert calls and set(calls) == {"reference"}  # not a replay of the fused capture
    assert len(fake.captures) == 2 and len(cache.keys(model)) == 2


# ---------------------------------------------------------------------------------------------
# What the key holds
# ---------------------------------------------------------------------------------------------


def test_graph_module_examples_run():
    result = doctest.testmod(attack_graph)
    assert result.attempted > 0 and result.failed == 0


def _key_of(model, x, y, step_fn=pgd_step_, **kw):
    base = dict(eps=0.3, alpha=0.01, norm="linf", loss_fn=None, targeted=False,
                clamp=(0.0, 1.0), amp_dtype=None)  # fmt: skip
    return attack_graph.graph_key(step_fn, model, x, y, **dict(base, **kw))


def test_graph_key_separates_what_a_capture_depends_on():
    model = small_cnn().eval()
    x, y = batch()
    key = functools.partial(_key_of, model, x, y)
    assert key() == _key_of(model, x.clone(), y.clone())
    # Per-sample budgets are copied into the graph's buffers, so their values do not matter.
    assert key(eps=torch.full((6,), 0.3)) == key(eps=torch.full((6,), 0.1))
    for change in (
        dict(step_fn=reference_pgd_step),
        dict(eps=0.2),
        dict(eps=torch.full((6,), 0.3)),
        dict(alpha=0.02),
        dict(norm="l2"),
        dict(targeted=True),
        dict(loss_fn=F.cross_entropy),
        dict(clamp=None),
        dict(amp_dtype=torch.bfloat16),
    ):
        assert key(**change) != key(), change
    for other_x, other_y in ((x[:3], y[:3]), (x.double(), y), (x, y.int())):
        assert _key_of(model, other_x, other_y) != key()
    before = key()
    model.train()
    assert key() != before


def test_graph_key_holds_an_enclosing_autocast():
    model = small_cnn()
    x, y = batch()
    plain = _key_of(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = _key_of(model, x, y)
        with torch.autocast("cpu", enabled=False):
            assert _key_of(model, x, y) == plain  # autocast turned off inside is no autocast
    with torch.autocast("cpu", dtype=torch.float16):
        other = _key_of(model, x, y)
    assert len({plain, inside, other}) == 3


def test_graph_key_holds_where_the_parameters_and_buffers_live():
    model = BatchNormNet()
    x, y = batch()
    before = _key_of(model, x, y)
    with torch.no_grad():  # in place, as an optimizer updates: the graph reads the new values
        for p in model.parameters():
            p.add_(1.0)
        model.bn.running_mean.add_(1.0)
    assert _key_of(model, x, y) == before
    for new_storage in (
        lambda m: setattr(m.conv.weight, "data", m.conv.weight.data.clone()),  # EMA/SWA swap
        lambda m: m.bn.register_buffer("running_var", m.bn.running_var.clone()),
        lambda m: m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True),
        lambda m: m.double(),
    ):
        now = _key_of(model, x, y)
        new_storage(model)
        assert _key_of(model, x, y) != now


def test_weak_identity_names_an_object_without_keeping_it():
    class Loss:
        def __call__(self, logits, y):
            return logits.sum()

    loss = Loss()
    name = WeakIdentity(loss)
    assert name == WeakIdentity(loss) and hash(name) == hash(WeakIdentity(loss))
    assert name != WeakIdentity(Loss())
    ref = weakref.ref(loss)
    del loss
    gc.collect()
    assert ref() is None  # the name did not keep it
    assert name != WeakIdentity(Loss())  # nor does a new object match the dead one's name
    assert name != WeakIdentity(F.cross_entropy)
    # A bound method is named by its object and function: equal at every attribute access.
    model = WithLoss()
    assert WeakIdentity(model.loss) == WeakIdentity(model.loss)
    assert WeakIdentity(model.loss) != WeakIdentity(WithLoss().loss)
    # What cannot be weakly referenced is held (a builtin refers to no model).
    assert WeakIdentity(len) == WeakIdentity(len) != WeakIdentity(abs)


@pytest.mark.parametrize("swap", ["ema", "assign"])
def test_new_parameter_storage_captures_again(cache, fake, swap):
    model = small_cnn()
    x, y = batch()
    kw = dict(eps=0.3, alpha=0.05, steps=3)
    _graphed(pgd_step_, model, x, y, fake, generator=gen(0), **kw)
    if swap == "ema":
        for p in model.parameters():
            p.data = p.data * 0.5 + 0.01  # new storage, as an EMA or SWA swap makes
    else:
        other = small_cnn(1).state_dict()
        model.load_state_dict(other, assign=True)
    graphed = _graphed(pgd_step_, model, x, y, fake, generator=gen(0), **kw)
    assert len(fake.captures) == 2  # not a replay against the freed storage
    assert torch.equal(graphed, fused_pgd(model, x, y, generator=gen(0), **kw))


# ---------------------------------------------------------------------------------------------
# The warm-up runs leave the model as they found it
# ---------------------------------------------------------------------------------------------


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


@pytest.mark.parametrize("pgd", ATTACKS)
def test_warm_up_leaves_batchnorm_statistics_as_eager_does(cache, fake, pgd):
    # BatchNorm in training mode during the attack: every forward pass moves its statistics.
    x, y = batch()
    eager_model, graph_model = BatchNormNet(), BatchNormNet()
    kw = dict(eps=0.3, alpha=0.05, steps=4, model_mode="train")
    eager = pgd(eager_model, x, y, generator=gen(0), **kw)
    graphed = _graphed(STEPS[pgd], graph_model, x, y, fake, generator=gen(0), **kw)
    assert torch.equal(graphed, eager)
    assert int(graph_model.bn.num_batches_tracked) == 4  # one per step, none per warm-up run
    for a, b in zip(_state(eager_model), _state(graph_model), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Autocast: the casts are made inside the graph, and the key knows an enclosing block
# ---------------------------------------------------------------------------------------------


class CacheRecorder(nn.Module):
    """small_cnn, recording at each forward pass whether autocast may cache weight casts, and
    whether the pass is a replay."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.net = small_cnn()
        self.fake = fake
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_cache_enabled(), self.fake.inside))
        return self.net(x)


def test_capture_inside_autocast_caches_no_casts_and_keys_on_the_block(cache, fake):
    model = CacheRecorder(fake)
    x, y = batch()
    kw = dict(eps=0.3, alpha=0.05, steps=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        graphed = _graphed(pgd_step_, model, x, y, fake, generator=gen(0), **kw)
        assert torch.is_autocast_cache_enabled()  # the caller's setting is back
        warm_ups = [cache_on for cache_on, replay in model.seen if not replay]
        eager = fused_pgd(model, x, y, generator=gen(0), **kw)
    assert torch.equal(graphed, eager)
    assert warm_ups == [False, False, False]
    assert len(fake.captures) == 1
    # Outside the block the same call is another computation: a capture of its own.
    model.seen.clear()
    outside = _graphed(pgd_step_, model, x, y, fake, generator=gen(0), **kw)
    assert len(fake.captures) == 2
    assert torch.equal(outside, fused_pgd(model, x, y, generator=gen(0), **kw))


# ---------------------------------------------------------------------------------------------
# Pools, streams and devices of a model's graphs
# ---------------------------------------------------------------------------------------------


def test_a_models_graphs_share_one_pool(cache, fake):
    model, other = small_cnn(), small_cnn(1)
    x, y = batch()
    for alpha in (0.01, 0.02, 0.03):
        _graphed(pgd_step_, model, x, y, fake, eps=0.3, alpha=alpha, steps=1)
    _graphed(pgd_step_, other, x, y, fake, eps=0.3, alpha=0.01, steps=1)
    first, second, third, others = fake.captures
    assert first.pool is None  # a new pool ...
    assert second.pool is first.new_pool and third.pool is first.new_pool  # ... then shared
    assert others.pool is None  # each model has its own
    assert len(fake.streams_made) == 1  # one side stream for every capture on the device
    assert {c.stream for c in fake.captures} == set(fake.streams_made)


def test_eviction_leaves_the_pool_to_the_graphs_left(monkeypatch, fake):
    cache = GraphCache(per_model=1)
    monkeypatch.setattr(attack_graph, "GRAPH_CACHE", cache)
    model = small_cnn()
    x, y = batch()
    # Each capture shares the pool of the one before, which is then evicted: the pool lives on
    # in the graph just captured (the stand-in refuses a pool no live graph holds).
    for alpha in (0.01, 0.02, 0.03):
        _graphed(pgd_step_, model, x, y, fake, eps=0.3, alpha=alpha, steps=1)
    pool = fake.captures[0].new_pool
    assert [c.pool for c in fake.captures] == [None, pool, pool]
    assert fake.live_graphs() == 1
    del model
    gc.collect()
    assert fake.live_graphs() == 0 and len(cache) == 0


# ---------------------------------------------------------------------------------------------
# The cache: least recently used first out, weak on the model
# ---------------------------------------------------------------------------------------------


def test_graph_cache_evicts_the_least_recently_used():
    model = small_cnn()
    cache = GraphCache(per_model=2)
    cache.put(model, "a", 1)
    cache.put(model, "b", 2)
    assert cache.get(model, "a") == 1  # a hit makes "a" the most recent
    cache.put(model, "c", 3)
    assert cache.keys(model) == ["a", "c"]
    assert cache.get(model, "b") is None
    cache.put(model, "a", 4)  # replacing an entry makes it the most recent too
    cache.put(model, "d", 5)
    assert cache.keys(model) == ["a", "d"]
    assert cache.get(model, "a") == 4
    assert cache.get(small_cnn(1), "a") is None  # entries are per model
    assert cache.pool(model) is cache.pool(model) is not cache.pool(small_cnn(1))


def test_attack_evicts_the_least_recently_used_capture(monkeypatch, fake):
    cache = GraphCache(per_model=2)
    monkeypatch.setattr(attack_graph, "GRAPH_CACHE", cache)
    model = small_cnn()
    x, y = batch()
    for alpha in (0.01, 0.02, 0.01, 0.03):  # 0.01 is used again before 0.03 comes in
        _graphed(pgd_step_, model, x, y, fake, eps=0.3, alpha=alpha, steps=1)
    assert len(fake.captures) == 3  # 0.01 was replayed from the cache
    model.eval()  # the flags the attack ran with (model_mode="eval")
    expected = [
        attack_graph.graph_key(
            pgd_step_, model, x, y, 0.3, alpha, "linf", None, False, (0.0, 1.0), None
        )
        for alpha in (0.01, 0.03)
    ]
    assert cache.keys(model) == expected


@pytest.mark.parametrize("loss", ["default", "bound-method", "object-holding-the-model"])
def test_graph_cache_does_not_keep_models_alive(cache, loss):
    # A real graph holds no Python reference to what it captured: keep_fn=False.
    fake = FakeCuda(keep_fn=False)
    model = WithLoss()
    loss_fn = {"default": None, "bound-method": model.loss,
               "object-holding-the-model": ModelLoss(model)}[loss]  # fmt: skip
    x, y = batch()
    _graphed(pgd_step_, model, x, y, fake, eps=0.3, alpha=0.05, steps=2, loss_fn=loss_fn)
    assert len(cache) == 1 and len(fake.captures) == 1
    ref = weakref.ref(model)
    del model, loss_fn
    gc.collect()
    assert ref() is None
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------------
# Labels are checked outside the graph
# ---------------------------------------------------------------------------------------------


def test_labels_are_checked_outside_the_graph(cache, fake, monkeypatch):
    model = small_cnn()
    x, y = batch()
    checked = []
    check = _common.check_label_range

    def spy(label_range, num_classes):
        assert not fake.inside, "label check inside the captured step"
        checked.append(num_classes)
        check(label_range, num_classes)

    # ClassCount checks through _common, a cache hit through the pgd module.
    monkeypatch.setattr(_common, "check_label_range", spy)
    monkeypatch.setattr(attack_mod, "check_label_range", spy)
    kw = dict(eps=0.3, alpha=0.05, steps=2)
    bad = y.clone()
    bad[2] = 10
    # The capture's first warm-up run checks the labels: no graph is kept for bad ones.
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 9\].*got 10"):
        _graphed(pgd_step_, model, x, bad, fake, **kw)
    assert cache.keys(model) == []
    _graphed(pgd_step_, model, x, y, fake, **kw)
    assert checked == [10, 10]
    # A cache hit checks the new labels against the class count seen at the capture.
    bad[2] = -1
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 9\].*got -1"):
        _graphed(pgd_step_, model, x, bad, fake, **kw)
    assert checked == [10, 10, 10]
    _graphed(pgd_step_, model, x, y, fake, check_inputs=False, **kw)
    assert checked == [10, 10, 10]  # check_inputs=False: no check


# ---------------------------------------------------------------------------------------------
# CUDA: the real graphs
# ---------------------------------------------------------------------------------------------


def _close_to_eager(graphed: torch.Tensor, eager: torch.Tensor) -> bool:
    """The documented tolerance: cuDNN may pick other kernels under capture, so the signs of a
    few near-zero gradient elements can differ; under 1% of elements differ by more than 1e-5.
    A graph that reads freed or stale memory moves most elements elsewhere (or nowhere)."""
    return bool((graphed - eager).abs().gt(1e-5).float().mean() < 0.01)


def _scribble(specs) -> list[torch.Tensor]:
    """NaN-filled tensors of the ``(shape, dtype)`` just freed: the caching allocator hands them
    the freed blocks, so a graph that still reads those blocks reads NaN."""
    return [
        torch.full(shape, float("nan"), dtype=dtype, device="cuda")
        for shape, dtype in specs
        for _ in range(2)
    ]


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_needs_an_nn_module():
    x, y = batch(device="cuda")
    with pytest.raises(TypeError, match="cuda_graph=True needs model to be an nn.Module"):
        fused_pgd(lambda t: t.flatten(1), x, y, eps=0.3, alpha=0.05, steps=1, cuda_graph=True)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cuda_graph_matches_eager(cache, norm):
    model = small_cnn().cuda()
    x, y = batch(device="cuda")
    kw = dict(eps=0.3 if norm == "linf" else 1.0, alpha=0.05, steps=5, norm=norm)
    for pgd in ATTACKS:
        start = pgd(model, x, y, generator=gen(0, "cuda"), **dict(kw, steps=0))
        eager = pgd(model, x, y, generator=gen(0, "cuda"), **kw)
        graphed = pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
        assert _close_to_eager(graphed, eager), pgd.__name__
        assert (eager - start).abs().gt(1e-5).float().mean() > 0.5  # so graphed moved too
        again = pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
        assert torch.equal(again, graphed)
    assert len(cache.keys(model)) == 2  # one capture per attack, each replayed from the cache
    del model
    gc.collect()
    assert len(cache) == 0  # the cache does not keep models alive


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_leaves_batchnorm_statistics_as_eager_does(cache):
    # fastpgd.PGD with BatchNorm in training mode during the attack.
    eager_model, graph_model = BatchNormNet().cuda(), BatchNormNet().cuda()
    x, y = batch(device="cuda")
    runs = []
    with process_settings(deterministic=True, tf32=False, device=torch.device("cuda")):
        for model, graphed in ((eager_model, False), (graph_model, True)):
            atk = PGD(model, eps=0.3, alpha=0.05, steps=5, cuda_graph=graphed,
                      generator=gen(0, "cuda"))  # fmt: skip
            atk.set_model_training_mode(model_training=True, batchnorm_training=True)
            runs.append(atk(x, y))
    assert _close_to_eager(runs[1], runs[0])
    # One update per step, none per warm-up run: the count is exact whatever the kernels.
    assert int(graph_model.bn.num_batches_tracked) == int(eager_model.bn.num_batches_tracked) == 5
    # Three extra updates (momentum 0.1) would move each statistic by about a sixth of its
    # batch value; other kernels under capture move it by float rounding and the few iterate
    # elements of the documented tolerance, orders of magnitude less.
    for a, b in zip(eager_model.buffers(), graph_model.buffers(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-2, atol=1e-4)
    for a, b in zip(eager_model.parameters(), graph_model.parameters(), strict=True):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_inside_autocast_reads_no_freed_casts(cache):
    model = small_cnn().cuda()
    x, y = batch(device="cuda")
    kw = dict(eps=0.3, alpha=0.05, steps=5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = fused_pgd(model, x, y, generator=gen(0, "cuda"), **kw)
        first = fused_pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
    # The block has exited: autocast dropped its cached bf16 weights; overwrite that memory.
    junk = _scribble([(p.shape, torch.bfloat16) for p in model.parameters()])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        again = fused_pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
    del junk
    assert _close_to_eager(first, eager)
    assert torch.equal(again, first)  # the same graph, reading its own casts
    # Outside autocast the call is float32: not a replay of the bf16 graph.
    outside = fused_pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
    assert _close_to_eager(outside, fused_pgd(model, x, y, generator=gen(0, "cuda"), **kw))
    assert len(cache.keys(model)) == 2


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_follows_swapped_parameter_storage(cache):
    model = small_cnn().cuda()
    x, y = batch(device="cuda")
    kw = dict(eps=0.3, alpha=0.05, steps=5)
    fused_pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
    old = [p.data for p in model.parameters()]
    for p in model.parameters():
        p.data = p.data * 0.5 + 0.01  # an EMA-style swap: new storage, other values
    specs = [(t.shape, t.dtype) for t in old]
    del old  # the storage the first graph read is freed ...
    junk = _scribble(specs)  # ... and overwritten
    graphed = fused_pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
    eager = fused_pgd(model, x, y, generator=gen(0, "cuda"), **kw)
    del junk
    assert _close_to_eager(graphed, eager)
    assert len(cache.keys(model)) == 2


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_keeps_no_model_alive_through_its_loss(cache):
    models = [WithLoss().cuda(), WithLoss().cuda()]
    x, y = batch(device="cuda")
    for model, loss_fn in ((models[0], models[0].loss), (models[1], ModelLoss(models[1]))):
        fused_pgd(model, x, y, eps=0.3, alpha=0.05, steps=2, loss_fn=loss_fn, cuda_graph=True)
    assert len(cache) == 2
    refs = [weakref.ref(m) for m in models]
    del models, model, loss_fn
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert len(cache) == 0


@needs_cuda
@pytest.mark.cuda
def test_cuda_graphs_of_a_model_share_their_memory(cache):
    # Madry's CNN on 28x28 images at batch 256: a capture's activations (about 100 MB) dwarf
    # its static buffers (under 1 MB each) and the side stream's cuBLAS workspace.
    from fastpgd.models import MadryCNN

    torch.manual_seed(0)
    model = MadryCNN(image_size=28).cuda()
    x = torch.rand(256, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")

    def reserved() -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved()

    base = reserved()
    fused_pgd(model, x, y, eps=0.3, alpha=0.01, steps=2, cuda_graph=True)
    one = reserved() - base
    for alpha in (0.02, 0.03, 0.04):
        fused_pgd(model, x, y, eps=0.3, alpha=alpha, steps=2, cuda_graph=True)
    four = reserved() - base
    assert len(cache.keys(model)) == 4
    # Four graphs in one pool, never replayed at once, reuse each other's blocks: only their
    # static buffers add up. Four pools (and four side streams) would take about 4x one.
    assert four < 1.5 * one, (one, four)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@two_gpus
@pytest.mark.cuda
def test_cuda_graph_on_a_device_that_is_not_the_current_one(cache):
    model = small_cnn().to("cuda:1")
    x, y = batch(device="cuda:1")
    kw = dict(eps=0.3, alpha=0.05, steps=5)
    with torch.cuda.device(0):
        graphed = fused_pgd(model, x, y, generator=gen(0, "cuda:1"), cuda_graph=True, **kw)
        again = fused_pgd(model, x, y, generator=gen(0, "cuda:1"), cuda_graph=True, **kw)
        eager = fused_pgd(model, x, y, generator=gen(0, "cuda:1"), **kw)
        assert torch.cuda.current_device() == 0
    assert _close_to_eager(graphed, eager)
    assert torch.equal(again, graphed)
