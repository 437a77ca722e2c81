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

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from fastpgd.data import DATASETS, ImageDataset, load_dataset
from fastpgd.models import MadryCNN

__all__ = [
    "DATASET_DEFAULTS",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "add_parser",
    "train",
]

#: Per-dataset defaults of the settings left as ``None`` in :class:`TrainConfig`.
#:
#: - ``mnist``: Madry et al.: batch 50, Adam lr 1e-4, eps 0.3, step 0.01, 40 steps; 84 epochs
#:   is their 100,000 iterations at batch 50.
#: - ``fashion-mnist``: the MNIST recipe at eps 0.1, the radius commonly used for Fashion-MNIST
#:   (0.3 erases most of the texture that tells a shirt from a pullover).
#: - ``digits`` (8x8, pixels in steps of 1/16; 1437 training images): eps 0.2 (about three grey
#:   levels), alpha 0.05, 7 steps, Adam lr 1e-3, 30 epochs (870 steps), measured on a shared
#:   2-core CPU (one thread), evaluating with 14 steps and 3 restarts: eps 0.3 does not train
#:   (16% PGD accuracy after 20 epochs: on 64 pixels it erases too much of the digit), eps 0.2
#:   reaches about 47% PGD accuracy (natural training: below 1%), eps 0.1 about 89%. 10 steps or
#:   40 epochs gave no gain; lr 1e-4 needs about ten times the epochs on so few images.
#: - ``synthetic``: the MNIST attack on random 28x28 images, for benchmarks; 1 epoch.
DATASET_DEFAULTS: dict[str, dict] = {
    "digits": dict(batch_size=50, lr=1e-3, eps=0.2, alpha=0.05, attack_steps=7, epochs=30),
    "mnist": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=84),
    "fashion-mnist": dict(batch_size=50, lr=1e-4, eps=0.1, alpha=0.01, attack_steps=40, epochs=84),
    "synthetic": dict(batch_size=50, lr=1e-4, eps=0.3, alpha=0.01, attack_steps=40, epochs=1),
}

# Settings that shape the sequence of weights: a checkpoint continues only under the same ones.
_TRAJECTORY_FIELDS = (
    "dataset", "image_size", "synthetic_size", "batch_size", "lr", "eps", "alpha",
    "attack_steps", "attack", "seed", "replay", "replay_steps", "replay_reset", "replay_dtype",
    "free_replays",
)  # fmt: skip
_ATTACKS = ("fused", "reference", "none")
_REPLAY_DTYPES = ("input", "float16", "int8")
# Settings added after the first checkpoint version, with the value older checkpoints imply.
_TRAJECTORY_DEFAULTS = {"replay": False, "replay_steps": None, "replay_reset": 0,
                        "replay_dtype": "input", "free_replays": 1}  # fmt: skip
