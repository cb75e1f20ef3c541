"""CUDABackend: the host driver of kernels/cuda.py. It owns device memory, transfers and launch geometry.

The state slab (cap, L*(P+H)) lives on the GPU for the life of the engine; a step copies only the batch's
plan and inputs in and its outputs out, through pinned host buffers that are reused (they grow by doubling,
never per step), all on one CUDA stream with a single synchronisation. The weights are copied once; when
they fit in a block's shared memory, the kernel stages them there and runs a persistent grid (a few blocks
per SM, each looping over many tiles of streams), so a step reads them from shared memory, not from global.
Implements the Backend protocol (backends/protocol.py); how kernels are compiled and launched: cuda_launch.py.
"""
from __future__ import annotations

import logging

import numpy as np
from numba import cuda

from ..errors import BackendError
from ..kernels import cuda as k
from ..kernels.constants import (
    CUDA_TILE_STREAMS,
    DEFAULT_SHARED_BYTES,
    MAX_BLOCK_THREADS,
    MAX_BLOCKS_PER_SM,
    MAX_GRID_Y,
    MIN_BLOCK_THREADS,
    THREADS_PER_SM,
    WARP,
    WIDE_BELOW_TILES_PER_SM,
    ZERO_MAX_BLOCKS,
    ZERO_THREADS,
)
from ..kernels.layout import PLAN_HEAD, widest_input
from .cuda_launch import Kernels, shared_limit, shared_per_sm, sm_count

log = logging.getLogger("lstm_stream")


