"""CUDA step kernels (numba.cuda): the device twin of kernels/cpu.py, the same math in the same order.

Idea: one thread block advances a tile of CUDA_TILE_STREAMS streams (kernels/constants.py) of the batch plan,
and loops over tiles with a grid stride (a persistent grid keeps the weights it staged in shared memory for
many tiles). Thread u owns hidden units u, u + NT, ...: for each k it reads the four gate weights
W[k, {i,f,g,o}*H + u] once and applies them to every stream of the tile (weight reuse), summing over k in order,
bias first, then the input part, then the recurrent part, exactly as the CPU does. So a stream's arithmetic
depends on nothing but its own data: not its tile partners, its slot in the tile, the grid or the block size.
h and the current inputs sit in shared memory (every thread reads them); c stays in the global slab, read and
written only by the thread that owns the unit. Ragged batches: each stream advances over its own rows; a tile
slot whose rows are used up idles. No fastmath; NVVM contracts a*b+c into FMAs the same way for every stream,
so results are deterministic on a device and differ from the CPU only by rounding.

Layouts (floats of the model's dtype):
    state (cap, L*(P+H))  per layer l at l*(P+H): [h_l (P) | c_l (H)]
    plan  (2S+4,) int64   [S, flags, T_max, slots (S), offsets (S+1)]; flags bit 0: weights in shared
    shared memory         [weights (n, when staged) | xs (NB, I) | hs (NB, L, P) | hr (NB, H)]
                          with NB = CUDA_TILE_STREAMS
meta is read through layout.py's accessors, compiled here as device functions.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .. import jitcache
from . import layout
from .activations import tanh32
from .constants import CUDA_TILE_STREAMS
from .layout import PLAN_HEAD

jitcache.install()  # numba-cuda's cache too (the CPU one is set when jitcache is first imported)

_device = cuda.jit(device=True)
_tanh32 = _device(tanh32)  # the CPU kernels compile the same function
# The layout's meta accessors (kernels/layout.py), as device functions.
sizes, head_kind, widest_input, layer, head_offsets, peephole, clip_offset = (
    _device(f) for f in (layout.sizes, layout.head_kind, layout.widest_input, layout.layer, layout.head_offsets,
                         layout.peephole, layout.clip_offset))
_ACC = 4 * CUDA_TILE_STREAMS  # gate accumulators per owned unit: (NB, 4), a local array (compile-time size)


def shared_floats(meta, n_weights: int, staged: bool) -> int:
    """Floats of dynamic shared memory step_kernel needs: meta (host copy), weights staged or not."""
    L, I, H, P, _ = (int(v) for v in layout.sizes(meta))
    return (n_weights if staged else 0) + CUDA_TILE_STREAMS * (I + L * P + H)


# ---- activations: the CPU's float32 rational tanh (same constants, same order), libm for float64 --------
@cuda.jit(device=True)
def tanh(x, f32):
    """tanh: the CPU's clamped rational approximation when f32, else libdevice tanh."""
    if not f32:
        return math.tanh(x)
    return _tanh32(x)


@cuda.jit(device=True)
def sigmoid(x, f32):
    """Logistic sigmoid: through tanh when f32 (as the CPU), else 1 / (1 + exp(-x))."""
    if f32:  # σ(x) = (1 + tanh(x/2)) / 2
        return np.float32(0.5) + np.float32(0.5) * tanh(np.float32(0.5) * x, f32)
    return 1.0 / (1.0 + math.exp(-x))


# ---- plan access --------------------------------------------------------------------------------------
@cuda.jit(device=True)
def rows(plan, s):
    """(first row, row count) of plan stream s."""
    r0 = plan[PLAN_HEAD + plan[0] + s]
    return r0, plan[PLAN_HEAD + plan[0] + s + 1] - r0


@cuda.jit(device=True)
def _active(plan, tile0, n, b, t):
    """True when tile slot b holds a stream that still has a row at its step t."""
    return b < n and t < rows(plan, tile0 + b)[1]


