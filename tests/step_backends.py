"""The fused step's two backends, for tests that run the same call through both in one process.

``fastpgd.pgd_step_`` calls ``fastpgd.step._pgd_step_entry``: the compiled entry
(``fastpgd._C.pgd_step_``) or its pure-PyTorch twin (``fastpgd.step._py_pgd_step_``), chosen at
import. ``using(name)`` swaps in one of them for the duration of a block. The compiled one is
available whenever the extension was built, even under ``FASTPGD_DISABLE_EXT=1``.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

import fastpgd.step
from fastpgd import _ext

ENTRIES = {"python": fastpgd.step._py_pgd_step_}
if _ext.built is not None:
    ENTRIES["compiled"] = _ext.built.pgd_step_

needs_built = pytest.mark.skipif(_ext.built is None, reason="the extension is not built")
BACKENDS = ["python", pytest.param("compiled", marks=needs_built)]


@contextlib.contextmanager
def using(name: str):
    """Run ``fastpgd.pgd_step_`` (and the custom ops) on backend ``name`` inside the block."""
    with mock.patch.object(fastpgd.step, "_pgd_step_entry", ENTRIES[name]):
        yield


class ViaDunder:
    """A tensor seen only through ``__dlpack__`` and its lazy-view bits (no C exchange API), as
    torch < 2.10 passes tensors to the compiled entry."""

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
