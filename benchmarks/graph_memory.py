"""GPU memory of fastpgd's CUDA graphs: the captured training step through the piecewise
schedule's learning-rate drops, and a model's captured attack steps.

Two measurements on one model (CIFAR-size: 3x32x32 images, the CIFAR recipe's SGD, PGD-10 with
eps 8/255 and step 2/255, on random images, as only the shapes matter here):

- ``train``: ``Trainer`` with ``cuda_graph="step"`` for ``--steps`` steps of one epoch, so that
  the piecewise schedule divides the learning rate at 50% and 75% of them, and each drop
  captures the step again. Per learning rate: ``torch.cuda.max_memory_allocated`` over its steps,
  and the allocated and reserved memory at its end. A step that holds its memory steady has the
  same figures before and after the drops.
- ``attack``: ``fused_pgd(cuda_graph=True)`` captured with ``--attack-keys`` different step
  sizes (one graph each, all in the model's one pool), after the peak of the eager attack.
  Reserved memory after each capture: sharing the pool keeps it near one graph's.

Usage::

    python benchmarks/graph_memory.py --device cuda --model preact-resnet18 --json out.json
    python benchmarks/graph_memory.py --device cuda --model wrn-34-10 --steps 4 --attack-keys 2
    python benchmarks/graph_memory.py --device cpu --tiny   # the code path only, no figures

On the CPU the graphs run over :class:`fastpgd.cuda_graph.EagerRuntime` (a replay calls the step
again): the run checks the code path, and memory is not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import sys
import time

import torch

from fastpgd.attacks import pgd as attack_mod
from fastpgd.cuda_graph import CudaGraph, EagerRuntime
from fastpgd.data import synthetic
from fastpgd.step import pgd_step_
from fastpgd.trainer import TrainConfig, Trainer
from fastpgd.trainer.captured_step import CapturedTrainStep

MIB = 2**20


def _memory(device: torch.device) -> dict | None:
    """Allocated, peak allocated and reserved memory in MiB (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return {
        "allocated_mib": torch.cuda.memory_allocated(device) / MIB,
        "max_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB,
        "reserved_mib": torch.cuda.memory_reserved(device) / MIB,
    }


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _trainer(args, device: torch.device) -> Trainer:
    n = args.steps * args.batch_size  # one epoch of --steps full batches: one batch shape
    data = synthetic(n, image_size=args.image_size, channels=3, seed=0)
    test = synthetic(args.batch_size, image_size=args.image_size, channels=3, seed=1)
    config = TrainConfig(
        dataset="synthetic", model=args.model, epochs=1, batch_size=args.batch_size,
        optimizer="sgd", lr=0.1, weight_decay=5e-4, lr_schedule="piecewise",
        eps=8 / 255, alpha=2 / 255, attack_steps=args.attack_steps, augment=False,
        device=str(device), cuda_graph="step" if device.type == "cuda" else "off",
        amp=args.amp, quiet=True,
    )  # fmt: skip
    trainer = Trainer(config, train_set=data, test_set=test, out=io.StringIO())
    if device.type != "cuda":
        # The captured step's code path on the CPU: graphs over the eager stand-in.
        trainer.graph_mode = "step"
        trainer.captured = CapturedTrainStep(trainer, runtime=EagerRuntime())
    return trainer


def measure_train(args, device: torch.device) -> list[dict]:
    """Memory per learning rate of a step-mode run through the piecewise schedule's drops."""
    trainer = _trainer(args, device)
    total = trainer.total_steps()
    bounds = sorted({0, total // 2, (3 * total) // 4, total})
    phases = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        _reset_peak(device)
        began = time.perf_counter()
        trainer.config = dataclasses.replace(trainer.config, max_steps=end)
        trainer.fit(evaluate=False)
        phases.append({
            "steps": [start, end],
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "captures_so_far": trainer.captured.captures,
            "seconds": time.perf_counter() - began,
            "memory": _memory(device),
        })  # fmt: skip
    return phases


def measure_attack(args, device: torch.device) -> dict:
    """Memory of the eager attack, then after each of ``--attack-keys`` captures on one model."""
    trainer = _trainer(args, device)  # for the model, built as training builds it
    model = trainer.model.eval()
    x, y, _ = next(trainer.batches.epoch(0))
    kw = dict(eps=8 / 255, steps=args.attack_steps, amp_dtype=trainer.amp_dtype)
    _reset_peak(device)
    attack_mod.fused_pgd(model, x, y, alpha=2 / 255, **kw)
    eager = _memory(device)
    captures = []
    for k in range(args.attack_keys):
        alpha = (2 + k) / 255  # another step size: another graph, in the same pool
        _reset_peak(device)
        if device.type == "cuda":
            attack_mod.fused_pgd(model, x, y, alpha=alpha, cuda_graph=True, **kw)
        else:
            # The public call refuses CPU tensors with cuda_graph=True: its private entry takes
            # the eager stand-in.
            options = attack_mod._pgd_options(model, x, y, alpha=alpha, **_ATTACK_DEFAULTS, **kw)
            options = dataclasses.replace(options, cuda_graph=True)
            attack_mod._pgd(
                pgd_step_, options, functools.partial(CudaGraph, runtime=EagerRuntime())
            )
        captures.append({"alpha": alpha, "memory": _memory(device)})
    return {"eager": eager, "captures": captures}


_ATTACK_DEFAULTS = dict(norm="linf", random_start=True, loss_fn=None, targeted=False,
                        clamp=(0.0, 1.0), generator=None, model_mode="eval", delta_init=None,
                        return_delta=False, restarts=1, cuda_graph=False, track_best=False,
                        check_inputs=True)  # fmt: skip


def _mib(memory: dict | None, key: str) -> str:
    return "-" if memory is None else f"{memory[key]:.0f}"


def format_report(result: dict) -> str:
    lines = [f"{result['model']}, batch {result['batch_size']}, {result['image_size']}x"
             f"{result['image_size']}, PGD-{result['attack_steps']}, amp {result['amp']}, "
             f"on {result['device_name']}"]  # fmt: skip
    lines.append("train, --cuda-graph step, piecewise lr (MiB):")
    lines.append(
        f"  {'steps':>9} {'lr':>8} {'captures':>8} {'peak':>8} {'alloc':>8} {'reserved':>9}"
    )
    for p in result["train"]:
        m = p["memory"]
        lines.append(
            f"  {p['steps'][0]:>4}-{p['steps'][1]:<4} {p['lr']:>8.0e} {p['captures_so_far']:>8} "
            f"{_mib(m, 'max_allocated_mib'):>8} {_mib(m, 'allocated_mib'):>8} "
            f"{_mib(m, 'reserved_mib'):>9}"
        )
    attack = result["attack"]
    lines.append("attack, cuda_graph=True, graphs of one model in one pool (MiB):")
    lines.append(f"  eager peak {_mib(attack['eager'], 'max_allocated_mib')}")
    for k, c in enumerate(attack["captures"], 1):
        m = c["memory"]
        lines.append(f"  {k} graph(s): peak {_mib(m, 'max_allocated_mib')}, "
                     f"reserved {_mib(m, 'reserved_mib')}")  # fmt: skip
    if result["device"] == "cpu":
        lines.append("(CPU: graphs over the eager stand-in; memory is measured on CUDA only)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="preact-resnet18",
                        choices=["madry-cnn", "preact-resnet18", "wrn-34-10"])  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16, help="steps of the run (>= 4)")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--attack-keys", type=int, default=4)
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--tiny", action="store_true",
                        help="madry-cnn, batch 4, 8x8 images, 2 attack steps")  # fmt: skip
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.batch_size, args.image_size, args.attack_steps = "madry-cnn", 4, 8, 2
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the schedule drops at 50% and 75%)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    result = {
        "model": args.model, "batch_size": args.batch_size, "image_size": args.image_size,
        "attack_steps": args.attack_steps, "amp": args.amp, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "train": measure_train(args, device),
        "attack": measure_attack(args, device),
    }  # fmt: skip
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
