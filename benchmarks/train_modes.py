"""What each speed setting of ``fastpgd train`` does to accuracy, beside its speed.

Trains the same run (same data, seed and number of steps) in each mode and reports the median
milliseconds per training step (the trainer's own ``step`` laps, the first ``--skip`` left out
as warm-up), the clean and PGD accuracy of the final evaluation, and the differences from the
float32 eager run of the same seed. Modes: ``eager`` (float32, no graphs), ``graph-attack``,
``graph-step``, ``tf32`` and ``bf16`` (both on the step graph where it is available), and
``deterministic``. Modes that need CUDA are listed as skipped elsewhere.

Usage::

    python benchmarks/train_modes.py [--device cuda] [--dataset fashion-mnist --data-dir DIR]
        [--max-steps 600] [--seeds 0 1] [--modes eager,bf16] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time

import torch

MODES = {
    "eager": dict(cuda_graph="off"),
    "graph-attack": dict(cuda_graph="attack"),
    "graph-step": dict(cuda_graph="step"),
    "tf32": dict(cuda_graph="step", tf32=True),
    "bf16": dict(cuda_graph="step", amp="bf16"),
    "deterministic": dict(cuda_graph="off", deterministic=True),
}
CUDA_ONLY = {"graph-attack", "graph-step", "tf32"}


def run(mode: str, seed: int, args) -> dict:
    from fastpgd.trainer import TrainConfig, Trainer

    settings = dict(MODES[mode])
    if args.device == "cpu" and settings.get("cuda_graph") == "step":
        settings["cuda_graph"] = "off"  # bf16 on the CPU: autocast without graphs
    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                         synthetic_size=args.synthetic_size,
                         max_steps=args.max_steps, seed=seed, quiet=True,
                         eval_limit=args.eval_limit, **settings)  # fmt: skip
    trainer = Trainer(config, out=io.StringIO())
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    laps = trainer.timers.laps("step")[args.skip :]
    return {
        "mode": mode,
        "seed": seed,
        "steps": result.steps,
        "ms_per_step": statistics.median(laps) * 1e3 if laps else float("nan"),
        "clean_acc": result.clean_acc,
        "pgd_acc": result.pgd_acc,
        "seconds": seconds,
        "graph_mode": trainer.graph_mode,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic-size", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES)
    )
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the median")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    cuda = args.device.startswith("cuda")
    rows, skipped = [], []
    for mode in modes:
        if mode in CUDA_ONLY and not cuda:
            skipped.append(mode)
            continue
        for seed in args.seeds:
            row = run(mode, seed, args)
            rows.append(row)
            print(f"{mode:<14} seed {seed}: {row['ms_per_step']:8.2f} ms/step  clean "
                  f"{row['clean_acc']:.1%}  PGD {row['pgd_acc']:.1%}", file=sys.stderr)  # fmt: skip
    base = {r["seed"]: r for r in rows if r["mode"] == "eager"}
    machine = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    try:
        from fastpgd.bench import cpu_model

        machine["cpu"] = cpu_model()
    except ImportError:
        pass
    print(f"# {args.dataset}, {args.max_steps} steps, seeds {args.seeds}, {args.device}; "
          f"{machine}")  # fmt: skip
    print("| mode | seed | ms/step | vs eager | clean | PGD | clean vs eager | PGD vs eager |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b = base.get(r["seed"])
        speed = f"{b['ms_per_step'] / r['ms_per_step']:.2f}x" if b else ""
        dc = f"{(r['clean_acc'] - b['clean_acc']) * 100:+.1f}" if b else ""
        dp = f"{(r['pgd_acc'] - b['pgd_acc']) * 100:+.1f}" if b else ""
        print(f"| {r['mode']} | {r['seed']} | {r['ms_per_step']:.2f} | {speed} | "
              f"{r['clean_acc']:.1%} | {r['pgd_acc']:.1%} | {dc} | {dp} |")  # fmt: skip
    for mode in skipped:
        print(f"| {mode} | | skipped: needs CUDA | | | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows,
                       "skipped": skipped}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
