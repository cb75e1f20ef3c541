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
