"""The CPU step's micro-kernel (kernels/panel.py via cpu._gate_sums): right sums, and each stream's sums the
same bits whatever the number of streams beside it, their order, and which panel (6 rows, or a leftover of
1-5) it lands in."""
import os
import secrets

import numpy as np
import pytest
from numba import njit

from lstm_stream.kernels import cpu
from lstm_stream.kernels.constants import CPU_BLOCK, CPU_TILE_STREAMS, PANEL_ROWS
from lstm_stream.kernels.layout import k_max, scratch_per_stream, scratch_size, widest_input
from lstm_stream.kernels.panel import borrow
from models import random_model

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))


@njit(cache=False)
def gate_sums(wbuf, off_w, K, JB, nJ, scr, uo, ldu, go, ldg, n):
    cpu._gate_sums(wbuf, off_w, K, JB, nJ, scr, uo, ldu, go, ldg, n)


def run(W, U, off_w=16):
    """Gate sums of the rows of U (n, K) for blocked weights W (nJ, K + 1, JB), through a scratch laid out
    as the kernel's: sums first, then the inputs with a row stride longer than K."""
    nJ, K1, JB = W.shape
    K, n, dt = K1 - 1, len(U), W.dtype
    wbuf = np.concatenate([np.full(off_w, np.nan, dt), W.ravel(), np.full(16, np.nan, dt)])
    Gp, ldu = nJ * JB, K + 3
    scr = np.full(n * (Gp + ldu) + 16, np.nan, dt)
    scr[n * Gp:n * Gp + n * ldu].reshape(n, ldu)[:, :K] = U
    gate_sums(wbuf, off_w, K, JB, nJ, scr, n * Gp, ldu, 0, Gp, n)
    assert np.isnan(scr[-16:]).all(), "wrote past the sums and inputs"
    return scr[:n * Gp].reshape(n, Gp)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K, JB, nJ", [(1, 16, 1), (7, 48, 1), (72, 256, 1), (289, 128, 3)])
def test_gate_sums_match_reference_and_do_not_depend_on_the_batch(dtype, K, JB, nJ):
    rng = np.random.default_rng(SEED)
    W = rng.normal(0, 0.3, (nJ, K + 1, JB)).astype(dtype)
    U = rng.normal(0, 1, (13, K)).astype(dtype)
    full = run(W, U)

    W64, U64 = W.astype(np.float64), U.astype(np.float64)
    ref = np.concatenate([U64 @ W64[jb, :K] + W64[jb, K] for jb in range(nJ)], axis=1)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(full, ref, rtol=tol, atol=tol * np.sqrt(K), err_msg=f"seed={SEED}")

    for n in range(1, 14):  # every panel size and leftover, rows in a new order each time
        pick = rng.permutation(13)[:n]
        part = run(W, U[pick], off_w=int(rng.integers(0, 40)))
        assert np.array_equal(part, full[pick]), f"n={n}, seed={SEED}"


@njit(cache=False)
def head(wbuf, meta, h, y):
    cpu._head(wbuf, meta, h, 1, y, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H, O", [(1, 1), (5, 8), (64, 4), (67, 11), (30, 20), (263, 3)])
def test_head_matches_reference(dtype, H, O):
    """The linear head (headdot: per output, 8 partial sums over k in one vector): right values for every width,
    hidden sizes that are not multiples of 4, output counts that are not multiples of 8; writes only y's row."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=H, L=1, O=O, head_activation="none", dtype=dtype)
    wbuf, meta = model.packed(CPU_BLOCK)
    h = rng.normal(0, 1, (3, 1, H)).astype(dtype)  # a state slab: the head reads slot 1's row in place
    hl = h[1, 0]
    y = np.full((2, O), np.nan, dtype)
    head(wbuf, meta, h, y)
    ref = model.head_w.astype(np.float64) @ hl.astype(np.float64) + model.head_b.astype(np.float64)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y[0], ref, rtol=tol, atol=tol, err_msg=f"seed={SEED}")
    assert np.isnan(y[1]).all()


@njit(cache=False)
def prefetch_states(h, c, slots, lo, hi):
    cpu._prefetch_states(h, c, slots, lo, hi)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("L, H, P", [(1, 64, 64), (2, 7, 7), (3, 33, 5)])
def test_prefetching_states_changes_nothing(dtype, L, H, P):
    """_prefetch_states compiles and runs for both dtypes and rows of every alignment, the last slot included,
    in runs and out of order (the intrinsic's LLVM name must suit the LLVM in use: a wrong one fails to
    compile here; float64 reaches no other batch-kernel test), and leaves the state as it was."""
    rng = np.random.default_rng(SEED)
    h, c = rng.normal(0, 1, (50, L, P)).astype(dtype), rng.normal(0, 1, (50, L, H)).astype(dtype)
    h0, c0 = h.copy(), c.copy()
    slots = np.concatenate([rng.permutation(50), np.arange(40, 50), [49, 0]]).astype(np.int64)
    for lo, hi in [(0, len(slots)), (5, 17), (len(slots) - 1, len(slots)), (3, 3)]:
        prefetch_states(h, c, slots, lo, hi)
    assert np.array_equal(h, h0) and np.array_equal(c, c0)



@pytest.mark.parametrize("I, H, L, P", [(8, 64, 1, 0), (32, 256, 1, 0), (8, 64, 2, 0), (3, 7, 3, 5), (100, 16, 1, 0),
                                        (4, 40, 2, 30), (50, 20, 2, 0)])
def test_scratch_row_holds_the_intended_tile(I, H, L, P):
    """The kernel derives its tile from the scratch row (cpu._tiles); with a K_max larger than the packed one
    the tile of 30 became 34 (a panel of 4 streams ending every tile)."""
    model = random_model(np.random.default_rng(SEED), I=I, H=H, L=L, P=P, O=2)
    wbuf, meta = model.packed(CPU_BLOCK)
    per_stream = scratch_per_stream(meta)
    assert k_max(model) == widest_input(meta)
    assert scratch_size(model) // per_stream == CPU_TILE_STREAMS
    assert CPU_TILE_STREAMS % PANEL_ROWS == 0


@njit(cache=False)
def write_through_borrowed(a, v):
    b = borrow(a)
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            b[i, j] = v * (i + 1) + j
    return b.sum()


def test_borrow_is_the_same_array():
    """borrow gives the same data, shape and strides (only the reference count is gone): writes land in the
    caller's array and reads see them; the array and its owner are unharmed after many calls."""
    a = np.zeros((5, 7), np.float32)[:, :6]  # not contiguous in the last but one axis: strides are kept
    total = 0.0
    for _ in range(1000):
        total = write_through_borrowed(a, 10.0)
    expect = np.add.outer(10.0 * np.arange(1, 6), np.arange(6))
    np.testing.assert_array_equal(a, expect)
    assert total == expect.sum()
