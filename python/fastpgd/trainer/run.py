"""``train()``: one run (and optionally its naturally trained twin) with the final report."""

from __future__ import annotations

import dataclasses
import sys
import time

from fastpgd.trainer.config import TrainConfig, TrainResult, natural_method, pixel_budget
from fastpgd.trainer.loop import Trainer

__all__ = ["train"]


def train(config: TrainConfig | None = None, *, out=None, **kwargs) -> TrainResult:
    """Adversarially train (:class:`Trainer`) and print the timing report and the accuracy.

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
                resume=False, timing_json=None, plot=None, report_every=0, **natural_method(),
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
    if c.method != "pgd":
        return f"adversarial training ({c.method}, {c.attack})"
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
        f"== accuracy on the {c.dataset} test split at eps {pixel_budget(c.eps)} (PGD "
        f"{c.eval_steps} steps of {pixel_budget(c.alpha)}, {c.eval_restarts} restarts)",
        _accuracy_line(_method_label(c), result, elapsed),
    ]
    return "\n".join(lines)
