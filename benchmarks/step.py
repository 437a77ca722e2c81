"""Benchmark the fused PGD step against PyTorch chains, in one process on the same tensors.

Compares: the fused step (``fastpgd.pgd_step_``), the out-of-place reference chain as users
write it (``fastpgd.reference_pgd_step``), the best in-place PyTorch chain, the same in-place
step under ``torch.compile`` (warm), and ``dst.copy_(src)`` for the memory bandwidth bound.

    python benchmarks/step.py [--json results.json] [--repeats 50]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

import fastpgd

EPS, ALPHA = 0.3, 0.01


def inplace_chain_linf(x, g, x0, lo, hi):
    # The fewest-op in-place chain: one temporary for the step, clamps with tensor bounds.
    torch.sign(g, out=lo)  # reuse a scratch buffer for sign
    x.add_(lo, alpha=ALPHA)
    torch.sub(x0, EPS, out=lo)
    torch.add(x0, EPS, out=hi)
    torch.clamp(x, min=lo, max=hi, out=x)
    x.clamp_(0.0, 1.0)


def inplace_chain_l2(x, g, x0, lo, hi):
    n = g.shape[0]
    gn = g.reshape(n, -1).norm(dim=1).clamp_min_(1e-12).reshape((n,) + (1,) * (g.dim() - 1))
    x.addcdiv_(g, gn, value=ALPHA)
    torch.sub(x, x0, out=lo)
    dn = lo.reshape(n, -1).norm(dim=1).clamp_min_(1e-12)
    f = (EPS / dn).clamp_max_(1.0).reshape(gn.shape)
    lo.mul_(f)
    torch.add(x0, lo, out=x)
    x.clamp_(0.0, 1.0)


def compiled_step(norm):
    def step(x, g, x0):
        y = fastpgd.reference_pgd_step(x, g, x0, eps=EPS, alpha=ALPHA, norm=norm)
        x.copy_(y)

    return torch.compile(step)


def measure(fn, repeats, min_time=0.2):
    fn()
    fn()
    # Inner loop count so that each sample lasts long enough for the clock.
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > min_time / repeats or n > 1 << 16:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    q = statistics.quantiles(samples, n=10)
    return {"median_s": statistics.median(samples), "p10_s": q[0], "p90_s": q[-1], "inner": n}


def run_case(name, shape, norm, repeats):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    x = x0.clone()
    lo, hi = torch.empty_like(x), torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    chain = inplace_chain_linf if norm == "linf" else inplace_chain_l2
    compiled = compiled_step(norm)
    fns = {
        "fused": (lambda: fastpgd.pgd_step_(x, g, x0, eps=EPS, alpha=ALPHA, norm=norm), 4),
        "reference_out_of_place": (
            lambda: fastpgd.reference_pgd_step(x, g, x0, eps=EPS, alpha=ALPHA, norm=norm),
            4,
        ),
        "inplace_chain": (lambda: chain(x, g, x0, lo, hi), 4),
        "torch_compile_inplace": (lambda: compiled(x, g, x0), 4),
        "copy_": (lambda: lo.copy_(g), 2),
    }
    results = {}
    for key, (fn, touches) in fns.items():
        r = measure(fn, repeats)
        r["GB_per_s"] = touches * nbytes / r["median_s"] / 1e9
        results[key] = r
    fused = results["fused"]["median_s"]
    for r in results.values():
        r["ratio_to_fused"] = r["median_s"] / fused
    backend = fastpgd.extension_info()["backend_in_use"]
    print(f"\n{name} {list(shape)} {norm} float32  (backend {backend})")
    print(f"  {'':24} {'median':>10} {'p10..p90':>20} {'x fused':>8} {'GB/s':>7}")
    for key, r in results.items():
        print(
            f"  {key:24} {r['median_s'] * 1e6:9.1f}us "
            f"{r['p10_s'] * 1e6:9.1f}..{r['p90_s'] * 1e6:<9.1f} {r['ratio_to_fused']:8.2f} "
            f"{r['GB_per_s']:7.1f}"
        )
    return {
        "name": name,
        "shape": list(shape),
        "norm": norm,
        "dtype": "float32",
        "results": results,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-large", action="store_true", help="only the MNIST batch")
    args = parser.parse_args(argv)
    cases = [("mnist_batch", (50, 1, 28, 28), "linf"), ("mnist_batch", (50, 1, 28, 28), "l2")]
    if not args.skip_large:
        cases += [
            ("imagenet_batch", (256, 3, 224, 224), "linf"),
            ("imagenet_batch", (256, 3, 224, 224), "l2"),
        ]
    out = [run_case(n, s, norm, args.repeats) for n, s, norm in cases]
    if args.json:
        meta = {
            "machine": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": torch.get_num_threads(),
            "torch": torch.__version__,
            "fastpgd": fastpgd.extension_info(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "cases": out}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
