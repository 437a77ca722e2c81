"""The fused PGD step on CUDA tensors against the PyTorch reference on the same tensors.

float32/float64 Linf must match bit for bit; float16/bfloat16 within one ulp; L2 in float32
within 1e-6 relative error of a float64 reference. Shapes cover the wide-access path, odd sizes
that leave a scalar tail, samples that straddle a 16-byte chunk, misaligned views (scalar
path), grids smaller than the work (grid-stride loops), the large-sample L2 block, non-default
streams and CUDA-graph capture.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastpgd
from conftest import EXT, needs_cuda, needs_ext

pytestmark = [needs_cuda, pytest.mark.cuda]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NORMS = ["linf", "l2"]
SHAPES = [
    (50, 1, 28, 28),  # the MNIST batch: one launch
    (7, 3, 5, 7),  # 105 elements per sample, 735 in all: no multiple of 2, 4 or 8
    (5,),  # one element per sample: every chunk straddles samples
    (3, 3, 64, 64),  # 12288 elements per sample: the large L2 block
    (2048, 10),  # more samples than one wave of L2 blocks
    (16, 3, 224, 224),  # more chunks than one wave of Linf blocks
]
# Linf: alpha larger than a few eps so both the eps-ball and [0, 1] clamps engage.
STEP = {"linf": {"eps": 0.03, "alpha": 0.02}, "l2": {"eps": 1.0, "alpha": 0.5}}


def _make_inputs(shape, dtype, norm, per_sample_eps, seed=0):
    """x0 in [0, 1], x_adv inside (and at) the eps-ball around it, a gradient with exact zeros."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dev, f64 = "cuda", torch.float64
    batch = shape[0]
    eps = STEP[norm]["eps"]
    x0 = torch.rand(shape, generator=gen, device=dev, dtype=f64)
    noise = torch.rand(shape, generator=gen, device=dev, dtype=f64) * 2 - 1
    if norm == "linf":
        x_adv = x0 + eps * noise
    else:
        # Radii from 0.2 eps to 1.0 eps: after the step some samples leave the ball, some not.
        flat = noise.reshape(batch, -1)
        radius = torch.linspace(0.2, 1.0, batch, device=dev, dtype=f64) * eps
        flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius[:, None]
        x_adv = x0 + flat.reshape(shape)
    x_adv = x_adv.clamp(0.0, 1.0)
    grad = torch.randn(shape, generator=gen, device=dev, dtype=f64)
    grad[torch.rand(shape, generator=gen, device=dev) < 0.1] = 0.0  # sign(0) = 0
    if per_sample_eps:
        eps = torch.linspace(0.25 * eps, 1.5 * eps, batch, device=dev, dtype=dtype)
    return x_adv.to(dtype), grad.to(dtype), x0.to(dtype), eps


def _ordered_bits16(t):
    """16-bit floats as integers that count ulps: -0 and +0 both map to 0."""
    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def _assert_within_one_ulp(out, ref):
    assert out.dtype in (torch.float16, torch.bfloat16)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan), "NaN positions differ"
    dist = (_ordered_bits16(out) - _ordered_bits16(ref)).abs()[~nan]
    worst = int(dist.max()) if dist.numel() else 0
    assert worst <= 1, f"{worst} ulps apart"


def _assert_exact(out, ref):
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)


def _assert_rel(out, ref64, rel):
    """max |out - ref| <= rel * max |ref|, NaNs at the same places."""
    out = out.to(torch.float64)
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(out), nan), "NaN positions differ"
    err = (out - ref64).abs()[~nan].max()
    scale = ref64.abs()[~nan].max().clamp_min(1.0)
    assert err <= rel * scale, f"relative error {float(err / scale):.3g} > {rel}"


