"""Write files in the format of CIFAR-10's "python version" filled with random pixels.

The real data cannot be downloaded where the GPU checks run; timing a CIFAR-size epoch needs only
its shape. The files hold what the official distribution holds (``data_batch_1``..``5``,
``test_batch``, ``batches.meta``: dicts with bytes keys, ``N x 3072`` uint8 rows), so the
training run also goes through fastpgd's CIFAR reader; they are pickled with protocol 4 (the
official ones are Python 2 pickles of protocol 2, which Python 3 cannot write with bytes keys).

Usage::

    python benchmarks/cifar_like.py DIR [--train 50000] [--test 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def write_batch(path: Path, data: np.ndarray, labels: np.ndarray, name: str) -> None:
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": data,
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="where to write cifar-10-batches-py/")
    parser.add_argument("--train", type=int, default=50000, help="training images (5 batches)")
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 5 or args.test < 1:
        parser.error("--train must be >= 5 and --test >= 1")
    rng = np.random.default_rng(args.seed)
    folder = args.dir / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [args.train // 5 + (i < args.train % 5) for i in range(5)]
    for i, n in enumerate(sizes, start=1):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        write_batch(folder / f"data_batch_{i}", data, rng.integers(0, 10, n), f"batch {i}")
    data = rng.integers(0, 256, size=(args.test, 3072), dtype=np.uint8)
    write_batch(folder / "test_batch", data, rng.integers(0, 10, args.test), "test")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": sizes[0],
                     b"num_vis": 3072}, f, protocol=4)  # fmt: skip
    print(f"wrote {args.train} training and {args.test} test images to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
