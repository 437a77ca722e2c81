"""The :class:`Trainer`: the model and optimizer, the training loop with its timed phases, and
evaluation. The training methods live in :mod:`~fastpgd.trainer.methods` (the loop keeps what all
of them share), checkpoint contents in :mod:`~fastpgd.trainer.state`, the captured step in
:mod:`~fastpgd.trainer.captured_step`, the batches in :mod:`~fastpgd.trainer.batches`, the weight
average in :mod:`~fastpgd.trainer.ema`, the catastrophic-overfitting guard in
:mod:`~fastpgd.trainer.guard`."""

from __future__ import annotations

import functools
import io
import math
import os
import signal
import sys
import threading
from pathlib import Path

import torch
from torch import nn

from fastpgd import _paths
from fastpgd.checkpoint import atomic_save, load_checkpoint, remove_stale_temporaries
from fastpgd.data import ImageDataset, load_dataset
from fastpgd.trainer import state as _state
from fastpgd.trainer.batches import BatchSource, EpochOrder, augment_crop_flip
from fastpgd.trainer.captured_step import CapturedTrainStep
from fastpgd.trainer.config import EVAL_SEED_OFFSET, TrainConfig, TrainResult, pixel_budget
from fastpgd.trainer.distributed import _wants_cuda, init_distributed, pick_device
from fastpgd.trainer.ema import WeightAverage
from fastpgd.trainer.guard import (
    CollapseGuard,
    guard_indices,
    restore_training_state,
    training_state,  # fmt: skip
)
from fastpgd.trainer.methods import METHOD_CLASSES, Batch, MethodContext
from fastpgd.trainer.numerics import (
    AMP_DTYPES,
    autocast,
    grad_scaler,
    process_settings,
    require_cublas_workspace,  # fmt: skip
)
from fastpgd.trainer.schedules import PER_STEP_SCHEDULES, learning_rate

__all__ = ["Trainer", "build_model", "resolve_cuda_graph"]

