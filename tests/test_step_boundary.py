"""One table of bad inputs to the fused step, run through both backends in one process.

The compiled entry (``fastpgd._C.pgd_step_``, checks in C++) and its pure-PyTorch twin
(``fastpgd.step._py_pgd_step_``, checks in ``fastpgd._step_args``) must refuse the same inputs,
with the same exception type and message, before touching ``x_adv``. Each case runs
``fastpgd.pgd_step_`` on each backend and asserts: the expected type, the key words (the
argument's name first), ``x_adv`` untouched, and then that both backends said the same. Where
torch's exporter refuses a tensor, the compiled message carries torch's C++ backtrace after the
first line: there the first lines must agree.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from conftest import needs_cuda
from fastpgd import pgd_step_, reference_pgd_step
from step_backends import BACKENDS, ENTRIES, needs_built, using

ARG_ORDER = ("x_adv", "grad", "x0", "eps", "alpha", "norm", "clamp")


def _args():
    gen = torch.Generator().manual_seed(9)
    x0 = torch.rand(4, 3, generator=gen)
    return {
        "x_adv": (x0 + 0.1 * torch.randn(4, 3, generator=gen)).clamp(0, 1),
        "grad": torch.randn(4, 3, generator=gen),
        "x0": x0,
        "eps": 0.3,
        "alpha": 0.01,
        "norm": "linf",
        "clamp": (0.0, 1.0),
    }


def _set(name, make):
    """An edit of the good arguments: ``make(args)`` becomes argument ``name``."""

    def edit(a):
        a[name] = make(a)

    return edit


def _overlapping(name):
    # x_adv and `name` are views of one buffer, `name` starting halfway into x_adv.
    def edit(a):
        buf = torch.rand(4 * 3 * 2)
        a["x_adv"] = buf[:12].view(4, 3)
        a[name] = buf[10:14] if name == "eps" else buf[6:18].view(4, 3)

    return edit


def _read_only_numpy(a):
    arr = a["x_adv"].numpy().copy()
    arr.flags.writeable = False
    return arr


def _int_tensor(a):
    return a["x_adv"].to(torch.int64)


def _complex(a):
    return torch.complex(a["x_adv"], a["x_adv"])


def _imag_of_conj(a):
    # A real tensor with the negative bit: the imaginary part of a lazily conjugated tensor.
    return torch.complex(torch.zeros_like(a["x_adv"]), -a["x_adv"]).conj().imag


def _bits8(a):
    return torch.zeros(4, 3, dtype=torch.uint8).view(torch.bits8)


def _requires_grad(a):
    return a["x_adv"].clone().requires_grad_()


# (id, edit, exception type, key words, wrapper): `wrapper` marks the cases pgd_step_ itself
# refuses before either backend sees them (so the raw entries are not compared on them).
CASES = [
    # x_adv
    ("x_adv_none", _set("x_adv", lambda a: None), TypeError, ["x_adv", "tensor", "NoneType"]),
    ("x_adv_list", _set("x_adv", lambda a: a["x_adv"].tolist()), TypeError, ["x_adv", "list"]),
    ("x_adv_int64", _set("x_adv", _int_tensor), TypeError, ["x_adv", "floating-point", "int64"]),
    ("x_adv_bool", _set("x_adv", lambda a: a["x_adv"] > 0.5), TypeError, ["x_adv", "bool"]),
    ("x_adv_uint8", _set("x_adv", lambda a: a["x_adv"].to(torch.uint8)), TypeError, ["uint8"]),
    ("x_adv_complex", _set("x_adv", _complex), TypeError, ["x_adv", "complex64"]),
    (
        "x_adv_conj_bit",
        _set("x_adv", lambda a: _complex(a).conj()),
        TypeError,
        ["x_adv", "floating-point", "complex64"],
    ),
    (
        "x_adv_float8",
        _set("x_adv", lambda a: a["x_adv"].to(torch.float8_e4m3fn)),
        TypeError,
        ["x_adv", "floating-point", "dtype_code10_8"],
    ),
    (
        "x_adv_noncontiguous",
        _set("x_adv", lambda a: a["x_adv"].t().contiguous().t()),
        ValueError,
        ["x_adv", "contiguous", "strides (1, 4)", "[4, 3]"],
    ),
    (
        "x_adv_expanded",
        _set("x_adv", lambda a: a["x_adv"][:1].expand(4, 3)),
        ValueError,
        ["x_adv", "contiguous", "strides (0, 1)"],
    ),
    (
        "x_adv_neg_bit",
        _set("x_adv", lambda a: torch._neg_view(a["x_adv"])),
        ValueError,
        ["x_adv", "negative bit", "resolve_neg()"],
        True,
    ),
    (
        "x_adv_imag_of_conj",
        _set("x_adv", _imag_of_conj),
        ValueError,
        ["x_adv", "negative bit", "resolve_neg()"],
        True,
    ),
    (
        "x_adv_requires_grad",
        _set("x_adv", _requires_grad),
        ValueError,
        ["x_adv", "requires grad", "torch.no_grad()"],
        True,
    ),
    (
        "x_adv_numpy",
        _set("x_adv", lambda a: a["x_adv"].numpy().copy()),
        TypeError,
        ["x_adv", "torch.Tensor", "numpy.ndarray", "torch.from_dlpack"],
        True,
    ),
    (
        "x_adv_numpy_read_only",
        _set("x_adv", _read_only_numpy),
        TypeError,
        ["x_adv", "torch.Tensor", "numpy.ndarray"],
        True,
    ),
    (
        "x_adv_sparse",
        _set("x_adv", lambda a: a["x_adv"].to_sparse()),
        TypeError,
        ["x_adv", "could not be viewed through DLPack", "storage"],
    ),
    (
        "x_adv_meta",
        _set("x_adv", lambda a: torch.empty(4, 3, device="meta")),
        TypeError,
        ["x_adv", "could not be viewed through DLPack", "meta"],
    ),
    (
        "x_adv_bits8",
        _set("x_adv", _bits8),
        TypeError,
        ["x_adv", "could not be viewed through DLPack", "Bit types"],
    ),
    (
        "x_adv_is_grad",
        _set("grad", lambda a: a["x_adv"]),
        ValueError,
        ["x_adv must not overlap grad"],
    ),
    ("x_adv_overlaps_grad", _overlapping("grad"), ValueError, ["x_adv must not overlap grad"]),
    ("x_adv_overlaps_x0", _overlapping("x0"), ValueError, ["x_adv must not overlap x0"]),
    ("x_adv_overlaps_eps", _overlapping("eps"), ValueError, ["x_adv must not overlap eps"]),
    # grad
    ("grad_none", _set("grad", lambda a: None), TypeError, ["grad", "tensor", "NoneType"]),
    ("grad_list", _set("grad", lambda a: a["grad"].tolist()), TypeError, ["grad", "list"]),
    (
        "grad_numpy",
        _set("grad", lambda a: a["grad"].numpy()),
        TypeError,
        ["grad", "torch.Tensor", "numpy.ndarray"],
        True,
    ),
    (
        "grad_shape",
        _set("grad", lambda a: a["grad"][:3]),
        ValueError,
        ["grad", "same shape", "[3, 3] and [4, 3]"],
    ),
    (
        "grad_dtype",
        _set("grad", lambda a: a["grad"].double()),
        TypeError,
        ["grad", "same dtype", "float64 and float32"],
    ),
    (
        "grad_conj_bit",
        _set("grad", lambda a: torch.complex(a["grad"], a["grad"]).conj()),
        TypeError,
        ["grad", "same dtype", "complex64"],
    ),
    (
        "grad_noncontiguous",
        _set("grad", lambda a: a["grad"].t().contiguous().t()),
        ValueError,
        ["grad", "contiguous", "(call .contiguous())"],
    ),
    (
        "grad_sparse",
        _set("grad", lambda a: a["grad"].to_sparse()),
        TypeError,
        ["grad", "could not be viewed through DLPack"],
    ),
    # x0
    ("x0_none", _set("x0", lambda a: None), TypeError, ["x0", "tensor", "NoneType"]),
    (
        "x0_shape",
        _set("x0", lambda a: a["x0"].reshape(3, 4)),
        ValueError,
        ["x0", "same shape", "[3, 4]"],
    ),
    ("x0_0d", _set("x0", lambda a: torch.tensor(0.5)), ValueError, ["x0", "same shape", "[]"]),
    (
        "x0_dtype",
        _set("x0", lambda a: a["x0"].half()),
        TypeError,
        ["x0", "same dtype", "float16 and float32"],
    ),
    (
        "x0_noncontiguous",
        _set("x0", lambda a: torch.rand(4, 6)[:, ::2]),
        ValueError,
        ["x0", "contiguous", "strides (6, 2)"],
    ),
    (
        "x0_numpy",
        _set("x0", lambda a: a["x0"].numpy()),
        TypeError,
        ["x0", "torch.Tensor"],
        True,
    ),
    # eps, a scalar
    ("eps_negative", _set("eps", lambda a: -0.1), ValueError, ["eps", ">= 0", "got -0.1"]),
    ("eps_nan", _set("eps", lambda a: math.nan), ValueError, ["eps", "not NaN", "got nan"]),
    (
        "eps_negative_nan",
        _set("eps", lambda a: -math.nan),
        ValueError,
        ["eps", "not NaN", "got -nan"],
    ),
    (
        "eps_numpy_scalar",
        _set("eps", lambda a: np.float64(-1.0)),
        ValueError,
        ["eps", ">= 0", "got -1"],
    ),
    ("eps_str", _set("eps", lambda a: "0.3"), TypeError, ["eps", "real number", "str"]),
    ("eps_bool", _set("eps", lambda a: True), TypeError, ["eps", "real number", "bool"]),
    ("eps_complex", _set("eps", lambda a: 0.3j), TypeError, ["eps", "real number", "complex"]),
    ("eps_none", _set("eps", lambda a: None), TypeError, ["eps", "real number", "NoneType"]),
    ("eps_list", _set("eps", lambda a: [0.3]), TypeError, ["eps", "real number", "list"]),
    ("eps_huge", _set("eps", lambda a: 10**400), ValueError, ["eps", "too large"]),
    # eps, one value per sample
    (
        "eps_sample_negative",
        _set("eps", lambda a: torch.tensor([0.1, -0.1, 0.1, 0.1])),
        ValueError,
        ["eps", ">= 0", "got -0.100000001 for sample 1"],
    ),
    (
        "eps_sample_nan",
        _set("eps", lambda a: torch.tensor([0.1, 0.1, math.nan, 0.1])),
        ValueError,
        ["eps", "not NaN", "got nan for sample 2"],
    ),
    (
        "eps_length",
        _set("eps", lambda a: torch.full((3,), 0.1)),
        ValueError,
        ["eps", "one value per sample (4)", "[3]"],
    ),
    (
        "eps_2d",
        _set("eps", lambda a: torch.full((4, 1), 0.1)),
        ValueError,
        ["eps", "1-D", "[4, 1]"],
    ),
    ("eps_0d", _set("eps", lambda a: torch.tensor(0.1)), ValueError, ["eps", "1-D", "[]"]),
    (
        "eps_dtype",
        _set("eps", lambda a: torch.full((4,), 0.1, dtype=torch.float64)),
        TypeError,
        ["eps", "same dtype", "float64"],
    ),
    (
        "eps_int_tensor",
        _set("eps", lambda a: torch.ones(4, dtype=torch.int32)),
        TypeError,
        ["eps", "same dtype", "int32"],
    ),
    (
        "eps_noncontiguous",
        _set("eps", lambda a: torch.full((8,), 0.1)[::2]),
        ValueError,
        ["eps", "contiguous", "strides (2)"],
    ),
    (
        "eps_sparse",
        _set("eps", lambda a: torch.full((4,), 0.1).to_sparse()),
        TypeError,
        ["eps", "could not be viewed through DLPack"],
    ),
    (
        "eps_numpy",
        _set("eps", lambda a: np.full(4, 0.1, dtype=np.float32)),
        TypeError,
        ["eps", "torch.Tensor", "numpy.ndarray"],
        True,
    ),
    # alpha
    ("alpha_nan", _set("alpha", lambda a: math.nan), ValueError, ["alpha", "finite", "nan"]),
    ("alpha_inf", _set("alpha", lambda a: math.inf), ValueError, ["alpha", "finite", "inf"]),
    ("alpha_neg_inf", _set("alpha", lambda a: -math.inf), ValueError, ["alpha", "-inf"]),
    (
        "alpha_tensor",
        _set("alpha", lambda a: torch.tensor(0.1)),
        TypeError,
        ["alpha", "real number", "Tensor"],
    ),
    ("alpha_str", _set("alpha", lambda a: "0.1"), TypeError, ["alpha", "real number", "str"]),
    ("alpha_none", _set("alpha", lambda a: None), TypeError, ["alpha", "NoneType"]),
    ("alpha_bool", _set("alpha", lambda a: True), TypeError, ["alpha", "bool"]),
    ("alpha_huge", _set("alpha", lambda a: -(10**400)), ValueError, ["alpha", "too large"]),
    # clamp
    (
        "clamp_order",
        _set("clamp", lambda a: (1.0, 0.0)),
        ValueError,
        ["clamp", "lo <= hi", "(1, 0)"],
    ),
    (
        "clamp_lo_nan",
        _set("clamp", lambda a: (math.nan, 1.0)),
        ValueError,
        ["clamp", "NaN", "(nan, 1)"],
    ),
    (
        "clamp_hi_nan",
        _set("clamp", lambda a: [0.0, math.nan]),
        ValueError,
        ["clamp", "NaN", "(0, nan)"],
    ),
    ("clamp_float", _set("clamp", lambda a: 1.0), TypeError, ["clamp", "pair", "float"]),
    ("clamp_str", _set("clamp", lambda a: "01"), TypeError, ["clamp", "pair", "str"]),
    ("clamp_set", _set("clamp", lambda a: {0.0, 1.0}), TypeError, ["clamp", "pair", "set"]),
    ("clamp_three", _set("clamp", lambda a: (0.0, 1.0, 2.0)), TypeError, ["clamp", "tuple"]),
    ("clamp_one", _set("clamp", lambda a: (0.0,)), TypeError, ["clamp", "pair"]),
    (
        "clamp_lo_str",
        _set("clamp", lambda a: ("0", 1.0)),
        TypeError,
        ["clamp lo", "real number", "str"],
    ),
    (
        "clamp_hi_tensor",
        _set("clamp", lambda a: (0.0, torch.tensor(1.0))),
        TypeError,
        ["clamp hi", "real number", "Tensor"],
    ),
    ("clamp_hi_huge", _set("clamp", lambda a: (0.0, 10**400)), ValueError, ["clamp hi", "large"]),
    # norm
    ("norm_l1", _set("norm", lambda a: "l1"), ValueError, ["norm", "'linf' or 'l2'", "'l1'"]),
    ("norm_upper", _set("norm", lambda a: "L2"), ValueError, ["norm", "got 'L2'"]),
    ("norm_empty", _set("norm", lambda a: ""), ValueError, ["norm", "got ''"]),
    ("norm_nul", _set("norm", lambda a: "li\0nf"), ValueError, ["norm", "got 'li'"]),
    ("norm_surrogate", _set("norm", lambda a: "\ud800"), ValueError, ["norm", "got '?'"]),
    ("norm_int", _set("norm", lambda a: 2), TypeError, ["norm", "str", "int"]),
    ("norm_none", _set("norm", lambda a: None), TypeError, ["norm", "str", "NoneType"]),
]
TABLE = [pytest.param(*case[1:4], id=case[0]) for case in CASES]


def _call_public(a):
    return pgd_step_(
        a["x_adv"],
        a["grad"],
        a["x0"],
        eps=a["eps"],
        alpha=a["alpha"],
        norm=a["norm"],
        clamp=a["clamp"],
    )


def _untouched_check(x):
    """A function asserting that ``x`` still holds what it holds now."""
    if not isinstance(x, torch.Tensor) or x.device.type == "meta" or x.dtype == torch.bits8:
        return lambda: None  # no values to compare
    dense = (lambda t: t.to_dense()) if x.layout != torch.strided else (lambda t: t)
    before = dense(x.detach()).clone()
    return lambda: torch.testing.assert_close(
        dense(x.detach()), before, rtol=0, atol=0, equal_nan=True
    )


def _raised(call) -> Exception:
    with pytest.raises(Exception) as info:  # noqa: B017 (the caller asserts the type)
        call()
    return info.value


def _check_agreement(errors: dict[str, Exception]) -> None:
    if "compiled" not in errors:
        return
    compiled, python = str(errors["compiled"]), str(errors["python"])
    if "\nException raised from" in compiled:
        # torch's exporter refused the tensor; the compiled entry passes on its C++ backtrace.
        assert compiled.split("\n", 1)[0] == python
    else:
        assert compiled == python


@pytest.mark.parametrize("edit,exc,words", TABLE)
def test_bad_input_refused_alike_by_both_backends(edit, exc, words):
    errors = {}
    for name in ENTRIES:
        a = _args()
        edit(a)
        assert_untouched = _untouched_check(a["x_adv"])
        with using(name):
            err = _raised(lambda a=a: _call_public(a))
        assert type(err) is exc, (name, err)
        for word in words:
            assert word in str(err), (name, word, str(err))
        assert_untouched()
        errors[name] = err
    _check_agreement(errors)


def _no_edit(a):
    pass


def _same_args(args):
    return args


# The raw entries take the same table, less what pgd_step_ refuses first, plus the argument
# count and the stream, which only a direct call can get wrong.
RAW_TABLE = [
    pytest.param(case[1], _same_args, *case[2:4], id=case[0]) for case in CASES if len(case) == 4
] + [
    pytest.param(_no_edit, lambda t: t[:6], TypeError, ["7 or 8 positional", "got 6"], id="args_6"),
    pytest.param(
        _no_edit, lambda t: (*t, None, None), TypeError, ["7 or 8 positional", "got 9"], id="args_9"
    ),
    pytest.param(
        _no_edit, lambda t: (*t, "0"), TypeError, ["stream", "int or None"], id="stream_str"
    ),
    pytest.param(
        _no_edit, lambda t: (*t, 1.0), TypeError, ["stream", "int or None"], id="stream_float"
    ),
    pytest.param(
        _no_edit, lambda t: (*t, -1), ValueError, ["stream", "non-negative"], id="stream_neg"
    ),
    pytest.param(
        _no_edit, lambda t: (*t, 1 << 64), ValueError, ["stream", "non-negative"], id="stream_2_64"
    ),
]


@needs_built
@pytest.mark.parametrize("edit,edit_args,exc,words", RAW_TABLE)
def test_raw_entries_agree(edit, edit_args, exc, words):
    # The twin imported directly beside the compiled entry, called as pgd_step_ calls them.
    errors = {}
    for name, entry in ENTRIES.items():
        a = _args()
        edit(a)
        args = edit_args(tuple(a[k] for k in ARG_ORDER))
        assert_untouched = _untouched_check(a["x_adv"])
        err = _raised(lambda entry=entry, args=args: entry(*args))
        assert type(err) is exc, (name, err)
        for word in words:
            assert word in str(err), (name, word, str(err))
        assert_untouched()
        errors[name] = err
    _check_agreement(errors)


def _tensor_of(dtype):
    # Some dtypes warn that they are experimental, some cannot be made at all.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.zeros(4, 3, dtype=dtype)
        except (RuntimeError, TypeError):
            try:
                return torch.zeros(4, 3 * dtype.itemsize, dtype=torch.uint8).view(dtype)
            except (RuntimeError, TypeError):
                return None


MAKEABLE_DTYPES = [
    dtype
    for dtype in sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
    if _tensor_of(dtype) is not None
]


@needs_built
@pytest.mark.parametrize("name", ["x_adv", "grad", "eps"])
@pytest.mark.parametrize("dtype", MAKEABLE_DTYPES, ids=str)
def test_every_dtype_named_alike(dtype, name):
    # The twin names each torch dtype as the compiled entry names its DLPack export.
    outcomes = {}
    for backend, entry in ENTRIES.items():
        a = _args()
        a[name] = _tensor_of(dtype)[:, 0] if name == "eps" else _tensor_of(dtype)
        try:
            entry(*(a[k] for k in ARG_ORDER))
        except (TypeError, ValueError) as exc:
            outcomes[backend] = (type(exc), str(exc).split("\n", 1)[0])
        else:
            outcomes[backend] = None
    assert outcomes["compiled"] == outcomes["python"]
    if dtype != torch.float32:
        assert outcomes["python"] is not None and name in outcomes["python"][1]


def test_every_argument_has_bad_cases():
    # The table names each argument it breaks first in the case id.
    broken = {case[0].split("_")[0] for case in CASES}
    assert broken == {"x", "grad", "x0", "eps", "alpha", "clamp", "norm"}


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["grad", "x0", "eps"])
def test_device_mismatch_refused_alike(name):
    errors = {}
    for backend in ENTRIES:
        a = _args()
        a["eps"] = torch.full((4,), 0.3)
        a[name] = a[name].cuda()
        assert_untouched = _untouched_check(a["x_adv"])
        with using(backend):
            err = _raised(lambda a=a: _call_public(a))
        assert type(err) is ValueError, (backend, err)
        assert f"{name} must be on the same device as x_adv, got cuda:0 and cpu" in str(err)
        assert_untouched()
        errors[backend] = err
    _check_agreement(errors)


# --- the negative bit of read-only arguments -------------------------------------------------


def _negated_copy(t):
    """A tensor equal to ``t`` whose negative bit is set (DLPack exports its un-negated data)."""
    view = torch._neg_view(-t)
    assert view.is_neg() and torch.equal(view, t)
    return view


def _imag_of_conj_copy(t):
    view = torch.complex(torch.zeros_like(t), -t).conj().imag
    assert view.is_neg() and torch.equal(view, t)
    return view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize(
    "name,negate",
    [
        ("grad", _negated_copy),
        ("grad", _imag_of_conj_copy),
        ("x0", _negated_copy),
        ("eps", _negated_copy),
    ],
)
def test_negated_read_only_arguments_are_resolved(backend, norm, name, negate):
    a = _args()
    a["eps"] = torch.tensor([0.05, 0.1, 0.2, 0.3])
    a["norm"] = norm
    expected = reference_pgd_step(
        a["x_adv"], a["grad"], a["x0"], eps=a["eps"], alpha=0.1, norm=norm
    )
    a[name] = negate(a[name])
    a["alpha"] = 0.1
    with using(backend):
        returned = _call_public(a)
    assert returned is a["x_adv"]
    torch.testing.assert_close(a["x_adv"], expected, rtol=1e-6, atol=1e-7)
