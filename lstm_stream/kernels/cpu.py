"""CPU step kernels (numba @njit, cache=True): advance many streams, each by its own number of timesteps.

Every stream's state lives in slab arrays h (S, L, P) and c (S, L, H) at its slot. A call gets the unique
slots of a batch and, for slot s, the rows offsets[s]:offsets[s+1] of the input matrix x (N, I); it advances
each stream through its rows in order, writing one output row per input row of y (N, O).

Call tree (the LSTM's equations are in one place, _cell):
    step_ragged        many streams; on several threads each call takes pieces of the batch (_take)
      _tiles           CPU_TILE_STREAMS streams at a time, the next tile's state rows prefetched
        _tile          per step and layer: copy each stream's [x, h], then
          _gate_sums     g = [x, h] W + b for the whole tile (panel.py's register-blocked micro-kernel)
          _cell          i, f, g, o = σ, σ, tanh, σ of g;  c = f*c + i*g;  h = o*tanh(c)  (W_hr h if projected)
          _cell_peep     the same with peephole connections and clip (a model with either; _cell is left as it is)
        _head          y = act(W_head h + b) for each stream (panel.headdot), or y = h without a head
    step_one           one stream: all_finite, then _one (the same gate sums as a plain loop: _rows8, _row1),
                       _cell, _head
    forecast           _head, then _one per step, feeding each output back as the next input
    all_finite         the NaN/Inf check of inputs

Tiles: per layer and step, a tile's gate sums are one matrix product, so each block of weights, once in cache,
serves every stream of the tile. The slots of a daemon's batch come in no particular order, so each state row
would be a cache miss when its stream's turn comes: the next tile's rows are prefetched while a tile runs.
Threads (parts > 1): each takes pieces from a shared counter until none are left, large first, then smaller,
so a core slowed by other load delays the call by about one small piece, not by a fixed share.

Determinism (invariant 2): for each stream the float operations are the same sequence whatever else is in the
batch, in whatever order, on however many threads: every gate sum is one multiply-add chain over k in order
starting from the bias (in _one's loop and in the micro-kernel alike), a tile's streams never mix, and nothing
is reassociated. The gate sums' one fastmath flag is 'contract', which lets LLVM fuse each a*b+c of a chain
into an FMA (one rounding), as the micro-kernel's llvm.fmuladd does. The cell and the activations have no
fastmath: their multiply-adds are written as explicit fmuladd (panel.py), because in f*c + i*g LLVM may fuse
either product, and its choice was seen to change with the context the cell was compiled in (fresh or from
Numba's cache, inlined into step_ragged or step_one), which changed a stream's bits between processes. So
outputs are bit-identical on a given CPU (a CPU without FMA rounds differently, within float32 tolerance).
error_model='numpy' lets the gate loops vectorise.

No reference counting in the loops: Numba increments and decrements an array's count (an atomic operation)
whenever it is passed to a function or sliced into a view. So _tile and _one take their arrays through
panel.borrow (the same arrays with a null count), and pass slabs with indices rather than row views to _cell
and _head. Index arithmetic that Numba cannot prove non-negative gets a wraparound select per element (which
turns row copies into scatter stores), so such offsets are written as max(..., 0).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .. import jitcache  # noqa: F401  (where the compiled functions are cached; before any @njit)
from . import layout
from .activations import act_sigmoid, act_tanh
from .constants import CACHE_LINE_BYTES, PANEL_COLS, PANEL_ROWS
from .panel import (borrow, compare_swap, fmuladd, headdot, load_atomic, panel1, panel2, panel3, panel4, panel5,
                    panel6, prefetch)

_OPTS = dict(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})
# The cell and its activations: no implicit contraction; each multiply-add is an explicit panel.fmuladd, so the
# cell's float operations are the same whatever function it ends up compiled or inlined into (see fmuladd).
_CELL_OPTS = dict(cache=True, error_model="numpy", nogil=True)

# The layout's meta accessors (kernels/layout.py), compiled into these kernels.
_inline = njit(inline="always", **_OPTS)
sizes, head_kind, widest_input, layer, head_offsets, blocking, scratch_per_stream, head_row, peephole, clip_offset = (
    _inline(f) for f in (layout.sizes, layout.head_kind, layout.widest_input, layout.layer, layout.head_offsets,
                         layout.blocking, layout.scratch_per_stream, layout.head_row, layout.peephole,
                         layout.clip_offset))


# ---- the per-stream core ----------------------------------------------------------------------------
# Weights are read through 2-D views whose indices come from range(): Numba then knows they are never
# negative, skips its wraparound check, and LLVM vectorises the inner loops (flat `wbuf[base + j]` indexing
# with offsets read from `meta` does not vectorise).
@njit(inline="always", **_OPTS)
def _head(wbuf, meta, h, slot, y, row):
    """y[row] = act(W_head h[slot, L-1] + b) (or that h row itself without a head). h: (S, L, P) state slab,
    y: (N, O) C-contiguous. The sums through headdot (panel.py), straight into y."""
    L, _, _, P, O = sizes(meta)
    if head_kind(meta)[0] == 0:  # no head: y = h
        for k in range(P):
            y[row, k] = h[slot, L - 1, k]
        return
    off_w, off_b = head_offsets(meta)
    headdot(wbuf, off_w, head_row(P), off_b, P, O, h, (slot * L + L - 1) * P, y, row * O)
    act = head_kind(meta)[1]  # (read after the sums: a value held across headdot's loops takes a register)
    if act == 1:
        for o in range(O):
            y[row, o] = act_sigmoid(y[row, o])
    elif act == 2:
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


@njit(inline="always", **_OPTS)
def _rows8(Wb, k, u, g):
    """g += Wb[k:k+8]^T u[k:k+8] for one stream, one FMA chain per gate column with k in order.
    Wb: (K + 1, JB) one block of weights; u: (K_max,) the stream's layer input; g: (JB,) its gate sums."""
    v0, v1, v2, v3 = u[k], u[k + 1], u[k + 2], u[k + 3]
    v4, v5, v6, v7 = u[k + 4], u[k + 5], u[k + 6], u[k + 7]
    for j in range(g.shape[0]):
        g[j] = (((((((g[j] + Wb[k, j] * v0) + Wb[k + 1, j] * v1) + Wb[k + 2, j] * v2) + Wb[k + 3, j] * v3)
                   + Wb[k + 4, j] * v4) + Wb[k + 5, j] * v5) + Wb[k + 6, j] * v6) + Wb[k + 7, j] * v7


