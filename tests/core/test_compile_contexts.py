"""A stream's bits do not depend on how its kernels came to be in the process: compiled fresh or loaded from
Numba's cache, the one-stream kernel before the many-stream one or after, in the daemon's warm-up child
processes or not. Seen once: the cell's c' = f*c + i*g, left to fastmath 'contract', was fused one way in a
fresh compile and the other way when the cell had been linked from the cache, so a daemon that recovered
from its step log with a warm cache reached other bits than the one that had served the steps (1-2 ulp in
h and c, then more). Each child here starts from its own cache state and order; every digest must agree."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import hashlib, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import lstm_stream as ls
from models import random_model

order = sys.argv[1]
if order == "warm":
    from lstm_stream import warm
    warm.warm_up("float32", workers=1)
rng = np.random.default_rng(40)
models = [random_model(rng, I=5, H=11, L=2, O=3, peepholes=True, head_activation="sigmoid"),
          random_model(rng, I=5, H=11, L=2, P=7, O=3, peepholes=True),
          random_model(rng, I=5, H=11, L=2, O=4, head_activation="softmax")]
xs = np.random.default_rng(41).standard_normal((4, 9, 5)).astype(np.float32)
h = hashlib.sha256()
for m in models:
    for path in (["one", "many"] if order != "many" else ["many", "one"]):
        s = ls.Streams(m, threads=1)
        for t in range(xs.shape[1]):
            if path == "one":
                ys = [s.step(k, xs[k, t]) for k in range(len(xs))]
            else:
                ys = list(s.step_many(list(range(len(xs))), xs[:, t]))
            for y in ys:
                h.update(np.ascontiguousarray(y).tobytes())
        for k in range(len(xs)):
            st = s.get_state(k)
            h.update(st.h.tobytes() + st.c.tobytes())
print("DIGEST", h.hexdigest())
"""


def _digest(order: str, cache: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LSTM_STREAM_CACHE_DIR"}  # (it would take precedence)
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD, order, str(ROOT / "tests")], env=env, cwd=cache,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("DIGEST ")]
    assert lines, out.stdout[-2000:]
    return lines[-1].split()[1]


def test_bits_do_not_depend_on_compile_order_or_the_cache(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    digests = {
        "fresh, one-stream kernel first": _digest("one", a),
        "fresh, many-stream kernel first": _digest("many", b),
        "from the cache of the first, many-stream first": _digest("many", a),
        "from the cache of the second, one-stream first": _digest("one", b),
    }
    c = tmp_path / "c"
    c.mkdir()
    digests["warmed up in child processes"] = _digest("warm", c)
    assert len(set(digests.values())) == 1, digests
    assert hashlib.sha256(b"").hexdigest() not in digests.values()
