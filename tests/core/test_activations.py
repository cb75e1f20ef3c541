"""The kernels' activations: float32 rational tanh/sigmoid within 5e-7 of exact, float64 exact, NaN-free."""
import numpy as np
import pytest
from numba import njit

from lstm_stream.kernels import activations as cpu


@njit
def _apply(x):
    t, s = np.empty_like(x), np.empty_like(x)
    for i in range(x.size):
        t[i] = cpu.act_tanh(x[i])
        s[i] = cpu.act_sigmoid(x[i])
    return t, s


@pytest.mark.parametrize("dtype,tol", [(np.float32, 5e-7), (np.float64, 1e-15)])
def test_activations_match_exact(dtype, tol):
    x = np.concatenate([np.linspace(-30, 30, 200_001), np.linspace(-1e-3, 1e-3, 20_001), [-1e30, 1e30, 0.0]])
    x = x.astype(dtype)
    t, s = _apply(x)
    assert t.dtype == dtype and s.dtype == dtype
    x64 = x.astype(np.float64)
    assert np.abs(t - np.tanh(x64)).max() < tol
    assert np.abs(s - 1 / (1 + np.exp(-np.clip(x64, -700, 700)))).max() < tol
    assert np.all(np.abs(t) <= 1) and np.all((s >= 0) & (s <= 1))
    assert np.array_equal(np.sign(t), np.sign(x))  # odd, and exact at 0


_tanh32 = njit(fastmath={"contract"})(cpu.tanh32)


@njit(fastmath={"contract"})
def _contracted(x):
    """tanh32 and the sigmoid over it as plain expressions, each a*b+c left to LLVM to fuse (as NVVM fuses the
    CUDA kernels' copy of tanh32)."""
    t, s = np.empty_like(x), np.empty_like(x)
    for i in range(x.size):
        t[i] = _tanh32(x[i])
        s[i] = np.float32(0.5) + np.float32(0.5) * _tanh32(np.float32(0.5) * x[i])
    return t, s


def test_explicit_multiply_adds_are_the_contracted_expression():
    """The CPU's float32 activations write each multiply-add as panel.fmuladd; they give the bits of the same
    expressions fused by fastmath 'contract' (each has a single product, so there is one way to fuse)."""
    x = np.concatenate([np.linspace(-12, 12, 100_003), np.linspace(-1e-3, 1e-3, 2_001)]).astype(np.float32)
    x = np.concatenate([x, np.random.default_rng(5).standard_normal(50_000).astype(np.float32) * 3])
    (t, s), (tc, sc) = _apply(x), _contracted(x)
    assert np.array_equal(t, tc) and np.array_equal(s, sc)