@njit(inline="always", **_OPTS)
def _row1(Wb, k, u, g):
    """g += Wb[k] u[k] (the rows after the last whole group of 8)."""
    v = u[k]
    for j in range(g.shape[0]):
        g[j] += Wb[k, j] * v


@njit(inline="always", **_OPTS)
def _gate_sums(wbuf, off_w, K, JB, nJ, scr, uo, ldu, go, ldg, n):
    """Gate sums of n streams: scr[go + p*ldg + jb*JB + j] = b + W^T u_p, u_p = scr[uo + p*ldu : ... + K],
    for the layer whose weights start at wbuf[off_w] ((nJ, K + 1, JB) blocks, bias last). Panels of 6
    streams x 16 columns (panel.py), then one smaller panel for the streams left over."""
    for jb in range(nJ):
        wo = off_w + jb * (K + 1) * JB
        for j0 in range(0, JB, PANEL_COLS):
            p = 0
            while n - p >= PANEL_ROWS:
                panel6(wbuf, wo + j0, JB, scr, uo + p * ldu, ldu, go + p * ldg + jb * JB + j0, ldg, K)
                p += PANEL_ROWS
            r, gr, ur = n - p, go + p * ldg + jb * JB + j0, uo + p * ldu
            if r == 1:
                panel1(wbuf, wo + j0, JB, scr, ur, ldu, gr, ldg, K)
            elif r == 2:
                panel2(wbuf, wo + j0, JB, scr, ur, ldu, gr, ldg, K)
            elif r == 3:
                panel3(wbuf, wo + j0, JB, scr, ur, ldu, gr, ldg, K)
            elif r == 4:
                panel4(wbuf, wo + j0, JB, scr, ur, ldu, gr, ldg, K)
            elif r == 5:
                panel5(wbuf, wo + j0, JB, scr, ur, ldu, gr, ldg, K)


