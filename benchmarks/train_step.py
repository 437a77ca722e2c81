"""Run ``fastpgd bench --train`` and keep its JSON and its table in benchmarks/results/.

Usage: ``python benchmarks/train_step.py [--device cuda] [extra bench --train options]``, e.g.
``python benchmarks/train_step.py --device cuda --steps 100 --warmup 10``. Files are named
``train-step-<workload>-<device>-<UTC date>.json`` (every figure, the machine: CPU/GPU model,
driver, torch, ``fastpgd.extension_info()``) and ``.txt`` (the table as printed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

from fastpgd import bench, bench_train

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default=",".join(bench_train.WORKLOADS))
    args, extra = parser.parse_known_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for workload in args.workloads.split(","):
        device = args.device.replace(":", "")
        out = RESULTS / f"train-step-{workload}-{device}-{stamp}.json"
        code = bench.main(
            ["--train", "--workload", workload, "--device", args.device, "--json", str(out),
             *extra]
        )  # fmt: skip
        if code:
            return code
        table = bench_train.format_train_table(json.loads(out.read_text()))
        out.with_suffix(".txt").write_text(table + "\n")
        print(f"wrote {out} and {out.with_suffix('.txt').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