def _check_step(x_adv, grad, x0, eps, norm, clamp=(0.0, 1.0)):
    """Runs the fused step in place and compares with the reference on the same inputs."""
    alpha = STEP[norm]["alpha"]
    ref = fastpgd.reference_pgd_step(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
    out = x_adv.clone()
    returned = fastpgd.pgd_step_(out, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
    assert returned is None or returned is out
    dtype = x_adv.dtype
    if dtype in (torch.float16, torch.bfloat16):
        _assert_within_one_ulp(out, ref)
    elif norm == "linf":
        _assert_exact(out, ref)
    else:
        # L2 norms are sums: compare with float64 arithmetic, not with another summation order.
        eps64 = eps.to(torch.float64) if isinstance(eps, torch.Tensor) else eps
        ref64 = fastpgd.reference_pgd_step(
            x_adv.double(),
            grad.double(),
            x0.double(),
            eps=eps64,
            alpha=alpha,
            norm=norm,
            clamp=clamp,
        )
        _assert_rel(out, ref64, 1e-6 if dtype == torch.float32 else 1e-12)
    return out


@needs_ext
@pytest.mark.skipif(not EXT["cuda"], reason="extension built without CUDA kernels")
def test_cuda_kernels_usable():
    # Built with CUDA kernels on a machine with a GPU: the extension's runtime must see it,
    # else every test below would silently exercise the pure-PyTorch fallback.
    assert fastpgd.extension_info()["cuda_available"] is True


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("per_sample_eps", [False, True], ids=["eps", "eps_per_sample"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, norm, per_sample_eps, shape):
    x_adv, grad, x0, eps = _make_inputs(shape, dtype, norm, per_sample_eps)
    out = _check_step(x_adv, grad, x0, eps, norm)
    assert not torch.equal(out, x_adv), "the step changed nothing"


@pytest.mark.parametrize("which", ["x_adv", "all"])
@pytest.mark.parametrize("shape", [(50, 1, 28, 28), (7, 3, 5, 7)], ids=["mnist", "odd"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_views(dtype, norm, shape, which):
    # Views at storage offset 1 are not 16-byte aligned: the kernels take the scalar path.
    inputs = _make_inputs(shape, dtype, norm, per_sample_eps=True)
    shifted = []
    for k, t in enumerate(inputs[:3]):
        if which == "all" or k == 0:
            buf = torch.empty(t.numel() + 1, device="cuda", dtype=dtype)
            view = buf[1:].view(shape)
            view.copy_(t)
            assert view.data_ptr() % 16 != 0
            t = view
        shifted.append(t)
    _check_step(*shifted, inputs[3], norm)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_clamp(dtype, norm):
    x_adv, grad, x0, eps = _make_inputs((9, 3, 11), dtype, norm, per_sample_eps=False)
    _check_step(x_adv * 3 - 1, grad, x0 * 3 - 1, eps, norm, clamp=None)


def test_sign_of_nan_is_zero_on_both_devices():
    # The premise of the Linf NaN-gradient behaviour below (and of the reference).
    nan = torch.tensor([math.nan, -math.nan])
    assert torch.sign(nan).tolist() == [0.0, 0.0]
    assert torch.sign(nan.cuda()).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nan_gradient(dtype, norm):
    x_adv, grad, x0, eps = _make_inputs((4, 37), dtype, norm, per_sample_eps=False)
    grad[1, 5] = float("nan")
    out = _check_step(x_adv, grad, x0, eps, norm)
    if norm == "linf":
        # sign(NaN) = 0, as in the reference: that element takes no step, nothing becomes NaN.
        zero = grad.clone()
        zero[1, 5] = 0.0
        _assert_exact(out, _check_step(x_adv, zero, x0, eps, norm))
        assert not torch.isnan(out).any()
    else:  # the norm of sample 1 is NaN, and so is all of sample 1
        assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2, 3]]).any()


# Non-finite inputs, one case at a time: (name, {argument: value at element [1, 5]}, eps, clamp).
# A tensor eps puts its value at sample 1.
INF, NAN = math.inf, math.nan
SPECIAL_CASES = [
    *[
        (f"{arg}_{name}", {arg: value}, None, (0.0, 1.0))
        for arg in ("x_adv", "grad", "x0")
        for name, value in (("nan", NAN), ("inf", INF), ("neg_inf", -INF))
    ],
    ("eps_inf", {}, INF, (0.0, 1.0)),
    ("eps_sample_inf", {}, "sample_inf", (0.0, 1.0)),
    ("x0_inf_eps_inf", {"x0": INF}, INF, (0.0, 1.0)),
    ("x0_neg_inf_eps_inf", {"x0": -INF}, INF, None),
    ("clamp_unbounded", {"x_adv": INF}, None, (-INF, INF)),
    ("clamp_lo_only", {"x_adv": -INF}, None, (0.0, INF)),
    ("clamp_hi_only", {"x_adv": INF}, None, (-INF, 1.0)),
    ("no_clamp_grad_inf", {"grad": INF}, None, None),
]


def _special_inputs(dtype, norm, specials, eps):
    """CPU inputs (4 samples of 37) with the special values placed; the eps to pass."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 37, generator=gen, dtype=torch.float64)
    x_adv = (x0 + 0.02 * torch.randn(4, 37, generator=gen, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(4, 37, generator=gen, dtype=torch.float64)
    tensors = {"x_adv": x_adv, "grad": grad, "x0": x0}
    for name, value in specials.items():
        tensors[name][1, 5] = value
    if eps is None:
        eps = STEP[norm]["eps"]
    elif eps == "sample_inf":
        eps = torch.tensor([STEP[norm]["eps"], INF, 0.0, 2 * STEP[norm]["eps"]], dtype=dtype)
    return [tensors[k].to(dtype) for k in ("x_adv", "grad", "x0")], eps


def _assert_kernels_agree(cpu, cuda, dtype, norm):
    """The CUDA result against the CPU result: NaN and infinities at the same places; the finite
    values bit for bit (Linf float32/float64), within one ulp (float16/bfloat16), or within the
    L2 tolerance (norms summed in another order)."""
    assert torch.equal(torch.isnan(cuda), torch.isnan(cpu)), "NaN positions differ"
    assert torch.equal(cuda == INF, cpu == INF) and torch.equal(cuda == -INF, cpu == -INF)
    if dtype in (torch.float16, torch.bfloat16):
        _assert_within_one_ulp(cuda, cpu)
    elif norm == "linf":
        _assert_exact(cuda, cpu)
    else:
        finite = torch.isfinite(cpu)
        if finite.any():
            _assert_rel(
                cuda[finite], cpu[finite].double(), 1e-6 if dtype == torch.float32 else 1e-12
            )


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=[c[0] for c in SPECIAL_CASES])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_and_cuda_kernels_agree_on_non_finite_inputs(dtype, norm, case):
    _, specials, eps, clamp = case
    (x_adv, grad, x0), eps = _special_inputs(dtype, norm, specials, eps)
    alpha = STEP[norm]["alpha"]
    out_cpu = x_adv.clone()
    fastpgd.pgd_step_(out_cpu, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
    cuda_eps = eps.cuda() if isinstance(eps, torch.Tensor) else eps
    out_cuda = x_adv.cuda()
    fastpgd.pgd_step_(
        out_cuda, grad.cuda(), x0.cuda(), eps=cuda_eps, alpha=alpha, norm=norm, clamp=clamp
    )
    _assert_kernels_agree(out_cpu, out_cuda.cpu(), dtype, norm)


@pytest.mark.parametrize("value", [NAN, -0.5], ids=["nan", "negative"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bad_per_sample_eps_refused_on_cpu_computed_on_cuda(dtype, norm, value):
    # Checking a CUDA tensor's values would cost a device sync: there the step computes what
    # the reference computes (NaN, or an inverted ball), where the CPU refuses.
    (x_adv, grad, x0), _ = _special_inputs(dtype, norm, {}, None)
    eps = torch.tensor([0.03, value, 0.03, 0.03], dtype=dtype)
    before = x_adv.clone()
    with pytest.raises(ValueError, match="eps must be >= 0 and not NaN, got .* for sample 1"):
        fastpgd.pgd_step_(x_adv, grad, x0, eps=eps, alpha=0.02, norm=norm)
    assert torch.equal(x_adv, before)
    x_adv, grad, x0, eps = (t.cuda() for t in (x_adv, grad, x0, eps))
    expected = fastpgd.reference_pgd_step(x_adv, grad, x0, eps=eps, alpha=0.02, norm=norm)
    fastpgd.pgd_step_(x_adv, grad, x0, eps=eps, alpha=0.02, norm=norm)
    assert torch.equal(torch.isnan(x_adv), torch.isnan(expected))
    if norm == "linf":
        _assert_exact(x_adv, expected)


@pytest.mark.parametrize("shape", [(0, 3, 4), (4, 0)])
@pytest.mark.parametrize("norm", NORMS)
def test_empty(norm, shape):
    x_adv = torch.zeros(shape, device="cuda")
    fastpgd.pgd_step_(x_adv, torch.ones_like(x_adv), x_adv.clone(), eps=0.1, alpha=0.1, norm=norm)
    torch.cuda.synchronize()
    assert x_adv.shape == shape


@pytest.mark.parametrize("norm", NORMS)
def test_runs_on_current_stream(norm):
    x_adv, grad, x0, eps = _make_inputs((50, 1, 28, 28), torch.float32, norm, True)
    alpha = STEP[norm]["alpha"]
    expected = fastpgd.reference_pgd_step(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm)
    buf = torch.zeros_like(x_adv)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # The copy waits behind a long sleep on `side`; a step launched on any other stream
        # would run on the zeros first and then be overwritten by the copy.
        torch.cuda._sleep(100_000_000)
        buf.copy_(x_adv)
        fastpgd.pgd_step_(buf, grad, x0, eps=eps, alpha=alpha, norm=norm)
    torch.cuda.current_stream().wait_stream(side)
    if norm == "linf":
        _assert_exact(buf, expected)
    else:
        _assert_rel(buf, expected.double(), 1e-6)


@pytest.mark.parametrize("per_sample_eps", [False, True], ids=["eps", "eps_per_sample"])
@pytest.mark.parametrize("norm", NORMS)
def test_compiled_step_runs_on_current_stream(norm, per_sample_eps):
    # Under torch.compile the step is a custom op: its kernel must also launch on the current
    # stream (on torch < 2.10 the Python side names it; newer torch tells the extension itself).
    x_adv, grad, x0, eps = _make_inputs((50, 1, 28, 28), torch.float32, norm, per_sample_eps)
    alpha = STEP[norm]["alpha"]
    expected = fastpgd.reference_pgd_step(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm)

    def step(buf):
        fastpgd.pgd_step_(buf, grad, x0, eps=eps, alpha=alpha, norm=norm)
        return buf

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    compiled(x_adv.clone())  # compile before the timed part
    buf = torch.zeros_like(x_adv)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        buf.copy_(x_adv)
        compiled(buf)
    torch.cuda.current_stream().wait_stream(side)
    if norm == "linf":
        _assert_exact(buf, expected)
    else:
        _assert_rel(buf, expected.double(), 1e-6)


@pytest.mark.parametrize("per_sample_eps", [False, True], ids=["eps", "eps_per_sample"])
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_graph_capture(norm, per_sample_eps):
    x_adv, grad, x0, eps = _make_inputs((50, 1, 28, 28), torch.float32, norm, per_sample_eps)
    alpha = STEP[norm]["alpha"]
    static = [x_adv.clone(), grad.clone(), x0.clone()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        scratch = static[0].clone()
        fastpgd.pgd_step_(scratch, static[1], static[2], eps=eps, alpha=alpha, norm=norm)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastpgd.pgd_step_(static[0], static[1], static[2], eps=eps, alpha=alpha, norm=norm)
    static[0].copy_(x_adv)  # capture recorded the step but did not run it
    expected = x_adv
    for _ in range(2):  # each replay is one more step, in place
        graph.replay()
        expected = fastpgd.reference_pgd_step(expected, grad, x0, eps=eps, alpha=alpha, norm=norm)
        torch.cuda.synchronize()
        if norm == "linf":
            _assert_exact(static[0], expected)
        else:
            _assert_rel(static[0], expected.double(), 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_more_than_2_31_elements(norm):
    # 2049 samples of 2^20 float16 elements: sample 2048 starts at element 2^31 exactly.
    batch, sample = 2049, 1 << 20
    need = 3 * batch * sample * 2 + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} free")
    gen = torch.Generator(device="cuda").manual_seed(0)
    opts = {"device": "cuda", "dtype": torch.float16, "generator": gen}
    x0 = torch.rand(batch, sample, **opts)
    x_adv = torch.rand(batch, sample, **opts)
    grad = torch.randn(batch, sample, **opts)
    eps_value = STEP[norm]["eps"] * (40 if norm == "l2" else 1)
    eps = torch.linspace(0.5, 1.5, batch, device="cuda", dtype=torch.float16) * eps_value
    alpha = STEP[norm]["alpha"]
    rows = [0, 1, 2047, 2048]
    before = x_adv[rows].clone()
    fastpgd.pgd_step_(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm)
    ref = fastpgd.reference_pgd_step(
        before, grad[rows], x0[rows], eps=eps[rows], alpha=alpha, norm=norm
    )
    _assert_within_one_ulp(x_adv[rows], ref)
    assert not torch.equal(x_adv[rows], before)
