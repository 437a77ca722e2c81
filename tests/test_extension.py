"""The compiled module as a whole: its version, its stub, what build_info reports, the C++/Python
boundary (C++ exceptions become Python ones) and the DLPack import of lazily negated views.

These check the built module (``fastpgd._ext.built``), so they also run under
``FASTPGD_DISABLE_EXT=1``, which only hides it from the public names.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import platform

import pytest
import torch

import fastpgd
from fastpgd import _ext, reference_pgd_step
from step_backends import ViaDunder

C = _ext.built
needs_built = pytest.mark.skipif(C is None, reason="needs the compiled extension built")

STUB = pathlib.Path(fastpgd.__file__).with_name("_C.pyi")


def test_version_is_written_once():
    assert importlib.metadata.version("fastpgd") == fastpgd.__version__


@needs_built
def test_extension_has_the_package_version():
    assert C.__version__ == fastpgd.__version__


@needs_built
def test_stub_declares_every_export():
    tree = ast.parse(STUB.read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    exported = {name for name in vars(C) if not (name.startswith("__") and name != "__version__")}
    assert exported == declared


# --- build_info ---------------------------------------------------------------------------------


@needs_built
def test_build_info_reports_the_cpu_kernels():
    info = C.build_info
    assert info["cpu"] is True
    clones = info["cpu_clones"]
    assert clones[-1] == "default"
    assert info["cpu_clone_in_use"] in clones


def _cpu_flags() -> set[str]:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# x86-64-v4 is AVX-512 (F, BW, CD, DQ, VL) on top of the x86-64-v3 features.
V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


@needs_built
@pytest.mark.skipif(
    platform.machine() != "x86_64" or not pathlib.Path("/proc/cpuinfo").exists(),
    reason="needs x86-64 Linux",
)
def test_cpu_clone_in_use_matches_this_cpu():
    if C.build_info["cpu_clones"] == ["default"]:
        pytest.skip("this compiler made no clones")
    assert C.build_info["cpu_clones"] == ["arch=x86-64-v4", "avx2", "default"]
    flags = _cpu_flags()
    in_use = C.build_info["cpu_clone_in_use"]
    if V4 <= flags:
        assert in_use == "arch=x86-64-v4"
    elif "avx2" in flags:
        assert in_use == "avx2"
    else:
        assert in_use == "default"


# --- C++ exceptions at the boundary ---------------------------------------------------------------


@needs_built
@pytest.mark.parametrize(
    "kind,exc,words",
    [
        ("bad_alloc", MemoryError, []),
        ("runtime_error", RuntimeError, ["runtime_error from C++"]),
        ("type_error", TypeError, ["x", "tensor"]),
        ("value_error", ValueError, ["x", "contiguous"]),
        ("unknown", RuntimeError, ["unknown C++ exception"]),
    ],
)
def test_cxx_exceptions_become_python_errors(kind, exc, words):
    with pytest.raises(exc) as info:
        C._raise_from_cxx(kind)
    assert type(info.value) is exc
    for word in words:
        assert word in str(info.value)


@needs_built
def test_cxx_exception_hook_checks_its_argument():
    with pytest.raises(TypeError, match="kind must be a str"):
        C._raise_from_cxx(3)
    with pytest.raises(ValueError, match="kind must be one of"):
        C._raise_from_cxx("segfault")


@needs_built
def test_cast_hook_raises_argument_errors():
    # _cast goes through pybind11; its argument errors are the same TypeError/ValueError.
    with pytest.raises(TypeError, match="_cast converts between float32 and float16"):
        C._cast(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="same size"):
        C._cast(torch.zeros(3), torch.zeros(4, dtype=torch.float16))
    with pytest.raises(TypeError, match="src must be a tensor"):
        C._cast(None, torch.zeros(3, dtype=torch.float16))
    with pytest.raises(TypeError, match="incompatible function arguments"):
        C._cast(torch.zeros(3))


@needs_built
def test_compiled_cpu_step_matches_reference():
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, generator=gen)
    grad = torch.randn(4, 3, generator=gen)
    x_adv = (x0 + 0.05 * torch.randn(4, 3, generator=gen)).clamp(0, 1)
    expected = reference_pgd_step(x_adv, grad, x0, eps=0.1, alpha=0.03)
    C.pgd_step_(x_adv, grad, x0, 0.1, 0.03, "linf", (0.0, 1.0))
    assert torch.equal(x_adv, expected)


# --- lazily negated or conjugated views ---------------------------------------------------------


def _step_args():
    x0 = torch.full((2, 3), 0.5)
    return torch.full((2, 3), 0.5), torch.ones(2, 3), x0


@needs_built
@pytest.mark.parametrize("which", ["x_adv", "grad", "x0"])
def test_negated_view_refused_on_the_dunder_path(which):
    args = dict(zip(("x_adv", "grad", "x0"), _step_args(), strict=True))
    args[which] = torch._neg_view(args[which].neg())  # the same values, behind the negative bit
    x_adv = args["x_adv"]
    before = x_adv.clone()
    wrapped = [ViaDunder(args[k]) for k in ("x_adv", "grad", "x0")]
    with pytest.raises(ValueError) as info:
        C.pgd_step_(*wrapped, 0.3, 0.1, "linf", None)
    assert which in str(info.value)
    assert "negative bit" in str(info.value)
    assert "resolve_neg()" in str(info.value)
    assert torch.equal(x_adv, before)


@needs_built
def test_conjugated_view_refused_on_the_dunder_path():
    x_adv, grad, x0 = _step_args()
    conj = torch.zeros(2, 3, dtype=torch.complex64).conj()
    with pytest.raises(ValueError) as info:
        C.pgd_step_(ViaDunder(x_adv), ViaDunder(conj), ViaDunder(x0), 0.3, 0.1, "linf", None)
    assert "grad" in str(info.value)
    assert "conjugate bit" in str(info.value)


@needs_built
def test_plain_tensor_through_the_dunder_path_steps():
    x_adv, grad, x0 = _step_args()
    expected = reference_pgd_step(x_adv, grad, x0, eps=0.3, alpha=0.1, clamp=None)
    C.pgd_step_(ViaDunder(x_adv), ViaDunder(grad), ViaDunder(x0), 0.3, 0.1, "linf", None)
    assert torch.equal(x_adv, expected)
