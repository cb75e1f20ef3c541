"""This machine's float32 matmul peak: a large numpy matmul, per thread count, and which BLAS kernel ran.

Run by bench.kernel in a child process whose environment lacks OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
(set on some machines here for old OpenBLAS builds; they slow a current one), since OpenBLAS reads them
when it loads. `python -m bench.peak` prints one JSON line for the thread count its environment allows.
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


def blas_info() -> tuple:
    """('openblas 0.3.x, kernel SkylakeX', threads) from threadpoolctl; (note, None) without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)", None
    libs = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not libs:
        return "no BLAS found by threadpoolctl", None
    text = "; ".join(f"{p.get('internal_api')} {p.get('version')}, kernel {p.get('architecture')}" for p in libs)
    return text, libs[0].get("num_threads")


def matmul_gflops(n: int, reps: int) -> float:
    """Best GFLOP/s of an (n, n) @ (n, n) float32 matmul (a peak is the best the machine did: the fastest
    repetition, not the median, so other load on the machine lowers it less)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def measure(threads: list, quick: bool = False) -> dict:
    """One child per thread count, its BLAS limited by environment (OPENBLAS/OMP/MKL_NUM_THREADS, read when
    the library loads) and without the OpenBLAS overrides. Returns {'blas': str, 'n': int,
    'gflops': {'1': float, ...}, 'unset': [names removed from the environment]}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = {"gflops": {}, "unset": [k for k in UNSET if k in os.environ]}
    for t in threads:
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
        env.update({k: str(t) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        args = [sys.executable, "-m", "bench.peak"] + (["--quick"] if quick else [])
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=root)
        if out.returncode != 0:
            raise RuntimeError(f"bench.peak failed: {out.stderr.strip()[-2000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
        if child["threads"] not in (None, t):
            raise RuntimeError(f"bench.peak: BLAS ran {child['threads']} threads, {t} were asked for")
        result["gflops"][str(t)] = child["gflops"]
        result["blas"], result["n"] = child["blas"], child["n"]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n, reps = (1024, 5) if a.quick else (2048, 9)
    blas, threads = blas_info()
    print(json.dumps({"blas": blas, "threads": threads, "n": n, "gflops": matmul_gflops(n, reps)}))


if __name__ == "__main__":
    main()
