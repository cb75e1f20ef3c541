"""CUDA equals CPU, PyTorch and the float64 reference (the CPU backend's equivalence tests, for CUDA).

Tolerances: float32 5e-6 absolute, as for the CPU (tests/core/test_equivalence.py explains the budget; on a
GPU, FMA contraction adds at most one rounding per multiply-add, the same order as the CPU's); float64
1e-12 (libm vs CUDA's libdevice exp/tanh differ by an ulp or two).
"""
import numpy as np
import pytest

import lstm_stream as ls
from cuda_helpers import big
from models import random_model, torch_lstm, torch_offline
from reference import reference_run

ATOL32, ATOL64 = 5e-6, 1e-12


CONFIGS = [  # I, H, L, P, O, head activation
    (1, 1, 1, 0, 1, "none"),
    (3, 6, 2, 0, 3, "softmax"),
    (3, 7, 2, 4, 4, "sigmoid"),
    (4, 5, 1, 3, 0, "none"),
]


@pytest.mark.parametrize("I,H,L,P,O,act", CONFIGS)
def test_cuda_equals_torch_offline(I, H, L, P, O, act, seed):
    torch = pytest.importorskip("torch")  # noqa: F841
    T = big(40, 3000)
    lstm, head, model = torch_lstm(seed, I, H, L, P, O, head_activation=act, scale=2.0)
    xs = np.random.default_rng(seed).normal(0, 1.5, (T, I)).astype(np.float32)
    offline = torch_offline(lstm, head, xs, act)
    streams = ls.Streams(model, backend="cuda")
    whole = streams.step("s", xs)
    assert whole.shape == offline.shape and whole.dtype == np.float32
    err = np.abs(whole - offline).max()
    if err >= ATOL32:  # rare at scale 2 over 3,000 steps: the model's conditioning (tests/core/test_equivalence.py)
        ref = reference_run(model, xs)[0]
        torch_err, our_err = np.abs(offline - ref).max(), np.abs(whole - ref).max()
        assert our_err < 10 * torch_err, (
            f"seed={seed}: max |ours - torch| = {err:.3g} over {T} steps; against the float64 reference "
            f"ours is {our_err:.3g} off and PyTorch's float32 {torch_err:.3g}")
    # T one-step calls give the same bytes as one T-step call.
    one_by_one = ls.Streams(model, backend="cuda")
    n = big(5, 300)
    steps = np.stack([one_by_one.step("s", x) for x in xs[:n]])
    assert np.array_equal(steps, whole[:n]), f"seed={seed}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("I,H,L,P,O,act", CONFIGS)
def test_cuda_equals_cpu_and_reference(I, H, L, P, O, act, dtype, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I, H, L, P, O, head_activation=act, dtype=dtype, scale=0.8)
    xs = rng.normal(0, 1, (big(25, 2000), I)).astype(dtype)
    ref, h_ref, c_ref = reference_run(model, xs)
    cpu, gpu = ls.Streams(model), ls.Streams(model, backend="cuda")
    y_cpu, y_gpu = cpu.step(3, xs), gpu.step(3, xs)
    tol = ATOL32 if dtype == "float32" else ATOL64
    cpu_err = np.abs(y_cpu - ref).max()
    if dtype == "float32":
        # Weights of std 0.8 (~3.7x PyTorch's init range at H = 7) over 2,000 steps on a real GPU: about one
        # (seed, model) in 20 keeps a long memory that amplifies every step's float32 rounding, so that the
        # CPU backend itself is 1e-5..5e-5 off the float64 reference (seed 945458688, H = 7: 1.5e-5 at step
        # 1,361). The model's conditioning, measured by the CPU's float32 error (tests/core checks the CPU
        # against PyTorch), sets the bound there: 10x it, as tests/core/test_equivalence.py does with
        # PyTorch's. Well-conditioned seeds (the rest, and every simulator run) keep 5e-6.
        tol = max(tol, 10 * cpu_err)
    msg = f"seed={seed}: the CPU's float32 error against the float64 reference is {cpu_err:.3g}"
    assert y_gpu.dtype == np.dtype(dtype)
    assert np.abs(y_gpu - y_cpu).max() < tol, msg
    assert np.abs(y_gpu - ref).max() < tol, msg
    s = gpu.get_state(3)
    assert np.abs(s.h - h_ref).max() < tol and np.abs(s.c - c_ref).max() < 10 * tol, msg


def test_interleaved_streams_cpu_vs_cuda(seed):
    """Random models, many streams stepped in random interleaved batches: CUDA within tolerance of CPU."""
    rng = np.random.default_rng(seed)
    H = big(6, 64)
    # weights of std 1/sqrt(H) (PyTorch's init range): std 0.5 at H=64 makes a chaotic network, whose float32
    # rounding differences (FMA on the GPU, not on the CPU) grow with every step, on any machine
    model = random_model(rng, I=3, H=H, L=2, P=0, O=3, scale=1 / np.sqrt(H))
    n_streams, n_samples = big(10, 300), big(60, 20_000)
    ids = [f"s{k}" if k % 2 else k for k in range(n_streams)]
    order = rng.integers(0, n_streams, n_samples)
    X = rng.normal(0, 1, (n_samples, 3)).astype(np.float32)
    cpu, gpu = ls.Streams(model), ls.Streams(model, backend="cuda")
    pos = 0
    while pos < n_samples:
        n = int(rng.integers(1, big(25, 2000)))
        batch = [ids[k] for k in order[pos:pos + n]]
        a, b = cpu.step_many(batch, X[pos:pos + n]), gpu.step_many(batch, X[pos:pos + n])
        assert np.abs(a - b).max() < ATOL32, f"seed={seed}"
        pos += n
    for i in ids:
        if i in cpu:
            assert np.abs(cpu.get_state(i).c - gpu.get_state(i).c).max() < 10 * ATOL32, f"seed={seed}"


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float64", 1e-12)])
def test_one_step_large_weights(dtype, tol, seed):
    """Saturating gates from random states: one CUDA step matches the reference."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=4, H=7, L=2, P=0, O=3, head_activation="sigmoid", dtype=dtype, scale=2.0)
    streams = ls.Streams(model, backend="cuda")
    for _ in range(big(4, 50)):
        streams.set_state("s", (rng.normal(0, 1, (2, 7)), rng.normal(0, 3, (2, 7))))
        st = streams.get_state("s")
        x = rng.normal(0, 3, 4).astype(dtype)
        y = streams.step("s", x)
        ref, _, c_ref = reference_run(model, x[None], st.h, st.c)
        assert np.abs(y - ref[0]).max() < tol, f"seed={seed}"
        assert np.abs(streams.get_state("s").c - c_ref).max() < 4 * tol, f"seed={seed}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forecast_matches_cpu_and_leaves_state(dtype, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=3, H=6, L=2, O=3, head_activation="none", dtype=dtype)
    cpu, gpu = ls.Streams(model), ls.Streams(model, backend="cuda")
    xs = rng.normal(0, 1, (5, 3))
    cpu.step("a", xs)
    gpu.step("a", xs)
    before = gpu.get_state("a")
    fc_gpu, fc_cpu = gpu.forecast("a", big(6, 200)), cpu.forecast("a", big(6, 200))
    after = gpu.get_state("a")
    assert np.array_equal(before.h, after.h) and np.array_equal(before.c, after.c)
    assert fc_gpu.shape == fc_cpu.shape == (big(6, 200), 3)
    assert np.abs(fc_gpu - fc_cpu).max() < (ATOL32 if dtype == "float32" else ATOL64), f"seed={seed}"
