"""The CPU step's inner product as a register-blocked micro-kernel (a numba intrinsic written in LLVM IR).

At hundreds of streams per call the step is the matrix product G = [x, h] W + b, and its speed is decided by
how often each loaded weight is reused from a register. Numba cannot keep an array of accumulators in
registers, and LLVM's vectoriser alone produced loops that reload and store the gate sums every few rows
(~55% of the matmul peak). `panel(mr)` builds the loop the way a BLAS micro-kernel does: for `mr` streams
(rows of u) and 16 gate columns, the sums live in vector registers for the whole k loop; each step of k loads
16 weights once and adds them, times each stream's u[k] (broadcast), into every stream's sums.

Determinism: each sum is exactly   acc = b[j];  for k in 0..K-1:  acc = fmuladd(W[k, j], u[k], acc)
a single chain in k order, whatever mr is or which lane a stream lands in, so a stream's result does not
depend on what shares its batch. It is also the chain that kernels/cpu.py's one-stream loop computes (with
fastmath 'contract', LLVM fuses each a*b+c there the same way), so both paths give the same bits (tested).

Note: Numba's on-disk cache keys on the file of the cached function, not on this one: after editing this
file clear lstm_stream/kernels/__pycache__ (an installed upgrade changes every file and recompiles anyway).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .layout import PANEL_COLS as COLS  # gate columns per panel: a multiple of both vector widths (8 and 4)
MR = 6     # streams per full panel: 6 x 16 float32 sums = 12 ymm registers, + 2 weight vectors + 1 broadcast


def _codegen(mr: int):
    def codegen(context, builder, sig, args):
        w_arr, wo, ldw, s_arr, uo, ldu, go, ldg, K = args
        dtype = sig.args[0].dtype
        elem = context.get_value_type(dtype)
        width = 32 // (dtype.bitwidth // 8)              # elements per 256-bit vector
        nv = COLS // width                               # vectors per row of the panel
        vty = ir.VectorType(elem, width)
        i64, i32 = ir.IntType(64), ir.IntType(32)
        wp = context.make_array(sig.args[0])(context, builder, w_arr).data
        sp = context.make_array(sig.args[3])(context, builder, s_arr).data
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                             f"llvm.fmuladd.v{width}{'f32' if width == 8 else 'f64'}")

        def const(v):
            return ir.Constant(i64, v)

        def vptr(base, index):
            return builder.bitcast(builder.gep(base, [index]), vty.as_pointer())

        # accumulators start as the bias row (row K of the weight block)
        acc = [[cgutils.alloca_once(builder, vty) for _ in range(nv)] for _ in range(mr)]
        bias = builder.add(wo, builder.mul(K, ldw))
        for v in range(nv):
            b = builder.load(vptr(wp, builder.add(bias, const(v * width))), align=dtype.bitwidth // 8)
            for a in range(mr):
                builder.store(b, acc[a][v])
        zeros = ir.Constant(ir.VectorType(i32, width), [0] * width)
        undef = ir.Constant(vty, ir.Undefined)
        u_rows = [builder.add(uo, builder.mul(const(a), ldu)) for a in range(mr)]
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            row = builder.add(wo, builder.mul(k, ldw))
            wv = [builder.load(vptr(wp, builder.add(row, const(v * width))), align=dtype.bitwidth // 8)
                  for v in range(nv)]
            for a in range(mr):
                s = builder.load(builder.gep(sp, [builder.add(u_rows[a], k)]))
                bv = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, zeros)
                for v in range(nv):
                    builder.store(builder.call(fma, [wv[v], bv, builder.load(acc[a][v])]), acc[a][v])
        for a in range(mr):
            g_row = builder.add(go, builder.mul(const(a), ldg))
            for v in range(nv):
                builder.store(builder.load(acc[a][v]), vptr(sp, builder.add(g_row, const(v * width))),
                              align=dtype.bitwidth // 8)
        return context.get_dummy_value()
    return codegen


def _make_panel(mr: int):
    def panel(typingctx, w, wo, ldw, scr, uo, ldu, go, ldg, K):
        """For a = 0..mr-1 and j = 0..15:
            scr[go + a*ldg + j] = w[wo + K*ldw + j] + sum_k w[wo + k*ldw + j] * scr[uo + a*ldu + k]
        (summed as the one fmuladd chain in k order of the module docstring). w and scr: 1-D contiguous
        arrays of the same float dtype; the caller keeps every index in bounds (no checks here)."""
        if not (isinstance(w, types.Array) and isinstance(scr, types.Array) and w.ndim == scr.ndim == 1
                and w.dtype == scr.dtype and w.dtype in (types.float32, types.float64)
                and w.layout == scr.layout == "C"):
            return None
        i = types.intp
        return types.void(w, i, i, scr, i, i, i, i, i), _codegen(mr)
    panel.__name__ = panel.__qualname__ = f"panel{mr}"
    return intrinsic(panel)


PANELS = tuple(_make_panel(mr) for mr in range(1, MR + 1))
panel1, panel2, panel3, panel4, panel5, panel6 = PANELS
