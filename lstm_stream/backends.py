"""Backends own the state slabs and run the kernels; they decide nothing about ids or policy.

Interface (CPU here; CUDA in cuda_backend.py mirrors it method for method):
    run(slots, offsets, x) -> y      advance unique `slots` over ragged rows of x (N, I); y (N, O)
    read(slot) -> (h, c)             copies, (L, P) and (L, H)
    write(slot, h, c) / zero(slot) / copy_slot(src, dst)
    gather(slots) -> (h, c)          (n, L, P), (n, L, H) host copies, for snapshots
    scatter(slots, h, c)             the reverse
    forecast(slot, horizon) -> y     (horizon, O), the slot's state untouched
    grow(capacity)                   keep every slot's state, add zeroed slots
    warm_up()                        optional: compile the batch kernels now, stepping nothing (CPU)
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from .errors import BackendError

log = logging.getLogger("lstm_stream")

# Serial or parallel kernel: a parallel call wakes the kernel threads and joins them, which costs ~10 µs while
# idle OpenMP workers spin (libgomp's default) and 60-90 µs once they sleep (OMP_WAIT_POLICY=PASSIVE, which
# the daemon sets), measured on a 2-core VM. So a call goes parallel when its serial work, in multiply-adds
# (rows x the sum over layers of 4H(I_l + P)), is well above that cost: PARALLEL_MIN_MACS (workers spinning,
# workers sleeping). Measured at I=8 H=64 (18k per row): spinning, 64 streams ran 1.4x faster in parallel;
# sleeping, 64 streams 2.2x slower, 256 even, 512 1.4x faster, 1024 1.7x. I=32 H=256 (295k per row),
# sleeping: 64 streams 1.4x faster.
PARALLEL_MIN_MACS = (1_000_000, 8_000_000)
# The parallel kernel's threads take their streams from a shared counter piece by piece (guided: pieces shrink
# as the work runs out; kernels/cpu.py), so a core slowed by other load no longer holds up the whole call. The
# smallest piece is whole tiles with at least PIECE_MACS multiply-adds (~10 µs), so that taking one (an
# atomic operation on a cache line both cores use) stays well under 1% of it.
PIECE_MACS = 400_000
# A call with enough work for the parallel kernel takes whichever kernel has been faster for calls of its size
# (rows in powers of 2 above parallel_min_rows) on this machine, as it is loaded now: when other processes
# keep the cores busy (a daemon beside its clients on 2 cores), waking a second thread can cost more than it
# saves. Each size class times its calls (time per row, a running mean weighting the newest call by
# ADAPT_WEIGHT), tries each kernel ADAPT_FIRST times first, and afterwards gives every ADAPT_PROBE-th call to
# the other kernel so that its figure stays current; less often when the other is much slower, so that the
# probes cost at most about ADAPT_PROBE_COST of the time (2x slower: every 100th call). Each kernel's figure
# starts as the best of its first tries (a stalled first call set it alone before, and the rare probes that
# follow a large gap took hundreds of calls to correct it). The parallel kernel
# (the choice before this was adaptive) keeps the calls unless the serial one has been faster by ADAPT_MARGIN,
# and a call is counted at no more than ADAPT_CLIP times its kernel's running figure, so that one stalled
# call on a noisy host cannot move the choice. Outputs do not depend on the choice (invariant 2).
ADAPT_FIRST, ADAPT_PROBE, ADAPT_PROBE_COST, ADAPT_WEIGHT, ADAPT_CLASSES = 2, 16, 0.01, 0.2, 8
ADAPT_MARGIN, ADAPT_CLIP = 0.05, 3.0


def _serial_preferred(serial, parallel) -> bool:
    """Whether the serial kernel takes a size class's calls, given both running figures (None: not yet)."""
    return serial is not None and parallel is not None and serial < parallel * (1 - ADAPT_MARGIN)


