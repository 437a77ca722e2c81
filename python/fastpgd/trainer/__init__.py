"""Adversarial training (Madry et al.) with every phase of the step timed.

Each step draws a batch, replaces it by PGD adversarial examples (``fused_pgd``, the
pure-PyTorch ``reference_pgd``, or nothing for natural training), then runs forward, backward and
the optimizer update on them. :class:`fastpgd.timers.Timers` times the phases under these names:

=========  ===================================================================
``step``   the whole iteration (the phases below except ``eval`` lie inside it)
``data``   waiting for the loader
``setup``  moving the batch to the device, zeroing the gradients
``attack`` generating the adversarial batch
``forward``, ``backward``, ``update``: the training pass on the adversarial batch
``memory_gather``, ``memory_scatter``: reading and writing a per-example memory (``replay``,
           ``pgi``)
``eval``   clean and PGD accuracy on the test split (outside ``step``)
``guard``  the catastrophic-overfitting guard's check after each epoch (outside ``step``)
=========  ===================================================================

How a batch is trained is the **method** (``--method``, one module each under
:mod:`fastpgd.trainer.methods`): ``pgd`` (Madry et al., the default), ``fgsm-rs`` (Wong et al.
2020), ``n-fgsm`` (de Jorge et al. 2022), ``free`` (Shafahi et al. 2019; ``--free-replays m``),
``replay`` (PGD warm-started from a per-example replay memory; ``--replay``), ``pgi`` (FGSM-PGI,
Jia et al. 2022) and ``trades`` (Zhang et al. 2019). The recipe the fast methods are measured
with: ``--ema DECAY`` (a weight average, what is evaluated and checkpointed),
``--label-smoothing``, ``--lr-schedule cosine|onecycle``. The catastrophic-overfitting guard
(``--guard N``, on by default for the single-step methods) checks PGD accuracy on a fixed slice
of training images after every epoch and reports a collapse in one line; ``--on-collapse
stop|restore`` stops, or restores the last good epoch and stops (:mod:`fastpgd.trainer.guard`).

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.

From the command line::

    fastpgd train                                  # 8x8 digits, offline, a couple of minutes
    fastpgd train --attack reference               # the same with the pure-PyTorch attack
    fastpgd train --dataset fashion-mnist --data-dir DIR --checkpoint run.pt
    fastpgd train --method pgi --ema 0.99 --lr-schedule cosine
    torchrun --nproc_per_node=2 -m fastpgd train   # torch.distributed + DDP
"""

from fastpgd.checkpoint import CheckpointError, load_checkpoint
from fastpgd.trainer.cli import add_parser, main
from fastpgd.trainer.config import DATASET_DEFAULTS, TrainConfig, TrainResult
from fastpgd.trainer.loop import Trainer
from fastpgd.trainer.run import train

__all__ = [
    "DATASET_DEFAULTS",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "add_parser",
    "load_checkpoint",
    "main",
    "train",
]
