"""The arithmetic a run uses: deterministic algorithms, TF32, and mixed precision (autocast and the
fp16 gradient scaler).

The switches torch offers for the first two are process-wide; :func:`process_settings` sets them
for the length of a run and puts back what the caller had.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["AMP_DTYPES", "CUBLAS_WORKSPACE", "DeterminismError", "autocast", "grad_scaler",
           "process_settings", "require_cublas_workspace"]  # fmt: skip

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The cuBLAS workspace setting that makes its results repeat (NVIDIA's cuBLAS documentation,
#: "Results reproducibility"); one of the two values torch's deterministic mode accepts.
CUBLAS_WORKSPACE = ":4096:8"
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


class DeterminismError(RuntimeError):
    """Deterministic training was asked for when this process can no longer provide it."""


def require_cublas_workspace(device: torch.device) -> None:
    """Make cuBLAS deterministic for this process, or say why it is too late.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when torch creates its first handle, which happens
    after CUDA is initialised; setting it later has no effect. Before CUDA is initialised this
    sets it; after, it must already be one of the two deterministic values.

    Raises:
        DeterminismError: CUDA is already initialised and the variable is unset or different.
    """
    if device.type != "cuda":
        return
    value = os.environ.get(_CUBLAS_ENV)
    if value in (":4096:8", ":16:8"):
        return
    if not torch.cuda.is_initialized():
        os.environ[_CUBLAS_ENV] = CUBLAS_WORKSPACE
        return
    got = "unset" if value is None else f"{value!r}"
    raise DeterminismError(
        f"deterministic training on CUDA needs {_CUBLAS_ENV}={CUBLAS_WORKSPACE} (or :16:8) "
        f"before the first cuBLAS call, but CUDA is already initialised in this process and "
        f"the variable is {got}. Set it in the environment before starting Python "
        f"(`{_CUBLAS_ENV}={CUBLAS_WORKSPACE} fastpgd train ...`), or before any CUDA work."
    )


@contextlib.contextmanager
def process_settings(*, deterministic: bool, tf32: bool, device: torch.device):
    """Set deterministic algorithms and TF32 for the block; restore the caller's settings after.

    ``deterministic``: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic with
    benchmarking off. ``tf32``: TF32 in float32 matmuls and cuDNN convolutions on CUDA; without
    it matmuls stay in full float32 and cuDNN keeps torch's own default (which allows TF32 in
    convolutions).
    """
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        cudnn.allow_tf32,
    )
    try:
        if deterministic:
            require_cublas_workspace(device)
            torch.use_deterministic_algorithms(True)
            cudnn.deterministic = True
            cudnn.benchmark = False
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            cudnn.allow_tf32 = True
        yield
    finally:
        det, warn_only, cudnn.deterministic, cudnn.benchmark, matmul_tf32, cudnn.allow_tf32 = saved
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def autocast(amp: str, device: torch.device):
    """The autocast context of the training forward for ``amp`` (a null context when off)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device):
    """A gradient scaler for fp16 training (its small gradients would underflow), else None."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
