"""fastpgd: fast, measurable adversarial training for PyTorch.

Two parts that meet in one training loop: a low-overhead lap stopwatch
(:class:`Stopwatch`, :class:`Timers`) that times each phase of a training step,
and a fused, batched PGD attack whose update step is one C++/CUDA kernel.
"""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it

from fastpgd._ext import extension_info
from fastpgd.attacks import PGD, PGDL2, fab, fused_pgd, reference_pgd, square
from fastpgd.replay import ReplayMemory
from fastpgd.step import pgd_step_, reference_pgd_step
from fastpgd.stopwatch import PyStopwatch, Stopwatch, StopwatchError
from fastpgd.timers import PyTimers, Timers
from fastpgd.trainer import Trainer, train

__all__ = [
    "__version__",
    "extension_info",
    "fab",
    "fused_pgd",
    "reference_pgd",
    "square",
    "PGD",
    "PGDL2",
    "pgd_step_",
    "reference_pgd_step",
    "PyStopwatch",
    "PyTimers",
    "ReplayMemory",
    "Stopwatch",
    "StopwatchError",
    "Timers",
    "Trainer",
    "train",
]