# ---- phases of one timestep for one tile (all threads of the block call each) ----------------------------
@cuda.jit(device=True)
def _stage_x(meta, plan, x, xshift, sh, base, tile0, n, t):
    """xs[b] = x[row_b + xshift] for active slots, 0 otherwise.  x: (N, I)."""
    _, I, _, _, _ = sizes(meta)
    for idx in range(cuda.threadIdx.x, CUDA_TILE_STREAMS * I, cuda.blockDim.x):
        b, k = idx // I, idx % I
        v = sh[0] * 0
        if _active(plan, tile0, n, b, t):
            v = x[rows(plan, tile0 + b)[0] + t + xshift, k]
        sh[base + idx] = v


@cuda.jit(device=True)
def gemv_tile(w, acc, row, G, H, sh, v0, stride, m):
    """acc[b, q] += w[row + k*G + q*H] * v_b[k] for k = 0..m-1 in order; v_b[k] = sh[v0 + b*stride + k]."""
    for k in range(m):
        r = row + k * G
        wi, wf, wg, wo = w[r], w[r + H], w[r + 2 * H], w[r + 3 * H]
        for b in range(CUDA_TILE_STREAMS):
            v = sh[v0 + b * stride + k]
            acc[4 * b] += wi * v
            acc[4 * b + 1] += wf * v
            acc[4 * b + 2] += wg * v
            acc[4 * b + 3] += wo * v


@cuda.jit(device=True)
def _cell(w, meta, state, plan, sh, base, tile0, n, t, l):
    """Layer l: gates from [input, h_l] for the tile, then c' (in state) and hr = o*tanh(c') (shared)."""
    L, I, H, P, _ = sizes(meta)
    G = 4 * H
    off_w, K, _ = layer(meta, l)
    n_in = K - P
    hs, hr = base + CUDA_TILE_STREAMS * I, base + CUDA_TILE_STREAMS * (I + L * P)
    in0, in_stride = (base, I) if l == 0 else (hs + (l - 1) * P, L * P)
    f32 = w.itemsize == 4
    acc = cuda.local.array(_ACC, dtype=w.dtype)  # (NB, 4): [i, f, g, o] per slot
    for u in range(cuda.threadIdx.x, H, cuda.blockDim.x):
        bias = off_w + K * G + u
        for b in range(CUDA_TILE_STREAMS):
            for q in range(4):
                acc[4 * b + q] = w[bias + q * H]
        gemv_tile(w, acc, off_w + u, G, H, sh, in0, in_stride, n_in)                  # input part
        gemv_tile(w, acc, off_w + n_in * G + u, G, H, sh, hs + l * P, L * P, P)       # recurrent part
        off_p = peephole(meta, l)
        for b in range(CUDA_TILE_STREAMS):
            if _active(plan, tile0, n, b, t):
                slot = plan[PLAN_HEAD + tile0 + b]
                if off_p < 0:
                    sh[hr + b * H + u] = unit_update(acc, b, state, slot, l * (P + H) + P + u, f32)
                else:
                    sh[hr + b * H + u] = unit_update_peep(acc, b, state, slot, l * (P + H) + P + u, f32, w,
                                                          off_p + u, H, w[clip_offset(meta)])


@cuda.jit(device=True)
def unit_update(acc, b, state, slot, ci, f32):
    """Tile slot b's unit from its gate sums acc[b, :]: stores c' at state[slot, ci], returns o*tanh(c')."""
    i_g = sigmoid(acc[4 * b], f32)          # i = σ(W_i [x,h] + b_i)
    f_g = sigmoid(acc[4 * b + 1], f32)      # f = σ(W_f [x,h] + b_f)
    g_g = tanh(acc[4 * b + 2], f32)         # g = tanh(W_g [x,h] + b_g)
    o_g = sigmoid(acc[4 * b + 3], f32)      # o = σ(W_o [x,h] + b_o)
    cj = f_g * state[slot, ci] + i_g * g_g   # c' = f c + i g
    state[slot, ci] = cj
    return o_g * tanh(cj, f32)              # h' = o tanh(c')


