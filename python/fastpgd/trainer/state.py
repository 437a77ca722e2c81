"""What a checkpoint of a :class:`~fastpgd.trainer.Trainer` holds, the check that a checkpoint
belongs to the run at hand, and putting it back. The file itself (format, atomic write, global
RNG state) is :mod:`fastpgd.checkpoint`'s business."""

from __future__ import annotations

import dataclasses
import os

import torch

from fastpgd.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    rng_state,
    set_rng_state,  # fmt: skip
)
from fastpgd.trainer.config import TRAJECTORY_DEFAULTS, TRAJECTORY_FIELDS, implied_method

__all__ = ["check_compatible", "load_state", "state_of"]


def _gather_generator_states(trainer) -> list:
    """The attack generator state of every rank (collective under torch.distributed)."""
    state = trainer.attack_gen.get_state().cpu()
    if not trainer.dist.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * trainer.dist.world_size
    dist.all_gather_object(states, state)
    return states


def state_of(trainer) -> dict:
    """Everything a resumed run needs to continue bit for bit (plain containers, tensors)."""
    c = trainer.config
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "torch_version": str(torch.__version__),
        "config": dataclasses.asdict(c),
        "deterministic": c.deterministic,
        "model_signature": dict(trainer.model_signature),
        "world_size": trainer.dist.world_size,
        # The evaluated model (the weight average with ema): what evaluation tools load. The
        # trained weights travel in "ema" then.
        "model": trainer.eval_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "step": trainer.step,
        "epoch": trainer.epoch,
        "position": trainer.position,
        # The order of an epoch is drawn from seed + epoch (see EpochOrder): this is the whole
        # state of the data-order generator.
        "data_order": {"seed": c.seed, "epoch": trainer.epoch, "position": trainer.position},
        "rng": rng_state(),
        "attack_generators": _gather_generator_states(trainer),
        "augment_generator": (
            trainer.augment_gen.get_state().cpu() if trainer.augment_gen is not None else None
        ),  # fmt: skip
        "timers": trainer.timers.state_dict(),
        "history": [dict(h) for h in trainer.history],
        "method": trainer.method.state_dict(),
        "ema": trainer.ema.state_dict(trainer.model) if trainer.ema is not None else None,
        "guard": trainer.guard.state_dict() if trainer.guard is not None else None,
    }


def _method_state(ckpt: dict):
    """The method's state; checkpoints written before methods kept it under their own keys."""
    if "method" in ckpt:
        return ckpt["method"]
    if ckpt.get("replay_memory") is not None:
        return {"memory": ckpt["replay_memory"]}
    if ckpt.get("free_delta") is not None:
        return {"delta": ckpt["free_delta"]}
    return None


def check_compatible(trainer, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
    """Refuse a checkpoint from another dataset, model shape, world size, trajectory or
    determinism mode.

    Raises:
        CheckpointError: naming every setting that differs.
    """
    c = trainer.config
    saved_deterministic = bool(ckpt.get("deterministic", False))
    if saved_deterministic != c.deterministic:
        was = "with" if saved_deterministic else "without"
        now = "with" if c.deterministic else "without"
        flag = "pass --deterministic" if saved_deterministic else "drop --deterministic"
        raise CheckpointError(
            f"checkpoint {path} was written {was} deterministic algorithms and this run is "
            f"{now}: a resume continues bit for bit only in the same mode; {flag} "
            "(deterministic=...) to continue it"
        )
    problems = []
    if ckpt.get("model_signature") != trainer.model_signature:
        problems.append(
            f"model {ckpt.get('model_signature')} (this run: {trainer.model_signature})"
        )
    if ckpt.get("world_size") != trainer.dist.world_size:
        problems.append(
            f"world size {ckpt.get('world_size')} (this run: {trainer.dist.world_size})"
        )
    saved = ckpt.get("config", {})
    saved = {"method": implied_method(saved), **saved}
    for name in TRAJECTORY_FIELDS:
        theirs = saved.get(name, TRAJECTORY_DEFAULTS.get(name))
        ours = getattr(c, name)
        if theirs != ours:
            problems.append(f"{name}={theirs!r} (this run: {ours!r})")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} comes from a different run and cannot be continued: "
            + "; ".join(problems)
        )


def load_state(trainer, ckpt: dict) -> None:
    """Restore a state written by :func:`state_of` (after :func:`check_compatible`).

    Raises:
        CheckpointError: a part is missing or does not fit.
    """
    if trainer.captured is not None:
        # The captured graphs write into the optimizer state that loading replaces.
        trainer.captured.reset()
    try:
        if trainer.ema is not None:
            trainer.ema.load_state_dict(ckpt["ema"], ckpt["model"], trainer.model)
        else:
            trainer.model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if trainer.scaler is not None:
            trainer.scaler.load_state_dict(ckpt["scaler"])
        trainer.step, trainer.epoch = ckpt["step"], ckpt["epoch"]
        trainer.position = ckpt["position"]
        set_rng_state(ckpt["rng"])
        trainer.attack_gen.set_state(ckpt["attack_generators"][trainer.dist.rank].to("cpu"))
        if trainer.augment_gen is not None:
            trainer.augment_gen.set_state(ckpt["augment_generator"].to("cpu"))
        trainer.timers.load_state_dict(ckpt["timers"])
        trainer.history = [dict(h) for h in ckpt["history"]]
        trainer.method.load_state_dict(_method_state(ckpt))
        if trainer.guard is not None:
            trainer.guard.load_state_dict(ckpt["guard"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint is damaged or incomplete: {exc}") from exc
