"""Streams: the object a Python user steps — a model, a backend holding the state slabs, a state store.

    streams = Streams(model)                  # backend="cpu"; "cuda"; "auto"
    y  = streams.step("pump-7", x)            # x (I,) -> y (O,);  xs (T, I) -> (T, O)
    Y  = streams.step_many(ids, X)            # X (N, I), one sample per id, ids may repeat -> (N, O)
    Ys = streams.step_batch(ids, xs)          # ragged: a list of (T_i, I) -> a list of (T_i, O)
    Y  = streams.step_segments(ids, lengths, X)   # ragged, all rows in one array (the daemon's path)

    streams.evict(ids)                        # with cold=ColdStore(path): to disk until their next call
    streams.replace_model(new_model)          # new weights, same sizes: every stream continues under them

Every public method validates first and changes nothing when it raises.
"""
from __future__ import annotations

import time

import numpy as np

from .backends import make_backend
from .errors import InputError, ModelError
from .model import LSTMModel
from .receipts import Receipts
from .replacing import ModelSwap
from .snapshotting import SnapshotIO
from .state import INT64_MAX, StreamState, check_id, parse_state
from .store import StateStore, distinct
from .tiering import ColdTier

MAX_FORECAST_HORIZON = 100_000  # a bound so a typo cannot allocate gigabytes
_STORE_ARRAYS = ("steps", "last_seen")  # per-slot arrays of the store that snapshots carry, by name


def _id_list(ids):
    """ids as a list, except a 1-D numpy integer array, which the store looks up as it is (known ids) or
    iterates like a list (new ones)."""
    if isinstance(ids, list) or (type(ids) is np.ndarray and ids.ndim == 1 and ids.dtype.kind in "iu"):
        return ids
    return list(ids)


