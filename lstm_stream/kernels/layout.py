"""The kernels' weight layout: one flat buffer `wbuf` plus an int64 `meta` index, so a kernel call
passes two arrays for the whole model (few arguments keep Numba's dispatch cheap).

meta[0:8] = L, I, H, P, O, has_head, head_act (0 none, 1 sigmoid, 2 softmax), K_max
per layer l, at base = 8 + 3*l:  off_W, K_l, off_R      (off_R = -1 without projection)
head, at 8 + 3*L:                off_headW, off_headb
gate blocks, at 10 + 3*L:        JB, nJ                   (JB * nJ = Gp >= 4H)
wbuf segments (row-major):
    W_l   (nJ, K_l + 1, JB)  gate columns in blocks of JB (zero-padded to Gp): for block jb, rows
                             0..I_l-1 = W_ih^T, rows I_l..K_l-1 = W_hh^T, last row = b_ih + b_hh
    R_l   (H, P)             W_hr^T
    headW (P, O)             W_head^T;   headb (O,)
    (CPU layout: headW is (O, Pc), W_head itself, each row zero-padded to Pc = P rounded up to
    HEAD_CHAINS, so that a row's dot product with h loads whole vectors; headb (O,) its own segment)
Gate columns are [i | f | g | o], each H wide (PyTorch's order). K_l = I_l + P.
With block=None (the CUDA layout) JB = 4H and nJ = 1, i.e. W_l is simply (K_l + 1, 4H). The CPU layout
uses blocks of 128 columns (when 4H > 256), JB a multiple of 16 (the micro-kernel's panel width, panel.py),
and starts every segment on a 16-element boundary, so that weight rows load as whole aligned vectors.
"""
from __future__ import annotations

import numpy as np

PANEL_COLS = 16  # gate columns per micro-kernel panel on the CPU (kernels/panel.py)
HEAD_CHAINS = 8  # partial sums per head output on the CPU: lanes of one vector (kernels/panel.py)
HEAD_ACT_CODES = {"none": 0, "sigmoid": 1, "softmax": 2}
META_HEAD = 8  # index of the first per-layer entry


def aligned_zeros(shape, dtype, align: int = 64) -> np.ndarray:
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
    """Return (wbuf (n,), meta (12 + 3L,) int64) for `model`, gate columns in blocks of `block`."""
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
    for layer in model.layers:
        w = np.concatenate([layer.w_ih.T, layer.w_hh.T, (layer.b_ih + layer.b_hh)[None, :]], axis=0)
        k = w.shape[0] - 1
        w = np.pad(w, ((0, 0), (0, JB * nJ - 4 * H)))              # (K + 1, Gp)
        w = w.reshape(k + 1, nJ, JB).transpose(1, 0, 2)           # (nJ, K + 1, JB)
        km = max(km, k)
        off_w = add(w)
        off_r = add(layer.w_hr.T) if layer.w_hr is not None else -1
        meta += [off_w, k, off_r]
    if model.head_w is not None and block is not None:
        pc = -(-P // HEAD_CHAINS) * HEAD_CHAINS
        off_h = add(np.pad(model.head_w, ((0, 0), (0, pc - P))))  # (O, Pc)
        meta += [off_h, add(model.head_b)]
    elif model.head_w is not None:
        meta += [add(model.head_w.T), add(model.head_b)]
    else:
        meta += [-1, -1]
    meta += [JB, nJ]
    head = [L, I, H, P, O, int(model.head_w is not None), HEAD_ACT_CODES[model.head_activation], km]
    wbuf = aligned_zeros((off,), dt)  # 64-byte aligned: with the padding, every CPU weight row is too
    np.concatenate(parts, out=wbuf)
    return wbuf, np.asarray(head + meta, dtype=np.int64)


# Streams stepped together by the CPU kernel: each weight panel loaded into cache serves this many streams.
# A multiple of the micro-kernel's 6 rows (panel.py), so a full tile leaves no smaller panel over. Measured
# (I=32, H=256, 4096 streams, 1 thread): tiles of 30 to 48 all ran 89-92 GFLOP/s; 60 ran 84.
TILE = 30
# Gate columns per block in the CPU layout: one stream's loop (_one) keeps a block's sums in L1. Gates up to
# 256 wide stay one block: at H=64, one block of 256 ran 38 GFLOP/s against 31 with 128. The tiled
# micro-kernel does not care (blocks of 64, 128 and 256 all ran 89-91 GFLOP/s at I=32 H=256).
CPU_BLOCK = 128


def k_max(model) -> int:
    """The longest layer input [x, h] (meta[7]): I + P for the first layer, P + P for the ones above."""
    return max(model.input_size, model.state_size if model.num_layers > 1 else 0) + model.state_size


def scratch_size(model, tile: int = TILE, block=CPU_BLOCK) -> int:
    """Floats of scratch per thread: for each of `tile` streams, gate sums (Gp), layer input [x, h] (K_max)
    and o*tanh(c) (H). The kernel derives its tile from this row length (so K_max must be the kernel's own:
    with P + P for a one-layer model, a tile of 30 became 34 at I=8 H=64 and at I=32 H=256, and every tile
    ended in a panel of 4 streams; tested)."""
    JB, nJ = gate_blocks(model.hidden_size, block)
    return tile * (JB * nJ + k_max(model) + model.hidden_size)
