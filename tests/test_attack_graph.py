"""The captured-step attack (``cuda_graph=True``) and its cache.

On the CPU the graph is a stand-in that replays by calling the captured function, so the
copy-in / replay / copy-out logic, the out-of-place step's result, the cache key, the cache's
eviction and the label check run here against eager results; on CUDA the real graph runs.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect

import pytest
import torch
import torch.nn.functional as F

from attack_common import batch, gen, small_cnn
from conftest import needs_cuda
from fastpgd.attacks import _common
from fastpgd.attacks import graph as attack_graph
from fastpgd.attacks import pgd as attack_mod
from fastpgd.attacks.graph import GraphCache
from fastpgd.attacks.pgd import fused_pgd, reference_pgd
from fastpgd.step import pgd_step_, reference_pgd_step

ATTACKS = [fused_pgd, reference_pgd]
STEPS = {fused_pgd: pgd_step_, reference_pgd: reference_pgd_step}
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(fused_pgd).parameters.items()
    if p.default is not inspect.Parameter.empty
}


class EagerGraph:
    """Stands in for a CUDA graph: ``capture`` warms up and records, ``replay`` calls again.

    A CUDA graph capture runs the Python once to record its kernels; so does this stand-in,
    with ``inside`` set, as during each replay: code that must not run inside a graph can
    look at it.
    """

    def __init__(self, log: list):
        self.fn = None
        self.inside = False
        log.append(self)

    def capture(self, fn):
        for _ in range(3):  # the warm-up runs of CudaGraph
            fn()
        self.fn = fn
        self.replay()

    def replay(self):
        self.inside = True
        try:
            self.fn()
        finally:
            self.inside = False


@pytest.fixture
def cache(monkeypatch):
    """A fresh, empty graph cache for the test."""
    fresh = GraphCache()
    monkeypatch.setattr(attack_graph, "GRAPH_CACHE", fresh)
    return fresh


def _graphed(step_fn, model, x, y, graphs: list, **kw):
    """The attack with ``cuda_graph=True`` on CPU tensors, recording into stand-in graphs."""
    options = attack_mod._pgd_options(model, x, y, **dict(_DEFAULTS, **kw))
    options = dataclasses.replace(options, cuda_graph=True)  # past the check for CUDA tensors
    return attack_mod._pgd(step_fn, options, lambda device: EagerGraph(graphs))


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
def test_captured_step_equals_eager(cache, pgd, kw):
    model = small_cnn()
    x, y = batch()
    graphs = []
    eager = pgd(model, x, y, steps=5, generator=gen(0), **kw)
    graphed = _graphed(STEPS[pgd], model, x, y, graphs, steps=5, generator=gen(0), **kw)
    start = pgd(model, x, y, steps=0, generator=gen(0), **kw)
    if kw.get("return_delta"):
        torch.testing.assert_close(graphed[1], eager[1], rtol=0, atol=0)
        graphed, eager, start = graphed[0], eager[0], start[0]
    assert len(graphs) == 1
    assert torch.equal(graphed, eager)
    assert (graphed - start).abs().gt(1e-5).float().mean() > 0.5  # the steps moved it


@pytest.mark.parametrize("pgd", ATTACKS)
def test_captured_step_replays_from_the_cache_with_new_inputs(cache, pgd):
    model = small_cnn()
    graphs = []
    for seed in range(3):
        x, y = batch(seed=seed)
        eps = torch.full((6,), 0.1 * (seed + 1))
        kw = dict(eps=eps, alpha=0.05, steps=3)
        graphed = _graphed(STEPS[pgd], model, x, y, graphs, generator=gen(seed), **kw)
        assert torch.equal(graphed, pgd(model, x, y, generator=gen(seed), **kw))
    assert len(graphs) == 1  # one capture, replayed with each batch, labels and eps
    assert len(cache.keys(model)) == 1


def test_the_step_function_is_part_of_the_key(cache):
    model = small_cnn()
    x, y = batch()
    calls = []

    def fused(*args, **kwargs):
        calls.append("fused")
        return pgd_step_(*args, **kwargs)

    def reference(*args, **kwargs):
        calls.append("reference")
        return reference_pgd_step(*args, **kwargs)

    graphs = []
    kw = dict(eps=0.3, alpha=0.05, steps=2, generator=gen(1))
    _graphed(fused, model, x, y, graphs, **kw)
    calls.clear()
    _graphed(reference, model, x, y, graphs, **kw)
    assert calls and set(calls) == {"reference"}  # not a replay of the fused capture
    assert len(graphs) == 2 and len(cache.keys(model)) == 2


def test_graph_key_separates_what_a_capture_depends_on():
    model = small_cnn().eval()
    x, y = batch()
    base = dict(
        eps=0.3,
        alpha=0.01,
        norm="linf",
        loss_fn=None,
        targeted=False,
        clamp=(0.0, 1.0),
        amp_dtype=None,
    )

    def key(step_fn=pgd_step_, x=x, y=y, **kw):
        return attack_graph.graph_key(step_fn, model, x, y, **dict(base, **kw))

    assert key() == key(x=x.clone(), y=y.clone())
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
        dict(x=x[:3], y=y[:3]),
        dict(x=x.double()),
        dict(y=y.int()),
    ):
        assert key(**change) != key(), change
    before = key()
    model.train()
    assert key() != before


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


def test_attack_evicts_the_least_recently_used_capture(monkeypatch):
    cache = GraphCache(per_model=2)
    monkeypatch.setattr(attack_graph, "GRAPH_CACHE", cache)
    model = small_cnn()
    x, y = batch()
    graphs = []
    for alpha in (0.01, 0.02, 0.01, 0.03):  # 0.01 is used again before 0.03 comes in
        _graphed(pgd_step_, model, x, y, graphs, eps=0.3, alpha=alpha, steps=1)
    assert len(graphs) == 3  # 0.01 was replayed from the cache
    model.eval()  # the flags the attack ran with (model_mode="eval")
    expected = [
        attack_graph.graph_key(
            pgd_step_, model, x, y, 0.3, alpha, "linf", None, False, (0.0, 1.0), None
        )
        for alpha in (0.01, 0.03)
    ]
    assert cache.keys(model) == expected


def test_graph_cache_does_not_keep_models_alive(cache):
    model = small_cnn()
    x, y = batch()
    _graphed(pgd_step_, model, x, y, [], eps=0.3, alpha=0.05, steps=2)
    assert len(cache) == 1
    del model
    gc.collect()
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------------
# Labels are checked outside the graph
# ---------------------------------------------------------------------------------------------


def test_labels_are_checked_outside_the_graph(cache, monkeypatch):
    model = small_cnn()
    x, y = batch()
    graphs = []
    checked = []
    check = _common.check_label_range

    def spy(label_range, num_classes):
        assert not any(g.inside for g in graphs), "label check inside the captured step"
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
        _graphed(pgd_step_, model, x, bad, graphs, **kw)
    assert cache.keys(model) == []
    _graphed(pgd_step_, model, x, y, graphs, **kw)
    assert checked == [10, 10]
    # A cache hit checks the new labels against the class count seen at the capture.
    bad[2] = -1
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 9\].*got -1"):
        _graphed(pgd_step_, model, x, bad, graphs, **kw)
    assert checked == [10, 10, 10]
    _graphed(pgd_step_, model, x, y, graphs, check_inputs=False, **kw)
    assert checked == [10, 10, 10]  # check_inputs=False: no check


# ---------------------------------------------------------------------------------------------
# CUDA: the real graphs
# ---------------------------------------------------------------------------------------------


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
        # Same start, same steps; cuDNN may pick other kernels under capture, so sign flips of
        # near-zero gradients can differ in a few elements (the documented tolerance).
        assert (graphed - eager).abs().gt(1e-5).float().mean() < 0.01, pgd.__name__
        assert (eager - start).abs().gt(1e-5).float().mean() > 0.5  # so graphed moved too
        again = pgd(model, x, y, generator=gen(0, "cuda"), cuda_graph=True, **kw)
        assert torch.equal(again, graphed)
    assert len(cache.keys(model)) == 2  # one capture per attack, each replayed from the cache
    del model
    gc.collect()
    assert len(cache) == 0  # the cache does not keep models alive
