"""Run ``fastpgd bench`` on both workloads and keep the JSON in benchmarks/results/.

Usage: ``python benchmarks/attack.py [--device cuda] [--repeats 5] [extra bench options]``.
Files are named ``attack-<workload>-<device>-<UTC date>.json``; each records the machine,
CPU/GPU model, torch version and ``fastpgd.extension_info()``.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

from fastpgd import bench

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default=",".join(bench.WORKLOADS))
    args, extra = parser.parse_known_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for workload in args.workloads.split(","):
        device = args.device.replace(":", "")
        out = RESULTS / f"attack-{workload}-{device}-{stamp}.json"
        code = bench.main(
            ["--workload", workload, "--device", args.device, "--json", str(out), *extra]
        )
        if code:
            return code
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