_SYNCS = ("auto", "none", "cuda", "events")
_EVAL_SEED_OFFSET = 1_000_003  # evaluation draws from its own generator, never the training one


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means the dataset's default.

    Args:
        dataset (str): ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"synthetic"``.
            Default: ``"digits"``.
        data_dir (str, optional): IDX directory for ``mnist`` / ``fashion-mnist``.
        epochs (int, optional): passes over the training split. Default: per dataset.
        max_steps (int, optional): stop after this many optimizer steps in all (counting
            those before a resume). Default: no limit.
        batch_size (int, optional): per process. Default: 50.
        lr (float, optional): Adam learning rate. Default: per dataset.
        eps (float, optional): Linf radius, for training and evaluation. Default: per dataset.
        alpha (float, optional): PGD step size. Default: per dataset.
        attack_steps (int, optional): PGD steps during training. Default: per dataset.
        attack (str): ``"fused"``, ``"reference"`` or ``"none"`` (natural training).
            Default: ``"fused"``.
        eval_every (int): evaluate every this many epochs (0: only at the end). Default: 0.
        eval_steps (int, optional): PGD steps of the evaluation. Default: 2 * attack_steps.
        eval_restarts (int): random restarts of the evaluation attack. Default: 3.
        eval_batch_size (int): Default: 500.
        eval_limit (int, optional): evaluate on the first this many test images only.
        seed (int): seeds the model, data order and attack. Default: 0.
        device (str): ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        sync (str): timer GPU mode: ``"auto"`` (events on CUDA, none on CPU), ``"none"``,
            ``"cuda"``, ``"events"``. Default: ``"auto"``.
        report_every (int): print the phase table every this many steps (0: only at the end).
        timing_json (str, optional): write all laps here at the end.
        plot (str, optional): draw the phase breakdown here at the end.
        checkpoint (str, optional): checkpoint file, written at the end, every
            ``checkpoint_every`` steps and on SIGINT/SIGTERM.
        checkpoint_every (int): Default: 0 (never in between).
        resume (bool): continue from ``checkpoint``. Default: False.
        quiet (bool): no progress bar. Default: False.
        compare_natural (bool): also train with ``attack="none"`` and the same budget, and
            report both. Default: False.
        synthetic_size (int): images in the synthetic training split. Default: 1000.
        image_size (int): side of synthetic images. Default: 28.
        num_workers (int): DataLoader worker processes. Default: 0.
        replay (bool): keep each example's perturbation in a
            :class:`~fastpgd.replay.ReplayMemory` and warm-start the next epoch's attack from
            it. Default: False.
        replay_steps (int, optional): attack steps from a warm start. Default:
            ``ceil(attack_steps / 4)`` (2 for digits).
        replay_reset (int): forget the memory every this many epochs (0: never). Default: 0.
        replay_dtype (str): ``"input"``, ``"float16"`` or ``"int8"``: how the memory stores
            perturbations (see :class:`~fastpgd.replay.ReplayMemory`). Default: ``"input"``.
        free_replays (int): train each batch this many times, free adversarial training
            (Shafahi et al.); 1: off. Epochs become ``ceil(epochs / free_replays)`` passes.
            Default: 1.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    eps: float | None = None
    alpha: float | None = None
    attack_steps: int | None = None
    attack: str = "fused"
    eval_every: int = 0
    eval_steps: int | None = None
    eval_restarts: int = 3
    eval_batch_size: int = 500
    eval_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    sync: str = "auto"
    report_every: int = 0
    timing_json: str | None = None
    plot: str | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    quiet: bool = False
    compare_natural: bool = False
    synthetic_size: int = 1000
    image_size: int = 28
    num_workers: int = 0
    replay: bool = False
    replay_steps: int | None = None
    replay_reset: int = 0
    replay_dtype: str = "input"
    free_replays: int = 1

    def resolved(self) -> TrainConfig:
        """A copy with the dataset's defaults filled in, every field checked.

        Raises:
            TypeError, ValueError: naming the field.
        """
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        c = dataclasses.replace(self)
        for key, value in DATASET_DEFAULTS[c.dataset].items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if c.eval_steps is None:
            c.eval_steps = 2 * c.attack_steps
        if c.replay and c.replay_steps is None:
            if isinstance(c.attack_steps, int) and not isinstance(c.attack_steps, bool):
                c.replay_steps = max(1, math.ceil(c.attack_steps / 4))
        if c.dataset != "synthetic":
            c.image_size = 8 if c.dataset == "digits" else 28
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps", "eval_restarts",
                     "eval_batch_size", "synthetic_size", "image_size"):  # fmt: skip
            _check_int(name, getattr(c, name), minimum=1)
        for name in ("max_steps", "eval_limit"):
            if getattr(c, name) is not None:
                _check_int(name, getattr(c, name), minimum=1)
        for name in ("eval_every", "report_every", "checkpoint_every", "num_workers", "seed",
                     "replay_reset"):  # fmt: skip
            _check_int(name, getattr(c, name), minimum=0)
        _check_int("free_replays", c.free_replays, minimum=1)
        if c.replay_steps is not None:
            _check_int("replay_steps", c.replay_steps, minimum=1)
        if not isinstance(c.replay, bool):
            raise TypeError(f"replay must be a bool, got {type(c.replay).__name__}")
        if c.replay_dtype not in _REPLAY_DTYPES:
            raise ValueError(f"replay_dtype must be one of {', '.join(_REPLAY_DTYPES)}; "
                             f"got {c.replay_dtype!r}")  # fmt: skip
        if c.replay and c.free_replays > 1:
            raise ValueError("replay and free_replays > 1 exclude each other: free adversarial "
                             "training keeps its own perturbation buffer")  # fmt: skip
        if (c.replay or c.free_replays > 1) and c.attack == "none":
            what = "replay" if c.replay else "free_replays"
            raise ValueError(f"{what} needs an attack; got attack='none'")
        for name in ("lr", "eps", "alpha"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value}")
            setattr(c, name, float(value))
        if c.attack not in _ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(_ATTACKS)}; got {c.attack!r}")
        if c.sync not in _SYNCS:
            raise ValueError(f"sync must be one of {', '.join(_SYNCS)}; got {c.sync!r}")
        if c.resume and not c.checkpoint:
            raise ValueError("resume needs checkpoint: the file to continue from")
        if c.checkpoint_every and not c.checkpoint:
            raise ValueError("checkpoint_every needs checkpoint: the file to write")
        return c


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model (nn.Module): the trained network (not the DDP wrapper).
        clean_acc (float): accuracy on the test split, in [0, 1] (NaN when interrupted).
        pgd_acc (float): accuracy under the evaluation PGD attack at ``config.eps``.
        steps (int): optimizer steps done in all.
        interrupted (bool): stopped by SIGINT/SIGTERM (a checkpoint was written if configured).
        history (list[dict]): one entry per evaluation: ``epoch``, ``step``, ``clean_acc``,
            ``pgd_acc``.
        timers (Timers): the phase laps.
        config (TrainConfig): the resolved configuration.
        natural (TrainResult, optional): the naturally trained model of the same budget, when
            ``compare_natural`` was set.
    """

    model: nn.Module
    clean_acc: float
    pgd_acc: float
    steps: int
    interrupted: bool
    history: list
    timers: object
    config: TrainConfig
    natural: TrainResult | None = None


# ----------------------------------------------------------------------------------------------
# distributed


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # this module initialised the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _init_distributed(device: str) -> _Dist:
    """Join the process group that torchrun (or any launcher) describes in the environment."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, created=False)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, created=True)


