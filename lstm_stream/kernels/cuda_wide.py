"""CUDA kernels for models too large for one block per stream: a stream's units spread over many blocks.

Idea: when the weights do not fit in shared memory and the batch has fewer tiles than the GPU has SMs,
the fused step_kernel would leave most SMs idle while each busy block streams every weight from global
memory. Here each (timestep, layer) runs as kernel launches over a 2-D grid (unit chunks x stream tiles):
gates_kernel stages a tile's [input, h_l] vectors in shared memory and each thread computes one unit for
the tile's CUDA_TILE_STREAMS streams with the same gemv_tile and unit_update as the fused kernel (so the
same sums in the same order: a stream's bits do not depend on which path, tile or block computed them);
hidden_kernel then writes the new h (copy or projection), head_kernel the outputs. Launch boundaries are the grid-wide
barriers. The host loops over t < T_max and l < L.

Shapes: as kernels/cuda.py (state (cap, L*(P+H)), plan (2S+4,) int64), plus work (>= S, H): o*tanh(c')
of the current layer for each batch stream. `phase` = t * L + l.
"""
from __future__ import annotations

from numba import cuda

from .cuda import (CUDA_TILE_STREAMS, PLAN_HEAD, _ACC, clip_offset, gemv_tile, head_kind, head_offsets, layer,
                   peephole, rows, sigmoid, sizes, softmax_row, unit_update, unit_update_peep)


@cuda.jit(device=True)
def _live(plan, s, t):
    """True when batch stream s exists and has a row at step t."""
    return s < plan[0] and t < rows(plan, s)[1]


@cuda.jit(cache=True)
def gates_kernel(wbuf, meta, state, plan, x, work, phase):
    """Layer l, step t: for units of chunk blockIdx.x and streams of tile blockIdx.y (grid-stride):
    c' into state, o*tanh(c') into work (S, H).  x (N, I); wbuf, meta, state, plan as step_kernel."""
    L, _, H, P, _ = sizes(meta)
    t, l = phase // L, phase % L
    G = 4 * H
    off_w, K, _ = layer(meta, l)
    n_in = K - P
    f32 = wbuf.itemsize == 4
    vin = cuda.shared.array(0, dtype=wbuf.dtype)  # (CUDA_TILE_STREAMS, K): [input | h_l] per stream
    acc = cuda.local.array(_ACC, dtype=wbuf.dtype)
    u = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for tile0 in range(cuda.blockIdx.y * CUDA_TILE_STREAMS, plan[0], cuda.gridDim.y * CUDA_TILE_STREAMS):
        for idx in range(cuda.threadIdx.x, CUDA_TILE_STREAMS * K, cuda.blockDim.x):
            b, k = idx // K, idx % K
            s = tile0 + b
            v = vin[0] * 0
            if _live(plan, s, t):
                slot = plan[PLAN_HEAD + s]
                if k >= n_in:
                    v = state[slot, l * (P + H) + k - n_in]
                elif l == 0:
                    v = x[rows(plan, s)[0] + t, k]
                else:
                    v = state[slot, (l - 1) * (P + H) + k]
            vin[idx] = v
        cuda.syncthreads()
        if u < H:
            for b in range(CUDA_TILE_STREAMS):
                for q in range(4):
                    acc[4 * b + q] = wbuf[off_w + K * G + u + q * H]
            gemv_tile(wbuf, acc, off_w + u, G, H, vin, 0, K, K)  # input part, then recurrent part
            off_p = peephole(meta, l)
            for b in range(CUDA_TILE_STREAMS):
                s = tile0 + b
                if _live(plan, s, t):
                    slot = plan[PLAN_HEAD + s]
                    if off_p < 0:
                        work[s, u] = unit_update(acc, b, state, slot, l * (P + H) + P + u, f32)
                    else:
                        work[s, u] = unit_update_peep(acc, b, state, slot, l * (P + H) + P + u, f32, wbuf,
                                                      off_p + u, H, wbuf[clip_offset(meta)])
        cuda.syncthreads()


@cuda.jit(cache=True)
def hidden_kernel(wbuf, meta, state, plan, work, phase):
    """h_l := work (or W_hr work with a projection) for the live streams; any 1-D grid over S*P."""
    L, _, H, P, _ = sizes(meta)
    t, l = phase // L, phase % L
    _, _, off_r = layer(meta, l)
    for idx in range(cuda.grid(1), plan[0] * P, cuda.gridsize(1)):
        s, k = idx // P, idx % P
        if _live(plan, s, t):
            if off_r < 0:
                v = work[s, k]
            else:  # h'[k] = sum_j W_hr^T[j, k] hr[j], j in order from 0
                v = work[s, 0] * 0
                for j in range(H):
                    v += wbuf[off_r + j * P + k] * work[s, j]
            state[plan[PLAN_HEAD + s], l * (P + H) + k] = v


@cuda.jit(cache=True)
def head_kernel(wbuf, meta, state, plan, y, t):
    """y[row_s + t] = act(W_head h_last + b) (softmax excepted: softmax_kernel) for live streams; 1-D grid
    over S*O.  y (N, O)."""
    L, _, H, P, O = sizes(meta)
    has_head, act = head_kind(meta)
    hl = (L - 1) * (P + H)
    off_w, off_b = head_offsets(meta)
    for idx in range(cuda.grid(1), plan[0] * O, cuda.gridsize(1)):
        s, o = idx // O, idx % O
        if _live(plan, s, t):
            slot = plan[PLAN_HEAD + s]
            if has_head == 0:
                v = state[slot, hl + o]
            else:
                v = wbuf[off_b + o]
                for k in range(P):
                    v += wbuf[off_w + k * O + o] * state[slot, hl + k]
                if act == 1:
                    v = sigmoid(v, wbuf.itemsize == 4)
            y[rows(plan, s)[0] + t, o] = v


@cuda.jit(cache=True)
def softmax_kernel(meta, plan, y, t):
    """Softmax of each live stream's output row at step t; 1-D grid over S.  y (N, O)."""
    for s in range(cuda.grid(1), plan[0], cuda.gridsize(1)):
        if _live(plan, s, t):
            softmax_row(y, rows(plan, s)[0] + t, sizes(meta)[4])
