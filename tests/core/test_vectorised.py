"""The compiled step's cell update is vectorised, also in a fresh compile (an empty Numba cache: the first
daemon after an install). A rewrite of _cell once left a fresh compile scalar, 2.5x slower, while the cached
one was vectorised, so benchmarks run from a warm cache did not see it. Timing is not asserted (tests do
not time); the assembly is, in what holds on every x86-64 CPU with AVX and every LLVM: the five activations
of a unit (3 sigmoids, 2 tanh) each end in one division, and in a vectorised _cell those divisions are
packed (vdivps, >= 5) and so are the activations' polynomials (9 multiply-adds each: >= 30 packed ones where
the CPU has FMA). How many scalar operations the loop's remainder and the projection keep depends on the CPU
and the LLVM version (AVX-512 Zen 4: 103 packed and 58 scalar multiply-adds; AVX2 Zen 3 with numba 0.68.1:
54 and 58), so it is not asserted. The scalar compile that this guards against had 0 packed divisions and 5
packed multiply-adds."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()


CHILD = r"""
import re
import numpy as np
import lstm_stream as ls
from lstm_stream.kernels import cpu
rng = np.random.default_rng(0)
I, H = 8, 64
t = {"weight_ih_l0": rng.normal(0, 0.3, (4 * H, I)), "weight_hh_l0": rng.normal(0, 0.3, (4 * H, H)),
     "bias_ih_l0": rng.normal(0, 0.1, 4 * H), "bias_hh_l0": rng.normal(0, 0.1, 4 * H)}
s = ls.Streams(ls.LSTMModel.from_arrays(t, dtype="float32"), threads=1)
s.step_many([1, 2, 3], rng.standard_normal((3, I)).astype(np.float32))
for sig in cpu._cell.signatures:
    asm = cpu._cell.inspect_asm(sig)
    fma_ps = len(re.findall(r"^\s*vfn?m(?:add|sub)\w*ps\s", asm, re.M))
    fma_ss = len(re.findall(r"^\s*vfn?m(?:add|sub)\w*ss\s", asm, re.M))
    div_ps = len(re.findall(r"^\s*vdivps\s", asm, re.M))
    print(fma_ps, fma_ss, div_ps)
"""


@pytest.mark.skipif("avx" not in FLAGS, reason="reads x86 AVX assembly (Linux, x86-64 with AVX)")
def test_cell_vectorises_in_a_fresh_compile(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LSTM_STREAM_CACHE_DIR"}  # (it would take precedence)
    env.update(NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [tuple(map(int, line.split())) for line in out.stdout.split("\n") if re.fullmatch(r"\d+ \d+ \d+", line)]
    assert rows, f"no _cell compiled in the child: {out.stdout!r}"
    least_fma = 30 if "fma" in FLAGS else 0
    for fma_ps, fma_ss, div_ps in rows:
        assert div_ps >= 5 and fma_ps >= least_fma, \
            f"_cell compiled scalar: {div_ps} packed divisions (expected >= 5), {fma_ps} packed multiply-adds " \
            f"(expected >= {least_fma}; {fma_ss} scalar ones)"
