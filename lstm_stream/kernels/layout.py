"""The kernels' weight layout: one flat buffer `wbuf` plus an int64 `meta` index, so a kernel call
passes two arrays for the whole model (few arguments keep Numba's dispatch cheap).

meta[0:8] = L, I, H, P, O, has_head, head_act (0 none, 1 sigmoid, 2 softmax), K_max
per layer l, at base = 8 + 3*l:  off_W, K_l, off_R      (off_R = -1 without projection)
head, at 8 + 3*L:                off_headW, off_headb
gate blocks, at 10 + 3*L:        JB, nJ                   (JB * nJ = Gp >= 4H)
peepholes, at 12 + 3*L + l:      off_P of layer l         (-1 without peephole connections)
clip, at 12 + 4*L:               off_clip                 (-1 for a model that takes the plain cell)
wbuf segments (row-major):
    W_l   (nJ, K_l + 1, JB)  gate columns in blocks of JB (zero-padded to Gp): for block jb, rows
                             0..I_l-1 = W_ih^T, rows I_l..K_l-1 = W_hh^T, last row = b_ih + b_hh
    R_l   (H, P)             W_hr^T
    headW (P, O)             W_head^T;   headb (O,)
    P_l   (3, H)             peepholes p_i, p_f, p_o of layer l (only with peephole connections; zeros for a
                             model with clip and no peepholes, so that it takes the peephole cell, which clips)
    clip  (1,)               the clip threshold, inf for a model with peepholes and no clip (the models that
                             take the peephole cell)
    (CPU layout: headW is (O, Pc), W_head itself, each row zero-padded to Pc = P rounded up to
    HEAD_CHAINS, so that a row's dot product with h loads whole vectors; headb (O,) its own segment)
Gate columns are [i | f | g | o], each H wide (PyTorch's order). K_l = I_l + P.
With block=None (the CUDA layout) JB = 4H and nJ = 1, i.e. W_l is simply (K_l + 1, 4H). The CPU layout
uses blocks of CPU_BLOCK columns (when 4H > 2 * CPU_BLOCK), JB a multiple of PANEL_COLS, and starts every
segment on a PANEL_COLS boundary, so that weight rows load as whole aligned vectors.

The meta accessors below are the one place that knows these indices. They are plain functions over an int
array: the host calls them as they are, kernels/cpu.py compiles them into its kernels with njit, and
kernels/cuda.py as CUDA device functions. numba-free, like the rest of this module.

The CUDA batch plan (int64): [S, flags, T_max | slots (S) | offsets (S+1)], flags bit 0: weights staged in
shared memory; PLAN_HEAD is the length of its head.
"""
from __future__ import annotations

import numpy as np

from .constants import CACHE_LINE_BYTES, CPU_BLOCK, CPU_TILE_STREAMS, HEAD_CHAINS, PANEL_COLS

HEAD_ACT_CODES = {"none": 0, "sigmoid": 1, "softmax": 2}
META_HEAD = 8  # meta[0:META_HEAD] = L, I, H, P, O, has_head, head_act, K_max; the per-layer entries follow
PLAN_HEAD = 3  # plan[0:PLAN_HEAD] = S, flags, T_max; then slots, then offsets


# ---- reading meta ------------------------------------------------------------------------------------------
def sizes(meta):
    """(L, I, H, P, O): layers, input, hidden, state (h) and output sizes."""
    return meta[0], meta[1], meta[2], meta[3], meta[4]


def head_kind(meta):
    """(has_head, act): 0 when y is h of the last layer itself; act 0 none, 1 sigmoid, 2 softmax."""
    return meta[5], meta[6]


def widest_input(meta):
    """K_max: the longest layer input [x, h] of the model, I + P or P + P (a scratch row's width)."""
    return meta[7]


def layer(meta, l):
    """(off_W, K, off_R) of layer l: its gate weights (nJ, K + 1, JB) at wbuf[off_W], input width K = I_l + P,
    and W_hr^T (H, P) at wbuf[off_R] (-1 without a projection)."""
    base = META_HEAD + 3 * l
    return meta[base], meta[base + 1], meta[base + 2]


def head_offsets(meta):
    """(off_headW, off_headb): the head's weights and bias in wbuf (-1, -1 without a head)."""
    base = META_HEAD + 3 * meta[0]
    return meta[base], meta[base + 1]


def blocking(meta):
    """(JB, nJ): gate columns per block and the number of blocks (JB * nJ = Gp >= 4H)."""
    base = META_HEAD + 3 * meta[0] + 2
    return meta[base], meta[base + 1]


def peephole(meta, l):
    """off_P of layer l: its peepholes (3, H) = p_i, p_f, p_o at wbuf[off_P], or -1 without them."""
    return meta[META_HEAD + 3 * meta[0] + 4 + l]