class CUDABackend:
    """State slab in GPU memory, stepped by the numba.cuda kernels of kernels/cuda.py."""

    name = "cuda"

    def __init__(self, model, capacity: int):
        self.model = model
        self.dtype = np.dtype(model.dtype)
        wbuf, meta = model.packed()
        L, H, P, I, O = (model.num_layers, model.hidden_size, model.state_size, model.input_size,
                         model.output_size)
        self._L, self._H, self._P, self._I, self._O = L, H, P, I, O
        self._W = L * (P + H)
        try:
            self.stream = cuda.stream()
            self.wbuf, self.meta = cuda.to_device(wbuf, stream=self.stream), cuda.to_device(meta, stream=self.stream)
            self.state = self._zeros(capacity)
            self._kernels = Kernels(model.dtype)
        except Exception as e:  # out of memory, no NVVM, driver trouble: fail at construction, clearly
            raise BackendError(f"backend='cuda' could not set up its kernels and device memory: {e}") from e
        self.threads = min(MAX_BLOCK_THREADS, max(MIN_BLOCK_THREADS, -(-max(H, P, O) // WARP) * WARP))
        self._geometry(wbuf, meta)
        self._pending = []  # slots to zero before the next use of the slab (zero() is batched)
        # a real device refuses a pinned buffer of 0 bytes (null pointer; the simulator allows it): start at 64
        self._zero_h = cuda.pinned_array(64, np.int64)
        self._zero_d = cuda.device_array(64, np.int64, stream=self.stream)
        self._n_rows, self._n_streams = 0, 0
        self._ensure(64, 64)
        self._f_plan = cuda.pinned_array(6, np.int64)
        self._one_slot, self._one_off = np.zeros(1, np.int64), np.zeros(2, np.int64)
        self._f_state = cuda.device_array((1, self._W), self.dtype)

    def replace_model(self, model) -> None:
        """Step with `model`'s weights from the next call on (same sizes and dtype: Streams checked; peepholes,
        head and biases may differ, so the packed layout and the shared-memory geometry are recomputed). The
        state slab stays on the device as it is."""
        wbuf, meta = model.packed()
        try:
            w_d, m_d = cuda.to_device(wbuf, stream=self.stream), cuda.to_device(meta, stream=self.stream)
            self.stream.synchronize()
        except Exception as e:  # out of device memory: nothing changed
            raise BackendError(f"backend='cuda' could not copy the new weights to the device: {e}") from e
        old = dict(self.__dict__)
        self.model, self.wbuf, self.meta = model, w_d, m_d
        try:
            self._geometry(wbuf, meta)
        except BackendError:  # the new layout does not fit the device's shared memory: keep the old weights
            self.__dict__.update(old)
            raise

    # ---- geometry and buffers -------------------------------------------------------------------------
    def _geometry(self, wbuf, meta):
        """Decide whether weights are staged in shared memory, and the dynamic shared bytes per block."""
        item = self.dtype.itemsize
        limit = shared_limit()
        staged_bytes = k.shared_floats(meta, wbuf.size, True) * item
        self.staged = staged_bytes <= limit and self._kernels.opt_in_shared(staged_bytes)
        self.shared_bytes = k.shared_floats(meta, wbuf.size, self.staged) * item
        if not self.staged and not self._kernels.opt_in_shared(self.shared_bytes):
            limit = DEFAULT_SHARED_BYTES
        if self.shared_bytes > limit:
            raise BackendError(f"model too large for backend='cuda': a block needs {self.shared_bytes} bytes of "
                               f"shared memory for {CUDA_TILE_STREAMS} streams' state, the device allows {limit}")
        self.wide_shared = CUDA_TILE_STREAMS * int(widest_input(meta)) * item  # gates_kernel: (tile, K_max) inputs
        self.wide_ok = self._kernels.opt_in_shared(self.wide_shared, ("gates_kernel",))
        self._work = None
        per_sm = shared_per_sm() // max(self.shared_bytes, 1)
        self.blocks_per_sm = max(1, min(MAX_BLOCKS_PER_SM, per_sm, THREADS_PER_SM // self.threads))
        self.sms = sm_count()
        log.info("cuda backend: %d threads/block, %d B shared/block, weights %s shared memory",
                 self.threads, self.shared_bytes, "staged in" if self.staged else "read from global, not")

    def grid(self, n_streams: int) -> int:
        """Blocks for a batch: one per tile, capped to a persistent grid when weights are staged."""
        tiles = -(-n_streams // CUDA_TILE_STREAMS)
        cap = self.sms * self.blocks_per_sm if self.staged else 1 << 20
        return max(1, min(tiles, cap))

    def _zeros(self, capacity):
        return cuda.to_device(np.zeros((capacity, self._W), self.dtype), stream=self.stream)

    def _ensure(self, n_rows: int, n_streams: int):
        """Grow the pinned and device I/O buffers (by doubling) to hold a batch; never shrinks."""
        if n_rows > self._n_rows:
            self._n_rows = max(n_rows, 2 * self._n_rows)
            self._x_h = cuda.pinned_array((self._n_rows, self._I), self.dtype)
            self._y_h = cuda.pinned_array((self._n_rows, self._O), self.dtype)
            self._x_d = cuda.device_array((self._n_rows, self._I), self.dtype, stream=self.stream)
            self._y_d = cuda.device_array((self._n_rows, self._O), self.dtype, stream=self.stream)
        if n_streams > self._n_streams:
            self._n_streams = max(n_streams, 2 * self._n_streams)
            self._plan_h = cuda.pinned_array(PLAN_HEAD + 2 * self._n_streams + 1, np.int64)
            self._plan_d = cuda.device_array(PLAN_HEAD + 2 * self._n_streams + 1, np.int64, stream=self.stream)

    def _flush(self):
        """Zero the slots queued by zero() with one launch (through a reused pinned/device buffer)."""
        m = len(self._pending)
        if m:
            if self._zero_h.shape[0] < m:
                self._zero_h = cuda.pinned_array(2 * m, np.int64)
                self._zero_d = cuda.device_array(2 * m, np.int64, stream=self.stream)
            self._zero_h[:m] = self._pending
            self._pending = []
            self._zero_d[:m].copy_to_device(self._zero_h[:m], stream=self.stream)
            n = m * self._W
            self._kernels.launch("zero_slots_kernel", min(-(-n // ZERO_THREADS), ZERO_MAX_BLOCKS), ZERO_THREADS,
                                 self.stream, 0, (self.state, self._zero_d[:m]))

    # ---- stepping ---------------------------------------------------------------------------------------
    def run(self, slots, offsets, x, t_max=None):
        """Advance each slots[s] over rows offsets[s]:offsets[s+1] of x; returns y (N, O)."""
        self._flush()
        S, N = len(slots), x.shape[0]
        T = int(np.max(np.diff(offsets))) if t_max is None else t_max
        self._ensure(N, S)
        plan, n_plan = self._plan_h, PLAN_HEAD + 2 * S + 1  # [S, flags, T_max | slots | offsets] (layout.py)
        plan[0], plan[1], plan[2] = S, int(self.staged), T
        plan[PLAN_HEAD:PLAN_HEAD + S] = slots
        plan[PLAN_HEAD + S:n_plan] = offsets
        self._x_h[:N] = x
        self._plan_d[:n_plan].copy_to_device(plan[:n_plan], stream=self.stream)
        self._x_d[:N].copy_to_device(self._x_h[:N], stream=self.stream)
        if self._wide(S):
            self._run_wide(S, T)
        else:
            self._kernels.launch("step_kernel", self.grid(S), self.threads, self.stream, self.shared_bytes,
                                 (self.wbuf, self.meta, self.state, self._plan_d, self._x_d, self._y_d))
        self._y_d[:N].copy_to_host(self._y_h[:N], stream=self.stream)
        self.stream.synchronize()
        return self._y_h[:N].copy()

    def run_one(self, slot: int, x):
        """run() for a single stream; None, with nothing changed, when x holds a NaN or Inf (as on the CPU)."""
        if not np.isfinite(x).all():
            return None
        self._one_off[1] = x.shape[0]
        self._one_slot[0] = slot
        return self.run(self._one_slot, self._one_off, x, x.shape[0])

    def _wide(self, n_streams: int) -> bool:
        """Spread each stream over many blocks (kernels/cuda_wide.py) when the weights are not in shared
        memory, a block cannot cover all H units at once, and the batch has too few tiles to keep every SM
        busy with one block per tile."""
        return (self.wide_ok and not self.staged and self._H > self.threads
                and -(-n_streams // CUDA_TILE_STREAMS) < self.sms * WIDE_BELOW_TILES_PER_SM)

    def _run_wide(self, S, T):
        """T_max x L x (gates, hidden) launches, then the head for each step."""
        if self._work is None or self._work.shape[0] < S:
            self._work = cuda.device_array((max(S, 2 * (0 if self._work is None else self._work.shape[0])),
                                            self._H), self.dtype, stream=self.stream)
        L, NT, st = self._L, self.threads, self.stream
        gates_grid = (-(-self._H // NT), min(-(-S // CUDA_TILE_STREAMS), MAX_GRID_Y))
        flat = lambda n: max(1, min(-(-n // NT), MAX_GRID_Y))
        args = (self.wbuf, self.meta, self.state, self._plan_d)
        for t in range(T):
            for l in range(L):
                self._kernels.launch("gates_kernel", gates_grid, NT, st, self.wide_shared,
                                     args + (self._x_d, self._work, t * L + l))
                self._kernels.launch("hidden_kernel", flat(S * self._P), NT, st, 0, args + (self._work, t * L + l))
            self._kernels.launch("head_kernel", flat(S * self._O), NT, st, 0, args + (self._y_d, t))
            if self.model.head_activation == "softmax":
                self._kernels.launch("softmax_kernel", flat(S), NT, st, 0, (self.meta, self._plan_d, self._y_d, t))

    def forecast(self, slot, horizon: int):
        """(horizon, O) outputs fed back as inputs from a private copy of the slot's state."""
        self._flush()
        self._f_state[0].copy_to_device(self.state[slot], stream=self.stream)
        self._f_plan[:] = (1, int(self.staged), horizon, 0, 0, horizon)
        plan = cuda.to_device(self._f_plan, stream=self.stream)
        y = cuda.device_array((horizon + 1, self._O), self.dtype, stream=self.stream)
        self._kernels.launch("forecast_kernel", 1, self.threads, self.stream, self.shared_bytes,
                             (self.wbuf, self.meta, self._f_state, plan, y))
        out = y.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return out[1:]

    def warm_up(self) -> None:
        """Compile every kernel for its one signature now (step and forecast already are, since construction),
        so that the first wide batch does not compile; nothing under the simulator."""
        self._kernels.compile_all()

    # ---- per-slot state -----------------------------------------------------------------------------------
    def _split(self, rows):
        """(n, L*(P+H)) slab rows -> h (n, L, P), c (n, L, H) host copies."""
        r = rows.reshape(rows.shape[0], self._L, self._P + self._H)
        return np.ascontiguousarray(r[:, :, :self._P]), np.ascontiguousarray(r[:, :, self._P:])

    def _join(self, h, c):
        """h (n, L, P), c (n, L, H) -> slab rows (n, L*(P+H))."""
        return np.concatenate([h, c], axis=2).reshape(h.shape[0], self._W).astype(self.dtype, copy=False)

    def read(self, slot):
        """(h (L, P), c (L, H)) copies of one slot."""
        self._flush()
        row = self.state[slot].copy_to_host(stream=self.stream)
        self.stream.synchronize()
        h, c = self._split(row[None])
        return h[0], c[0]

    def write(self, slot, h, c):
        """Overwrite one slot's h (L, P) and c (L, H)."""
        self._flush()
        self.state[slot].copy_to_device(np.ascontiguousarray(self._join(h[None], c[None])[0]), stream=self.stream)
        self.stream.synchronize()

    def zero(self, slot):
        """Zero a slot, or an int64 array of slots (queued; applied before the slab is next used)."""
        if isinstance(slot, np.ndarray):
            self._pending.extend(slot.tolist())
        else:
            self._pending.append(int(slot))

    def copy_slot(self, src, dst):
        """dst's state := src's state, on the device."""
        self._flush()
        self.state[dst].copy_to_device(self.state[src], stream=self.stream)
        self.stream.synchronize()

    def gather(self, slots):
        """h (n, L, P), c (n, L, H) host copies of `slots` (for snapshots)."""
        self._flush()
        host = self.state.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return self._split(host[np.asarray(slots, np.int64)])

    def scatter(self, slots, h, c):
        """Write h (n, L, P), c (n, L, H) into `slots` (restoring a snapshot)."""
        self._flush()
        host = self.state.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        host[np.asarray(slots, np.int64)] = self._join(np.asarray(h), np.asarray(c))
        self.state.copy_to_device(host, stream=self.stream)
        self.stream.synchronize()

    def host_arrays(self) -> tuple:
        """(): the state lives on the device."""
        return ()

    def grow(self, capacity: int) -> None:
        """Enlarge the device slab to `capacity` slots, keeping every slot's state; new slots are zero."""
        self._flush()
        new = self._zeros(capacity)
        old = self.state
        new[:old.shape[0]].copy_to_device(old, stream=self.stream)
        self.stream.synchronize()
        self.state = new
