"""The kernels' weight layout: one flat buffer `wbuf` plus an int64 `meta` index, so a kernel call
passes two arrays for the whole model (few arguments keep Numba's dispatch cheap).

meta[0:8] = L, I, H, P, O, has_head, head_act (0 none, 1 sigmoid, 2 softmax), K_max
per layer l, at base = 8 + 3*l:  off_W, K_l, off_R      (off_R = -1 without projection)
head, at 8 + 3*L:                off_headW, off_headb
wbuf segments (row-major):
    W_l   (K_l + 1, 4H)  rows 0..I_l-1 = W_ih^T, rows I_l..K_l-1 = W_hh^T, last row = b_ih + b_hh
    R_l   (H, P)         W_hr^T
    headW (P, O)         W_head^T;   headb (O,)
Gate columns are [i | f | g | o], each H wide (PyTorch's order). K_l = I_l + P.
"""
from __future__ import annotations

import numpy as np

HEAD_ACT_CODES = {"none": 0, "sigmoid": 1, "softmax": 2}
META_HEAD = 8  # index of the first per-layer entry


def pack(model):
    """Return (wbuf (n,), meta (8 + 3L + 2,) int64) for `model`."""
    dt = np.dtype(model.dtype)
    L, I, H, P, O = (model.num_layers, model.input_size, model.hidden_size, model.state_size,
                     model.output_size)
    parts, meta, off = [], [], 0

    def add(a):
        nonlocal off
        a = np.ascontiguousarray(a, dtype=dt).ravel()
        parts.append(a)
        off += a.size
        return off - a.size

    k_max = 0
    for layer in model.layers:
        w = np.concatenate([layer.w_ih.T, layer.w_hh.T, (layer.b_ih + layer.b_hh)[None, :]], axis=0)
        k = w.shape[0] - 1
        k_max = max(k_max, k)
        off_w = add(w)
        off_r = add(layer.w_hr.T) if layer.w_hr is not None else -1
        meta += [off_w, k, off_r]
    if model.head_w is not None:
        meta += [add(model.head_w.T), add(model.head_b)]
    else:
        meta += [-1, -1]
    head = [L, I, H, P, O, int(model.head_w is not None), HEAD_ACT_CODES[model.head_activation], k_max]
    wbuf = np.concatenate(parts) if parts else np.zeros(0, dt)
    return wbuf, np.asarray(head + meta, dtype=np.int64)


# Streams stepped together by the CPU kernel: each weight row read into cache serves this many streams.
TILE = 8


def scratch_size(model, tile: int = TILE) -> int:
    """Floats of scratch per thread: for each of `tile` streams, gates (4H), layer input [x, h] (K_max)
    and o*tanh(c) (H). The kernel derives its tile from this row length."""
    k_max = max(model.input_size, model.state_size) + model.state_size
    return tile * (5 * model.hidden_size + k_max)
