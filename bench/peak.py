"""This machine's float32 matmul peak: a large numpy matmul, per thread count, and which BLAS kernel ran.

Run by bench.kernel in a child process whose environment lacks OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
(set on some machines here for old OpenBLAS builds; they slow a current one), since OpenBLAS reads them
when it loads:  python -m bench.peak --threads 1 2  ->  one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_info() -> str:
    """'openblas 0.3.x, kernel Zen, ...' from threadpoolctl when available."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    parts = []
    for p in threadpool_info():
        if p.get("user_api") == "blas":
            parts.append(f"{p.get('internal_api')} {p.get('version')}, kernel {p.get('architecture')}")
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def matmul_gflops(threads: int, n: int, reps: int) -> float:
    """Best GFLOP/s of an (n, n) @ (n, n) float32 matmul on `threads` BLAS threads (a peak is the best the
    machine did: the fastest repetition, not the median, so other load on the machine lowers it less)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def measure(threads: list, quick: bool = False) -> dict:
    """Run this module in a child with the OpenBLAS overrides removed; returns its JSON result:
    {'blas': str, 'n': int, 'gflops': {'1': float, ...}, 'unset': [names removed from the environment]}."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    args = [sys.executable, "-m", "bench.peak", "--threads", *map(str, threads)] + (["--quick"] if quick else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"bench.peak failed: {out.stderr.strip()[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["unset"] = [k for k in UNSET if k in os.environ]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n, reps = (1024, 5) if a.quick else (2048, 9)
    res = {"blas": blas_info(), "n": n,
           "gflops": {str(t): matmul_gflops(t, n, reps) for t in a.threads}}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