@njit(**_OPTS)
def _tile(wbuf, meta, h, c, slots, offsets, s0, nb, x, y, scr):
    """Advance streams slots[s0:s0+nb] in lockstep, stream a over rows offsets[s0+a]:offsets[s0+a+1] of
    x (N, I), writing y[row] (N, O). h: (S, L, P), c: (S, L, H), changed in place.
    scr: (>= nb*(Gp + K_max + H),) scratch: gate sums g (nb, Gp), layer input u = [x_or_h_below, h]
    (nb, K_max), hr = o*tanh(c) (nb, H), each row p for the p-th stream still running at step t. The gate
    sums are one matrix product per layer and step (_gate_sums): each block of weights, once in cache,
    serves every stream of the tile, and each stream's sums are the same chain whatever shares its tile."""
    wbuf, meta, h, c, x, y, scr = borrow(wbuf), borrow(meta), borrow(h), borrow(c), borrow(x), borrow(y), borrow(scr)
    slots, offsets = borrow(slots), borrow(offsets)  # (no reference counting from here on: see the docstring)
    L, _, H, P, _ = sizes(meta)
    K_max = widest_input(meta)
    JB, nJ = blocking(meta)
    Gp = JB * nJ
    g = scr[:nb * Gp].reshape((nb, Gp))
    u = scr[nb * Gp:nb * (Gp + K_max)].reshape((nb, K_max))
    hr = scr[nb * (Gp + K_max):nb * (Gp + K_max + H)].reshape((nb, H))
    run = np.empty(nb, np.int64)  # run[p]: the tile position of the p-th stream still running at step t
    T_max = 0
    for a in range(nb):
        T_max = max(T_max, offsets[s0 + a + 1] - offsets[s0 + a])
    for t in range(T_max):
        n = 0
        for a in range(nb):
            if t < offsets[s0 + a + 1] - offsets[s0 + a]:
                run[n] = a
                n += 1
        for l in range(L):
            off_w, K, off_r = layer(meta, l)
            n_in = max(K - P, 0)  # (never negative; saying so lets LLVM copy rows with vector moves, not scatters)
            for p in range(n):
                slot = slots[s0 + run[p]]
                if l == 0:                                                  # x_t
                    row = offsets[s0 + run[p]] + t
                    for k in range(n_in):
                        u[p, k] = x[row, k]
                else:                                                       # or h_t of the layer below
                    for k in range(n_in):
                        u[p, k] = h[slot, l - 1, k]
                for k in range(P):
                    u[p, n_in + k] = h[slot, l, k]                          # h_{t-1} of this layer
            _gate_sums(wbuf, off_w, K, JB, nJ, scr, nb * Gp, K_max, 0, Gp, n)
            off_p = peephole(meta, l)
            for p in range(n):
                if off_p < 0:
                    _cell(wbuf, meta, g, hr, p, c, h, slots[s0 + run[p]], l, off_r)
                else:
                    _cell_peep(wbuf, meta, g, hr, p, c, h, slots[s0 + run[p]], l, off_r, off_p)
        for p in range(n):
            _head(wbuf, meta, h, slots[s0 + run[p]], y, offsets[s0 + run[p]] + t)


