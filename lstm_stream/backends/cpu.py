"""CPUBackend: state slabs in host memory, stepped by the kernels of kernels/cpu.py, on the caller's thread or
shared out over worker threads (_Workers). Implements the Backend protocol (backends/protocol.py).

A call goes parallel when its work, in multiply-adds, is at least PARALLEL_MIN_MACS and it has a tile of
streams for every thread; the threads then take pieces of the batch from one counter (kernels/cpu.py). The
tuning constants and why they have their values: kernels/constants.py.
"""
from __future__ import annotations

import os
import queue
import threading
import weakref

import numpy as np

from .. import warm
from ..errors import BackendError
from ..kernels.constants import (
    CPU_BLOCK,
    PARALLEL_MIN_MACS,
    PIECE_MACS,
    SHARES_PER_THREAD,
)


class _Workers:
    """threads - 1 daemon threads that each run one call of the step kernel per job, beside the caller's own.
    The kernel releases the GIL, so the calls run at once; the threads end when the backend is collected."""

    def __init__(self, kernel, n: int):
        self.n, self.pid = n, os.getpid()
        self.jobs, self.done = queue.SimpleQueue(), queue.SimpleQueue()
        for k in range(n):
            threading.Thread(target=_work, args=(kernel, self.jobs, self.done), daemon=True,
                             name=f"lstm-stream-kernel-{k + 1}").start()

    def stop(self) -> None:
        for _ in range(self.n):
            self.jobs.put(None)


def _work(kernel, jobs, done):
    """A worker thread: run each job (the kernel's arguments) and report None or the exception."""
    while True:
        args = jobs.get()
        if args is None:
            return
        try:
            kernel(*args)
            done.put(None)
        except BaseException as e:  # reported to the caller, which raises it
            done.put(e)


