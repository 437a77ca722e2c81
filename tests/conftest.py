"""Shared test helpers: device parametrization and the CUDA skip marker."""

from __future__ import annotations

import pytest
import torch

import fastpgd

HAS_CUDA = torch.cuda.is_available()
EXT = fastpgd.extension_info()

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_ext = pytest.mark.skipif(
    EXT["backend_in_use"] != "extension", reason="needs the compiled extension in use"
)

DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]


def pytest_report_header(config):
    return (
        f"fastpgd {fastpgd.__version__}: backend={EXT['backend_in_use']} cpu={EXT['cpu']} "
        f"cuda={EXT['cuda']} cuda_available={EXT['cuda_available']} openmp={EXT['openmp']} "
        f"torch={torch.__version__}"
    )