@njit(**_OPTS)
def _one(wbuf, meta, h, c, slot, x, y, scr):
    """_tile for a single stream, rows x (T, I) -> y (T, O): the same arithmetic, so the same bits (tested),
    without the tile's bookkeeping (at one stream, a large part of the step). scr: scratch row."""
    wbuf, meta, h, c, x, y, scr = borrow(wbuf), borrow(meta), borrow(h), borrow(c), borrow(x), borrow(y), borrow(scr)
    L, _, H, P, _ = sizes(meta)
    K_max = widest_input(meta)
    JB, nJ = blocking(meta)
    Gp = JB * nJ
    g = scr[:Gp].reshape((nJ, JB))
    g1 = scr[:Gp].reshape((1, Gp))  # the same sums, as _cell reads them
    u = scr[Gp:Gp + K_max]
    hr = scr[Gp + K_max:Gp + K_max + H].reshape((1, H))
    for t in range(x.shape[0]):
        for l in range(L):
            off_w, K, off_r = layer(meta, l)
            n_in = max(K - P, 0)  # (never negative; saying so lets LLVM copy rows with vector moves, not scatters)
            W = wbuf[off_w:off_w + nJ * (K + 1) * JB].reshape((nJ, K + 1, JB))
            if l == 0:
                for k in range(n_in):
                    u[k] = x[t, k]
            else:
                for k in range(n_in):
                    u[k] = h[slot, l - 1, k]
            for k in range(P):
                u[n_in + k] = h[slot, l, k]
            K8 = K - K % 8
            for jb in range(nJ):
                Wb, gb = W[jb], g[jb]
                for j in range(JB):
                    gb[j] = Wb[K, j]
                for k in range(0, K8, 8):
                    _rows8(Wb, k, u, gb)
                for k in range(K8, K):
                    _row1(Wb, k, u, gb)
            off_p = peephole(meta, l)
            if off_p < 0:
                _cell(wbuf, meta, g1, hr, l - l, c, h, slot, l, off_r)  # row 0 (a literal 0 compiles another _cell)
            else:
                _cell_peep(wbuf, meta, g1, hr, l - l, c, h, slot, l, off_r, off_p)
        _head(wbuf, meta, h, slot, y, t)


@njit(**_CELL_OPTS)
def _cell(wbuf, meta, g, hr, p, c, h, slot, l, off_r):
    """From gate pre-activations g[p] (4H,): update the cell c[slot, l] (H,) and write the new h to
    h[slot, l] (P,); hr[p] (H,) is scratch for the projection's input. The step's input was copied out of
    h[slot, l] before, so it can be overwritten. The callers pass borrowed arrays (see the module doc), so
    the row views here cost no reference counting. (The loop body must stay one loop calling the activations
    directly: split into two loops over an inlined per-unit function, a fresh compile left it scalar while the
    cached one was vectorised; tests/core/test_vectorised.py checks a fresh compile.)"""
    _, _, H, P, _ = sizes(meta)
    gp, cl, hl = g[p], c[slot, l], h[slot, l]
    out = hl if off_r < 0 else hr[p]         # without a projection, o tanh(c') is h' itself
    for j in range(H):
        i_g = act_sigmoid(gp[j])             # i = σ(W_i [x,h] + b_i)
        f_g = act_sigmoid(gp[H + j])         # f = σ(W_f [x,h] + b_f)
        g_g = act_tanh(gp[2 * H + j])        # g = tanh(W_g [x,h] + b_g)
        o_g = act_sigmoid(gp[3 * H + j])     # o = σ(W_o [x,h] + b_o)
        cj = fmuladd(i_g, g_g, f_g * cl[j])  # c' = f c + i g
        cl[j] = cj
        out[j] = o_g * act_tanh(cj)          # h' = o tanh(c')
    if off_r >= 0:                           # h' = W_hr (o tanh(c'))
        R = wbuf[off_r:off_r + H * P].reshape((H, P))  # W_hr^T
        for k in range(P):
            hl[k] = 0
        for j in range(H):
            v = out[j]
            for k in range(P):
                hl[k] = fmuladd(R[j, k], v, hl[k])


@njit(inline="always", **_CELL_OPTS)
def _clamp(v, lo, hi):
    """v clamped to [lo, hi] (the gate inputs under a clip; with hi = inf, v itself, exactly)."""
    return min(max(v, lo), hi)


