"""Per-stream state on CUDA: get/set/copy/reset/drop, growth of the device slab, snapshots across backends,
and backend selection ('cuda' without a GPU fails at construction; 'auto' logs its choice)."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import lstm_stream as ls
from cuda_helpers import simulated
from models import random_model

ATOL32 = 5e-6


def model_for(seed, dtype="float32"):
    return random_model(np.random.default_rng(seed), I=3, H=5, L=2, P=3, O=3, dtype=dtype)


def test_get_set_copy_reset_drop(seed):
    model = model_for(seed)
    rng = np.random.default_rng(seed)
    s = ls.Streams(model, backend="cuda")
    h, c = rng.normal(0, 1, (2, 3)), rng.normal(0, 1, (2, 5))
    s.set_state("a", {"h": h, "c": c, "steps": 7})
    st = s.get_state("a")
    assert np.array_equal(st.h, h.astype(np.float32)) and np.array_equal(st.c, c.astype(np.float32))
    assert st.h.shape == (2, 3) and st.c.shape == (2, 5) and st.steps == 7
    s.copy("a", "b")
    x = rng.normal(0, 1, (4, 3))
    assert np.array_equal(s.step("a", x), s.step("b", x))
    s.reset("a")
    assert not s.get_state("a").h.any() and not s.get_state("a").c.any()
    s.drop("b")
    y_z = s.step("z", x)  # reuses b's slot: must start from zero, not from b's state
    assert np.array_equal(y_z, ls.Streams(model, backend="cuda").step("z", x))


def test_new_stream_in_freed_slot_starts_at_zero(seed):
    model = model_for(seed)
    x = np.random.default_rng(seed).normal(0, 1, (3, 3))
    s = ls.Streams(model, backend="cuda")
    y_first = s.step("a", x)
    s.drop("a")
    assert np.array_equal(s.step("b", x), y_first)  # same slot, zeroed before use


def test_growth_keeps_every_stream(seed):
    model = model_for(seed)
    rng = np.random.default_rng(seed)
    cpu, gpu = ls.Streams(model, initial_capacity=2), ls.Streams(model, backend="cuda", initial_capacity=2)
    for wave in range(3):  # 2 -> 4 -> 8 -> 16 slots
        ids = list(range(5 * wave, 5 * wave + 5))
        X = rng.normal(0, 1, (5, 3))
        assert np.abs(cpu.step_many(ids, X) - gpu.step_many(ids, X)).max() < ATOL32
    assert gpu.stats()["capacity"] >= 15
    for i in cpu.ids():
        a, b = cpu.get_state(i), gpu.get_state(i)
        assert np.abs(a.h - b.h).max() < ATOL32 and np.abs(a.c - b.c).max() < ATOL32, f"seed={seed}"


@pytest.mark.parametrize("src,dst", [("cpu", "cuda"), ("cuda", "cpu"), ("cuda", "cuda")])
def test_snapshot_across_backends_continues(src, dst, tmp_path, seed):
    model = model_for(seed)
    rng = np.random.default_rng(seed)
    X1, X2 = rng.normal(0, 1, (2, 4, 3)).astype(np.float32), rng.normal(0, 1, (3, 4, 3)).astype(np.float32)
    ids = ["a", 2, "c", 40]
    never = ls.Streams(model, backend=src)
    for x in X1:
        never.step_many(ids, x)
    never.save_snapshot(tmp_path / "snap")
    restored = ls.Streams.load_snapshot(tmp_path / "snap", model, backend=dst)
    assert sorted(map(str, restored.ids())) == sorted(map(str, ids))
    for x in X2:
        a, b = never.step_many(ids, x), restored.step_many(ids, x)
        if src == dst:
            assert np.array_equal(a, b), f"seed={seed}"
        else:
            assert np.abs(a - b).max() < ATOL32, f"seed={seed}"
    assert restored.stream_info("a")["steps"] == never.stream_info("a")["steps"] == 5


def test_auto_picks_cuda_and_logs_it(caplog, seed):
    with caplog.at_level(logging.INFO, logger="lstm_stream"):
        s = ls.Streams(model_for(seed), backend="auto")
    assert s.backend == "cuda"
    assert "backend=auto chose cuda" in caplog.text


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np, lstm_stream as ls
from models import random_model
model = random_model(np.random.default_rng(0), I=2, H=3, L=1, O=1)
try:
    ls.Streams(model, backend="cuda")
except ls.BackendError as e:
    print("BackendError:", e)
print("auto ->", ls.Streams(model, backend="auto").backend)
"""


def test_cuda_without_gpu_fails_at_construction():
    if not simulated():
        pytest.skip("a real GPU is present")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    tests = os.path.dirname(os.path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "BackendError: backend='cuda' needs a usable NVIDIA GPU" in r.stdout
    assert "auto -> cpu" in r.stdout


def test_nan_or_inf_for_a_known_stream_is_refused_and_changes_nothing(seed):
    """Streams.step leaves the NaN/Inf check of a known stream's input to the backend's run_one: on CUDA too,
    an InputError and nothing changed."""
    model = model_for(seed)
    s = ls.Streams(model, backend="cuda")
    x = np.random.default_rng(seed).normal(0, 1, (2, 3)).astype(np.float32)
    s.step("a", x)
    before = s.get_state("a")
    for bad in (np.array([0, np.nan, 1], np.float32), np.array([[np.inf, 0, 0]] * 2, np.float32)):
        with pytest.raises(ls.InputError, match="NaN or Inf"):
            s.step("a", bad)
    after = s.get_state("a")
    assert np.array_equal(before.h, after.h) and np.array_equal(before.c, after.c) and after.steps == 2
