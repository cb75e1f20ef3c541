"""Peephole connections on the CUDA kernels (both paths: one block per tile, and the wide path that spreads a
stream's units over blocks): equal to the CPU kernels and the float64 reference, within the tolerances of
test_cuda_equivalence.py; and the same bits on either path and launch geometry."""
import numpy as np
import pytest

import lstm_stream as ls
import lstm_stream.backends.cuda as cuda_backend
from cuda_helpers import big
from models import random_model
from reference import reference_run

ATOL32, ATOL64 = 5e-6, 1e-12


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("I,H,L,P,O,act", [(3, 6, 2, 0, 3, "softmax"), (2, 5, 1, 3, 2, "sigmoid")])
def test_cuda_peepholes_equal_cpu_and_reference(I, H, L, P, O, act, dtype, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I, H, L, P, O, head_activation=act, dtype=dtype, scale=0.6, peepholes=True)
    xs = rng.normal(0, 1, (big(20, 2000), I)).astype(dtype)
    ref, h_ref, c_ref = reference_run(model, xs)
    cpu, gpu = ls.Streams(model), ls.Streams(model, backend="cuda")
    y_cpu, y_gpu = cpu.step(3, xs), gpu.step(3, xs)
    tol = ATOL32 if dtype == "float32" else ATOL64
    assert np.abs(y_gpu - y_cpu).max() < tol, f"seed={seed}"
    assert np.abs(y_gpu - ref).max() < tol, f"seed={seed}"
    s = gpu.get_state(3)
    # c is a running sum: where a forget gate sits near 1 its rounding error grows with the steps and with |c|
    # (a cell at |c| ~ 800 after 2,000 steps differs by ~0.1 between CPU and GPU float32, FMA or not)
    c_tol = 10 * tol + 4 * len(xs) * np.finfo(dtype).eps * np.abs(c_ref)
    assert np.abs(s.h - h_ref).max() < tol and (np.abs(s.c - c_ref) <= c_tol).all(), f"seed={seed}"


PATHS = {  # name: monkeypatches of cuda_backend
    "default": {},
    "weights read from global memory": {"Kernels.opt_in_shared": lambda self, n, names=(): False},
    "wide path (units over blocks)": {"CUDABackend._wide": lambda self, n: True},
    "wide path, few threads": {"CUDABackend._wide": lambda self, n: True, "MAX_BLOCK_THREADS": 8,
                               "MIN_BLOCK_THREADS": 8},
}


def same_on_every_path(monkeypatch, model, X, seed):
    """X (steps, n, I) stepped on every CUDA path of PATHS: the same bits on each, within ATOL32 of the CPU;
    returns the outputs (steps, n, O)."""
    n = X.shape[1]
    results = {}
    for name, patches in PATHS.items():
        with monkeypatch.context() as m:
            for attr, value in patches.items():
                owner, _, leaf = attr.rpartition(".")
                m.setattr(getattr(cuda_backend, owner) if owner else cuda_backend, leaf, value)
            s = ls.Streams(model, backend="cuda")
            results[name] = np.stack([s.step_many(list(range(n)), x) for x in X])
    for name, r in results.items():
        assert np.array_equal(r, results["default"]), f"{name}: seed={seed}"
    cpu = ls.Streams(model)
    y_cpu = np.stack([cpu.step_many(list(range(n)), x) for x in X])
    assert np.abs(results["default"] - y_cpu).max() < ATOL32, f"seed={seed}"
    return results["default"]


def test_cuda_peepholes_on_every_path(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    H = big(11, 300)
    # weights of std 1/sqrt(H) (PyTorch's init range): the default std 0.5 at H=300 makes a chaotic network
    # (float32 and float64 differ by ~1 after 45 steps, on the CPU alone), where only isolation could be tested
    model = random_model(rng, I=2, H=H, L=2, P=0, O=3, head_activation="softmax", peepholes=True,
                         scale=1 / np.sqrt(H))
    n = big(5, 1000)
    X = rng.normal(0, 1, (big(6, 50), n, 2)).astype(np.float32)
    same_on_every_path(monkeypatch, model, X, seed)


@pytest.mark.parametrize("peepholes", [False, True])
def test_cuda_clip_equals_cpu_on_every_path(monkeypatch, seed, peepholes):
    """clip (each gate's input clamped to [-clip, clip]; tests/core/test_clip.py) on the GPU: equal to the CPU
    kernels and the reference, the same bits on every path; weights large enough that the clip binds."""
    rng = np.random.default_rng(seed)
    H = big(7, 200)
    base = random_model(rng, I=3, H=H, L=2, P=0, O=2, head_activation="sigmoid", peepholes=peepholes,
                        scale=1.5 / np.sqrt(H))
    model = ls.LSTMModel.from_arrays(base.tensors(), head_activation="sigmoid", clip=0.5)
    n = big(3, 500)
    X = rng.normal(0, 2, (big(8, 40), n, 3)).astype(np.float32)
    y = same_on_every_path(monkeypatch, model, X, seed)
    ref, _, _ = reference_run(model, X[:, 0])
    assert np.abs(y[:, 0] - ref).max() < ATOL32, f"seed={seed}"
    free = ls.Streams(base, backend="cuda")
    assert np.abs(np.stack([free.step_many(list(range(n)), x) for x in X]) - y).max() > 1e-3
