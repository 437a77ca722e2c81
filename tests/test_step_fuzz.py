"""Fuzzing the extension boundary: only TypeError/ValueError escape, and x_adv is untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpgd
from conftest import needs_ext

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


@st.composite
def tensors(draw):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.zeros(shape, dtype=torch.float64).uniform_(-2, 2).to(dtype)
    layout = draw(
        st.sampled_from(["plain", "transposed", "sliced", "offset", "expanded", "negated"])
    )
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
    if draw(st.booleans()):
        return ViaDunder(t)  # the __dlpack__ path rather than PyTorch's C exchange API
    return t


class ViaDunder:
    """A tensor seen only through ``__dlpack__`` and its lazy-view bits, as torch < 2.10 is."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __dlpack__(self, **kwargs):
        return self.tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()

    def is_neg(self) -> bool:
        return self.tensor.is_neg()

    def is_conj(self) -> bool:
        return self.tensor.is_conj()


def unwrap(arg):
    return arg.tensor if isinstance(arg, ViaDunder) else arg


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
