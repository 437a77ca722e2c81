"""Shared test helpers: device parametrization and the CUDA skip marker."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

# Before anything initialises CUDA: deterministic training (used by the trainer tests) needs
# cuBLAS's workspace setting in force from the first cuBLAS call of the process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

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


def in_thread(fn):
    """Run ``fn`` in a new thread and wait; return its result or the exception it raised."""
    out = []

    def run():
        try:
            out.append(fn())
        except Exception as exc:  # handed to the test, which asserts on it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gloo rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(commands: list[list[str]], envs: list[dict], timeout: float = 120) -> list[str]:
    """Run one process per rank at once; return their outputs, failing on any non-zero exit.

    Leftover processes are killed, so a rank stuck in a collective never outlives the test.
    """
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in zip(commands, envs, strict=True)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out}"
    return outputs