@njit(**_CELL_OPTS)
def _cell_peep(wbuf, meta, g, hr, p, c, h, slot, l, off_r, off_p):
    """_cell with peephole connections (Gers & Schmidhuber 2000): p_i, p_f, p_o (3, H) at wbuf[off_p]; i and f
    see the previous cell, o the new one; and each gate's input clamped to [-clip, clip] (ONNX's clip; the
    threshold at wbuf[clip_offset(meta)], inf without clip, which clamps nothing). A function of its own, so
    that _cell (every other model) is compiled exactly as before. A model with clip and no peepholes comes
    here too, with zero peepholes (fmuladd(0, c, x) is x)."""
    _, _, H, P, _ = sizes(meta)
    gp, cl, hl = g[p], c[slot, l], h[slot, l]
    ph = wbuf[off_p:off_p + 3 * H].reshape((3, H))
    hi = wbuf[clip_offset(meta)]
    lo = -hi
    out = hl if off_r < 0 else hr[p]
    for j in range(H):
        cj0 = cl[j]
        i_g = act_sigmoid(_clamp(fmuladd(ph[0, j], cj0, gp[j]), lo, hi))         # i = σ(W_i [x,h] + b_i + p_i c)
        f_g = act_sigmoid(_clamp(fmuladd(ph[1, j], cj0, gp[H + j]), lo, hi))     # f = σ(W_f [x,h] + b_f + p_f c)
        g_g = act_tanh(_clamp(gp[2 * H + j], lo, hi))                            # g = tanh(W_g [x,h] + b_g)
        cj = fmuladd(i_g, g_g, f_g * cj0)                                        # c' = f c + i g
        o_g = act_sigmoid(_clamp(fmuladd(ph[2, j], cj, gp[3 * H + j]), lo, hi))  # o = σ(W_o [x,h] + b_o + p_o c')
        cl[j] = cj
        out[j] = o_g * act_tanh(cj)                                              # h' = o tanh(c')
    if off_r >= 0:                                                               # h' = W_hr (o tanh(c'))
        R = wbuf[off_r:off_r + H * P].reshape((H, P))
        for k in range(P):
            hl[k] = 0
        for j in range(H):
            v = out[j]
            for k in range(P):
                hl[k] = fmuladd(R[j, k], v, hl[k])


# ---- entry points ----------------------------------------------------------------------------------------
@njit(**_OPTS)
def all_finite(x):
    """True when no element of x (any shape) is NaN or ±Inf; much cheaper than numpy for small arrays. It
    counts instead of stopping at the first bad value, so that the loop vectorises: NaN and ±Inf are the values
    for which |v| < inf is false."""
    v = x.ravel()
    bad = 0
    for i in range(v.shape[0]):
        bad += not (abs(v[i]) < np.inf)
    return bad == 0


@njit(inline="always", **_OPTS)
def _prefetch_states(h, c, slots, lo, hi):
    """Ask for the state rows (h and c) of slots[lo:hi] to come into cache ahead of their tile: with the
    slots in no particular order (the usual case in a daemon) each row is otherwise a cache miss when its
    stream's turn comes. No effect on any result."""
    nh, nc = h.shape[1] * h.shape[2], c.shape[1] * c.shape[2]
    line = CACHE_LINE_BYTES // h.itemsize  # elements per cache line (the slabs start on one: layout.aligned_zeros)
    prev = slots[lo - 1] if lo > 0 else -2
    for a in range(lo, hi):
        s = slots[a]
        if s == prev + 1:  # the row after the previous one: the CPU's own prefetcher follows such runs
            prev = s
            continue
        prev = s
        for e in range((s * nh) & -line, (s + 1) * nh, line):  # each line of the row once
            prefetch(h, e)
        for e in range((s * nc) & -line, (s + 1) * nc, line):
            prefetch(c, e)


