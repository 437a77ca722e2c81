"""The suite's warning filters (pyproject.toml): torch's internal deprecations are ignored by the
module they are attributed to; every other warning is an error."""

from __future__ import annotations

import warnings

import pytest


def _warn_from(module: str, category=DeprecationWarning) -> list[warnings.WarningMessage]:
    """Issue a warning attributed to ``module``, as if raised there; return what was recorded."""
    with warnings.catch_warnings(record=True) as caught:  # keeps the active filters
        warnings.warn_explicit("an old API", category, f"{module}.py", 1, module=module)
    return caught


@pytest.mark.parametrize("module", ["torch", "torch.jit._script", "torch._dynamo.convert_frame"])
def test_deprecation_from_inside_torch_is_ignored(module):
    assert _warn_from(module) == []


@pytest.mark.parametrize(
    "module",
    ["fastpgd", "fastpgd.step", "torchattacks.attack", "torchvision", "test_warning_filters"],
)
def test_deprecation_from_elsewhere_is_an_error(module):
    with pytest.raises(DeprecationWarning, match="an old API"):
        _warn_from(module)


def test_other_warnings_from_torch_are_errors():
    with pytest.raises(UserWarning, match="an old API"):
        _warn_from("torch.jit._script", UserWarning)


def test_warnings_from_test_code_are_errors():
    with pytest.raises(DeprecationWarning, match="raised here"):
        warnings.warn("raised here", DeprecationWarning, stacklevel=1)