# Under torch.distributed on CUDA the ranks agree on a stop signal every this many steps: the
# agreement reads a device value on the host, which would stall every step.
STOP_CHECK_EVERY = 20
PROGRESS_EVERY = 10  # steps between progress-bar updates
GUARD_SEED_OFFSET = 2_000_029  # the guard's attack draws from its own generator too


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The network ``name`` for inputs of ``in_channels x image_size x image_size``.

    Raises:
        ValueError: a CIFAR-size network for inputs of another shape.
    """
    from fastpgd import models

    if name == "madry-cnn":
        return models.MadryCNN(in_channels, image_size, num_classes)
    if (in_channels, image_size) != (3, 32):
        raise ValueError(
            f"model {name!r} takes 3x32x32 (CIFAR-size) images, got "
            f"{in_channels}x{image_size}x{image_size}; use model 'madry-cnn'"
        )
    return models.MODELS[name](num_classes)


def _model_signature(name: str, in_channels: int, image_size: int, num_classes: int) -> dict:
    # "MadryCNN" is the name checkpoints have carried since the first version.
    cls = {"madry-cnn": "MadryCNN", "preact-resnet18": "PreActResNet18",
           "wrn-34-10": "WideResNet-34-10"}[name]  # fmt: skip
    return {"class": cls, "in_channels": in_channels, "image_size": image_size,
            "num_classes": num_classes}  # fmt: skip


def resolve_cuda_graph(config: TrainConfig, device: torch.device, distributed: bool):
    """What the run captures, and why it differs from what was asked (or ``None``).

    Returns:
        tuple: ``(training, evaluation, note)``: ``training`` is ``"off"``, ``"attack"`` or
        ``"step"``; ``evaluation`` whether the evaluation attack replays graphs.

    Raises:
        ValueError: ``"attack"`` or ``"step"`` asked for on a device other than CUDA.
    """
    asked = config.cuda_graph
    if device.type != "cuda":
        if asked in ("attack", "step"):
            raise ValueError(
                f"cuda_graph={asked!r} needs a CUDA device, but this run is on {device}; use "
                "cuda_graph='auto' (graphs on CUDA, eager elsewhere) or 'off'"
            )
        return "off", False, None
    if asked == "off":
        return "off", False, None
    mode = "attack" if asked == "auto" else asked
    method = METHOD_CLASSES[config.method]
    blockers = []
    if mode == "step":
        if not method.captures_step:
            blockers.append(method.step_blocker)
        if distributed:
            blockers.append("DDP's gradient all-reduce")
        if config.amp == "fp16":
            blockers.append("the fp16 gradient scaler (it reads a device value on the host)")
        if config.lr_schedule in PER_STEP_SCHEDULES:
            blockers.append(f"a learning rate that changes at every step (--lr-schedule "
                            f"{config.lr_schedule}: the captured step bakes it in)")  # fmt: skip
    what = f"cuda graph: 'step' cannot capture {'; '.join(blockers)}"
    if not method.attacks:
        # No attack call of its own (its perturbation comes from training forward and backward
        # passes, or from its own update): nothing is left to capture but evaluation.
        note = None
        if blockers:
            note = f"{what}: training runs eagerly"
        elif asked == "attack":
            note = (f"cuda graph: method {config.method!r} has no separate attack to capture: "
                    "training runs eagerly, evaluation replays graphs")  # fmt: skip
        return "off", True, note
    if blockers:
        return "attack", True, f"{what}: capturing the attack only"
    return mode, True, None


class _Progress:
    """Running loss and accuracy of the epoch, summed on the device and read without stalling:
    on CUDA a read starts an asynchronous copy to pinned memory and shows the previous one that
    has arrived."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(2, device=device)  # loss * n, correct
        self.seen = 0
        cuda = device.type == "cuda"
        self._host = torch.zeros(2, pin_memory=cuda)
        self._event = None
        self._pending_seen = 0
        self.shown: dict | None = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            self.sums[0] += loss.detach().float() * len(y)
            self.sums[1] += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def reset(self) -> None:
        self.sums.zero_()
        self.seen = 0

    def read(self) -> dict | None:
        """The latest loss and accuracy that can be read without waiting for the device."""
        if self.device.type != "cuda":
            if self.seen:
                loss, correct = self.sums.tolist()
                self.shown = {"loss": loss / self.seen, "acc": correct / self.seen}
            return self.shown
        if self._event is not None and self._event.query():
            loss, correct = self._host.tolist()
            if self._pending_seen:
                self.shown = {"loss": loss / self._pending_seen,
                              "acc": correct / self._pending_seen}  # fmt: skip
            self._event = None
        if self._event is None and self.seen:
            self._host.copy_(self.sums, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            self._pending_seen = self.seen
        return self.shown


class Trainer:
    """Adversarial training with timed phases (Madry et al.'s recipe; Rice et al.'s on CIFAR).

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
        if c.deterministic and _wants_cuda(c.device):
            # Before anything touches CUDA: cuBLAS reads its workspace setting once.
            require_cublas_workspace(torch.device("cuda"))
        self.dist = init_distributed(c.device)
        self.device = pick_device(c.device, self.dist)
        self.notes: list[str] = []  # said once at start

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
            _check_pixel_range(arg, ds)
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
        self.model = build_model(c.model, channels, height, train_set.num_classes).to(self.device)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model_signature = _model_signature(c.model, channels, height, train_set.num_classes)

        self.graph_mode, self.eval_graph, note = resolve_cuda_graph(
            c, self.device, self.dist.enabled
        )
        if note:
            self.notes.append(note)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        self.optimizer = self._make_optimizer(capturable=self.graph_mode == "step")
        self.scaler = grad_scaler(c.amp, self.device)
        self.amp_dtype = AMP_DTYPES[c.amp]

        self.order = EpochOrder(train_set, c.batch_size, self.dist.rank, self.dist.world_size,
                                c.seed)  # fmt: skip
        self.batches = BatchSource(train_set, self.order, self.device, c.num_workers)
        # Each rank draws different random starts; the states of all ranks go in a checkpoint.
        self.attack_gen = torch.Generator(device=self.device)
        self.attack_gen.manual_seed(c.seed * 7919 + 1 + self.dist.rank)
        self.augment_gen = None
        if c.augment:
            self.augment_gen = torch.Generator(device=self.device)
            self.augment_gen.manual_seed(c.seed * 104729 + 2 + self.dist.rank)
        self.attack_fn = self._attack_function()

        sync = c.sync
        if sync in ("cuda", "events") and self.device.type != "cuda":
            raise ValueError(f"sync={sync!r} times work on a CUDA device, but this run is on "
                             f"{self.device}; use sync 'auto' or 'none'")  # fmt: skip
        if sync == "auto":
            sync = "events" if self.device.type == "cuda" else "none"
        from fastpgd.timers import Timers

        self.timers = Timers(sync=None if sync == "none" else sync)

        method_class = METHOD_CLASSES[c.method]
        if self.dist.enabled and method_class.single_process:
            # Its state is per example (each rank sees other examples every epoch, and a
            # checkpoint holds rank 0's state only) or it trains through two forward passes.
            raise ValueError(f"method {c.method!r} runs in a single process for now; got world "
                             f"size {self.dist.world_size}")  # fmt: skip
        self.ema = WeightAverage(self.model, c.ema) if c.ema is not None else None
        from fastpgd.step import pgd_step_, reference_pgd_step

        self.method = method_class(
            MethodContext(
                model=self.model, net=self.ddp, optimizer=self.optimizer, config=c,
                timers=self.timers, generator=self.attack_gen, attack_fn=self.attack_fn,
                step_fn=reference_pgd_step if c.attack == "reference" else pgd_step_,
                scaler=self.scaler, attack_graph=self.graph_mode == "attack",
                amp_dtype=self.amp_dtype, after_update=self._after_update,
            ),
            len(train_set), train_set.image_shape,
        )  # fmt: skip
        self.guard = None
        if c.guard:
            self.guard = CollapseGuard(c.on_collapse)
            rows = guard_indices(len(train_set), c.guard).tolist()
            self.guard_set = ImageDataset(*train_set[rows], num_classes=train_set.num_classes,
                                          name=f"{train_set.name} guard slice")  # fmt: skip
        self.captured = CapturedTrainStep(self) if self.graph_mode == "step" else None

        self.step = 0
        self.epoch = 0
        self.position = 0  # batches done in the current epoch
        self.history: list[dict] = []
        self._stop_signal: int | None = None

    # -- setup helpers ---------------------------------------------------------------------

    def _make_optimizer(self, capturable: bool) -> torch.optim.Optimizer:
        c = self.config
        params = self.model.parameters()
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                   weight_decay=c.weight_decay)  # fmt: skip
        if capturable:
            # The optimizer step inside a CUDA graph keeps its step count on the device.
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, capturable=True)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    def _attack_function(self):
        from fastpgd.attacks import pgd as attack

        if self.config.attack == "reference":
            return attack.reference_pgd
        return attack.fused_pgd

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def _print(self, text: str) -> None:
        if not self.is_main:
            return
        from tqdm import tqdm

        tqdm.write(text, file=self.out)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) under ``config.lr_schedule``.

        Every schedule is laid over the planned epochs, not ``max_steps``: stopping early (or
        in two parts, with a resume) leaves the learning rate of each step as it is.
        """
        c = self.config
        return learning_rate(c.lr_schedule, c.lr, step, self.planned_steps())

    def planned_steps(self) -> int:
        """Steps of ``config.epochs`` epochs (batches, for free training)."""
        return self.method.passes(self.config.epochs) * self.order.batches_per_epoch

    def total_steps(self) -> int:
        """Steps this run goes to: the planned ones, or ``config.max_steps`` if fewer."""
        c = self.config
        total = self.planned_steps()
        return min(total, c.max_steps) if c.max_steps is not None else total

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit (plain containers, tensors).

        Collective under torch.distributed: every rank must call it (the attack generators of
        all ranks are gathered).
        """
        return _state.state_of(self)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Write :meth:`state_dict` atomically (rank 0 writes; collective when distributed)."""
        path = Path(path if path is not None else self.config.checkpoint)
        state = self.state_dict()
        if self.is_main:
            atomic_save(state, path)

    def check_compatible(self, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
        """Refuse a checkpoint from another dataset, model shape, world size, trajectory or
        determinism mode.

        Raises:
            CheckpointError: naming every setting that differs.
        """
        _state.check_compatible(self, ckpt, path)

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore a state written by :meth:`state_dict` (after :meth:`check_compatible`)."""
        _state.load_state(self, ckpt)

    def resume(self, path: str | os.PathLike | None = None) -> None:
        """Load, check and restore a checkpoint; nothing is changed when it is refused. Temporary
        files an interrupted save of it left behind are removed."""
        path = path if path is not None else self.config.checkpoint
        ckpt = load_checkpoint(path)
        self.check_compatible(ckpt, path)
        self.load_state_dict(ckpt)
        if self.is_main:
            remove_stale_temporaries(Path(path))

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, *, eps: float | None = None, steps: int | None = None,
                 restarts: int | None = None) -> dict:  # fmt: skip
        """Clean and PGD accuracy on the test split (sharded over ranks, then summed).

        The model runs in eval mode and is put back in the mode it was in, even on errors.

        Args:
            eps (float, optional): Default: ``config.eps``.
            steps (int, optional): Default: ``config.eval_steps``.
            restarts (int, optional): Default: ``config.eval_restarts`` (3).

        Returns:
            dict: ``clean_acc`` and ``pgd_acc`` in [0, 1], ``n`` test images.
        """
        c = self.config
        eps = c.eps if eps is None else eps
        steps = c.eval_steps if steps is None else steps
        restarts = c.eval_restarts if restarts is None else restarts
        n_total = len(self.test_set)
        if c.eval_limit is not None:
            n_total = min(c.eval_limit, n_total)
        indices = list(range(self.dist.rank, n_total, self.dist.world_size))
        # Its own seed: evaluating must not move the training generators (resume equality).
        counts = self._count_correct(self.eval_model, self.test_set, indices, eps=eps, steps=steps,
                                     restarts=restarts, seed=c.seed + EVAL_SEED_OFFSET
                                     + self.dist.rank, timer="eval")  # fmt: skip
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(counts)
        clean, pgd, n = counts.tolist()
        n = max(int(n), 1)
        return {"clean_acc": clean / n, "pgd_acc": pgd / n, "n": n}

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated, returned and checkpointed as the model: the weight average when
        ``config.ema`` is set, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def _count_correct(self, model, dataset, indices, *, eps, steps, restarts, seed, timer):
        """Clean and PGD-correct counts and the number of images, as a float64 device tensor of
        3, on ``dataset[indices]``; the model in eval mode, put back as it was, even on errors."""
        c = self.config
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        was_training = model.training
        model.eval()
        try:
            settings = process_settings(deterministic=c.deterministic, tf32=c.tf32,
                                        device=self.device)  # fmt: skip
            with self.timers(timer), settings:
                for start in range(0, len(indices), c.eval_batch_size):
                    x, y = dataset[indices[start : start + c.eval_batch_size]]
                    x, y = self._to_device(x), y.to(self.device)
                    counts[0] += self._correct(model, x, y)
                    x_adv = self.attack_fn(model, x, y, eps=eps, alpha=c.alpha, steps=steps,
                                           restarts=restarts, generator=gen,
                                           amp_dtype=self.amp_dtype,
                                           cuda_graph=self.eval_graph)  # fmt: skip
                    counts[1] += self._correct(model, x_adv, y)
                    counts[2] += len(y)
        finally:
            model.train(was_training)
        return counts

    @torch.no_grad()
    def _correct(self, model, x, y) -> torch.Tensor:
        with autocast(self.config.amp, self.device):
            return (model(x).argmax(1) == y).sum()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- training --------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        # A second signal stops at once, with the handler the process had before.
        signal.signal(signum, self._old_handlers.get(signum, signal.SIG_DFL))

    def _should_stop(self, force_agree: bool) -> bool:
        stop = self._stop_signal is not None
        if not self.dist.enabled:
            return stop
        if self.device.type == "cuda" and not force_agree and self.step % STOP_CHECK_EVERY:
            return False  # agreed on every few steps only: see STOP_CHECK_EVERY
        # Ranks may see a signal at different steps: agree, so collectives stay in step.
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def report(self) -> str:
        """The phase table (and, when distributed, min/mean/max across ranks); collective."""
        # Into a buffer: the caller decides where (and on which rank) the text goes.
        text = self.timers.report(parent="step", file=io.StringIO())
        if self.graph_mode == "step":
            text = (f"{text.rstrip()}\n(captured = attack + forward + backward + update, replayed"
                    " as one CUDA graph: its phases cannot be timed apart)\n")  # fmt: skip
        if self.dist.enabled:
            gathered = self.timers.gather()
            across = self.timers.report(parent="step", file=io.StringIO(), gathered=gathered)
            text = f"{text.rstrip()}\n{across}"
        return text

    def check_outputs(self) -> None:
        """Check every file the run will write before the first step, so that a bad path fails
        in a second, not after hours of training.

        Raises:
            ValueError: naming the setting and the path.
        """
        c = self.config
        if not self.is_main:
            return
        if c.checkpoint:
            path = Path(c.checkpoint)
            if path.exists() and not c.resume:
                raise ValueError(
                    f"checkpoint {path} already exists: pass resume to continue it, or remove it"
                )
            _paths.check_writable_dir("checkpoint", path)
        for name in ("timing_json", "plot"):
            if getattr(c, name):
                _paths.check_writable(name, getattr(c, name))

    def _describe_start(self, total: int) -> None:
        c = self.config
        self._print(f"data: {len(self.train_set):,} training images {self.batches.placement}")
        graph = {
            "off": "eager",
            "attack": "the attack replays CUDA graphs",
            "step": "the whole step replays a CUDA graph per batch shape",
        }[self.graph_mode]
        if self.device.type == "cuda":
            self._print(f"cuda graph: {graph}; amp {c.amp}; tf32 {'on' if c.tf32 else 'off'}; "
                        f"deterministic {'on' if c.deterministic else 'off'}")  # fmt: skip
        for note in self.notes:
            self._print(note)
        line = self.method.describe()
        if line:
            self._print(line)
        recipe = [f"lr schedule {c.lr_schedule}"]
        if c.label_smoothing:
            recipe.append(f"label smoothing {c.label_smoothing:g}")
        if self.ema is not None:
            recipe.append(f"weight average (EMA) decay {c.ema:g}: it is what is evaluated")
        if self.guard is not None:
            recipe.append(f"overfitting guard on {len(self.guard_set)} training images, on "
                          f"collapse: {c.on_collapse}")  # fmt: skip
        self._print(f"method {c.method}; " + "; ".join(recipe))

    def fit(self, evaluate: bool = True) -> TrainResult:
        """Train (resuming first when ``config.resume``), then evaluate and write the outputs.

        Args:
            evaluate (bool): run the final evaluation (benchmarks skip it). Default: True.

        Returns:
            TrainResult
        """
        c = self.config
        self.check_outputs()
        if c.resume:
            self.resume()
        if self.captured is not None:
            # A second fit() replays the graphs of the first only if nothing they read in place
            # or baked in (tensor addresses, settings) has changed in between.
            self.captured.drop_if_changed()
        total = self.total_steps()
        self._describe_start(total)
        with process_settings(deterministic=c.deterministic, tf32=c.tf32, device=self.device):
            interrupted = self._train(total)
        if interrupted:
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
            if c.checkpoint:
                self.save_checkpoint()
                self._print(f"stopped by {name} at step {self.step}; checkpoint {c.checkpoint}")
            else:
                self._print(f"stopped by {name} at step {self.step} (no checkpoint configured)")
            return self._result(float("nan"), float("nan"), interrupted=True)

        final = self._record_eval() if evaluate else {"clean_acc": math.nan, "pgd_acc": math.nan}
        if c.checkpoint:
            self.save_checkpoint()
        if self.is_main and c.timing_json:
            self.timers.to_json(c.timing_json)
        if self.is_main and c.plot:
            self.timers.plot(c.plot, parent="step")
        return self._result(final["clean_acc"], final["pgd_acc"], interrupted=False)

    def _train(self, total: int) -> bool:
        """The loop; returns whether a signal stopped it."""
        from tqdm import tqdm

        c = self.config
        per_epoch = self.order.batches_per_epoch
        self._old_handlers = {}
        self._stop_signal = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        bar = tqdm(total=total, initial=min(self.step, total), unit="step", file=sys.stderr,
                   disable=c.quiet or not self.is_main, dynamic_ncols=True,
                   desc=f"{c.dataset} {c.attack}")  # fmt: skip
        progress = _Progress(self.device)
        interrupted = False
        self.ddp.train()
        try:
            while self.step < total and not interrupted and not self._halted():
                self.method.start_epoch(self.epoch)
                batches = self.batches.epoch(self.epoch, self.position)
                for _ in range(per_epoch - self.position):
                    if self.step >= total:
                        break
                    self._set_lr(self.lr_at(self.step))
                    with self.timers("step"):
                        with self.timers("data"):
                            x, y, idx = next(batches)
                            crop = None
                            if self.augment_gen is not None:
                                x, crop = augment_crop_flip(x, self.augment_gen, return_crop=True)
                            if c.channels_last:
                                x = x.contiguous(memory_format=torch.channels_last)
                        loss, logits = self._one_step(x, y, idx, crop)
                    self.step += 1
                    self.position += 1
                    if not bar.disable:  # the sums feed only the bar: no work without it
                        progress.add(loss, logits, y)
                    bar.update(1)
                    if not bar.disable and (self.step % PROGRESS_EVERY == 0 or self.step == total):
                        shown = progress.read()
                        if shown is not None:
                            bar.set_postfix(loss=f"{shown['loss']:.3f}", acc=f"{shown['acc']:.1%}",
                                            refresh=False)  # fmt: skip
                    if c.report_every and self.step % c.report_every == 0:
                        text = self.report()
                        self._print(f"-- step {self.step}/{total}, epoch {self.epoch + 1}\n{text}")
                    saving = bool(c.checkpoint_every and self.step % c.checkpoint_every == 0)
                    if saving:
                        self.save_checkpoint()
                    if self._should_stop(force_agree=saving or self.step >= total):
                        interrupted = True
                        break
                if interrupted:
                    break
                if self.position >= per_epoch:
                    self.epoch += 1
                    self.position = 0
                    progress.reset()
                    if self.guard is not None:
                        self._check_guard()
                        if self._halted():
                            break
                    if c.eval_every and self.epoch % c.eval_every == 0 and self.step < total:
                        self._record_eval()
        finally:
            bar.close()
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
        return interrupted

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if group["lr"] != lr:
                group["lr"] = lr

    def _one_step(self, x, y, idx, crop=None):
        """One training step on a batch, timed by phase; returns ``(loss, logits)``."""
        if self.captured is not None:
            with self.timers("captured"):
                out = self.captured(x, y)
            self._after_update()  # the weight average, outside the graph
            return out
        with self.timers("setup"):
            self.optimizer.zero_grad(set_to_none=True)
        return self.method.step(Batch(x, y, idx, crop))

    def _after_update(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def _halted(self) -> bool:
        return self.guard is not None and self.guard.halted

    def _check_guard(self) -> None:
        """The catastrophic-overfitting check after an epoch (see :mod:`fastpgd.trainer.guard`):
        PGD accuracy of the trained weights on the guard slice, the one-line report of a
        collapse, and the restore or stop it asks for."""
        c, guard = self.config, self.guard
        dataset = self.guard_set
        counts = self._count_correct(self.model, dataset, list(range(len(dataset))), eps=c.eps,
                                     steps=c.attack_steps, restarts=1,
                                     seed=c.seed + GUARD_SEED_OFFSET, timer="guard")  # fmt: skip
        clean, pgd, n = counts.tolist()
        collapse = guard.observe(self.epoch, self.step, clean / n, pgd / n)
        if collapse is None:
            if c.on_collapse == "restore" and guard.collapse is None:
                guard.good = training_state(self)
            return
        if c.on_collapse == "restore":
            restore_training_state(self, guard.good)
        self._print(guard.describe(n))

    def _record_eval(self) -> dict:
        result = self.evaluate()
        entry = {"epoch": self.epoch, "step": self.step,
                 "clean_acc": result["clean_acc"], "pgd_acc": result["pgd_acc"]}  # fmt: skip
        self.history.append(entry)
        self._print(
            f"eval after epoch {self.epoch} (step {self.step}): clean {result['clean_acc']:.1%}, "
            f"PGD {result['pgd_acc']:.1%} (eps {pixel_budget(self.config.eps)}, "
            f"{self.config.eval_steps} steps, {self.config.eval_restarts} restarts, "
            f"{result['n']} images)"
        )
        return result

    def _result(self, clean: float, pgd: float, interrupted: bool) -> TrainResult:
        return TrainResult(
            model=self.eval_model, clean_acc=clean, pgd_acc=pgd, steps=self.step,
            interrupted=interrupted, history=self.history, timers=self.timers, config=self.config,
            collapse=self.guard.collapse if self.guard is not None else None,
        )  # fmt: skip


def _check_pixel_range(arg: str, ds: ImageDataset) -> None:
    """Once, at start: the attack's per-step value checks are off in training (they would stall
    the device), so the data is checked here to lie in [0, 1], the attack's clamp range."""
    if len(ds) == 0:
        return
    if not ds.images.is_floating_point():
        if ds.images.dtype == torch.uint8 and ds.scale >= 255:
            return  # bytes divided by at least their largest value
    lo, hi = (float(v) / ds.scale for v in torch.aminmax(ds.images))
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(
            f"{arg} pixels must lie in [0, 1] after dividing by scale={ds.scale}, got [{lo}, {hi}]"
        )