@njit(inline="always", **_OPTS)
def _tiles(wbuf, meta, h, c, slots, offsets, lo, hi, x, y, scr):
    """_tile over slots[lo:hi], a tile at a time, each tile's state rows prefetched while the one before runs.
    scr: one scratch row; its length sets the tile (streams stepped together)."""
    tile = scr.shape[0] // scratch_per_stream(meta)
    _prefetch_states(h, c, slots, lo, min(lo + tile, hi))
    for s0 in range(lo, hi, tile):
        _prefetch_states(h, c, slots, min(s0 + tile, hi), min(s0 + 2 * tile, hi))  # the next tile's
        _tile(wbuf, meta, h, c, slots, offsets, s0, min(tile, hi - s0), x, y, scr)


@njit(**_OPTS)
def step_ragged(wbuf, meta, h, c, slots, offsets, x, y, scr, grab, least, parts):
    """Advance streams slots[s] over rows offsets[s]:offsets[s+1] of x (N, I), writing y (N, O).
    slots: (S,) unique int64; offsets: (S+1,) int64; h: (cap, L, P); c: (cap, L, H);
    scr: (tile * (Gp + K_max + H),) the caller's scratch row, whose length sets the tile (streams stepped
    together). parts == 1: every stream, in this call (grab and least unused). parts > 1: the call is one of
    several made at once from as many threads (the GIL is released), with the same arguments but each its
    own scr; each takes pieces of the batch from the counter grab[0] (0 before the first call) until none
    are left (_take: a 1/parts share of what is left, whole multiples of `least` streams). Work goes to
    whichever thread is free, so a thread slowed by other load on its core holds the call up by about one
    small piece. Which thread steps a stream does not change its arithmetic (invariant 2)."""
    n = slots.shape[0]
    if parts == 1:
        lo, hi = 0, n
    else:
        lo, hi = _take(grab, n, least, parts)
    while lo < n:
        _tiles(wbuf, meta, h, c, slots, offsets, lo, hi, x, y, scr)
        if parts == 1:
            lo = n
        else:
            lo, hi = _take(grab, n, least, parts)


@njit(**_OPTS)
def step_one(wbuf, meta, h, c, slot, x, y, scr):
    """Advance the one stream in `slot` over x (T, I), writing y (T, O), and return True; or, when x holds a
    NaN or Inf, change nothing and return False. scr: a scratch row. step_ragged for a single stream, the
    same bits (tested), without the tile's bookkeeping; the finiteness check is in here because a second
    compiled call would cost a noticeable part of the step."""
    if not all_finite(x):
        return False
    _one(wbuf, meta, h, c, slot, x, y, scr)
    return True


@njit(inline="always", **_OPTS)
def _take(grab, n, least, parts):
    """The next piece of slots[0:n] for a thread of step_ragged: [lo, hi) from the counter grab[0]
    (the first slot nobody has taken), a 1/parts share of what is left, in whole multiples of `least`
    streams (at least one), or (n, n) when nothing is left. Threads race on grab[0] with compare-and-swap,
    so every slot is taken exactly once. Guided scheduling: pieces start large (few takes) and shrink
    towards the end, so threads finish within about one small piece of each other."""
    lo = load_atomic(grab)
    while lo < n:
        hi = min(lo + max(least, (n - lo) // parts // least * least), n)
        seen = compare_swap(grab, lo, hi)
        if seen == lo:
            return lo, hi
        lo = seen
    return n, n


@njit(**_OPTS)
def forecast(wbuf, meta, h, c, y, scratch):
    """Roll a private state copy forward feeding each output back as the next input (needs O == I).
    h: (1, L, P), c: (1, L, H) changed in place; y: (horizon + 1, O): y[0] = output of the current state,
    y[t + 1] = output after feeding y[t]; scratch: a scratch row."""
    _head(wbuf, meta, h, 0, y, 0)
    for t in range(y.shape[0] - 1):
        _one(wbuf, meta, h, c, 0, y[t:t + 1], y[t + 1:t + 2], scratch)
