"""The :class:`Trainer`: the model, the optimizer, the training loop with its timed phases,
evaluation and checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import signal
import sys
import threading
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
from fastpgd.data import ImageDataset, load_dataset
from fastpgd.models import MadryCNN
from fastpgd.trainer.batches import _EpochBatches, _WithIndices
from fastpgd.trainer.config import (
    _EVAL_SEED_OFFSET,
    _TRAJECTORY_DEFAULTS,
    _TRAJECTORY_FIELDS,
    TrainConfig,
    TrainResult,
)
from fastpgd.trainer.distributed import _init_distributed

__all__ = ["Trainer"]


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