@cuda.jit(device=True)
def unit_update_peep(acc, b, state, slot, ci, f32, w, pu, H, hi):
    """unit_update with peephole connections: p_i, p_f, p_o of this unit at w[pu], w[pu + H], w[pu + 2H]; each
    gate's input clamped to [-hi, hi] (the model's clip; inf without one)."""
    c0 = state[slot, ci]
    i_g = sigmoid(min(max(acc[4 * b] + w[pu] * c0, -hi), hi), f32)              # i = σ(W_i [x,h] + b_i + p_i c)
    f_g = sigmoid(min(max(acc[4 * b + 1] + w[pu + H] * c0, -hi), hi), f32)      # f = σ(W_f [x,h] + b_f + p_f c)
    g_g = tanh(min(max(acc[4 * b + 2], -hi), hi), f32)                          # g = tanh(W_g [x,h] + b_g)
    cj = f_g * c0 + i_g * g_g                                                   # c' = f c + i g
    o_g = sigmoid(min(max(acc[4 * b + 3] + w[pu + 2 * H] * cj, -hi), hi), f32)  # o = σ(W_o [x,h] + b_o + p_o c')
    state[slot, ci] = cj
    return o_g * tanh(cj, f32)                               # h' = o tanh(c')


@cuda.jit(device=True)
def _new_h(w, meta, plan, sh, base, tile0, n, t, l):
    """hs[b, l] = hr[b] (or W_hr hr[b] with a projection) for the active slots."""
    L, I, H, P, _ = sizes(meta)
    _, _, off_r = layer(meta, l)
    hs, hr = base + CUDA_TILE_STREAMS * I, base + CUDA_TILE_STREAMS * (I + L * P)
    for idx in range(cuda.threadIdx.x, CUDA_TILE_STREAMS * P, cuda.blockDim.x):
        b, k = idx // P, idx % P
        if _active(plan, tile0, n, b, t):
            if off_r < 0:
                v = sh[hr + b * H + k]
            else:  # h'[k] = sum_j W_hr^T[j, k] hr[j], j in order from 0
                v = sh[hr] * 0
                for j in range(H):
                    v += w[off_r + j * P + k] * sh[hr + b * H + j]
            sh[hs + b * L * P + l * P + k] = v


@cuda.jit(device=True)
def _head(w, meta, plan, sh, base, tile0, n, t, y, yshift):
    """y[row_b + t + yshift] = act(W_head h_last + b) (or h_last) for the active slots.  y: (N, O)."""
    L, I, _, P, O = sizes(meta)
    has_head, act = head_kind(meta)
    hl = base + CUDA_TILE_STREAMS * I + (L - 1) * P
    off_w, off_b = head_offsets(meta)
    f32 = w.itemsize == 4
    for idx in range(cuda.threadIdx.x, CUDA_TILE_STREAMS * O, cuda.blockDim.x):
        b, o = idx // O, idx % O
        if _active(plan, tile0, n, b, t):
            if has_head == 0:
                v = sh[hl + b * L * P + o]
            else:
                v = w[off_b + o]
                for k in range(P):
                    v += w[off_w + k * O + o] * sh[hl + b * L * P + k]
                if act == 1:
                    v = sigmoid(v, f32)
            y[rows(plan, tile0 + b)[0] + t + yshift, o] = v
    if act == 2:  # softmax of each row, one thread per row, sequential like the CPU
        cuda.syncthreads()
        for b in range(cuda.threadIdx.x, CUDA_TILE_STREAMS, cuda.blockDim.x):
            if _active(plan, tile0, n, b, t):
                softmax_row(y, rows(plan, tile0 + b)[0] + t + yshift, O)


@cuda.jit(device=True)
def softmax_row(y, r, O):
    """y[r, :O] = softmax(y[r, :O]), sequentially in the CPU's order (max, exp and sum, divide)."""
    m = y[r, 0]
    for o in range(1, O):
        m = max(m, y[r, o])
    s = y[r, 0] * 0
    for o in range(O):
        e = math.exp(y[r, o] - m)
        y[r, o] = e
        s += e
    for o in range(O):
        y[r, o] = y[r, o] / s


