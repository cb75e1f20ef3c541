"""CPU step kernels (numba @njit, cache=True): advance many streams, each by its own number of timesteps.

Idea: every stream's state lives in slab arrays h (S, L, P) and c (S, L, H) at its slot. A call gets the
unique slots of a batch, and for slot s the rows offsets[s]:offsets[s+1] of the input matrix x; it advances
each stream through its rows in order, writing one output row per input row. The arithmetic for a stream is
the same sequence of float operations whatever else is in the batch, in whatever order, on however many
threads: reductions always run over k in order and nothing is reassociated (no fastmath), so a stream's
outputs are bit-identical alone or in a crowd. error_model='numpy' lets the gate loops vectorise.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_OPTS = dict(cache=True, error_model="numpy", nogil=True)


# ---- activations: a clamped rational tanh for float32 (Eigen-style, |err| < 1e-6), libm for float64 ------
def act_tanh(x):
    """tanh, float32 via a rational approximation that vectorises, float64 exact."""
    return math.tanh(x)


def act_sigmoid(x):
    """logistic sigmoid, float32 via act_tanh, float64 exact."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(act_tanh, jit_options=dict(error_model="numpy"))
def _ov_tanh(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def tanh32(x):
            # tanh(x) ~ x * P(x^2) / Q(x^2) on [-7.9053, 7.9053], saturated (to float32 rounding) beyond.
            lim = np.float32(7.90531110763549805)
            z = min(max(x, -lim), lim)
            z2 = z * z
            p = z2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
            p = z2 * p + np.float32(-8.60467152213735e-11)
            p = z2 * p + np.float32(5.12229709037114e-08)
            p = z2 * p + np.float32(1.48572235717979e-05)
            p = z2 * p + np.float32(6.37261928875436e-04)
            p = z2 * p + np.float32(4.89352455891786e-03)
            q = z2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
            q = z2 * q + np.float32(2.26843463243900e-03)
            q = z2 * q + np.float32(4.89352518554385e-03)
            r = (z * p) / q
            return x if abs(x) < np.float32(4e-4) else r
        return tanh32
    return lambda x: math.tanh(x)


@overload(act_sigmoid, jit_options=dict(error_model="numpy"))
def _ov_sigmoid(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def sigmoid32(x):
            # σ(x) = (1 + tanh(x/2)) / 2
            return np.float32(0.5) + np.float32(0.5) * act_tanh(np.float32(0.5) * x)
        return sigmoid32
    return lambda x: 1.0 / (1.0 + math.exp(-x))


# ---- the per-stream core ----------------------------------------------------------------------------
@njit(**_OPTS)
def _head(wbuf, meta, hl, y, row):
    """y[row] = act(W_head hl + b) (or hl without a head).  hl: (P,), y: (N, O)."""
    P, O = meta[3], meta[4]
    if meta[5] == 0:
        for k in range(P):
            y[row, k] = hl[k]
        return
    hb = 8 + 3 * meta[0]
    off_w, off_b = meta[hb], meta[hb + 1]
    for o in range(O):
        y[row, o] = wbuf[off_b + o]
    for k in range(P):
        v = hl[k]
        base = off_w + k * O
        for o in range(O):
            y[row, o] += wbuf[base + o] * v
    if meta[6] == 1:
        for o in range(O):
            y[row, o] = act_sigmoid(y[row, o])
    elif meta[6] == 2:
        m = y[row, 0]
        for o in range(1, O):
            m = max(m, y[row, o])
        s = y[row, 0] * 0
        for o in range(O):
            e = math.exp(y[row, o] - m)
            y[row, o] = e
            s += e
        for o in range(O):
            y[row, o] = y[row, o] / s


@njit(**_OPTS)
def _advance(wbuf, meta, h, c, slot, x, xrow, y, yrow, T, scr):
    """Advance the stream at `slot` by T steps: inputs x[xrow:xrow+T] (., I), outputs y[yrow:yrow+T] (., O).
    h: (S, L, P), c: (S, L, H) state slabs, changed in place. scr: (>= 5H,) scratch."""
    L, H, P = meta[0], meta[2], meta[3]
    G = 4 * H
    g = scr[:G]          # gate pre-activations [i | f | g | o]
    hr = scr[G:G + H]    # o * tanh(c) before projection
    for t in range(T):
        for l in range(L):
            off_w, K, off_r = meta[8 + 3 * l], meta[9 + 3 * l], meta[10 + 3 * l]
            n_in = K - P
            off_b = off_w + K * G
            for j in range(G):
                g[j] = wbuf[off_b + j]
            for k in range(n_in):  # input part: x_t (layer 0) or this step's h of the layer below
                v = x[xrow + t, k] if l == 0 else h[slot, l - 1, k]
                base = off_w + k * G
                for j in range(G):
                    g[j] += wbuf[base + j] * v
            for k in range(P):  # recurrent part: h_{t-1} of this layer
                v = h[slot, l, k]
                base = off_w + (n_in + k) * G
                for j in range(G):
                    g[j] += wbuf[base + j] * v
            for j in range(H):
                i_g = act_sigmoid(g[j])              # i = σ(W_i [x,h] + b_i)
                f_g = act_sigmoid(g[H + j])          # f = σ(W_f [x,h] + b_f)
                g_g = act_tanh(g[2 * H + j])         # g = tanh(W_g [x,h] + b_g)
                o_g = act_sigmoid(g[3 * H + j])      # o = σ(W_o [x,h] + b_o)
                cj = f_g * c[slot, l, j] + i_g * g_g  # c' = f c + i g
                c[slot, l, j] = cj
                hr[j] = o_g * act_tanh(cj)           # h' = o tanh(c')
            if off_r < 0:
                for j in range(H):
                    h[slot, l, j] = hr[j]
            else:                                    # h' = W_hr (o tanh(c'))
                for k in range(P):
                    h[slot, l, k] = 0
                for j in range(H):
                    v = hr[j]
                    base = off_r + j * P
                    for k in range(P):
                        h[slot, l, k] += wbuf[base + k] * v
        _head(wbuf, meta, h[slot, L - 1], y, yrow + t)


# ---- entry points ----------------------------------------------------------------------------------------
@njit(**_OPTS)
def step_ragged(wbuf, meta, h, c, slots, offsets, x, y, scratch):
    """Advance streams slots[s] over rows offsets[s]:offsets[s+1] of x (N, I), writing y (N, O).
    slots: (S,) unique int64; offsets: (S+1,) int64; h: (cap, L, P); c: (cap, L, H); scratch: (>=1, >=5H)."""
    for s in range(slots.shape[0]):
        r0 = offsets[s]
        _advance(wbuf, meta, h, c, slots[s], x, r0, y, r0, offsets[s + 1] - r0, scratch[0])


@njit(parallel=True, **_OPTS)
def step_ragged_parallel(wbuf, meta, h, c, slots, offsets, x, y, scratch):
    """step_ragged with the streams split into scratch.shape[0] contiguous chunks run in parallel."""
    n, n_chunks = slots.shape[0], scratch.shape[0]
    for ch in prange(n_chunks):
        for s in range(n * ch // n_chunks, n * (ch + 1) // n_chunks):
            r0 = offsets[s]
            _advance(wbuf, meta, h, c, slots[s], x, r0, y, r0, offsets[s + 1] - r0, scratch[ch])


@njit(**_OPTS)
def forecast(wbuf, meta, h, c, y, scratch):
    """Roll a private state copy forward feeding each output back as the next input (needs O == I).
    h: (1, L, P), c: (1, L, H) changed in place; y: (horizon + 1, O): y[0] = output of the current state,
    y[t + 1] = output after feeding y[t]."""
    L = meta[0]
    _head(wbuf, meta, h[0, L - 1], y, 0)
    for t in range(y.shape[0] - 1):
        _advance(wbuf, meta, h, c, 0, y, t, y, t + 1, 1, scratch[0])
