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
``replay_gather``, ``replay_scatter``: reading and writing the replay memory (``--replay``)
``eval``   clean and PGD accuracy on the test split (outside ``step``)
=========  ===================================================================

Two ways to attack less (both leave evaluation unchanged):

- ``--replay``: a :class:`~fastpgd.replay.ReplayMemory` keeps each training example's last
  perturbation; the next epoch's attack on that example starts from it and takes only
  ``--replay-steps`` steps (Zheng et al., "Efficient Adversarial Training with Transferable
  Adversarial Examples", CVPR 2020). A batch with entries never written (the first epoch, or
  the first after a ``--replay-reset`` epoch) gets the full attack from a random start.
- ``--free-replays m``: "free" adversarial training (Shafahi et al., "Adversarial Training for
  Free!", NeurIPS 2019): each batch is trained ``m`` times in a row; the input gradient of each
  backward pass (which also updates the weights) moves the perturbation by one signed step of
  ``eps``. One perturbation buffer of batch shape carries over from batch to batch, as in the
  paper. The number of passes over the data is ``ceil(epochs / m)``, so the number of weight
  updates stays about that of ``epochs`` epochs; ``steps`` then counts batches, each ``m``
  optimizer updates.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.

From the command line::

    fastpgd train                                  # 8x8 digits, offline, a couple of minutes
    fastpgd train --attack reference               # the same with the pure-PyTorch attack
    fastpgd train --dataset fashion-mnist --data-dir DIR --checkpoint run.pt
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