@cuda.jit(device=True)
def _timestep(w, meta, state, plan, sh, base, tile0, n, t, x, xshift, y, yshift):
    """One step t of the tile: stage inputs, every layer, the head; ends with the block in sync."""
    _stage_x(meta, plan, x, xshift, sh, base, tile0, n, t)
    cuda.syncthreads()
    L, _, _, _, _ = sizes(meta)
    for l in range(L):
        _cell(w, meta, state, plan, sh, base, tile0, n, t, l)
        cuda.syncthreads()
        _new_h(w, meta, plan, sh, base, tile0, n, t, l)
        cuda.syncthreads()
    _head(w, meta, plan, sh, base, tile0, n, t, y, yshift)
    cuda.syncthreads()


# ---- tile state in and out, weight staging --------------------------------------------------------------
@cuda.jit(device=True)
def _stage_weights(wbuf, plan, sh):
    """(weights to read, first free shared float): the shared copy when plan flags say so, else wbuf."""
    n_w = wbuf.shape[0]
    if plan[1] & 1:
        for j in range(cuda.threadIdx.x, n_w, cuda.blockDim.x):
            sh[j] = wbuf[j]
        cuda.syncthreads()
        return sh[:n_w], n_w
    return wbuf, 0


@cuda.jit(device=True)
def _move_h(meta, state, plan, sh, base, tile0, n, store):
    """Copy h of the tile's streams between the slab and shared hs (store: shared -> slab)."""
    L, I, H, P, _ = sizes(meta)
    hs = base + CUDA_TILE_STREAMS * I
    for idx in range(cuda.threadIdx.x, CUDA_TILE_STREAMS * L * P, cuda.blockDim.x):
        b, lk = idx // (L * P), idx % (L * P)
        if b < n:
            col = (lk // P) * (P + H) + lk % P
            slot = plan[PLAN_HEAD + tile0 + b]
            if store:
                state[slot, col] = sh[hs + idx]
            else:
                sh[hs + idx] = state[slot, col]
        elif not store:
            sh[hs + idx] = sh[hs + idx] * 0


# ---- kernels ------------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def step_kernel(wbuf, meta, state, plan, x, y):
    """Advance plan's streams over their rows of x (N, I), writing y (N, O).
    wbuf (n,), meta (8+3L+2,) int64, state (cap, L*(P+H)) in place, plan (2S+4,) int64."""
    sh = cuda.shared.array(0, dtype=wbuf.dtype)
    w, base = _stage_weights(wbuf, plan, sh)
    S = plan[0]
    for tile0 in range(cuda.blockIdx.x * CUDA_TILE_STREAMS, S, cuda.gridDim.x * CUDA_TILE_STREAMS):
        n = min(CUDA_TILE_STREAMS, S - tile0)
        _move_h(meta, state, plan, sh, base, tile0, n, False)
        T = 0
        for b in range(n):
            T = max(T, rows(plan, tile0 + b)[1])
        cuda.syncthreads()
        for t in range(T):
            _timestep(w, meta, state, plan, sh, base, tile0, n, t, x, 0, y, 0)
        _move_h(meta, state, plan, sh, base, tile0, n, True)
        cuda.syncthreads()


@cuda.jit(cache=True)
def forecast_kernel(wbuf, meta, state, plan, y):
    """Roll state (1, L*(P+H)) forward in place feeding outputs back as inputs; launch one block.
    plan (6,) = [1, flags, horizon, 0, 0, horizon]; y (horizon+1, O): y[0] from the current state, y[t+1] after y[t]."""
    sh = cuda.shared.array(0, dtype=wbuf.dtype)
    w, base = _stage_weights(wbuf, plan, sh)
    _move_h(meta, state, plan, sh, base, 0, 1, False)
    cuda.syncthreads()
    _head(w, meta, plan, sh, base, 0, 1, -1, y, 1)
    cuda.syncthreads()
    for t in range(plan[2]):
        _timestep(w, meta, state, plan, sh, base, 0, 1, t, y, 0, y, 1)


@cuda.jit(cache=True)
def zero_slots_kernel(state, slots):
    """state[slots[i], :] = 0.  state (cap, W), slots (m,) int64; any grid."""
    W = state.shape[1]
    start = cuda.grid(1)
    for idx in range(start, slots.shape[0] * W, cuda.gridsize(1)):
        state[slots[idx // W], idx % W] = 0
