"""CUDA timing of the fused PGD step against the PyTorch chain, torch.compile and a copy.

For each workload: ``fastpgd.pgd_step_`` (in place), ``fastpgd.reference_pgd_step`` (the chain
of separate PyTorch ops), the reference under ``torch.compile``, and a device-to-device
``copy_`` of one input, whose bandwidth is the practical ceiling. Times come from CUDA events
around a batch of back-to-back calls (launch overhead included, as a training loop sees it);
the median and spread of several such batches are reported, with the effective bandwidth
(bytes the fused step must move / time: 3 reads + 1 write for Linf, 7 reads + 1 write for L2).

Usage::

    python benchmarks/step_cuda.py [--iters 200] [--repeats 15] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics

import torch

WORKLOADS = [
    ("mnist 50x1x28x28", (50, 1, 28, 28)),
    ("cifar 128x3x32x32", (128, 3, 32, 32)),
    ("imagenet 64x3x224x224", (64, 3, 224, 224)),
]


def time_cuda(fn, iters, repeats):
    """Milliseconds per call of ``fn``: median and (min, max) over ``repeats`` batches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / iters)
    return statistics.median(per_call), min(per_call), max(per_call)


def _variants(x_adv, grad, x0, copy_dst, kw, compiled):
    """The timed callables of one case, bound to its own tensors."""
    import fastpgd

    variants = {
        "fused": lambda: fastpgd.pgd_step_(x_adv, grad, x0, **kw),
        "chain": lambda: fastpgd.reference_pgd_step(x0, grad, x0, **kw),
    }
    if compiled is not None:
        variants["compile"] = lambda: compiled(x0, grad, x0, **kw)
    variants["copy_"] = lambda: copy_dst.copy_(x0)
    return variants


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--repeats", type=int, default=15, help="timed batches")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--dtypes", default="float32,float16")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0

    import fastpgd

    info = fastpgd.extension_info()
    print(
        f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
        f"fastpgd {info['version']} backend={info['backend_in_use']} "
        f"cuda_kernels={info['cuda_available']}"
    )
    compiled = None if args.no_compile else torch.compile(fastpgd.reference_pgd_step)
    header = (
        f"{'workload':24} {'dtype':8} {'norm':4} {'variant':10} {'ms':>9} "
        f"{'(min-max)':>19} {'GB/s':>8} {'vs chain':>8}"
    )
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for name, shape in WORKLOADS:
            gen = torch.Generator(device="cuda").manual_seed(0)
            x0 = torch.rand(shape, device="cuda", dtype=dtype, generator=gen)
            grad = torch.randn(shape, device="cuda", dtype=dtype, generator=gen)
            copy_dst = torch.empty_like(x0)
            nbytes = x0.numel() * x0.element_size()
            for norm, eps, alpha in (("linf", 0.3, 0.01), ("l2", 2.0, 0.1)):
                x_adv = x0.clone()
                kw = {"eps": eps, "alpha": alpha, "norm": norm}
                moved = nbytes * (4 if norm == "linf" else 8)
                variants = _variants(x_adv, grad, x0, copy_dst, kw, compiled)
                results = {v: time_cuda(fn, args.iters, args.repeats) for v, fn in variants.items()}
                chain_ms = results["chain"][0]
                for v, (ms, lo, hi) in results.items():
                    gbs = (2 * nbytes if v == "copy_" else moved) / (ms * 1e-3) / 1e9
                    print(
                        f"{name:24} {dtype_name:8} {norm:4} {v:10} {ms:9.4f} "
                        f"({lo:8.4f}-{hi:8.4f}) {gbs:8.1f} {chain_ms / ms:7.2f}x"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
