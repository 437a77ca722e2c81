"""Training checkpoints: the file format, atomic writes, and the global RNG state.

A checkpoint is a ``dict`` of plain containers and tensors written with :func:`torch.save`
and read back with ``torch.load(weights_only=True)``; ``format`` and ``version`` keys name it.
What goes in it is :meth:`fastpgd.trainer.Trainer.state_dict`'s business; this module only
writes, reads and checks the file, and captures and restores the process-wide random
generators (torch, CUDA, Python, NumPy) that a bit-for-bit resume needs.
"""

from __future__ import annotations

import glob
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "fastpgd-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format or version, or from another run."""


def _temporary_prefix(path: Path) -> str:
    # What only fastpgd's own temporary files of this checkpoint are called.
    return f".{path.name}.fastpgd-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files that saves of ``path`` left behind when the process was killed
    mid-write (each as large as a checkpoint). Only files named as :func:`atomic_save` names
    them are touched.

    Returns:
        list[Path]: the files removed.
    """
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(stale)
    return removed


def atomic_save(obj, path: Path) -> None:
    """Write ``obj`` so that ``path`` holds either the old file or the whole new one.

    The data goes to a temporary file beside ``path`` (fsynced, then renamed over it); stale
    temporaries of earlier, killed saves of the same checkpoint are removed first.
    """
    path = Path(path)
    directory = path.parent
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint and check its format and version.

    Args:
        path (str or PathLike): the file :class:`~fastpgd.trainer.Trainer` wrote.

    Returns:
        dict: plain containers and tensors (read with ``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: unreadable (truncated, corrupt) or not a checkpoint of this version.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fastpgd training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt.get('version')!r}; this fastpgd reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return ckpt


def rng_state() -> dict:
    """The states of the torch, CUDA, Python and NumPy global generators, loadable with
    ``torch.load(weights_only=True)``."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a list.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore the global generators from what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
