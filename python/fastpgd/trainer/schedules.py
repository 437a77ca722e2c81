"""The learning-rate schedules of ``TrainConfig.lr_schedule``, as functions of the step."""

from __future__ import annotations

import math

__all__ = ["PER_STEP_SCHEDULES", "learning_rate", "onecycle_lr"]

PER_STEP_SCHEDULES = ("cosine", "onecycle")  # the learning rate changes at every step
# torch.optim.lr_scheduler.OneCycleLR's defaults, which onecycle_lr reproduces.
ONECYCLE_PCT_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def learning_rate(schedule: str, lr: float, step: int, total: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total`` under ``schedule``.

    ``"constant"``: ``lr``. ``"piecewise"``: divided by 10 after half of the steps and again
    after three quarters. ``"cosine"``: ``lr * (1 + cos(pi * step / total)) / 2``.
    ``"onecycle"``: :func:`onecycle_lr`.

    Examples::

        >>> learning_rate("piecewise", 0.1, 6, 8), learning_rate("cosine", 0.1, 4, 8)
        (0.010000000000000002, 0.05)
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == "onecycle":
        return onecycle_lr(lr, step, total)
    return lr * (0.1 ** ((step >= total // 2) + (step >= (3 * total) // 4)))


def onecycle_lr(lr: float, step: int, total: int) -> float:
    """The learning rate of :class:`torch.optim.lr_scheduler.OneCycleLR` (its defaults: 30% up
    from ``lr / 25`` to ``lr``, then down to ``lr / 25e4``, cosine annealing, two phases) at
    ``step`` of ``total``, computed as it does (the momentum is not cycled)."""
    initial = lr / ONECYCLE_DIV
    phases = ((float(ONECYCLE_PCT_START * total) - 1, initial, lr),
              (total - 1, lr, initial / ONECYCLE_FINAL_DIV))  # fmt: skip
    start = 0.0
    for i, (end, lo, hi) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end
    raise AssertionError("unreachable: the last phase always returns")
