"""Helpers shared by the attack tests: a small model and batch, generators, a host-read guard."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from fastpgd.models import MadryCNN

# Every Python-level way of reading a tensor's values on the host: on CUDA each is a sync.
_HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MadryCNN(image_size=8)


class ModeRecorder(nn.Module):
    """BatchNorm + Dropout (8x8 grey images), and a record of the (model, batch norm, dropout)
    training flags seen by each forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, self.bn.training, self.drop.training))
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def batch(n: int = 6, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def gen(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class HostReadError(AssertionError):
    """A tensor's value was read on the host inside :func:`no_host_reads`."""


@contextlib.contextmanager
def no_host_reads():
    """Make every read of a tensor's values into Python raise :class:`HostReadError`.

    On the CPU this stands in for ``torch.cuda.set_sync_debug_mode("error")``: code that runs
    under it without error reads no tensor value, so on CUDA it would not wait for the device.
    """

    def refuse(self, *args, **kwargs):
        raise HostReadError("a tensor's value was read on the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in _HOST_READS:
            patch.setattr(torch.Tensor, name, refuse)
        yield
