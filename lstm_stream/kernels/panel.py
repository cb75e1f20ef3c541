"""The CPU step's inner product as a register-blocked micro-kernel (a numba intrinsic written in LLVM IR).

At hundreds of streams per call the step is the matrix product G = [x, h] W + b, and its speed is decided by
how often each loaded weight is reused from a register. Numba cannot keep an array of accumulators in
registers, and LLVM's vectoriser alone reloads and stores the gate sums every few rows. `panel(mr)` builds the
loop the way a BLAS micro-kernel does: for `mr` streams (rows of u, mr <= PANEL_ROWS) and PANEL_COLS gate
columns, the sums live in vector registers for the whole k loop; each step of k loads the panel's weights once
and adds them, times each stream's u[k] (broadcast), into every stream's sums.

Determinism: each sum is exactly   acc = b[j];  for k in 0..K-1:  acc = fmuladd(W[k, j], u[k], acc)
a single chain in k order, whatever mr is or which lane a stream lands in, so a stream's result does not
depend on what shares its batch. It is also the chain that kernels/cpu.py's one-stream loop computes (with
fastmath 'contract', LLVM fuses each a*b+c there the same way), so both paths give the same bits (tested).

prefetch asks for one cache line ahead of use (llvm.prefetch); cpu.py uses it for the next tile's state rows.
load_atomic and compare_swap (LLVM atomic load and cmpxchg) are how the parallel kernel's threads share out
the batch from one counter.

headdot does the linear head of one stream: per output, the dot product of its weight row with h, as
HEAD_CHAINS (8) partial sums over k (lane q of one vector sums k = q mod 8, so the multiply-adds do not wait on
each other), the rows past the last whole 8 into lane 0, then the lanes pairwise and the bias: the same order
for every stream and every path.

borrow drops an array's reference count inside a kernel (see kernels/cpu.py). fmuladd is one explicit
multiply-add of scalars, for the cell and the activations (see its docstring).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .constants import HEAD_CHAINS, PANEL_COLS, PANEL_ROWS

assert HEAD_CHAINS == 8, "headdot's pairwise tree (three shuffles) is written for 8 lanes"


class _Vec:
    """LLVM IR helpers for 256-bit vectors of one float dtype: loads, stores, broadcasts, multiply-adds."""

    def __init__(self, context, builder, dtype):
        self.b = builder
        self.width = 32 // (dtype.bitwidth // 8)             # elements per vector: 8 floats or 4 doubles
        self.align = dtype.bitwidth // 8
        elem = context.get_value_type(dtype)
        self.ty = ir.VectorType(elem, self.width)
        self.zero = ir.Constant(self.ty, [ir.Constant(elem, 0.0)] * self.width)
        self.i64 = ir.IntType(64)
        self._undef = ir.Constant(self.ty, ir.Undefined)
        self._splat = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width)
        self._fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.ty, [self.ty] * 3),
            f"llvm.fmuladd.v{self.width}{'f32' if self.width == 8 else 'f64'}")

    def const(self, v):
        return ir.Constant(self.i64, v)

    def add(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = self.b.add(out, x)
        return out

    def load(self, base, index):
        ptr = self.b.bitcast(self.b.gep(base, [index]), self.ty.as_pointer())
        return self.b.load(ptr, align=self.align)

    def store(self, value, base, index):
        ptr = self.b.bitcast(self.b.gep(base, [index]), self.ty.as_pointer())
        self.b.store(value, ptr, align=self.align)

    def broadcast(self, base, index):
        s = self.b.load(self.b.gep(base, [index]))
        return self.b.shuffle_vector(self.b.insert_element(self._undef, s, ir.Constant(ir.IntType(32), 0)),
                                     self._undef, self._splat)

    def fma(self, a, b, c):
        """a * b + c, fused where the CPU can (as fastmath 'contract' fuses the scalar a*b+c)."""
        return self.b.call(self._fma, [a, b, c])

    def slot(self, init):
        """An accumulator set to init: an alloca, which LLVM promotes to a vector register."""
        a = cgutils.alloca_once(self.b, self.ty)
        self.b.store(init, a)
        return a

    def update(self, slot, w, v):
        self.b.store(self.fma(w, v, self.b.load(slot)), slot)


def _data(context, builder, ty, value):
    return context.make_array(ty)(context, builder, value).data


def _codegen(mr: int):
    def codegen(context, builder, sig, args):
        w_arr, wo, ldw, s_arr, uo, ldu, go, ldg, K = args
        V = _Vec(context, builder, sig.args[0].dtype)
        wp, sp = _data(context, builder, sig.args[0], w_arr), _data(context, builder, sig.args[3], s_arr)
        nv = PANEL_COLS // V.width  # vectors per panel row (PANEL_COLS is a multiple of both widths, 8 and 4)
        bias = V.add(wo, builder.mul(K, ldw))  # the accumulators start as the bias row (row K of the block)
        b = [V.load(wp, V.add(bias, V.const(v * V.width))) for v in range(nv)]
        acc = [[V.slot(b[v]) for v in range(nv)] for _ in range(mr)]
        u_rows = [V.add(uo, builder.mul(V.const(a), ldu)) for a in range(mr)]
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            row = V.add(wo, builder.mul(k, ldw))
            wv = [V.load(wp, V.add(row, V.const(v * V.width))) for v in range(nv)]
            for a in range(mr):
                u = V.broadcast(sp, V.add(u_rows[a], k))
                for v in range(nv):
                    V.update(acc[a][v], wv[v], u)
        for a in range(mr):
            g_row = V.add(go, builder.mul(V.const(a), ldg))
            for v in range(nv):
                V.store(builder.load(acc[a][v]), sp, V.add(g_row, V.const(v * V.width)))
        return context.get_dummy_value()
    return codegen


def _headdot_codegen(context, builder, sig, args):
    """headdot's body. Per output o: acc (a vector of HEAD_CHAINS lanes, zero) += W[o, 8b:8b+8] * h[8b:8b+8]
    for each whole block b in order (one fmuladd per block: lane q sums k = q mod 8); then the last P % 8
    rows into lane 0 in order; then ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) by three shuffles; then
    bias[o] + that."""
    w_arr, wo, ldw, bo, P, O, h_arr, ho, y_arr, yo = args
    dt = sig.args[0].dtype
    b = builder
    elem = context.get_value_type(dt)
    nc = HEAD_CHAINS
    vty = ir.VectorType(elem, nc)
    i64, i32 = ir.IntType(64), ir.IntType(32)
    wp = _data(context, builder, sig.args[0], w_arr)
    hp, yp = _data(context, builder, sig.args[6], h_arr), _data(context, builder, sig.args[8], y_arr)
    suffix = "f32" if dt.bitwidth == 32 else "f64"
    fma_v = cgutils.get_or_insert_function(b.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fmuladd.v{nc}{suffix}")
    fma_s = cgutils.get_or_insert_function(b.module, ir.FunctionType(elem, [elem] * 3), f"llvm.fmuladd.{suffix}")
    align = dt.bitwidth // 8

    def vload(base, index):
        return b.load(b.bitcast(b.gep(base, [index]), vty.as_pointer()), align=align)

    def shuffle_add(v, mask):
        return b.fadd(v, b.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(i32, nc), mask)))

    blocks = b.sdiv(P, ir.Constant(i64, nc))
    tail0 = b.mul(blocks, ir.Constant(i64, nc))
    zero = ir.Constant(vty, [ir.Constant(elem, 0.0)] * nc)
    with cgutils.for_range(b, O) as out_loop:
        o = out_loop.index
        row = b.add(wo, b.mul(o, ldw))
        acc = cgutils.alloca_once(b, vty)
        b.store(zero, acc)
        with cgutils.for_range(b, blocks) as loop:
            k0 = b.mul(loop.index, ir.Constant(i64, nc))
            b.store(b.call(fma_v, [vload(wp, b.add(row, k0)), vload(hp, b.add(ho, k0)), b.load(acc)]), acc)
        lane0 = cgutils.alloca_once(b, elem)
        b.store(b.extract_element(b.load(acc), ir.Constant(i32, 0)), lane0)
        with cgutils.for_range(b, b.sub(P, tail0)) as loop:
            k = b.add(tail0, loop.index)
            wk, hk = b.load(b.gep(wp, [b.add(row, k)])), b.load(b.gep(hp, [b.add(ho, k)]))
            b.store(b.call(fma_s, [wk, hk, b.load(lane0)]), lane0)
        v = b.insert_element(b.load(acc), b.load(lane0), ir.Constant(i32, 0))
        v = shuffle_add(v, [1, 0, 3, 2, 5, 4, 7, 6])   # lane 0: l0 + l1, lane 2: l2 + l3, ...
        v = shuffle_add(v, [2, 3, 0, 1, 6, 7, 4, 5])   # lane 0: (l0 + l1) + (l2 + l3), lane 4: (l4 + l5) + (l6 + l7)
        v = shuffle_add(v, [4, 5, 6, 7, 0, 1, 2, 3])   # lane 0: the two halves
        total = b.extract_element(v, ir.Constant(i32, 0))
        bias = b.load(b.gep(wp, [b.add(bo, o)]))
        b.store(b.fadd(bias, total), b.gep(yp, [b.add(yo, o)]))
    return context.get_dummy_value()


def _float_arrays(*arrays, flat=True):
    """True for C-contiguous arrays of one float dtype (float32 or float64), 1-D unless flat is False (then
    any shape, indexed as its flat buffer)."""
    return all(isinstance(a, types.Array) and (a.ndim == 1 or not flat) and a.layout == "C"
               and a.dtype == arrays[0].dtype for a in arrays) and arrays[0].dtype in (types.float32, types.float64)


def _make_panel(mr: int):
    def panel(typingctx, w, wo, ldw, scr, uo, ldu, go, ldg, K):
        """For a = 0..mr-1 and j = 0..PANEL_COLS-1:
            scr[go + a*ldg + j] = w[wo + K*ldw + j] + sum_k w[wo + k*ldw + j] * scr[uo + a*ldu + k]
        (summed as the one fmuladd chain in k order of the module docstring). w and scr: 1-D contiguous
        arrays of the same float dtype; the caller keeps every index in bounds (no checks here)."""
        if not _float_arrays(w, scr):
            return None
        i = types.intp
        return types.void(w, i, i, scr, i, i, i, i, i), _codegen(mr)
    panel.__name__ = panel.__qualname__ = f"panel{mr}"
    return intrinsic(panel)


PANELS = tuple(_make_panel(mr) for mr in range(1, PANEL_ROWS + 1))
panel1, panel2, panel3, panel4, panel5, panel6 = PANELS


@intrinsic
def headdot(typingctx, w, wo, ldw, bo, P, O, h, ho, y, yo):
    """A linear head's outputs for one stream: for o = 0..O-1
        y[yo + o] = w[bo + o] + sum_k w[wo + o*ldw + k] * h[ho + k]     (k = 0..P-1)
    summed as in _headdot_codegen (the same order for every stream). w: 1-D contiguous, the head's rows
    (O, ldw) at wo (ldw >= P) and its bias at bo; h (a state slab) and y (the outputs): C-contiguous arrays
    of w's dtype of any shape, indexed flat (read and written in place: no row views, so no reference
    counting); no bounds checks."""
    if not (_float_arrays(w) and _float_arrays(w, h, y, flat=False)):
        return None
    i = types.intp
    return types.void(w, i, i, i, i, i, h, i, y, i), _headdot_codegen


@intrinsic
def fmuladd(typingctx, a, b, c):
    """a * b + c for three floats of one type, as llvm.fmuladd: one FMA (a single rounding) on a CPU that has
    them, a multiply then an add on one that does not, the same in every function it is compiled into. The
    cell and the activations write their multiply-adds with it instead of leaving `a*b + c` to fastmath
    'contract': where an expression holds two products (f*c + i*g) LLVM may fuse either one, and which it picks
    has been seen to change with the context a function is compiled in (inlined into the many-stream kernel or
    not, compiled fresh or linked from Numba's cache), which changed a stream's bits between processes."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.args[0])
        name = f"llvm.fmuladd.{'f32' if sig.args[0].bitwidth == 32 else 'f64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Hint the CPU to bring the cache line of arr.flat[index] into its L2 cache (llvm.prefetch: read, moderate
    locality, data). No effect on any result; an index out of bounds is harmless (a prefetch never faults).
    arr: a C-contiguous array of any shape; index: a flat element index."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a, idx = args
        data = context.make_array(sig.args[0])(context, builder, a).data
        i8p = builder.bitcast(builder.gep(data, [idx]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        # The typed-pointer name (LLVM 14, numba 0.59), which LLVM 15 and later read as llvm.prefetch.p0.
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, types.intp), codegen



@intrinsic
def borrow(typingctx, arr):
    """The array itself, without its reference count: the same data, shape and strides, with a null
    meminfo. Numba increments and decrements the count of every array passed to a function or bound to a new
    name, an atomic read-modify-write each (many per stream-step through _cell and _head); on a null meminfo
    both are a test and a return. Only for an array that the caller keeps alive
    for as long as the borrowed one is used (a kernel's own arguments, within that kernel call); never
    return one to Python."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        a.meminfo = cgutils.get_null_value(a.meminfo.type)
        return a._getvalue()
    return arr(arr), codegen


def _int64_array(arr):
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64


@intrinsic
def load_atomic(typingctx, arr):
    """arr[0], read as one atomic load (monotonic ordering): a value other threads change meanwhile, which
    a plain read would let the compiler keep in a register. arr: a 1-D int64 array."""
    if not _int64_array(arr):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "monotonic", 8)
    return types.int64(arr), codegen


@intrinsic
def compare_swap(typingctx, arr, expected, new):
    """Atomically: if arr[0] == expected, set it to new. Returns what arr[0] held (== expected: it was set;
    otherwise another thread changed it first). Sequentially consistent (LLVM cmpxchg). arr: a 1-D int64
    array; expected, new: integers."""
    if not (_int64_array(arr) and isinstance(expected, types.Integer) and isinstance(new, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        e = context.cast(builder, args[1], sig.args[1], types.int64)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.extract_value(builder.cmpxchg(data, e, v, "seq_cst", "seq_cst"), 0)
    return types.int64(arr, expected, new), codegen
