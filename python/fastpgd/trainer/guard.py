"""The catastrophic-overfitting guard.

Single-step methods can collapse: within an epoch their PGD accuracy falls to near 0 while their
accuracy on their own (FGSM) training points soars (Wong et al., "Fast is better than free",
ICLR 2020). The guard checks, after every epoch, the raw model's PGD accuracy on a fixed slice
of the *training* set: the test split stays untouched for the final numbers (restoring weights
chosen by test accuracy would bias them), every training image stays in training, and a collapse
shows on training images as on test ones (Wong et al. check one training batch). The slice is
the same for every run (a fixed permutation), attacked with the training PGD (``attack_steps``
steps of ``alpha``, one restart) from a generator of its own, so the check does not move the
run's random streams.

A **collapse** is a PGD accuracy below ``COLLAPSE_FRACTION`` of the best seen so far *and* at
least ``COLLAPSE_DROP`` below it (the second keeps the noise of an early, low best from
counting). What follows is ``on_collapse``: ``"report"`` (one line), ``"stop"`` (stop
training), ``"restore"`` (put back the weights, weight average and optimizer state of the last
good epoch, then stop: Wong et al.'s early stopping).
"""

from __future__ import annotations

import copy

import torch

__all__ = ["COLLAPSE_DROP", "COLLAPSE_FRACTION", "CollapseGuard", "is_collapse"]

COLLAPSE_FRACTION = 0.5
COLLAPSE_DROP = 0.10
SLICE_SEED = 20_200_113  # the guard slice is the same for every run and seed
_STATE_KEYS = ("best", "best_epoch", "collapse", "history", "good")


def is_collapse(pgd_acc: float, best: float) -> bool:
    """Whether PGD accuracy ``pgd_acc`` is a collapse from the best so far, ``best``.

    Examples::

        >>> is_collapse(0.02, 0.40), is_collapse(0.30, 0.40), is_collapse(0.01, 0.05)
        (True, False, False)
    """
    return pgd_acc < COLLAPSE_FRACTION * best and best - pgd_acc >= COLLAPSE_DROP


def guard_indices(size: int, count: int) -> torch.Tensor:
    """The training-set indices the guard checks: the first ``count`` of a fixed permutation."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(SLICE_SEED))
    return order[: min(count, size)]


class CollapseGuard:
    """The guard's record: best PGD accuracy, the collapse, the last good state to restore.

    Args:
        action (str): ``"report"``, ``"stop"`` or ``"restore"``.
    """

    def __init__(self, action: str):
        self.action = action
        self.best = -1.0
        self.best_epoch: int | None = None
        self.collapse: dict | None = None
        self.history: list[dict] = []
        self.good: dict | None = None  # the last good state ("restore" only)

    @property
    def halted(self) -> bool:
        """Training stopped on a collapse (and stays stopped after a resume)."""
        return self.collapse is not None and self.action != "report"

    def observe(self, epoch: int, step: int, clean_acc: float, pgd_acc: float) -> dict | None:
        """Record one check; returns the collapse it is (the first one), or ``None``."""
        entry = {"epoch": epoch, "step": step, "clean_acc": clean_acc, "pgd_acc": pgd_acc}
        self.history.append(entry)
        if self.best_epoch is not None and is_collapse(pgd_acc, self.best):
            if self.collapse is None:
                self.collapse = {**entry, "best_pgd_acc": self.best,
                                 "best_epoch": self.best_epoch, "action": self.action}  # fmt: skip
                return self.collapse
            return None
        if pgd_acc > self.best:
            self.best, self.best_epoch = pgd_acc, epoch
        return None

    def describe(self, size: int) -> str:
        c = self.collapse
        what = {
            "report": "training goes on",
            "stop": "training stops",
            "restore": f"restored the weights of epoch {self.good_epoch()} and stopped",
        }
        return (f"catastrophic overfitting at epoch {c['epoch']} (step {c['step']}): PGD accuracy "
                f"on the {size}-image guard slice fell to {c['pgd_acc']:.1%} from its best "
                f"{c['best_pgd_acc']:.1%} (epoch {c['best_epoch']}), clean {c['clean_acc']:.1%}; "
                f"{what[self.action]}")  # fmt: skip

    def good_epoch(self) -> int | None:
        return None if self.good is None else self.good["epoch"]

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "collapse": self.collapse,
                "history": [dict(h) for h in self.history], "good": self.good}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
            raise ValueError(f"a guard state needs the keys {list(_STATE_KEYS)}")
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.collapse = state["collapse"]
        self.history = [dict(h) for h in state["history"]]
        self.good = state["good"]


def training_state(trainer) -> dict:
    """Copies of the weights, weight average, optimizer and scaler state of ``trainer``."""
    return {
        "epoch": trainer.epoch,
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "ema": (
            {k: v.detach().clone() for k, v in trainer.ema.module.state_dict().items()}
            if trainer.ema is not None
            else None
        ),  # fmt: skip
        "ema_updates": trainer.ema.updates if trainer.ema is not None else 0,
    }


def restore_training_state(trainer, state: dict) -> None:
    """Put back what :func:`training_state` copied."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scaler is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None:
        trainer.ema.module.load_state_dict(state["ema"])
        trainer.ema.updates = state["ema_updates"]