def clip_offset(meta):
    """off_clip: the peephole cell's clip threshold at wbuf[off_clip] (the gates' inputs clamped to [-clip,
    clip]; inf without clip), or -1 for a model that takes the plain cell (no peepholes, no clip)."""
    return meta[META_HEAD + 4 * meta[0] + 4]


def scratch_per_stream(meta):
    """Floats of CPU scratch per stream of a tile: gate sums (Gp), layer input [x, h] (K_max), o*tanh(c) (H)."""
    base = META_HEAD + 3 * meta[0] + 2  # (the accessors call no other function: each compiles on its own)
    return meta[base] * meta[base + 1] + meta[7] + meta[2]


def head_row(P):
    """Floats per row of the CPU layout's head weights: P rounded up to whole HEAD_CHAINS vectors."""
    return (P + HEAD_CHAINS - 1) // HEAD_CHAINS * HEAD_CHAINS


# ---- building the layout -----------------------------------------------------------------------------------
def aligned_zeros(shape, dtype, align: int = CACHE_LINE_BYTES) -> np.ndarray:
    """np.zeros whose data starts on an `align`-byte boundary (a cache line): numpy guarantees only 16, and
    vector loads that straddle cache lines made the same kernel run up to ~25% slower from run to run."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n * dtype.itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def gate_blocks(H: int, block) -> tuple:
    """(JB, nJ): gate columns per block and block count for hidden size H (one block when 4H <= 2*block;
    block None: exactly 4H columns, else JB a multiple of PANEL_COLS)."""
    G = 4 * H
    if block is None:
        return G, 1
    if G <= 2 * block:
        return -(-G // PANEL_COLS) * PANEL_COLS, 1
    return block, -(-G // block)


def pack(model, block=None):
    """Return (wbuf (n,), meta (13 + 4L,) int64) for `model`, gate columns in blocks of `block`."""
    dt = np.dtype(model.dtype)
    L, I, H, P, O = (model.num_layers, model.input_size, model.hidden_size, model.state_size,
                     model.output_size)
    JB, nJ = gate_blocks(H, block)
    parts, meta, off = [], [], 0

    def add(a):
        nonlocal off
        if block is not None and off % PANEL_COLS:
            parts.append(np.zeros(PANEL_COLS - off % PANEL_COLS, dt))
            off += parts[-1].size
        a = np.ascontiguousarray(a, dtype=dt).ravel()
        parts.append(a)
        off += a.size
        return off - a.size

    km = 0  # K_max: the longest layer input (k_max(model) gives the same from the sizes alone)
    for lay in model.layers:
        w = np.concatenate([lay.w_ih.T, lay.w_hh.T, (lay.b_ih + lay.b_hh)[None, :]], axis=0)
        k = w.shape[0] - 1
        w = np.pad(w, ((0, 0), (0, JB * nJ - 4 * H)))              # (K + 1, Gp)
        w = w.reshape(k + 1, nJ, JB).transpose(1, 0, 2)           # (nJ, K + 1, JB)
        km = max(km, k)
        off_w = add(w)
        off_r = add(lay.w_hr.T) if lay.w_hr is not None else -1
        meta += [off_w, k, off_r]
    if model.head_w is not None and block is not None:
        off_h = add(np.pad(model.head_w, ((0, 0), (0, head_row(P) - P))))  # (O, Pc)
        meta += [off_h, add(model.head_b)]
    elif model.head_w is not None:
        meta += [add(model.head_w.T), add(model.head_b)]
    else:
        meta += [-1, -1]
    meta += [JB, nJ]
    clip = model.clip
    meta += [add(lay.w_ph) if lay.w_ph is not None else add(np.zeros((3, H))) if clip is not None else -1
             for lay in model.layers]
    # the peephole cell clamps each gate input to [-clip, clip]: inf (no clamp, exactly) without clip
    meta += [add(np.array([np.inf if clip is None else clip])) if model.peepholes or clip is not None else -1]
    head = [L, I, H, P, O, int(model.head_w is not None), HEAD_ACT_CODES[model.head_activation], km]  # META_HEAD
    wbuf = aligned_zeros((off,), dt)  # on a cache line: with the padding, every CPU weight row is too
    np.concatenate(parts, out=wbuf)
    return wbuf, np.asarray(head + meta, dtype=np.int64)


def k_max(model) -> int:
    """The longest layer input [x, h] (meta[7]): I + P for the first layer, P + P for the ones above."""
    return max(model.input_size, model.state_size if model.num_layers > 1 else 0) + model.state_size


def scratch_size(model, tile: int = CPU_TILE_STREAMS, block=CPU_BLOCK) -> int:
    """Floats of scratch per thread: for each of `tile` streams, gate sums (Gp), layer input [x, h] (K_max)
    and o*tanh(c) (H). The kernel derives its tile from this row length (scratch_per_stream), so K_max here
    must be the packed one (tests/core/test_panel.py)."""
    JB, nJ = gate_blocks(model.hidden_size, block)
    return tile * (JB * nJ + k_max(model) + model.hidden_size)
