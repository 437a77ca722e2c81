"""Fuzzing the step's boundary: only TypeError/ValueError escape, x_adv is untouched when one
does, and both backends (the compiled entry and its pure-PyTorch twin) agree on every input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import fastpgd
from conftest import needs_ext
from step_backends import ViaDunder, needs_built, using

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.complex64,
]

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


def _tensor(shape, dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    t = torch.zeros(shape, dtype=torch.float64).uniform_(-2, 2, generator=gen).to(dtype)
    if layout == "negated" and (t.is_floating_point() or t.is_complex()):
        t = torch._neg_view(t)  # a negative bit that DLPack cannot carry
    elif layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif layout == "sliced" and t.dim() >= 1:
        t = t[::2]
    elif layout == "offset" and t.dim() >= 1 and t.shape[0] > 1:
        t = t[1:]
    elif layout == "expanded" and t.dim() >= 1:
        t = t[:1].expand(t.shape)
    return t


def unwrap(arg):
    return arg.tensor if isinstance(arg, ViaDunder) else arg


@st.composite
def tensors(draw):
    t = _tensor(*draw(tensor_recipes))
    if draw(st.booleans()):
        return ViaDunder(t)  # the __dlpack__ path rather than PyTorch's C exchange API
    return t


tensor_recipes = st.tuples(
    shapes,
    st.sampled_from(DTYPES),
    st.sampled_from(["plain", "transposed", "sliced", "offset", "expanded", "negated"]),
    st.integers(0, 2**16),
)


garbage = st.sampled_from(
    [
        None,
        1.5,
        "x",
        b"\x00",
        [1.0, 2.0],
        object(),
        math.nan,
        True,
        np.zeros(3, dtype=np.float32),
        np.zeros((2, 2), dtype=np.int64),
    ]
)
args = st.one_of(tensors(), garbage)
scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), garbage, tensors()
)
clamps = st.one_of(st.none(), st.tuples(st.floats(), st.floats()), garbage)
norms = st.one_of(st.sampled_from(["linf", "l2", "L2", ""]), garbage)


@needs_ext
@settings(max_examples=400, deadline=None)
@given(x_adv=args, grad=args, x0=args, eps=scalars, alpha=scalars, norm=norms, clamp=clamps)
def test_boundary_raises_only_type_or_value_errors(x_adv, grad, x0, eps, alpha, norm, clamp):
    target = unwrap(x_adv)
    before = target.clone() if isinstance(target, torch.Tensor) else None
    try:
        fastpgd._ext._C.pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp)
    except (TypeError, ValueError):
        if before is not None:
            assert torch.equal(target, before) or (
                before.is_floating_point()
                and torch.equal(target.isnan(), before.isnan())
                and torch.equal(target.nan_to_num(), before.nan_to_num())
            )
        return
    # It ran: the arguments were valid tensors, and none came through __dlpack__ as a lazy view.
    assert isinstance(target, torch.Tensor)
    for arg in (x_adv, grad, x0, eps):
        assert not (isinstance(arg, ViaDunder) and arg.tensor.is_neg())


@settings(max_examples=150, deadline=None)
@given(x_adv=args, grad=args, x0=args, eps=scalars, alpha=scalars, norm=norms, clamp=clamps)
def test_public_api_raises_only_type_or_value_errors(x_adv, grad, x0, eps, alpha, norm, clamp):
    x_adv, grad, x0, eps = unwrap(x_adv), unwrap(grad), unwrap(x0), unwrap(eps)
    before = x_adv.clone() if isinstance(x_adv, torch.Tensor) else None
    try:
        fastpgd.pgd_step_(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
    except (TypeError, ValueError):
        if before is not None and before.is_floating_point():
            assert torch.equal(x_adv.isnan(), before.isnan())
            assert torch.equal(x_adv.nan_to_num(), before.nan_to_num())


@needs_ext
def test_wrong_argument_count():
    with pytest.raises(TypeError, match="positional"):
        fastpgd._ext._C.pgd_step_(torch.zeros(1))


# Recipes rather than values: each backend gets its own fresh copy of the same inputs.
def _fresh(drawn):
    if isinstance(drawn, tuple) and len(drawn) == 4 and isinstance(drawn[0], tuple):
        return _tensor(*drawn)
    return drawn.copy() if isinstance(drawn, np.ndarray) else drawn


arg_recipes = st.one_of(tensor_recipes, garbage)
scalar_recipes = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), garbage, tensor_recipes
)


def _outcome(name, drawn):
    x_adv, grad, x0, eps, alpha, norm, clamp = (_fresh(d) for d in drawn)
    with using(name):
        try:
            fastpgd.pgd_step_(x_adv, grad, x0, eps=eps, alpha=alpha, norm=norm, clamp=clamp)
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc).split("\n", 1)[0], None
    return None, None, x_adv


@needs_built
@settings(max_examples=300, deadline=None)
@given(
    x_adv=arg_recipes,
    grad=arg_recipes,
    x0=arg_recipes,
    eps=scalar_recipes,
    alpha=scalar_recipes,
    norm=norms,
    clamp=clamps,
)
def test_backends_agree(x_adv, grad, x0, eps, alpha, norm, clamp):
    drawn = (x_adv, grad, x0, eps, alpha, norm, clamp)
    compiled = _outcome("compiled", drawn)
    python = _outcome("python", drawn)
    assert compiled[:2] == python[:2]
    event("stepped" if compiled[0] is None else compiled[0].__name__)
    if compiled[2] is not None:  # both stepped: the same result, to the kernel's promise
        torch.testing.assert_close(compiled[2], python[2], equal_nan=True)


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
near_layouts = st.sampled_from(["plain", "plain", "plain", "transposed", "offset"])
edge_floats = st.one_of(st.floats(-1.0, 2.0), st.sampled_from([math.nan, -math.nan, math.inf]))


@st.composite
def near_valid(draw):
    """Arguments that are mostly valid (same shape and float dtype, mostly contiguous), so that
    the backends are compared on the later checks and on results too."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
    dtype = draw(st.sampled_from(FLOATS))
    seed = draw(st.integers(0, 2**16))
    x_adv, grad, x0 = ((shape, dtype, draw(near_layouts), seed + k) for k in range(3))
    if draw(st.booleans()):
        eps = ((shape[0],), dtype, draw(st.sampled_from(["plain", "plain", "sliced"])), seed)
    else:
        eps = draw(edge_floats)
    alpha = draw(edge_floats)
    norm = draw(st.sampled_from(["linf", "l2"]))
    clamp = draw(st.none() | st.tuples(edge_floats, edge_floats | st.just(math.inf)))
    return x_adv, grad, x0, eps, alpha, norm, clamp


@needs_built
@settings(max_examples=300, deadline=None)
@given(drawn=near_valid())
def test_backends_agree_near_valid_input(drawn):
    compiled = _outcome("compiled", drawn)
    python = _outcome("python", drawn)
    assert compiled[:2] == python[:2]
    event("stepped" if compiled[0] is None else compiled[0].__name__)
    if compiled[2] is not None:
        torch.testing.assert_close(compiled[2], python[2], equal_nan=True)
