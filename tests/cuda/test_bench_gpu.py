"""bench/gpu.py stays runnable: its --sim mode (device checks, timing loop, table) at the tiniest sizes."""
import os
import subprocess
import sys

import pytest

from cuda_helpers import simulated

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_gpu_sim_smoke():
    if not simulated():
        pytest.skip("on a real GPU run bench/gpu.py itself")
    pytest.importorskip("torch")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--sim", "--hidden", "4",
                        "--streams", "1", "3", "--repeats", "1"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("check ok:") == 4
    table = r.stdout.split("-" * 20)[-1]
    assert "batch (fused+smem)" in table and "latency: Streams.step" in table
