"""The fused PGD step against its plain-PyTorch reference; autograd, DLPack and torch.compile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpgd
import fastpgd.step
from conftest import DEVICES, EXT, needs_ext
from fastpgd import pgd_step_, reference_pgd_step
from step_backends import BACKENDS, using

LOW = (torch.float16, torch.bfloat16)


def _exact(actual, expected):
    # Bit for bit up to the sign of zero and NaN payloads.
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _ulp_close(actual, expected, ulps=1):
    assert actual.dtype == expected.dtype
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    a = actual[~nan].double()
    e = expected[~nan].double()
    # The gap to the next representable value at e, in e's dtype.
    step = (
        torch.nextafter(expected[~nan].float().abs(), torch.tensor(math.inf))
        .to(expected.dtype)
        .double()
        - e.abs()
    ).abs()
    tiny = torch.finfo(expected.dtype).smallest_normal * torch.finfo(expected.dtype).eps
    assert bool(((a - e).abs() <= ulps * torch.maximum(step, torch.tensor(tiny)) + 0).all())


def _inputs(shape, dtype, device, seed=0, special=False):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64)
    x_adv = x0 + 0.6 * (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    if special and grad.numel() >= 4:
        flat = grad.view(-1)
        flat[0], flat[1], flat[2], flat[3] = 0.0, math.nan, math.inf, -math.inf
    return tuple(t.to(dtype=dtype, device=device) for t in (x_adv, grad, x0))


def _both(x_adv, grad, x0, **kw):
    expected = reference_pgd_step(x_adv, grad, x0, **kw)
    out = x_adv.clone()
    ret = pgd_step_(out, grad, x0, **kw)
    assert ret is out
    return out, expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(50, 1, 28, 28), (1, 3, 5), (7,), (), (0, 3), (3, 0)])
@pytest.mark.parametrize("clamp", [(0.0, 1.0), None, (-0.25, 0.5)])
def test_linf_exact(device, dtype, shape, clamp):
    x_adv, grad, x0 = _inputs(shape, dtype, device, special=True)
    out, expected = _both(x_adv, grad, x0, eps=0.3, alpha=0.01, clamp=clamp)
    _exact(out, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linf_large_parallel_exact(device, dtype):
    # Above the kernel's OpenMP threshold, with per-sample eps crossing chunk boundaries.
    x_adv, grad, x0 = _inputs((3, 70001), dtype, device, special=True)
    eps = torch.tensor([0.1, 0.0, 0.5], dtype=dtype, device=device)
    out, expected = _both(x_adv, grad, x0, eps=eps, alpha=0.03)
    _exact(out, expected)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    eps=st.floats(0.0, 2.0) | st.just(math.inf),
    alpha=st.floats(-1.0, 1.0),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**16),
    clamp=st.sampled_from([(0.0, 1.0), None, (0.2, 0.2)]),
)
def test_linf_exact_hypothesis(shape, dtype, eps, alpha, per_sample, seed, clamp):
    x_adv, grad, x0 = _inputs(tuple(shape), dtype, "cpu", seed=seed, special=seed % 2 == 0)
    if per_sample:
        batch = shape[0] if shape else 1
        gen = torch.Generator().manual_seed(seed)
        eps = (torch.rand(batch, generator=gen, dtype=torch.float64) * eps).to(dtype)
        if eps.numel() and math.isinf(float(eps.max())):
            eps = torch.nan_to_num(eps)
    out, expected = _both(x_adv, grad, x0, eps=eps, alpha=alpha, clamp=clamp)
    _exact(out, expected)


def test_linf_semantics_by_hand():
    # sign(0) = 0, NaN gradient -> sign 0 (torch.sign on the CPU), x outside the ball pulled in.
    x0 = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    x_adv = torch.tensor([0.5, 0.5, 0.5, 0.95, 0.0])
    grad = torch.tensor([0.0, math.nan, -2.0, 1.0, 1.0])
    out = x_adv.clone()
    pgd_step_(out, grad, x0, eps=0.3, alpha=0.1)
    expected = torch.tensor([0.5, 0.5, 0.4, 0.8, 0.2])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clamp", [(0.0, 1.0), None])
def test_linf_nan_bounds_propagate(device, clamp):
    # A NaN ball bound (x0 NaN, or x0 and eps both infinite) makes the result NaN, as
    # torch.maximum/minimum do in the reference; finite elements beside it are unaffected.
    x0 = torch.tensor([0.5, math.nan, math.inf, -math.inf, 0.2], device=device)
    grad = torch.tensor([1.0, -1.0, 1.0, 0.0, math.nan], device=device)
    for eps in (0.3, math.inf):
        out = x0.clone()
        pgd_step_(out, grad, x0, eps=eps, alpha=0.1, clamp=clamp)
        expected = reference_pgd_step(x0, grad, x0, eps=eps, alpha=0.1, clamp=clamp)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        assert out.isnan().tolist() == expected.isnan().tolist()
        assert math.isnan(out[1].item()) and out[0].item() == pytest.approx(0.6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_view_with_storage_offset(device, dtype):
    base_x, grad, x0 = _inputs((5, 4, 3), dtype, device, seed=3)
    x_adv = base_x[2:]  # contiguous, storage offset 24
    assert x_adv.storage_offset() > 0 and x_adv.is_contiguous()
    expected = reference_pgd_step(x_adv, grad[2:], x0[1:4], eps=0.2, alpha=0.05)
    before = base_x[:2].clone()
    pgd_step_(x_adv, grad[2:], x0[1:4], eps=0.2, alpha=0.05)
    _exact(x_adv, expected)
    assert torch.equal(base_x[:2], before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_low_precision_within_one_ulp(device, dtype, norm):
    x_adv, grad, x0 = _inputs((6, 3, 17), dtype, device, seed=1, special=norm == "linf")
    eps = torch.full((6,), 0.3, dtype=dtype, device=device)
    out, expected = _both(x_adv, grad, x0, eps=eps, alpha=0.02, norm=norm)
    _ulp_close(out.cpu(), expected.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(8, 3, 9, 9), (1, 100), (5,), (), (2, 1)])
@pytest.mark.parametrize("eps", [0.05, 3.0])
def test_l2_tolerance(device, shape, eps):
    x_adv, grad, x0 = _inputs(shape, torch.float32, device, seed=2)
    out = x_adv.clone()
    pgd_step_(out, grad, x0, eps=eps, alpha=0.1, norm="l2", clamp=None)
    ref64 = reference_pgd_step(
        x_adv.double(), grad.double(), x0.double(), eps=eps, alpha=0.1, norm="l2", clamp=None
    )
    # Relative to the magnitude of the terms summed (x0 + d * factor): where they cancel, the
    # float32 rounding of each term is all a float32 kernel can promise.
    scale = x0.double().abs() + (ref64 - x0.double()).abs()
    rel = (out.double() - ref64).abs() / scale.clamp_min(1e-30)
    if rel.numel():
        assert float(rel.max()) <= 1e-6
    # The projection holds: every sample's displacement is within eps (plus float32 rounding).
    if out.dim() > 0 and out.numel():
        d = (out.double() - x0.double()).reshape(out.shape[0], -1).norm(dim=1)
        assert bool((d <= eps * (1 + 1e-6)).all())


def test_l2_float64_close_to_reference():
    x_adv, grad, x0 = _inputs((4, 50), torch.float64, "cpu", seed=5)
    out, expected = _both(x_adv, grad, x0, eps=0.5, alpha=0.3, norm="l2")
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-15)


def test_l2_zero_gradient_uses_tiny_floor():
    x0 = torch.full((2, 3), 0.5)
    x_adv = x0.clone()
    pgd_step_(x_adv, torch.zeros(2, 3), x0, eps=1.0, alpha=0.1, norm="l2")
    assert torch.equal(x_adv, x0)


@needs_ext
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_conversions_exhaustive(name):
    dtype = getattr(torch, name)
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    # Widening: every one of the 65536 patterns.
    wide = torch.empty(values.shape, dtype=torch.float32)
    fastpgd._ext._C._cast(values, wide)
    expected_wide = values.float()
    nan = torch.isnan(expected_wide)
    assert torch.equal(torch.isnan(wide), nan)
    assert torch.equal(wide[~nan].view(torch.int32), expected_wide[~nan].view(torch.int32))
    # Narrowing: every pattern, the float32 neighbours around it, and the midpoints to the next
    # pattern (where round-to-nearest-even decides), including subnormals and overflow.
    f = expected_wide[~nan]
    up = torch.nextafter(f, torch.tensor(math.inf))
    nxt = f.to(dtype).float()
    nxt = torch.nextafter(f.to(dtype), torch.tensor(math.inf, dtype=dtype)).float()
    mid = ((f.double() + nxt.double()) / 2).float()
    probes = torch.cat(
        [
            f,
            up,
            torch.nextafter(f, torch.tensor(-math.inf)),
            mid,
            torch.nextafter(mid, torch.tensor(math.inf)),
            torch.nextafter(mid, torch.tensor(-math.inf)),
            torch.tensor([math.nan, -math.nan, 65519.99, 65520.0, 1e-8, -3e38]),
        ]
    )
    probes = probes[torch.isfinite(probes) | torch.isnan(probes)]
    narrow = torch.empty(probes.shape, dtype=dtype)
    fastpgd._ext._C._cast(probes, narrow)
    expected = probes.to(dtype)
    pnan = torch.isnan(probes)
    assert bool(torch.isnan(narrow[pnan]).all())
    assert torch.equal(narrow[~pnan].view(torch.int16), expected[~pnan].view(torch.int16))


# --- arguments (the bad ones: tests/test_step_boundary.py) -------------------------------------


def _good(dtype=torch.float32):
    return _inputs((4, 3), dtype, "cpu", seed=9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_requires_grad_allowed_under_no_grad_and_for_inputs(backend):
    x_adv, grad, x0 = _good()
    expected = reference_pgd_step(x_adv, grad, x0, eps=0.3, alpha=0.01)
    x_adv.requires_grad_()
    grad.requires_grad_()
    x0.requires_grad_()
    with torch.no_grad(), using(backend):
        pgd_step_(x_adv, grad, x0, eps=0.3, alpha=0.01)
    _exact(x_adv.detach(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_version_counter_bumped(backend):
    x_adv, grad, x0 = _good()
    v = x_adv._version
    with using(backend):
        pgd_step_(x_adv, grad, x0, eps=0.3, alpha=0.01)
    assert x_adv._version > v


def _recording_entry(monkeypatch, stream=None):
    """Replace the step's entry by a recorder of its arguments; with ``stream``, act as on torch
    < 2.10, where the entry exports through __dlpack__ and must be told the CUDA stream."""
    calls = []
    monkeypatch.setattr(fastpgd.step, "_pgd_step_entry", lambda *args: calls.append(args))
    if stream is not None:
        monkeypatch.setattr(fastpgd.step, "_NO_EXCHANGE_API", True)
        monkeypatch.setattr(fastpgd.step, "_stream_args", lambda x_adv: (stream,))
    return calls


def test_without_exchange_api_tensors_requiring_grad_reach_the_entry_detached(monkeypatch):
    # __dlpack__ refuses a tensor that requires grad; under no_grad x_adv may require it, and
    # grad, x0 and eps may always.
    calls = _recording_entry(monkeypatch, stream=7)
    x_adv, grad, x0 = (t.requires_grad_() for t in _good())
    eps = torch.full((4,), 0.3, requires_grad=True)
    with torch.no_grad():
        assert pgd_step_(x_adv, grad, x0, eps=eps, alpha=0.01) is x_adv
    (args,) = calls
    assert [t.requires_grad for t in (*args[:4],)] == [False] * 4
    assert [t.data_ptr() for t in args[:4]] == [t.data_ptr() for t in (x_adv, grad, x0, eps)]
    assert args[4:] == (0.01, "linf", (0.0, 1.0), 7)


@pytest.mark.parametrize("eps", [0.3, torch.full((4,), 0.3)], ids=["pgd_step_", "pgd_step_eps_"])
def test_custom_ops_tell_the_entry_the_stream_as_eager_does(monkeypatch, eps):
    # Under torch.compile the step runs as a custom op; on torch < 2.10 its kernel must name the
    # current CUDA stream as the eager path does, or the kernel runs on the legacy default stream.
    calls = _recording_entry(monkeypatch, stream=12345)
    x_adv, grad, x0 = _good()
    op = (
        torch.ops.fastpgd.pgd_step_eps_
        if isinstance(eps, torch.Tensor)
        else torch.ops.fastpgd.pgd_step_
    )
    op(x_adv, grad, x0, eps, 0.01, "l2", None)
    pgd_step_(x_adv, grad, x0, eps=eps, alpha=0.01, norm="l2", clamp=None)
    assert len(calls) == 2
    for args in calls:
        assert args[0] is x_adv and args[1] is grad and args[2] is x0
        assert args[4:] == (0.01, "l2", None, 12345)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_sample_eps", [False, True], ids=["pgd_step_", "pgd_step_eps_"])
def test_opcheck(backend, device, norm, per_sample_eps):
    # torch.library.opcheck: the schema (x_adv is the only input written), fake tensors, autograd
    # registration and AOT dispatch of both custom ops.
    x_adv, grad, x0 = (t.to(device) for t in _good())
    if per_sample_eps:
        op, eps = torch.ops.fastpgd.pgd_step_eps_, torch.full((4,), 0.3, device=device)
    else:
        op, eps = torch.ops.fastpgd.pgd_step_, 0.3
    with using(backend):
        result = torch.library.opcheck(op.default, (x_adv, grad, x0, eps, 0.05, norm, [0.0, 1.0]))
    assert set(result.values()) == {"SUCCESS"}, result


@needs_ext
def test_numpy_dlpack_path_and_read_only():
    # numpy arrays have no C exchange API: this goes through __dlpack__ capsules.
    rng = np.random.default_rng(0)
    x0 = rng.random((3, 5), dtype=np.float32)
    x_adv = x0 + np.float32(0.05)
    grad = rng.standard_normal((3, 5)).astype(np.float32)
    expected = reference_pgd_step(
        torch.from_numpy(x_adv.copy()),
        torch.from_numpy(grad),
        torch.from_numpy(x0),
        eps=0.3,
        alpha=0.01,
    )
    fastpgd._ext._C.pgd_step_(x_adv, grad, x0, 0.3, 0.01, "linf", (0.0, 1.0))
    _exact(torch.from_numpy(x_adv), expected)
    x_adv.flags.writeable = False
    with pytest.raises(ValueError, match="x_adv"):
        fastpgd._ext._C.pgd_step_(x_adv, grad, x0, 0.3, 0.01, "linf", (0.0, 1.0))


@needs_ext
def test_cuda_tensor_without_cuda_build_or_mismatched_device():
    if EXT["cuda"]:
        pytest.skip("this build has CUDA kernels")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to make a CUDA tensor")
    x = torch.rand(2, 2, device="cuda")
    with pytest.raises(ValueError, match="cuda"):
        pgd_step_(x, x.clone(), x.clone(), eps=0.1, alpha=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_loop_matches_eager(backend):
    torch._dynamo.reset()
    x0 = torch.rand(4, 1, 6, 6)
    w = torch.randn(36, 3)

    def attack(x0, steps=3):
        x = x0.clone()
        for _ in range(steps):
            grad = torch.tanh((x.reshape(4, -1) @ w).sum() * x)  # a cheap stand-in gradient
            pgd_step_(x, grad, x0, eps=0.1, alpha=0.03)
        return x

    with using(backend):
        expected = attack(x0)
        compiled = torch.compile(attack, backend="aot_eager", fullgraph=True)
        _exact(compiled(x0), expected)
        explanation = torch._dynamo.explain(attack)(x0)
    assert explanation.graph_break_count == 0
    graph_text = "".join(str(g.graph) for g in explanation.graphs)
    assert "fastpgd.pgd_step_" in graph_text


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_step_checks_its_arguments(backend):
    # Under torch.compile the scalars are checked while tracing, the rest when the op runs: the
    # same errors as in eager mode.
    torch._dynamo.reset()
    x_adv, grad, x0 = _good()

    def step(x, eps, alpha):
        x = x.clone()
        pgd_step_(x, grad, x0, eps=eps, alpha=alpha)
        return x

    compiled = torch.compile(step, backend="aot_eager")
    with using(backend):
        with pytest.raises(TypeError, match="eps must be a real number, got str"):
            compiled(x_adv, "0.3", 0.01)
        with pytest.raises(ValueError, match="alpha must be finite, got nan"):
            compiled(x_adv, 0.3, math.nan)
        with pytest.raises(ValueError, match="eps must be >= 0 and not NaN, got -1 for sample 0"):
            compiled(x_adv, torch.full((4,), -1.0), 0.01)
        with pytest.raises(ValueError, match="grad must have the same shape as x_adv"):
            compiled(x_adv[:3], 0.3, 0.01)
