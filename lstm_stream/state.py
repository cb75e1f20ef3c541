"""Per-stream bookkeeping: stream id -> slot, free slots, step counts, last-seen times, TTL eviction.

The hidden/cell slabs themselves belong to the backend (host or device memory); this store only decides
which slot a stream owns. A dropped stream's slot goes on a free list and is reused; the slab grows by
doubling, and a stream keeps its slot (and its state) across growth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, StoreFullError, UnknownStreamError

MAX_ID_LENGTH = 256  # characters of a str id; longer ids are refused (protects memory and logs)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_PLAIN_ID_TYPES = frozenset((str, int))


@dataclass(frozen=True)
class StreamState:
    """A copy of one stream's state: h (L, P), c (L, H), steps taken, last-seen unix time."""

    h: np.ndarray
    c: np.ndarray
    steps: int = 0
    last_seen: float = 0.0


def check_id(stream_id):
    """Return the id normalised (numpy ints -> int) if valid (str of 1-256 chars, or an int64); else raise."""
    if isinstance(stream_id, str):
        if not 0 < len(stream_id) <= MAX_ID_LENGTH:
            raise InputError(f"stream id must be a non-empty str of at most {MAX_ID_LENGTH} characters, "
                             f"got one of length {len(stream_id)}")
        return stream_id
    if isinstance(stream_id, (int, np.integer)) and not isinstance(stream_id, (bool, np.bool_)):
        value = int(stream_id)
        if not INT64_MIN <= value <= INT64_MAX:
            raise InputError(f"int stream id {value} is outside the int64 range")
        return value
    raise InputError(f"stream id must be a str or an int, got {type(stream_id).__name__}")


class StateStore:
    """id -> slot map with a free list, per-slot step counts and last-seen times, growth and eviction."""

    def __init__(self, *, max_streams=None, initial_capacity=64, on_grow=None):
        if max_streams is not None and max_streams < 1:
            raise InputError(f"max_streams must be >= 1 or None, got {max_streams}")
        self.max_streams = max_streams
        self._slots: dict = {}          # id -> slot
        self._ids: list = []            # slot -> id (None when free)
        self._free: list = []           # free slots below the high-water mark, reused LIFO
        self._on_grow = on_grow         # callback(new_capacity) that grows the backend's slabs
        cap = max(1, initial_capacity if max_streams is None else min(initial_capacity, max_streams))
        self.steps = np.zeros(cap, np.int64)
        self.last_seen = np.zeros(cap, np.float64)

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self):
        return len(self._slots)

    def __contains__(self, stream_id):
        t = type(stream_id)
        if t is str or t is int:
            return stream_id in self._slots
        try:  # numpy ints count as their int; 1.0 and True are not ids (though they hash like 1)
            return check_id(stream_id) in self._slots
        except InputError:
            return False

    @property
    def capacity(self) -> int:
        """Slots the slabs hold now (grows by doubling)."""
        return self.steps.shape[0]

    def ids(self) -> list:
        """Ids of all streams, in slot order."""
        return [i for i in self._ids if i is not None]

    def slot(self, stream_id) -> int:
        """Slot of an existing stream; UnknownStreamError if there is none."""
        try:
            return self._slots[stream_id]
        except (KeyError, TypeError):
            raise UnknownStreamError(f"unknown stream {stream_id!r}") from None

    @property
    def slots_by_id(self) -> dict:
        """The id -> slot dict itself (for read-only lookups on hot paths; never replaced, only mutated)."""
        return self._slots

    def get_slot(self, stream_id):
        """Slot of a known stream given as a plain str or int, else None (the hot path's lookup; 1.0 and True,
        which hash like 1, never match)."""
        t = type(stream_id)
        return self._slots.get(stream_id) if t is str or t is int else None

    def lookup(self, ids):
        """Slots of ids, None for unknown ones; None instead of a list if any id is not a plain str or int
        (the batch hot path: two C-level passes instead of a Python call per id)."""
        if not _PLAIN_ID_TYPES.issuperset(map(type, ids)):
            return None
        return list(map(self._slots.get, ids))

    def items(self):
        """(id, slot) pairs of all streams."""
        return self._slots.items()

    # ---- changes ---------------------------------------------------------------------------------
    def reserve(self, new_ids) -> None:
        """Check that the unknown ids among new_ids fit under max_streams; raise StoreFullError otherwise."""
        if self.max_streams is None or not new_ids:
            return
        n_new = sum(1 for i in set(new_ids) if i not in self._slots)
        if len(self._slots) + n_new > self.max_streams:
            raise StoreFullError(f"the store is full: {len(self._slots)} of max_streams={self.max_streams} "
                                 f"streams in use, {n_new} new stream(s) asked for; drop streams or raise "
                                 "max_streams")

    def add(self, stream_id, now: float) -> int:
        """Slot for a new stream (zero state is the caller's job); grows the slabs if needed."""
        check_id(stream_id)
        self.reserve([stream_id])
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = stream_id
        else:
            slot = len(self._ids)
            if slot >= self.capacity:
                self._grow(slot + 1)
            self._ids.append(stream_id)
        self._slots[stream_id] = slot
        self.steps[slot] = 0
        self.last_seen[slot] = now
        return slot

    def remove(self, stream_id) -> int:
        """Forget a stream; its slot goes on the free list. Returns the slot."""
        slot = self.slot(stream_id)
        del self._slots[stream_id]
        self._ids[slot] = None
        self._free.append(slot)
        return slot

    def idle(self, now: float, ttl: float) -> list:
        """Ids of streams not seen for more than ttl seconds."""
        n = len(self._ids)
        stale = np.flatnonzero(self.last_seen[:n] < now - ttl)
        return [self._ids[s] for s in stale if self._ids[s] is not None]

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        if self.max_streams is not None:
            cap = max(need, min(cap, self.max_streams))
        self.steps = _resized(self.steps, cap)
        self.last_seen = _resized(self.last_seen, cap)
        if self._on_grow is not None:
            self._on_grow(cap)


def _resized(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + a.shape[1:], a.dtype)
    out[: a.shape[0]] = a
    return out