class CPUBackend:
    """State slabs in host memory, stepped by the numba kernels of kernels/cpu.py."""

    name = "cpu"

    def __init__(self, model, capacity: int, *, threads=None):
        from ..kernels import cpu  # numba loads here, not at `import lstm_stream`
        from ..kernels.layout import aligned_zeros
        from ..slabs import Slab

        self._k = cpu
        dt = np.dtype(model.dtype)
        L, H, P = model.num_layers, model.hidden_size, model.state_size
        # grown in place, on cache lines, huge pages advised (slabs.py)
        self._slabs = Slab(capacity, (L, P), dt, huge=True), Slab(capacity, (L, H), dt, huge=True)
        self.h, self.c = (slab.array for slab in self._slabs)
        max_threads = os.cpu_count() or 1
        if threads is not None and (type(threads) is not int or not 1 <= threads <= max_threads):
            raise BackendError(f"threads must be an int between 1 and {max_threads} (this machine's CPUs), "
                               f"got {threads!r}")
        self.threads = threads or max_threads
        self._grab = aligned_zeros(8, np.int64)  # the threads' work counter, alone on its cache line
        self._workers = None  # started at the first parallel call
        self._one_slot, self._one_off = np.zeros(1, np.int64), np.zeros(2, np.int64)
        self._use(model)

    def _use(self, model) -> None:
        """Take the weights of `model` and what depends on their packed layout (scratch rows, tile, work per
        row); the state slabs are not touched."""
        from ..kernels.layout import aligned_zeros, scratch_size
        self.model = model
        self.wbuf, self.meta = model.packed(CPU_BLOCK)
        dt = np.dtype(model.dtype)
        row = -(-scratch_size(model) // 16) * 16  # whole cache lines (16 floats) per row: every row starts on one
        self._scratch = aligned_zeros((self.threads, row), dt)  # a row per thread
        self._tile = row // scratch_size(model, tile=1)  # streams stepped together (the kernel's own rule)
        self._one = None  # step_one's compiled entry point (see run_one)
        self._scratch0, self._O, self._dt = self._scratch[0], model.output_size, dt  # run_one's, at hand
        self._macs_per_row = macs_per_row = model.macs_per_step
        self.parallel_min_rows = -(-PARALLEL_MIN_MACS // macs_per_row)  # (read here, so tests can patch it)

    def replace_model(self, model) -> None:
        """Step with `model`'s weights from the next call on (same sizes and dtype: Streams checked); every
        slot keeps its state."""
        self._use(model)

    def goes_parallel(self, n_streams: int, n_rows: int) -> bool:
        """Whether a call of n_streams streams over n_rows rows has work enough for the worker threads."""
        return self.threads > 1 and n_streams >= self.threads * self._tile and n_rows >= self.parallel_min_rows

    def piece(self, n_streams: int, n_rows: int) -> int:
        """The parallel call's smallest piece of work, in streams: whole tiles, PIECE_MACS at least."""
        tile_macs = self._tile * self._macs_per_row * n_rows / max(n_streams, 1)
        return self._tile * max(1, -(-PIECE_MACS // max(int(tile_macs), 1)))

    def warm_up(self) -> None:
        """Nothing: warm.warm_up, which Streams.warm_up runs first, compiles every CPU kernel (in child processes
        when cold, the one-stream kernel possibly in the background, which compiling it here would undo)."""

    def host_arrays(self) -> tuple:
        """The state slabs h (capacity, L, P) and c (capacity, L, H): host memory here."""
        return self.h, self.c

    def grow(self, capacity: int) -> None:
        """Enlarge the slabs to `capacity` slots, keeping every stream's state (in place: slabs.py)."""
        self.h, self.c = (slab.grow(capacity) for slab in self._slabs)

    def run(self, slots, offsets, x):
        """Advance each slots[s] over rows offsets[s]:offsets[s+1] of x; returns y (N, O)."""
        n_rows = x.shape[0]
        y = np.empty((n_rows, self.model.output_size), self.h.dtype)
        if self.goes_parallel(len(slots), n_rows):
            self._run_shared(slots, offsets, x, y, self.piece(len(slots), n_rows))
        else:
            self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y, self._scratch[0],
                                self._grab, 1, 1)
        return y

    def _run_shared(self, slots, offsets, x, y, least):
        """step_ragged on every thread at once, this one included, sharing the batch out (kernels/cpu.py)."""
        workers = self._workers
        if workers is None or workers.pid != os.getpid():  # none yet, or this is a forked child without them
            workers = self._workers = _Workers(self._k.step_ragged, self.threads - 1)
            weakref.finalize(self, workers.stop)
        args = (self.wbuf, self.meta, self.h, self.c, slots, offsets, x, y)
        parts = SHARES_PER_THREAD * self.threads
        self._grab[0] = 0
        for w in range(1, self.threads):
            workers.jobs.put(args + (self._scratch[w], self._grab, least, parts))
        error = None
        try:
            self._k.step_ragged(*args, self._scratch[0], self._grab, least, parts)
        finally:
            for _ in range(1, self.threads):  # every worker is done with the arrays before they are returned
                error = workers.done.get() or error
        if error is not None:
            raise error

    def run_one(self, slot: int, x):
        """run() for a single stream, x (T, I) C-contiguous in the model's dtype -> y (T, O), by the one-stream
        kernel (the low-latency path); None, with nothing changed, when x holds a NaN or Inf. While that kernel
        compiles in the background (warm.deferred), by the many-stream kernel: the same bits."""
        y = np.empty((x.shape[0], self._O), self._dt)
        one = self._one
        if one is None:
            if warm.deferred(self._dt.name):
                if not self._k.all_finite(x):
                    return None
                self._one_slot[0] = slot
                self._one_off[1] = x.shape[0]
                self._k.step_ragged(self.wbuf, self.meta, self.h, self.c, self._one_slot, self._one_off, x, y,
                                    self._scratch0, self._grab, 1, 1)
                return y
            one = self._one_entry(x, y)
        return y if one(self.wbuf, self.meta, self.h, self.c, slot, x, y, self._scratch0) else None

    def _one_entry(self, x, y):
        """step_one's compiled entry point (compiled or loaded now if need be), called without Numba's type
        resolution (~0.4 µs a call): the argument types never change (x and y are always C-contiguous 2-D
        arrays of the model's dtype, which is what the caller checks)."""
        from ..jitcache import entry_point
        self._one = entry_point(self._k.step_one, (self.wbuf, self.meta, self.h, self.c, 0, x, y, self._scratch0))
        return self._one

    def read(self, slot):
        """Copies of one slot's state: h (L, P), c (L, H)."""
        return self.h[slot].copy(), self.c[slot].copy()

    def write(self, slot, h, c):
        """Overwrite one slot's state."""
        self.h[slot] = h
        self.c[slot] = c

    def zero(self, slot):
        """Zero the state of a slot, or of an int64 array of slots (new or reset streams)."""
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
        self._k.forecast(self.wbuf, self.meta, h, c, y, self._scratch[0])
        return y[1:]