class Streams(ColdTier, SnapshotIO, ModelSwap):
    """Per-stream LSTM state for one model, stepped by a CPU or CUDA backend."""

    # Streams created (a new id's first step, set_state, copy), dropped (drop, or idle with --idle-action
    # drop), evicted to and thawed from the cold store, since this object was made (counters for metrics).
    created = dropped = evicted = thawed = 0

    def __init__(self, model: LSTMModel, backend: str = "cpu", *, max_streams: int | None = None,
                 idle_ttl: float | None = None, threads: int | None = None, initial_capacity: int = 64,
                 clock=time.time, cold=None, idle_action: str | None = None):
        if not isinstance(model, LSTMModel):
            raise ModelError(f"Streams needs an LSTMModel, got {type(model).__name__}")
        if idle_ttl is not None and not idle_ttl > 0:
            raise InputError(f"idle_ttl must be a positive number of seconds or None, got {idle_ttl!r}")
        self.model = model
        self.idle_ttl = idle_ttl
        self.idle_action = self._init_cold(cold, idle_action)  # cold: a ColdStore (lstm_stream/tiering.py)
        self.clock = clock  # stamps last_seen; the daemon sets one whose times its step log records
        self._dtype = np.dtype(model.dtype)
        self._I = model.input_size
        self._generation = 0  # +1 whenever a stream is added or removed (see generation)
        self._store = StateStore(max_streams=max_streams, initial_capacity=initial_capacity,
                                 on_grow=self._grow)
        self._backend = make_backend(backend, model, self._store.capacity, threads=threads)
        self._threads = threads  # for a backend rebuilt by replace_model(reset=True) with other sizes
        self._receipts = Receipts(self._store.capacity, model.output_size, self._dtype)
        from .kernels.cpu import all_finite
        self._all_finite = all_finite

    def _grow(self, capacity):
        self._backend.grow(capacity)
        self._receipts.grow(capacity)

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) every kernel that stepping, the id tables and snapshots use, now
        rather than on the first call that needs them: seconds on a cold cache (compiled by parallel processes,
        lstm_stream/warm.py), a fraction of a second after. Steps nothing, adds no stream."""
        from . import warm
        warm.warm_up(self.model.dtype, self.model.autoregressive)
        self._backend.warm_up()

    # ---- introspection -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """'cpu' or 'cuda': the backend actually in use."""
        return self._backend.name

    def __len__(self):
        return len(self._store)

    def __contains__(self, stream_id):
        return stream_id in self._store

    def ids(self) -> list:
        """Ids of the streams in memory (len() counts them too; the cold ones: cold.ids())."""
        return self._store.ids()

    def stream_info(self, stream_id) -> dict:
        """{'steps': n, 'last_seen': unix time} of one stream."""
        slot = self._slot(stream_id)
        return {"steps": int(self._store.steps[slot]), "last_seen": float(self._store.last_seen[slot])}

    def stats(self) -> dict:
        """Counts and memory figures of the store."""
        cap = self._store.capacity
        return {"streams": len(self._store), "capacity": cap, "max_streams": self._store.max_streams,
                "backend": self.backend, "state_bytes_per_stream": self.model.state_bytes,
                "bytes_per_slot": self.model.state_bytes + 16,  # + steps (int64) + last_seen (float64)
                "slab_bytes": cap * (self.model.state_bytes + 16),
                "id_lists": {"cached": len(self._store.groups), "hits": self._store.groups.hits},
                "cold": None if self.cold is None else self.cold.stats()}

    # ---- validation ------------------------------------------------------------------------------
    def check_input(self, x, what="x", *, finite=True, writable=True) -> np.ndarray:
        """x as a C-contiguous (T, I) array of the model's dtype, writable (the kernels take one array type)
        unless writable=False; InputError naming the problem otherwise. (finite=False skips the NaN/Inf
        check, for callers whose compiled step does it.)"""
        I = self._I
        if type(x) is np.ndarray and x.dtype is self._dtype and x.flags.c_contiguous:
            arr = x if x.flags.writeable or not writable else x.copy()  # the hot path: dtype and layout right
        else:
            try:
                arr = np.asarray(x)
            except Exception as e:  # ragged nested lists and the like
                raise InputError(f"{what} is not an array of numbers ({e})") from None
            if arr.dtype.kind not in "fiu":
                raise InputError(f"{what} has dtype {arr.dtype}; expected real numbers (float or int)")
            arr = self._cast(arr, what)
            if writable and not arr.flags.writeable:
                arr = arr.copy()
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != I or arr.shape[0] == 0:
            raise InputError(f"{what} has shape {np.shape(x)}; expected ({I},) for one sample or (T, {I}) "
                             "for T >= 1 samples")
        if finite and not self._all_finite(arr):
            raise InputError(f"{what} contains NaN or Inf; expected finite values")
        return arr

    def _cast(self, arr, what) -> np.ndarray:
        """arr as a C-contiguous array of the model's dtype. A float64 beyond float32's range becomes Inf in
        the cast: refused here as out of range (not as NaN/Inf, which the client did not send), with numpy's
        RuntimeWarning silenced (it would go to stderr, around the daemon's log)."""
        if arr.dtype.kind != "f" or arr.dtype.itemsize <= self._dtype.itemsize:
            return np.ascontiguousarray(arr, dtype=self._dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(arr, dtype=self._dtype)
        # numpy, not the compiled all_finite: arrays of any rank here, and no kernel signature after warm-up
        if not np.isfinite(out).all() and (np.isinf(out) & np.isfinite(arr)).any():
            raise InputError(f"{what} has values out of range for {self._dtype} (largest magnitude "
                             f"{float(np.finfo(self._dtype).max):.7g}); expected finite {self._dtype} values")
        return out

    def _ids(self, ids) -> list:
        """Validated, normalised ids (numpy ints become int); StoreFullError if the new ones do not fit."""
        ids = [i if type(i) is str or type(i) is int else check_id(i) for i in ids]
        slots = self._store.lookup(ids)  # one index call for the batch (every id is a plain str or int now)
        new = {ids[k] for k in np.flatnonzero(slots < 0).tolist()}
        for i in new:
            check_id(i)
        self.check_room(len(new))  # cold ones count as new: they come back into memory
        if new and self.cold is not None:
            self._thaw(new)
        return ids

    def _slots_creating(self, ids, now) -> np.ndarray:
        """Slots of ids (checked by _ids), the new ones created together, zeroed, in order of first appearance:
        the slots and state _slot_or_new gives them one by one (tests/core/test_new_streams.py holds the two side
        by side), with one lookup and one add for the batch instead of three lookups and an add per id."""
        slots = self._store.lookup(ids)
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            new = list(dict.fromkeys([ids[k] for k in missing.tolist()]))  # an id twice in ids: created once
            created = self._store.add_many(new, now)
            slot_of = dict(zip(new, created.tolist()))
            slots[missing] = [slot_of[ids[k]] for k in missing.tolist()]
            self._generation += 1
            self.created += len(new)
            self._backend.zero(created)
            self._receipts.clear(created)
        return slots

    def _slot_or_new(self, stream_id, now):
        if stream_id in self._store:
            return self._store.slot(stream_id)
        slot = self._store.add(stream_id, now)
        self._generation += 1
        self.created += 1
        self._backend.zero(slot)
        self._receipts.clear(slot)
        return slot

    # ---- stepping --------------------------------------------------------------------------------
    def step(self, stream_id, x) -> np.ndarray:
        """Advance one stream: x (I,) -> y (O,), or xs (T, I) -> ys (T, O) in order. New ids start at zero."""
        if type(x) is np.ndarray and x.ndim == 1 and x.dtype is self._dtype and len(x) == self._I \
                and x.flags.c_contiguous and x.flags.writeable:
            xs = x[None]  # one sample as a (1, I) row (the usual case; no other check needed)
        else:
            xs = self.check_input(x, finite=False)  # the one-stream kernel checks for NaN/Inf before it steps
        store = self._store
        slot = store.get_slot(stream_id)  # a known stream's slot; else a new id, checked before any change
        if slot is None:  # a bad input is reported before a full store, as on every other path
            if not self._all_finite(xs):
                raise InputError("x contains NaN or Inf; expected finite values")
            stream_id, = self._ids((stream_id,))
            slot = self._slot_or_new(stream_id, self.clock())
        y = self._backend.run_one(slot, xs)
        if y is None:
            raise InputError("x contains NaN or Inf; expected finite values")
        T, steps = len(xs), store.steps
        n = steps.item(slot)
        steps[slot] = n + T if n <= INT64_MAX - T else INT64_MAX  # saturates at 2**63-1 instead of wrapping
        store.last_seen[slot] = self.clock()
        return y if xs is x or np.ndim(x) != 1 else y[0]  # (I,) in, (O,) out

    def step_many(self, ids, X) -> np.ndarray:
        """One sample per id: X (N, I) -> Y (N, O). Ids may repeat: a stream's samples apply in order.
        ids: a list, or any iterable; int ids as a 1-D numpy integer array are looked up in one compiled call."""
        ids = _id_list(ids)
        X = self.check_input(X, "X")
        if X.shape[0] != len(ids):
            raise InputError(f"X has {X.shape[0]} rows but {len(ids)} ids were given; expected one row per id")
        return self._segments(ids, None, X)

    def step_batch(self, ids, xs) -> list:
        """Ragged batch: xs[k] (T_k, I) or (I,) for ids[k]; ids may repeat (applied in list order).
        Returns a list of outputs shaped like each input ((O,) or (T_k, O)). One kernel call in all."""
        ids = ids if isinstance(ids, list) else list(ids)
        if len(ids) != len(xs):
            raise InputError(f"{len(ids)} ids but {len(xs)} inputs; expected one input per id")
        arrs = [self.check_input(x, f"input {k}") for k, x in enumerate(xs)]
        lengths = np.fromiter((a.shape[0] for a in arrs), np.int64, len(arrs))
        Y = self._segments(ids, lengths, np.concatenate(arrs) if len(arrs) > 1 else arrs[0])
        outs, pos = [], 0
        for x, n in zip(xs, lengths.tolist()):
            outs.append(Y[pos] if np.ndim(x) == 1 else Y[pos:pos + n])
            pos += n
        return outs

    def step_segments(self, ids, lengths, X) -> np.ndarray:
        """Ragged batch in one array: segment k is the next lengths[k] rows of X (N, I), for ids[k]; ids may
        repeat (segments apply in order). Returns Y (N, O), row for row. One kernel call."""
        ids = _id_list(ids)
        X = self.check_input(X, "X")
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu" or lengths.shape != (len(ids),) or (len(ids) and lengths.min() < 1):
            raise InputError(f"lengths must be {len(ids)} integers >= 1, one per id; got {lengths!r}")
        if int(lengths.sum()) != X.shape[0]:
            raise InputError(f"lengths add up to {int(lengths.sum())} rows but X has {X.shape[0]}; expected equal")
        return self._segments(ids, lengths.astype(np.int64), X)

    # ---- for a caller that checks requests itself (the daemon's planner, engine/planner.py) ------------
    @property
    def generation(self) -> int:
        """A number that changes whenever a stream is added or removed: slots taken from known_slot(s) stay
        valid for as long as it does not change."""
        return self._generation

    def unknown(self, ids) -> list:
        """The ids (as given) that are not streams in the store yet, or are not plain str/int."""
        if self._store.known_slots(ids) is not None:
            return []
        get = self._store.get_slot
        return [i for i in ids if get(i) is None]

    def known_slot(self, stream_id):
        """The slot (an int) of an existing stream, else None."""
        return self._store.get_slot(stream_id)

    def known_slots(self, ids):
        """The slots (int64 array) of ids if every one is an existing stream, else None."""
        return self._store.known_slots(ids)

    def check_room(self, adding: int, *, pending: int = 0) -> None:
        """StoreFullError unless `adding` new streams fit under max_streams beside `pending` ones that the
        caller will create first."""
        self._store.check_room(adding, pending=pending)

    def counts(self, slots) -> np.ndarray:
        """The step counts (int64) of the streams at `slots` (from known_slots)."""
        return self._store.steps[slots]

    def finite(self, X) -> bool:
        """Whether every value of X (a C-contiguous array of the model's dtype) is finite."""
        return self._all_finite(X)

    def sequence(self, stream_id) -> tuple[int, int]:
        """(step count, seq of its receipt or -1) of a stream; (0, -1) for one not in the store. A cold stream
        is brought back first (StoreFullError, nothing changed, if it does not fit)."""
        slot = self._store.get_slot(stream_id)
        if slot is None:
            if not self.is_cold(stream_id):
                return 0, -1
            slot = self._slot(stream_id)
        return self._store.steps.item(slot), self._receipts.seq.item(slot)

    def receipt(self, stream_id, seq: int, rows: int):
        """The outputs (rows, O) of the stream's last sequenced step if it had `seq` and `rows`, else None."""
        slot = self._store.get_slot(stream_id)
        return None if slot is None else self._receipts.get(slot, seq, rows)

    def remember(self, stream_id, seq: int, Y) -> None:
        """Keep (seq, Y) as the receipt of the stream's step that just ran (see lstm_stream/receipts.py)."""
        self._receipts.put(self._store.slot(stream_id), seq, Y)

    def step_planned(self, ids, lengths, X, slots=None, generation=None) -> np.ndarray:
        """step_segments for a caller that has checked shapes, ids and room (the daemon's planner): X a
        C-contiguous (N, I) array of the model's dtype; lengths an int64 array of counts >= 1 adding up to N,
        or None for one row per id; slots None, or known_slots(ids) taken at `generation` (looked up again
        if streams were added or removed since). NaN/Inf anywhere in X: InputError, nothing changed."""
        if not (X.dtype is self._dtype and X.flags.c_contiguous and X.flags.writeable and X.ndim == 2
                and X.shape[1] == self._I):
            raise InputError(f"X must be a writable C-contiguous (N, {self._I}) {self._dtype} array, got "
                             f"{X.dtype}{X.shape}")
        if not self._all_finite(X):
            raise InputError("X contains NaN or Inf; expected finite values")
        if slots is not None and generation != self._generation:
            slots = None
        return self._segments(ids, lengths, X, slots)

    def _segments(self, ids, lengths, X, slots=None):
        """Validated X; lengths None means one row per id. Creates new streams, runs one kernel call."""
        now = self.clock()
        if slots is None:
            slots = self._store.known_slots(ids)
        if slots is None:  # some are new (or not plain ids)
            ids = self._ids(ids)  # normalises and checks the new ids, raises StoreFullError before any change
            slots = self._slots_creating(ids, now)
        n = len(slots)
        if distinct(slots, self._store.marks):  # distinct streams (the usual case): each segment is one stream's rows
            offsets = np.arange(n + 1, dtype=np.int64) if lengths is None else self._offsets(lengths)
            Y = self._backend.run(slots, offsets, X)
            self._store.account(slots, offsets, now)
            return Y
        # A stream appears more than once: run its rows together, in arrival order, then put them back.
        if lengths is None:
            lengths = np.ones(n, np.int64)
        order = np.argsort(slots, kind="stable")              # segments grouped by stream, order kept
        sorted_slots, lens = slots[order], lengths[order]
        heads = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        starts = self._offsets(lengths)[:-1][order]           # where each (sorted) segment's rows are in X
        dest = self._offsets(lens)[:-1]                       # where they go in the grouped matrix
        perm = np.arange(X.shape[0]) + np.repeat(starts - dest, lens)
        slots, offsets = sorted_slots[heads], self._offsets(np.add.reduceat(lens, heads))
        Y = np.empty((X.shape[0], self.model.output_size), self._dtype)
        Y[perm] = self._backend.run(slots, offsets, X[perm])
        self._store.account(slots, offsets, now)
        return Y

    @staticmethod
    def _offsets(lengths):
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets

    def forecast(self, stream_id, horizon: int) -> np.ndarray:
        """Roll the stream forward `horizon` steps feeding each output back as the next input, starting from
        the output of its current state; returns (horizon, O). The stream's state is not changed."""
        if not self.model.autoregressive:
            raise ModelError(f"forecast needs an autoregressive model (output_size == input_size); this model "
                             f"maps {self.model.input_size} inputs to {self.model.output_size} outputs")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) \
                or not 1 <= horizon <= MAX_FORECAST_HORIZON:
            raise InputError(f"horizon must be an int from 1 to {MAX_FORECAST_HORIZON}, got {horizon!r}")
        return self._backend.forecast(self._slot(stream_id), int(horizon))

    # ---- per-stream state ------------------------------------------------------------------------
    def get_state(self, stream_id) -> StreamState:
        """A copy of one stream's state."""
        slot = self._slot(stream_id)
        h, c = self._backend.read(slot)
        return StreamState(h, c, int(self._store.steps[slot]), float(self._store.last_seen[slot]))

    def set_state(self, stream_id, state) -> None:
        """Overwrite (or create) a stream's state from a StreamState, an (h, c) pair or a {'h', 'c'} map."""
        m = self.model
        h, c, steps = parse_state(state, (m.num_layers, m.state_size), (m.num_layers, m.hidden_size), self._dtype)
        stream_id, = self._ids((stream_id,))
        now = self.clock()
        slot = self._slot_or_new(stream_id, now)
        self._backend.write(slot, h, c)
        self._store.steps[slot] = steps
        self._store.last_seen[slot] = now
        self._receipts.clear(slot)

    def copy(self, src, dst) -> None:
        """Give stream dst (created if new) a copy of src's state and step count."""
        if src not in self._store and not self.is_cold(src):
            self._store.slot(src)  # UnknownStreamError
        src, dst = self._ids((src, dst))  # room for both if they are cold or new, before any change
        s = self._store.slot(src)
        d = self._slot_or_new(dst, self.clock())
        if d != s:
            self._backend.copy_slot(s, d)
            self._store.steps[d] = self._store.steps[s]
            self._receipts.clear(d)

    def reset(self, stream_id) -> None:
        """Zero a stream's state (it stays in the store)."""
        slot = self._slot(stream_id)
        self._backend.zero(slot)
        self._store.steps[slot] = 0
        self._receipts.clear(slot)

    def drop(self, stream_id) -> None:
        """Remove a stream, in memory or cold (its stored versions go too); its memory is reused by the next
        new stream. A cold stream is not brought back to be dropped."""
        if not (self.cold is not None and self._drop_cold(stream_id)):
            self._forget(stream_id)
        self.dropped += 1

    # ---- snapshots -------------------------------------------------------------------------------
    def export_slots(self, slots) -> dict:
        """Copies of every per-stream array at `slots` (an int64 array), by name: h (n, L, P), c (n, L, H),
        steps (n,) int64, last_seen (n,) float64. Snapshots and the cold store save streams through this pair
        only, so a per-stream array added later is saved everywhere by adding it here and in import_slots."""
        h, c = self._backend.gather(slots)
        return {"h": h, "c": c, "steps": self._store.steps[slots], "last_seen": self._store.last_seen[slots],
                **self._receipts.export(slots)}

    def import_slots(self, slots, arrays) -> None:
        """Write export_slots' arrays (already checked) into `slots`. h and c are required; a per-slot array
        that `arrays` lacks (a file written before it existed) keeps the value the slots have (a new
        stream's default), and one this version does not know is ignored."""
        self._backend.scatter(slots, arrays["h"], arrays["c"])
        for name in _STORE_ARRAYS:
            if name in arrays:
                getattr(self._store, name)[slots] = arrays[name]
        self._receipts.load(slots, arrays)