class _WithIndices(torch.utils.data.Dataset):
    """``dataset[batch]`` plus the batch's indices, so that a batch can be keyed per example."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, y, torch.as_tensor(index, dtype=torch.int64)


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of indices of one epoch, from a given batch on (to resume mid-epoch).

    The order comes from a :class:`~torch.utils.data.distributed.DistributedSampler`: a
    permutation drawn from a generator seeded with ``seed + epoch``, so ``(seed, epoch,
    position)`` is the whole state of the data order, and each rank reads its own shard.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int):
        self.sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self):
        order = list(self.sampler)
        for b in range(self.start, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


# ----------------------------------------------------------------------------------------------
# the trainer


def _make_timers(sync: str):
    from fastpgd.timers import Timers

    return Timers(sync=None if sync == "none" else sync)


class Trainer:
    """Adversarial training of :class:`~fastpgd.models.MadryCNN` with timed phases.

    Args:
        config (TrainConfig): the run; ``None`` fields take the dataset's defaults.
        train_set (ImageDataset, optional): overrides the dataset's training split.
        test_set (ImageDataset, optional): overrides the dataset's test split.
        out (file, optional): where reports and results go. Default: ``sys.stdout``.

    Examples::

        >>> cfg = TrainConfig(dataset="digits", epochs=1, max_steps=2, quiet=True,
        ...                   attack_steps=2, eval_limit=50, eval_steps=2, eval_restarts=1)
        >>> result = Trainer(cfg, out=io.StringIO()).fit()
        >>> result.steps
        2
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_set: ImageDataset | None = None,
        test_set: ImageDataset | None = None,
        out=None,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = c = config.resolved()
        self.out = out if out is not None else sys.stdout
        self.dist = _init_distributed(c.device)
        self.device = self._pick_device(c.device)

        load = functools.partial(load_dataset, c.dataset, data_dir=c.data_dir,
                                 synthetic_size=c.synthetic_size, image_size=c.image_size,
                                 seed=c.seed)  # fmt: skip
        if train_set is None:
            train_set = load("train")
        if test_set is None:
            test_set = load("test")
        for arg, ds in (("train_set", train_set), ("test_set", test_set)):
            if not isinstance(ds, ImageDataset):
                raise TypeError(f"{arg} must be an ImageDataset, got {type(ds).__name__}")
        if train_set.image_shape != test_set.image_shape:
            raise ValueError(
                f"train_set and test_set image shapes differ: {train_set.image_shape} vs "
                f"{test_set.image_shape}"
            )
        channels, height, width = train_set.image_shape
        if height != width:
            raise ValueError(f"train_set images must be square, got {height}x{width}")
        self.train_set, self.test_set = train_set, test_set

        torch.manual_seed(c.seed)  # the initial weights are a function of the seed alone
        self.model = MadryCNN(channels, height, train_set.num_classes).to(self.device)
        self.model_signature = {
            "class": "MadryCNN",
            "in_channels": channels,
            "image_size": height,
            "num_classes": train_set.num_classes,
        }
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr)

        self.batches = _EpochBatches(train_set, c.batch_size, self.dist.rank,
                                     self.dist.world_size, c.seed)  # fmt: skip
        self.loader = torch.utils.data.DataLoader(
            _WithIndices(train_set),
            sampler=self.batches,
            batch_size=None,  # the sampler yields whole batches; the dataset indexes them at once
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        # Each rank draws different random starts; the states of all ranks go in a checkpoint.
        self.attack_gen = torch.Generator(device=self.device)
        self.attack_gen.manual_seed(c.seed * 7919 + 1 + self.dist.rank)

        sync = c.sync
        if sync == "auto":
            sync = "events" if self.device.type == "cuda" else "none"
        self.timers = _make_timers(sync)

        if self.dist.enabled and (c.replay or c.free_replays > 1):
            # Each rank sees other examples every epoch and a checkpoint holds rank 0's state
            # only: neither the memory nor the free buffer would be exact across ranks.
            raise ValueError("replay and free_replays > 1 run in a single process for now; "
                             f"got world size {self.dist.world_size}")  # fmt: skip
        self.memory = None
        if c.replay:
            from fastpgd.replay import ReplayMemory

            self.memory = ReplayMemory(len(train_set), train_set.image_shape, eps=c.eps,
                                       dtype=c.replay_dtype, device=self.device,
                                       reset_every=c.replay_reset)  # fmt: skip
        # Free adversarial training: one perturbation of batch shape, carried across batches.
        self.free_delta = None
        if c.free_replays > 1:
            self.free_delta = torch.zeros((c.batch_size, *train_set.image_shape),
                                          device=self.device)  # fmt: skip

        self.step = 0
        self.epoch = 0
        self.position = 0  # batches done in the current epoch
        self.history: list[dict] = []
        self._stop_signal: int | None = None

    # -- setup helpers ---------------------------------------------------------------------

    def _pick_device(self, device: str) -> torch.device:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {device!r} requested but CUDA is not available")
            if self.dist.enabled or dev.index is None:
                dev = torch.device("cuda", self.dist.local_rank if self.dist.enabled else 0)
            torch.cuda.set_device(dev)
        return dev

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def _attack_fn(self, for_eval: bool):
        from fastpgd import attack

        if self.config.attack == "reference":
            return attack.reference_pgd
        if self.config.attack == "none" and not for_eval:
            return None
        return attack.fused_pgd

    def _print(self, text: str) -> None:
        if not self.is_main:
            return
        from tqdm import tqdm

        tqdm.write(text, file=self.out)

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit (plain containers, tensors).

        Collective under torch.distributed: every rank must call it (the attack generators of
        all ranks are gathered).
        """
        gen_state = self.attack_gen.get_state()
        if self.dist.enabled:
            import torch.distributed as dist

            states = [None] * self.dist.world_size
            dist.all_gather_object(states, gen_state.cpu())
        else:
            states = [gen_state.cpu()]
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "torch_version": str(torch.__version__),
            "config": dataclasses.asdict(self.config),
            "model_signature": dict(self.model_signature),
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            # The order of an epoch is drawn from seed + epoch (see _EpochBatches): this is
            # the whole state of the data-order generator.
            "data_order": {
                "seed": self.config.seed,
                "epoch": self.epoch,
                "position": self.position,
            },  # fmt: skip
            "rng": rng_state(),
            "attack_generators": states,
            "timers": self.timers.state_dict(),
            "history": [dict(h) for h in self.history],
            "replay_memory": self.memory.state_dict() if self.memory is not None else None,
            "free_delta": self.free_delta.cpu() if self.free_delta is not None else None,
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Write :meth:`state_dict` atomically (rank 0 writes; collective when distributed)."""
        path = Path(path if path is not None else self.config.checkpoint)
        state = self.state_dict()
        if self.is_main:
            atomic_save(state, path)

    def check_compatible(self, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
        """Refuse a checkpoint from another dataset, model shape, world size or trajectory.

        Raises:
            CheckpointError: naming every setting that differs.
        """
        problems = []
        if ckpt.get("model_signature") != self.model_signature:
            problems.append(
                f"model {ckpt.get('model_signature')} (this run: {self.model_signature})"
            )
        if ckpt.get("world_size") != self.dist.world_size:
            problems.append(
                f"world size {ckpt.get('world_size')} (this run: {self.dist.world_size})"
            )
        saved = ckpt.get("config", {})
        for name in _TRAJECTORY_FIELDS:
            if saved.get(name, _TRAJECTORY_DEFAULTS.get(name)) != getattr(self.config, name):
                ours = getattr(self.config, name)
                problems.append(f"{name}={saved.get(name)!r} (this run: {ours!r})")
        if problems:
            raise CheckpointError(
                f"checkpoint {path} comes from a different run and cannot be continued: "
                + "; ".join(problems)
            )

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore a state written by :meth:`state_dict` (after :meth:`check_compatible`)."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.step, self.epoch, self.position = ckpt["step"], ckpt["epoch"], ckpt["position"]
            set_rng_state(ckpt["rng"])
            self.attack_gen.set_state(ckpt["attack_generators"][self.dist.rank].to("cpu"))
            self.timers.load_state_dict(ckpt["timers"])
            self.history = [dict(h) for h in ckpt["history"]]
            if self.memory is not None:
                self.memory.load_state_dict(ckpt["replay_memory"])
            if self.free_delta is not None:
                self.free_delta.copy_(ckpt["free_delta"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint is damaged or incomplete: {exc}") from exc

    def resume(self, path: str | os.PathLike | None = None) -> None:
        """Load, check and restore a checkpoint; nothing is changed when it is refused."""
        path = path if path is not None else self.config.checkpoint
        ckpt = load_checkpoint(path)
        self.check_compatible(ckpt, path)
        self.load_state_dict(ckpt)

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def _clean_correct(self, x, y) -> int:
        return int((self.model(x).argmax(1) == y).sum())

    def evaluate(self, *, eps: float | None = None, steps: int | None = None,
                 restarts: int | None = None) -> dict:  # fmt: skip
        """Clean and PGD accuracy on the test split (sharded over ranks, then summed).

        Args:
            eps (float, optional): Default: ``config.eps``.
            steps (int, optional): Default: ``config.eval_steps`` (2x the training steps).
            restarts (int, optional): Default: ``config.eval_restarts`` (3).

        Returns:
            dict: ``clean_acc`` and ``pgd_acc`` in [0, 1], ``n`` test images.
        """
        c = self.config
        eps = c.eps if eps is None else eps
        steps = c.eval_steps if steps is None else steps
        restarts = c.eval_restarts if restarts is None else restarts
        attack_fn = self._attack_fn(for_eval=True)
        n_total = len(self.test_set)
        if c.eval_limit is not None:
            n_total = min(c.eval_limit, n_total)
        indices = list(range(self.dist.rank, n_total, self.dist.world_size))
        # Its own seed: evaluating must not move the training generators (resume equality).
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + _EVAL_SEED_OFFSET + self.dist.rank)
        was_training = self.model.training
        self.model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        with self.timers("eval"):
            for start in range(0, len(indices), c.eval_batch_size):
                x, y = self.test_set[indices[start : start + c.eval_batch_size]]
                x, y = x.to(self.device), y.to(self.device)
                counts[0] += self._clean_correct(x, y)
                x_adv = attack_fn(self.model, x, y, eps=eps, alpha=c.alpha, steps=steps,
                                  restarts=restarts, generator=gen)  # fmt: skip
                counts[1] += self._clean_correct(x_adv, y)
                counts[2] += len(y)
        self.model.train(was_training)
        if self.dist.enabled:
            import torch.distributed as dist

            counts = counts.to(self.device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        n = max(int(counts[2]), 1)
        return {"clean_acc": float(counts[0]) / n, "pgd_acc": float(counts[1]) / n, "n": n}

    # -- training --------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        # A second signal stops at once, with the handler the process had before.
        signal.signal(signum, self._old_handlers.get(signum, signal.SIG_DFL))

    def _should_stop(self) -> bool:
        stop = self._stop_signal is not None
        if self.dist.enabled:
            # Ranks may see a signal at different steps: agree, so collectives stay in step.
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def report(self) -> str:
        """The phase table (and, when distributed, min/mean/max across ranks); collective."""
        # Into a buffer: the caller decides where (and on which rank) the text goes.
        text = self.timers.report(parent="step", file=io.StringIO())
        if self.dist.enabled:
            gathered = self.timers.gather()
            across = self.timers.report(parent="step", file=io.StringIO(), gathered=gathered)
            text = f"{text.rstrip()}\n{across}"
        return text

    def fit(self) -> TrainResult:
        """Train (resuming first when ``config.resume``), evaluate, report.

        Returns:
            TrainResult
        """
        from tqdm import tqdm

        c = self.config
        if c.checkpoint and self.is_main:
            path = Path(c.checkpoint)
            if not path.parent.is_dir():
                raise ValueError(f"checkpoint directory {path.parent} does not exist")
            if path.exists() and not c.resume:
                raise ValueError(
                    f"checkpoint {path} already exists: pass resume to continue it, or remove it"
                )
        if c.resume:
            self.resume()

        attack_fn = self._attack_fn(for_eval=False)
        per_epoch = self.batches.batches_per_epoch
        # Free training passes over each batch free_replays times: fewer epochs, as many updates.
        passes = math.ceil(c.epochs / c.free_replays)
        total = passes * per_epoch
        if c.max_steps is not None:
            total = min(total, c.max_steps)

        self._old_handlers = {}
        self._stop_signal = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)

        bar = tqdm(total=total, initial=min(self.step, total), unit="step", file=sys.stderr,
                   disable=c.quiet or not self.is_main, dynamic_ncols=True,
                   desc=f"{c.dataset} {c.attack}")  # fmt: skip
        interrupted = False
        loss_sum = torch.zeros((), device=self.device)
        correct_sum = torch.zeros((), device=self.device)
        seen = 0
        self.ddp.train()
        if self.memory is not None:
            m = self.memory
            self._print(
                f"replay memory: {m.size} x {list(m.shape)} {m.storage_dtype} on "
                f"{m.data.device} = {m.nbytes:,} bytes; {c.replay_steps} attack steps "
                "from a warm start, "
                + (f"reset every {c.replay_reset} epochs" if c.replay_reset else "never reset")
            )
        if self.free_delta is not None:
            self._print(
                f"free adversarial training: each batch {c.free_replays} times, "
                f"{passes} passes; perturbation buffer "
                f"{self.free_delta.numel() * self.free_delta.element_size():,} bytes"
            )
        try:
            while self.step < total and not interrupted:
                if self.memory is not None:
                    self.memory.start_epoch(self.epoch)
                self.batches.set_epoch(self.epoch, self.position)
                batches = iter(self.loader)
                for _ in range(per_epoch - self.position):
                    if self.step >= total:
                        break
                    with self.timers("step"):
                        with self.timers("data"):
                            x, y, idx = next(batches)
                        with self.timers("setup"):
                            x = x.to(self.device, non_blocking=True)
                            y = y.to(self.device, non_blocking=True)
                            self.optimizer.zero_grad(set_to_none=True)
                        if self.free_delta is not None:
                            loss, logits = self._free_step(x, y)
                        else:
                            loss, logits = self._pgd_step(attack_fn, x, y, idx)
                    self.step += 1
                    self.position += 1
                    loss_sum += loss.detach() * len(y)
                    correct_sum += (logits.detach().argmax(1) == y).sum()
                    seen += len(y)
                    bar.update(1)
                    if not bar.disable and (self.step % 10 == 0 or self.step == total):
                        # .item() waits for the GPU: only every few steps.
                        bar.set_postfix(
                            loss=f"{loss_sum.item() / seen:.3f}",
                            acc=f"{correct_sum.item() / seen:.1%}",
                            refresh=False,
                        )
                    if c.report_every and self.step % c.report_every == 0:
                        text = self.report()
                        self._print(f"-- step {self.step}/{total}, epoch {self.epoch + 1}\n{text}")
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self._should_stop():
                        interrupted = True
                        break
                if interrupted:
                    break
                if self.position >= per_epoch:
                    self.epoch += 1
                    self.position = 0
                    loss_sum.zero_()
                    correct_sum.zero_()
                    seen = 0
                    if c.eval_every and self.epoch % c.eval_every == 0 and self.step < total:
                        self._record_eval()
        finally:
            bar.close()
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)

        if interrupted:
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
            if c.checkpoint:
                self.save_checkpoint()
                self._print(f"stopped by {name} at step {self.step}; checkpoint {c.checkpoint}")
            else:
                self._print(f"stopped by {name} at step {self.step} (no checkpoint configured)")
            return self._result(float("nan"), float("nan"), interrupted=True)

        final = self._record_eval()
        if c.checkpoint:
            self.save_checkpoint()
        if self.is_main and c.timing_json:
            self.timers.to_json(c.timing_json)
        if self.is_main and c.plot:
            self.timers.plot(c.plot, parent="step")
        return self._result(final["clean_acc"], final["pgd_acc"], interrupted=False)

    def _pgd_step(self, attack_fn, x, y, idx):
        """One batch of Madry et al.'s training: attack (from the replay memory when on), then
        one update of the weights on the adversarial batch."""
        c = self.config
        if self.memory is not None:
            x = self._replay_attack(attack_fn, x, y, idx)
        elif attack_fn is not None:
            with self.timers("attack"):
                # The bare module: attacking through DDP would sync grads.
                x = attack_fn(
                    self.model,
                    x,
                    y,
                    eps=c.eps,
                    alpha=c.alpha,
                    steps=c.attack_steps,
                    generator=self.attack_gen,
                )
        with self.timers("forward"):
            logits = self.ddp(x)
            loss = F.cross_entropy(logits, y)
        with self.timers("backward"):
            loss.backward()
        with self.timers("update"):
            self.optimizer.step()
        return loss, logits

    def _replay_attack(self, attack_fn, x, y, idx) -> torch.Tensor:
        """The attack warm-started from the replay memory; stores the new perturbations."""
        c, memory = self.config, self.memory
        fresh = memory.fresh(idx)  # host flags: no device sync
        n_fresh = int(fresh.sum())
        if n_fresh == len(idx):
            # Nothing stored yet (first epoch, or just reset): the full attack, random start.
            delta_init, steps = None, c.attack_steps
        else:
            with self.timers("replay_gather"):
                delta_init = memory.gather(idx)
            steps = c.replay_steps
            if n_fresh:
                # Some entries were never written: random starts for them and the full attack.
                from fastpgd.attack import _per_sample_view, _random_delta

                start = _random_delta(x, c.eps, "linf", self.attack_gen)
                mask = _per_sample_view(fresh.to(self.device), x)
                delta_init = torch.where(mask, start, delta_init)
                steps = c.attack_steps
        with self.timers("attack"):
            x_adv, delta = attack_fn(
                self.model,
                x,
                y,
                eps=c.eps,
                alpha=c.alpha,
                steps=steps,
                generator=self.attack_gen,
                delta_init=delta_init,
                random_start=delta_init is None,
                return_delta=True,
            )
        with self.timers("replay_scatter"):
            memory.scatter(idx, delta)
        return x_adv

    def _free_step(self, x, y):
        """One batch of free adversarial training: ``free_replays`` updates of the weights, each
        backward pass also giving the input gradient that moves the perturbation by ``eps``."""
        from fastpgd.step import pgd_step_, reference_pgd_step

        c = self.config
        step_fn = reference_pgd_step if c.attack == "reference" else pgd_step_
        n = x.shape[0]
        delta = self.free_delta[:n]  # the last batch of an epoch may be smaller
        for _ in range(c.free_replays):
            with self.timers("forward"):
                self.optimizer.zero_grad(set_to_none=True)
                x_adv = (x + delta).clamp_(0.0, 1.0).requires_grad_(True)
                logits = self.ddp(x_adv)
                loss = F.cross_entropy(logits, y)
            with self.timers("backward"):
                loss.backward()
            with self.timers("update"):
                self.optimizer.step()
            with self.timers("attack"):
                # alpha = eps: the paper's step for free training (FGSM-size on each replay).
                moved = step_fn(x_adv.detach(), x_adv.grad, x, eps=c.eps, alpha=c.eps,
                                norm="linf", clamp=(0.0, 1.0))  # fmt: skip
                torch.sub(moved, x, out=delta)
        return loss, logits

    def _record_eval(self) -> dict:
        result = self.evaluate()
        entry = {"epoch": self.epoch, "step": self.step,
                 "clean_acc": result["clean_acc"], "pgd_acc": result["pgd_acc"]}  # fmt: skip
        self.history.append(entry)
        self._print(
            f"eval after epoch {self.epoch} (step {self.step}): clean {result['clean_acc']:.1%}, "
            f"PGD {result['pgd_acc']:.1%} (eps {self.config.eps:g}, {self.config.eval_steps} "
            f"steps, {self.config.eval_restarts} restarts, {result['n']} images)"
        )
        return result

    def _result(self, clean: float, pgd: float, interrupted: bool) -> TrainResult:
        return TrainResult(
            model=self.model, clean_acc=clean, pgd_acc=pgd, steps=self.step,
            interrupted=interrupted, history=self.history, timers=self.timers, config=self.config,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# entry points


def train(config: TrainConfig | None = None, *, out=None, **kwargs) -> TrainResult:
    """Adversarially train a :class:`~fastpgd.models.MadryCNN` and print the timing report.

    Args:
        config (TrainConfig, optional): the run; keyword arguments override its fields.
        out (file, optional): where reports and results go. Default: ``sys.stdout``.
        **kwargs: fields of :class:`TrainConfig`.

    Returns:
        TrainResult: with ``natural`` set when ``compare_natural``.

    Examples::

        >>> r = train(dataset="synthetic", synthetic_size=20, image_size=8, epochs=1,
        ...           attack_steps=2, eval_steps=2, eval_restarts=1, quiet=True, out=io.StringIO())
        >>> r.steps
        1
    """
    config = dataclasses.replace(config or TrainConfig(), **kwargs)
    out = out if out is not None else sys.stdout
    trainer = Trainer(config, out=out)
    c = trainer.config
    try:
        t0 = time.perf_counter()
        result = trainer.fit()
        elapsed = time.perf_counter() - t0
        table = trainer.report()
        if result.interrupted:
            return result
        natural = None
        if c.compare_natural:
            nat_config = dataclasses.replace(
                c, attack="none", compare_natural=False, checkpoint=None, checkpoint_every=0,
                resume=False, timing_json=None, plot=None, report_every=0,
            )  # fmt: skip
            natural_trainer = Trainer(nat_config, train_set=trainer.train_set,
                                      test_set=trainer.test_set, out=out)  # fmt: skip
            t1 = time.perf_counter()
            natural = natural_trainer.fit()
            natural_elapsed = time.perf_counter() - t1
            result.natural = natural
        if trainer.is_main:
            print(_final_text(trainer, result, elapsed, table), file=out)
            if natural is not None:
                print(_accuracy_line("natural training (attack none)", natural, natural_elapsed),
                      file=out)  # fmt: skip
                gap = result.pgd_acc - natural.pgd_acc
                print(f"PGD accuracy gain of adversarial over natural training: {gap * 100:+.1f} "
                      "points", file=out)  # fmt: skip
        return result
    finally:
        if trainer.dist.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _method_label(c: TrainConfig) -> str:
    if c.attack == "none":
        return "natural training (attack none)"
    if c.replay:
        return f"adversarial training ({c.attack}, replay {c.replay_steps} steps)"
    if c.free_replays > 1:
        return f"free adversarial training ({c.attack}, m={c.free_replays})"
    return f"adversarial training ({c.attack})"


def _accuracy_line(label: str, result: TrainResult, elapsed: float) -> str:
    return (f"{label:<34} clean {result.clean_acc:6.1%}   PGD {result.pgd_acc:6.1%}   "
            f"({result.steps} steps, {elapsed:.1f} s)")  # fmt: skip


def _final_text(trainer: Trainer, result: TrainResult, elapsed: float, table: str) -> str:
    c = trainer.config
    ws = f", {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
    lines = [
        f"== phase times ({result.steps} steps, batch {c.batch_size}, {trainer.device}{ws})",
        table.rstrip("\n"),
        f"== accuracy on the {c.dataset} test split at eps {c.eps:g} (PGD {c.eval_steps} steps "
        f"of {c.alpha:g}, {c.eval_restarts} restarts)",
        _accuracy_line(_method_label(c), result, elapsed),
    ]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="digits: 1797 real 8x8 digits shipped with fastpgd (default); mnist, "
        "fashion-mnist: IDX files in --data-dir; synthetic: random images",
    )
    data.add_argument(
        "--data-dir",
        help="directory of the IDX files (fashion-mnist defaults to "
        "/usr/share/datasets/fashion-mnist when it exists)",
    )
    data.add_argument(
        "--synthetic-size",
        type=_positive_int,
        default=d.synthetic_size,
        help="training images of --dataset synthetic (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=_positive_int,
        default=d.image_size,
        help="side of --dataset synthetic images (default: %(default)s)",
    )
    data.add_argument(
        "--num-workers",
        type=_nonneg_int,
        default=d.num_workers,
        help="DataLoader workers (default: %(default)s)",
    )

    opt = parser.add_argument_group(
        "training (defaults per dataset: mnist follows Madry et al. -- batch 50, Adam 1e-4, "
        "eps 0.3, alpha 0.01, 40 steps, 84 epochs; fashion-mnist the same at eps 0.1; digits: "
        "batch 50, Adam 1e-3, eps 0.2, alpha 0.05, 7 steps, 30 epochs, measured to be robust and "
        "to finish in minutes on a small CPU; eps 0.3 does not train on 8x8 images)"
    )
    opt.add_argument("--epochs", type=_positive_int)
    opt.add_argument("--max-steps", type=_positive_int, help="stop after this many steps in all")
    opt.add_argument("--batch-size", type=_positive_int, help="per process")
    opt.add_argument("--lr", type=_positive_float, help="Adam learning rate")
    opt.add_argument("--eps", type=_positive_float, help="Linf radius (training and evaluation)")
    opt.add_argument("--alpha", type=_positive_float, help="PGD step size")
    opt.add_argument("--attack-steps", type=_positive_int, help="PGD steps per training batch")
    opt.add_argument(
        "--attack",
        choices=_ATTACKS,
        default=d.attack,
        help="fused: fastpgd's fused PGD (default); reference: the pure-PyTorch "
        "PGD; none: natural training",
    )
    opt.add_argument("--seed", type=_nonneg_int, default=d.seed)
    opt.add_argument("--device", default=d.device, help="auto (default), cpu, cuda, cuda:1, ...")

    rp = parser.add_argument_group(
        "attacking less (evaluation is unchanged)",
        "--replay: warm-start each example's attack from its perturbation of the previous epoch "
        "(Zheng et al., CVPR 2020); --free-replays m: free adversarial training (Shafahi et al., "
        "NeurIPS 2019), each batch trained m times, ceil(epochs / m) passes",
    )
    rp.add_argument(
        "--replay",
        action="store_true",
        help="keep one perturbation per training example across epochs",
    )
    rp.add_argument(
        "--replay-steps",
        type=_positive_int,
        help="attack steps from a warm start (default: ceil(--attack-steps / 4))",
    )
    rp.add_argument(
        "--replay-reset",
        type=_nonneg_int,
        default=d.replay_reset,
        metavar="K",
        help="forget the memory every K epochs; 0: never (default)",
    )
    rp.add_argument(
        "--replay-dtype",
        choices=_REPLAY_DTYPES,
        default=d.replay_dtype,
        help="how the memory stores perturbations: input (exact, default), float16 "
        "(relative error 2^-11), int8 (error <= eps/254)",
    )
    rp.add_argument(
        "--free-replays",
        type=_positive_int,
        default=d.free_replays,
        metavar="M",
        help="free adversarial training with M replays per batch; 1: off (default)",
    )

    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--eval-every",
        type=_nonneg_int,
        default=d.eval_every,
        help="evaluate every N epochs; 0: only at the end (default)",
    )
    ev.add_argument(
        "--eval-steps",
        type=_positive_int,
        help="PGD steps of the evaluation (default: 2x --attack-steps)",
    )
    ev.add_argument(
        "--eval-restarts",
        type=_positive_int,
        default=d.eval_restarts,
        help="random restarts of the evaluation attack (default: %(default)s)",
    )
    ev.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size)
    ev.add_argument("--eval-limit", type=_positive_int, help="evaluate on this many test images")
    ev.add_argument(
        "--compare-natural",
        action="store_true",
        help="also train with --attack none for the same budget and print both",
    )

    rep = parser.add_argument_group("timing and output")
    rep.add_argument(
        "--sync",
        choices=_SYNCS,
        default=d.sync,
        help="GPU timing: events on CUDA and none on CPU by default",
    )
    rep.add_argument(
        "--report-every",
        type=_nonneg_int,
        default=d.report_every,
        help="print the phase table every N steps (default: only at the end)",
    )
    rep.add_argument("--timing-json", metavar="PATH", help="write all laps as JSON")
    rep.add_argument("--plot", metavar="PATH", help="draw the phase breakdown (needs matplotlib)")
    rep.add_argument("--quiet", action="store_true", help="no progress bar; logs only")

    ck = parser.add_argument_group("checkpoints")
    ck.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="written at the end, every --checkpoint-every steps, on SIGINT/SIGTERM",
    )
    ck.add_argument("--checkpoint-every", type=_nonneg_int, default=d.checkpoint_every)
    ck.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = train(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastpgd train: error: {exc}", file=sys.stderr)
        return 2
    # The shell's convention for "stopped by a signal"; the checkpoint was written.
    return 130 if result.interrupted else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        argparse.ArgumentParser: the ``train`` parser (its ``func`` default runs the command).
    """
    parser = subparsers.add_parser(
        "train",
        help="adversarial training with a phase-timing report",
        description=__doc__.split("\n\n")[0],
    )
    _configure(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m fastpgd.trainer ...``: the ``train`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="fastpgd train", description=__doc__.split("\n\n")[0])
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