class CPUBackend:
    """State slabs in host memory, stepped by the numba kernels of kernels/cpu.py."""

    name = "cpu"

    def __init__(self, model, capacity: int, *, threads=None):
        from .kernels import cpu  # numba loads here, not at `import lstm_stream`
        from .kernels.layout import CPU_BLOCK, aligned_zeros, scratch_size
        import numba

        self._k = cpu
        self.model = model
        self.wbuf, self.meta = model.packed(CPU_BLOCK)
        dt = np.dtype(model.dtype)
        L, H, P = model.num_layers, model.hidden_size, model.state_size
        self._zeros = aligned_zeros
        self.h = aligned_zeros((capacity, L, P), dt)
        self.c = aligned_zeros((capacity, L, H), dt)
        max_threads = numba.config.NUMBA_NUM_THREADS
        if threads is not None and not 1 <= threads <= max_threads:
            raise BackendError(f"threads must be between 1 and {max_threads} (NUMBA_NUM_THREADS), got {threads}")
        self.threads = threads or min(max_threads, os.cpu_count() or 1)
        self._set_threads = numba.set_num_threads
        row = -(-scratch_size(model) // 16) * 16  # whole cache lines per row, so every row starts aligned
        self._scratch = aligned_zeros((self.threads, row), dt)  # a row per thread
        self._tile = row // scratch_size(model, tile=1)  # streams stepped together (the kernel's own rule)
        self._grab = aligned_zeros(8, np.int64)  # the parallel kernel's work counter, on its own cache line
        self._one_slot = np.zeros(1, np.int64)
        self._one_off = np.zeros(2, np.int64)
        self._step_one, self._out1, self._dt = cpu.step_one, model.output_size, dt
        self._entries = [None, None, None]  # step_one's entry points by x.ndim, see one_stepper
        self._macs_per_row = macs_per_row = model.macs_per_step
        sleeping = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
        self.parallel_min_rows = -(-PARALLEL_MIN_MACS[sleeping] // macs_per_row)
        self._timer = time.perf_counter
        # per size class: [calls, seconds per row of the serial kernel, of the parallel one (None: not yet)]
        self._adapt = [[0, None, None] for _ in range(ADAPT_CLASSES)]

    def goes_parallel(self, n_streams: int, n_rows: int) -> bool:
        """Whether a call of n_streams streams over n_rows rows has work enough for the parallel kernel (run()
        then takes the one that has been faster for calls of that size)."""
        return self.threads > 1 and n_streams >= self.threads and n_rows >= self.parallel_min_rows

    def piece(self, n_streams: int, n_rows: int) -> int:
        """The parallel kernel's smallest piece of work, in streams: whole tiles, PIECE_MACS at least."""
        tile_macs = self._tile * self._macs_per_row * n_rows / max(n_streams, 1)
        return self._tile * max(1, -(-PIECE_MACS // max(int(tile_macs), 1)))

    def _size_class(self, n_rows: int) -> int:
        return min((n_rows // self.parallel_min_rows).bit_length() - 1, ADAPT_CLASSES - 1)

    def _choose_parallel(self, cls: int) -> bool:
        """Which kernel the next call of size class cls takes (counts the call)."""
        a = self._adapt[cls]
        a[0] += 1
        n = a[0]
        if n <= 2 * ADAPT_FIRST:  # both kernels in turn, parallel first
            return n % 2 == 1
        faster = not _serial_preferred(a[1], a[2])  # parallel, unless serial has been clearly faster
        gap = max(a[1], a[2]) / max(min(a[1], a[2]), 1e-15) - 1  # how much slower the other kernel has been
        every = max(ADAPT_PROBE, int(gap / ADAPT_PROBE_COST))
        return faster != (n % every == 0)

    def _learn(self, cls: int, parallel: bool, seconds_per_row: float) -> None:
        a, k = self._adapt[cls], 2 if parallel else 1
        if a[k] is None or a[0] <= 2 * ADAPT_FIRST:  # the first tries: the best of them, as a stall in one
            a[k] = seconds_per_row if a[k] is None else min(a[k], seconds_per_row)  # would otherwise decide
        else:
            a[k] += ADAPT_WEIGHT * (min(seconds_per_row, ADAPT_CLIP * a[k]) - a[k])

    def kernel_choice(self) -> list:
        """Per size class with calls: {'rows': the class's smallest call, 'calls', 'serial_ns_per_row',
        'parallel_ns_per_row', 'uses': 'serial' or 'parallel'} (the adaptive choice of run())."""
        out = []
        for cls, (n, s, p) in enumerate(self._adapt):
            if n:
                out.append({"rows": self.parallel_min_rows << cls, "calls": n,
                            "serial_ns_per_row": None if s is None else round(s * 1e9, 1),
                            "parallel_ns_per_row": None if p is None else round(p * 1e9, 1),
                            "uses": "serial" if _serial_preferred(s, p) else "parallel"})
        return out

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) both batch kernels by calling them on an empty batch, so that
        no request pays for it; nothing is stepped."""
        x = np.zeros((0, self.model.input_size), self.h.dtype)
        y = np.zeros((0, self.model.output_size), self.h.dtype)
        slots, offsets = np.zeros(0, np.int64), np.zeros(1, np.int64)
        self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y, self._scratch)
        if self.threads > 1:
            self._set_threads(self.threads)
            self._k.step_ragged_parallel(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y,
                                         self._scratch[:1], self._grab, self._tile)

    def grow(self, capacity: int) -> None:
        """Enlarge the slabs to `capacity` slots, keeping every stream's state."""
        for name in ("h", "c"):
            old = getattr(self, name)
            new = self._zeros((capacity,) + old.shape[1:], old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def run(self, slots, offsets, x):
        """Advance each slots[s] over rows offsets[s]:offsets[s+1] of x; returns y (N, O)."""
        n_rows = x.shape[0]
        y = np.empty((n_rows, self.model.output_size), self.h.dtype)
        if not self.goes_parallel(len(slots), n_rows):
            self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y, self._scratch)
            return y
        cls = self._size_class(n_rows)
        parallel = self._choose_parallel(cls)
        t0 = self._timer()
        if parallel:
            self._set_threads(self.threads)
            self._k.step_ragged_parallel(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y,
                                         self._scratch, self._grab, self.piece(len(slots), n_rows))
        else:
            self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y, self._scratch)
        self._learn(cls, parallel, (self._timer() - t0) / n_rows)
        return y

    def run_one(self, slot: int, x):
        """run() for a single stream without building index arrays (the low-latency path)."""
        self._one_slot[0] = slot
        self._one_off[1] = x.shape[0]
        y = np.empty((x.shape[0], self.model.output_size), self.h.dtype)
        self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, self._one_slot, self._one_off, x, y,
                            self._scratch)
        return y

    def one_stepper(self, str_slot, int_table, steps, last_seen, clock, input_size, general):
        """The one-stream fast path as one Python function, bound to the current slabs and the store's maps
        and arrays (build a new one after grow()): step(stream_id, x) -> y for a known stream (a str id
        that str_slot(id) finds, or an int id in int_table, looked up inside the compiled call) and x a
        C-contiguous (I,) or (T, I) array of the model's dtype; anything else (a new stream, another kind of
        input, NaN/Inf) goes to general(stream_id, x). One compiled call checks x for NaN/Inf, steps, adds T
        to steps[slot] and sets last_seen[slot] = clock().

        Everything it needs is a local of this closure, not an attribute: at ~2 µs a step, each attribute
        lookup, frame and argument shows; the arrays travel as one StepContext. It calls step_one's compiled
        entry points directly, skipping Numba's per-call type resolution (~0.3 µs): safe because every
        argument's type but x's is fixed here, and x's dtype, layout and ndim are checked first (ndim picks
        the entry point)."""
        from .kernels.context import new_context

        ctx = new_context(self.wbuf, self.meta, self.h, self.c, int_table, self._scratch, steps, last_seen)
        out1, dt, empty, ndarray, entry, I = self._out1, self._dt, np.empty, np.ndarray, self._entries, input_size

        def step(stream_id, x):
            t = type(stream_id)  # plain ids only (1.0 and True hash like 1 but are not ids)
            if t is str:
                slot, key = str_slot(stream_id), 0
                if slot is None:
                    return general(stream_id, x)
            elif t is int:
                slot, key = -1, stream_id
            else:
                return general(stream_id, x)
            if type(x) is ndarray and x.dtype is dt and x.flags.c_contiguous:
                nd = x.ndim
                if nd == 1 and len(x) == I:
                    y = empty(out1, dt)
                elif nd == 2 and len(x) and x.size == len(x) * I:
                    y = empty((len(x), out1), dt)
                else:
                    return general(stream_id, x)
                fn = entry[nd] or self._entry(ctx, x, y)
                try:
                    if fn(ctx, key, slot, x, y, clock()) == 0:
                        return y
                except OverflowError:  # an int id beyond int64: general() says what is wrong
                    pass
            return general(stream_id, x)

        return step

    def _entry(self, ctx, x, y):
        """step_one compiled (or loaded from the cache) for x's ndim; its entry point."""
        import numba

        args = (ctx, 0, 0, x, y, 0.0)
        try:
            fn = self._step_one.compile(tuple(numba.typeof(a) for a in args))
        except AttributeError:  # a Numba without Dispatcher.compile(signature): dispatch per call
            fn = self._step_one
        self._entries[x.ndim] = fn
        return fn

    def read(self, slot):
        """Copies of one slot's state: h (L, P), c (L, H)."""
        return self.h[slot].copy(), self.c[slot].copy()

    def write(self, slot, h, c):
        """Overwrite one slot's state."""
        self.h[slot] = h
        self.c[slot] = c

    def zero(self, slot):
        """Zero one slot's state (a new or reset stream)."""
        self.h[slot] = 0
        self.c[slot] = 0

    def copy_slot(self, src, dst):
        """Copy slot src's state into slot dst."""
        self.h[dst] = self.h[src]
        self.c[dst] = self.c[src]

    def gather(self, slots):
        """States of many slots as (n, L, P), (n, L, H) copies (for snapshots)."""
        return self.h[slots], self.c[slots]

    def scatter(self, slots, h, c):
        """Write the states of many slots (restoring a snapshot)."""
        n = len(slots)
        if n and slots[-1] - slots[0] == n - 1 and (np.diff(slots) == 1).all():  # a run: copy, not index
            self.h[slots[0]:slots[0] + n] = h
            self.c[slots[0]:slots[0] + n] = c
        else:
            self.h[slots] = h
            self.c[slots] = c

    def forecast(self, slot, horizon: int):
        """(horizon, O) outputs rolled forward from a copy of the slot's state; the slot is untouched."""
        h, c = self.h[slot : slot + 1].copy(), self.c[slot : slot + 1].copy()
        y = np.empty((horizon + 1, self.model.output_size), self.h.dtype)
        self._k.forecast(self.wbuf, self.meta, h, c, y, self._scratch)
        return y[1:]


def cuda_available() -> bool:
    """True when numba.cuda can see a usable GPU (or the CUDA simulator is on)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba-cuda missing or broken driver: no GPU for us
        return False


def make_backend(name: str, model, capacity: int, *, threads=None):
    """Backend by name: 'cpu', 'cuda' (fails clearly without a GPU), or 'auto' (CUDA if usable, logged)."""
    if name not in ("cpu", "cuda", "auto"):
        raise BackendError(f"backend must be 'cpu', 'cuda' or 'auto', got {name!r}")
    if name in ("cuda", "auto") and cuda_available():
        from .cuda_backend import CUDABackend
        try:
            backend = CUDABackend(model, capacity)
        except BackendError as e:
            if name == "cuda":
                raise
            log.warning("backend=auto: a GPU is visible but unusable (%s); using cpu", e)
        else:
            if name == "auto":
                log.info("backend=auto chose cuda")
            return backend
    elif name == "cuda":
        raise BackendError("backend='cuda' needs a usable NVIDIA GPU with numba-cuda installed "
                           "(pip install 'lstm-stream[cu12]' or '[cu13]'); none was found. Use backend='cpu' "
                           "or 'auto'.")
    elif name == "auto":
        log.info("backend=auto chose cpu (no usable GPU)")
    return CPUBackend(model, capacity, threads=threads)
