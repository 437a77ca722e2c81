"""Joining the process group a launcher such as ``torchrun`` describes, and the device of each
process: ``cuda:LOCAL_RANK`` with NCCL when the run is on CUDA (one GPU per rank), the CPU with
gloo otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Dist", "init_distributed", "pick_device"]


@dataclass
class Dist:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # this module initialised the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_distributed(device: str) -> Dist:
    """Join the process group that the environment describes (``WORLD_SIZE`` > 1), or none.

    The backend follows the device: NCCL for CUDA, gloo for the CPU.
    """
    import torch.distributed as dist

    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Dist()
    local_rank = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, created=False)
    dist.init_process_group(backend="nccl" if _wants_cuda(device) else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, created=True)


def pick_device(device: str, dist: Dist) -> torch.device:
    """The device of this process, made current.

    ``"auto"`` is CUDA when available, else the CPU. Under a launcher, a CUDA run puts each rank
    on ``cuda:LOCAL_RANK`` (an explicit index is not allowed then: every rank would share it).

    Raises:
        ValueError: an unknown device string, CUDA asked for but unavailable, an index that does
            not exist, or fewer GPUs than ranks on this node.
    """
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a str such as 'cpu' or 'cuda:0', got {type(device).__name__}"
        )
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    count = torch.cuda.device_count()
    if dist.enabled:
        if dev.index is not None:
            raise ValueError(
                f"device {device!r} names one GPU, but {dist.world_size} processes run: pass "
                "'cuda' (each rank takes cuda:LOCAL_RANK)"
            )
        if dist.local_rank >= count:
            raise ValueError(
                f"rank with LOCAL_RANK={dist.local_rank} needs its own GPU, but this node has "
                f"{count}; start at most {count} processes per node (or use device 'cpu')"
            )
        dev = torch.device("cuda", dist.local_rank)
    elif dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.index >= count:
        raise ValueError(f"device {device!r} does not exist: this machine has {count} GPUs")
    torch.cuda.set_device(dev)
    return dev
