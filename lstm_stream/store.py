"""Per-stream bookkeeping: which slot a stream owns, free slots, step counts, last-seen times, TTL eviction.

The hidden/cell slabs themselves belong to the backend (host or device memory); this store only decides
which slot a stream owns. A dropped stream's slot goes on a free list and is reused; the slab grows by
doubling, and a stream keeps its slot (and its state) across growth. Every id question goes to the IdIndex
of the id's kind (lstm_stream/ids/).
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import njit

from . import jitcache  # noqa: F401  (where the compiled functions are cached; before any @njit)
from .errors import InputError, StoreFullError, UnknownStreamError
from .ids import IdIndex, IntIds, StrIds
from .slabs import Slab
from .state import check_id

_FREE, _INT, _STR = 0, 1, 2  # a slot's kind of id (StateStore._kind)
_PLAIN_ID_TYPES = frozenset((str, int))


class StateStore:
    """Slots with a free list, per-slot step counts and last-seen times, growth and eviction; id -> slot through
    one IdIndex per kind of id (ints: IntIds, strs: StrIds; read-only outside).
    on_grow(capacity) is called after the slabs grow."""

    def __init__(self, *, max_streams=None, initial_capacity=64, on_grow=None):
        if max_streams is not None and max_streams < 1:
            raise InputError(f"max_streams must be >= 1 or None, got {max_streams}")
        self.max_streams = max_streams
        self._free: list = []           # free slots below the high-water mark, reused LIFO
        self._high = 0                  # slots ever handed out (the high-water mark)
        self._on_grow = on_grow         # callback(new_capacity) that grows the backend's slabs
        cap = max(1, initial_capacity if max_streams is None else min(initial_capacity, max_streams))
        # per-slot arrays, each grown in place (slabs.py): a step count, a last-seen time, the slot's kind of
        # id (_FREE, _INT or _STR) and distinct()'s scratch mark (all zero between calls)
        self._slabs = [Slab(cap, (), dt) for dt in (np.int64, np.float64, np.int8, np.uint8)]
        self.steps, self.last_seen, self._kind, self.marks = (slab.array for slab in self._slabs)
        self.ints = IntIds(cap, _return_freed_memory)
        self.strs = StrIds(cap, _return_freed_memory)
        self._by_kind: tuple[IdIndex | None, ...] = (None, self.ints, self.strs)  # the index of a slot's kind

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self):
        return self._high - len(self._free)

    def __contains__(self, stream_id):
        return self.get_slot(_plain(stream_id)) is not None

    @property
    def high(self) -> int:
        """Slots ever handed out (the high-water mark): every slot in use is below it."""
        return self._high

    @property
    def capacity(self) -> int:
        """Slots the slabs hold now (grows by doubling)."""
        return self.steps.shape[0]

    @property
    def groups(self):
        """The cache of whole lists of str ids (its length and hits are in Streams.stats)."""
        return self.strs.groups

    @property
    def id_nbytes(self) -> int:
        """Bytes of the id bookkeeping: both indexes and the per-slot kind."""
        return self.ints.nbytes + self.strs.nbytes + self._kind.nbytes

    def ids(self) -> list:
        """Ids of all streams, in slot order."""
        return self.ids_and_slots()[0]

    def ids_and_slots(self):
        """(ids in slot order, their slots as an int64 array)."""
        slots = self.slots()
        return self._ids_of(slots), slots

    def slots(self) -> np.ndarray:
        """The slots of all streams, in order, as an int64 array."""
        return np.flatnonzero(self._kind[:self._high]).astype(np.int64)

    def ids_of(self, slots) -> list:
        """The ids of `slots` (an int64 array of slots that hold streams), as a list."""
        return self._ids_of(slots)

    def items(self):
        """(id, slot) pairs of all streams, in slot order."""
        ids, slots = self.ids_and_slots()
        return list(zip(ids, slots.tolist()))

    def slot(self, stream_id) -> int:
        """Slot of an existing stream; UnknownStreamError if there is none."""
        slot = self.get_slot(_plain(stream_id))
        if slot is None:
            raise UnknownStreamError(f"unknown stream {stream_id!r}")
        return slot

    def get_slot(self, stream_id):
        """Slot of a known stream given as a plain str or int, else None (1.0 and True, which hash like 1,
        never match)."""
        t = type(stream_id)
        if t is str:
            return self.strs.get(stream_id)
        if t is int:
            return self.ints.get(stream_id)
        return None

    def lookup(self, ids):
        """Slots of ids as an int64 array, -1 for unknown ones; None instead if any id is not a plain str or
        int."""
        found = self._find(ids)
        return None if found is None else found[0]

    def known_slots(self, ids):
        """Slots of ids as an int64 array if every one is a known plain str or int id, else None (the batch
        hot path: ids of one kind in one call to their index; int ids may come as a 1-D numpy array)."""
        found = self._find(ids)
        return None if found is None or found[1] else found[0]

    def _find(self, ids):
        """(slots, how many unknown) of a list of ids, or None if one is not a plain str or int: the index of
        the first id's kind answers when all are of that kind, else each id is looked up alone."""
        if type(ids) is np.ndarray:
            found = self.ints.find_many(ids)
        elif not len(ids):
            return np.zeros(0, np.int64), 0
        else:
            t = type(ids[0])
            # (a request's list from protocol's idlists.IdList carries its ids joined, which find_many needs)
            found = self.strs.find_many(ids, getattr(ids, "joined", None)) if t is str else \
                self.ints.find_many(ids) if t is int else None
        if found is not None:
            return found
        if not set(map(type, ids)) <= _PLAIN_ID_TYPES:  # mixed kinds, or not ids at all
            return None
        get = self.get_slot
        slots = np.fromiter((-1 if s is None else s for s in map(get, ids)), np.int64, len(ids))
        return slots, int((slots < 0).sum())

    def _ids_of(self, slots) -> list:
        ids, kinds = np.empty(len(slots), object), self._kind[slots]
        for kind in (_INT, _STR):
            mine = np.flatnonzero(kinds == kind)
            if len(mine):
                ids[mine] = self._by_kind[kind].ids_of(slots[mine])
        return ids.tolist()

    def idle(self, now: float, ttl: float) -> list:
        """Ids of streams not seen for more than ttl seconds."""
        n = self._high
        return self._ids_of(np.flatnonzero((self.last_seen[:n] < now - ttl) & (self._kind[:n] != _FREE)))

    # ---- changes ---------------------------------------------------------------------------------
    def check_room(self, adding: int, *, pending: int = 0) -> None:
        """StoreFullError unless `adding` new streams fit under max_streams beside `pending` ones that the
        caller will create first (the one store-full rule: the planner, Streams and restores use it)."""
        limit, used = self.max_streams, len(self) + pending
        if limit is not None and used + adding > limit:
            raise StoreFullError(f"the store is full: {used} of max_streams={limit} streams in use or being "
                                 f"created, this request adds {adding}; drop streams or raise max_streams "
                                 "(--max-streams)")

    def add(self, stream_id, now: float) -> int:
        """Slot for a new stream (zero state is the caller's job); grows the slabs if needed."""
        stream_id = check_id(stream_id)
        if stream_id in self:
            raise InputError(f"stream {stream_id!r} already exists")
        self.check_room(1)
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._high
            if slot >= self.capacity:
                self._grow(slot + 1)
            self._high += 1
        kind = _STR if type(stream_id) is str else _INT
        self._by_kind[kind].add(stream_id, slot)
        self._kind[slot] = kind
        self.steps[slot] = 0
        self.last_seen[slot] = now
        return slot

    def add_many(self, ids, now: float) -> np.ndarray:
        """Slots for many new streams at once (a snapshot restore): ids plain str or int (see check_id),
        distinct and not in the store, which the caller has checked. Grows the slabs and the tables once."""
        n = len(ids)
        self.check_room(n)
        slots = np.empty(n, np.int64)
        k = min(len(self._free), n)
        if k:  # reuse free slots first, as add() would
            slots[:k] = self._free[len(self._free) - k:][::-1]
            del self._free[len(self._free) - k:]
        if n > k:
            need = self._high + n - k
            if need > self.capacity:
                self._grow(need)
            slots[k:] = np.arange(self._high, need)
            self._high = need
        is_str = np.fromiter((type(i) is str for i in ids), bool, n)
        for kind, mine in ((_STR, np.flatnonzero(is_str)), (_INT, np.flatnonzero(~is_str))):
            if len(mine):
                self._by_kind[kind].add_many([ids[j] for j in mine.tolist()], slots[mine])
                self._kind[slots[mine]] = kind
        self.steps[slots] = 0
        self.last_seen[slots] = now
        return slots

    def account(self, slots, offsets, now: float) -> None:
        """After a step of distinct slots over rows offsets[k]:offsets[k+1]: add the rows to their step counts,
        set their last-seen time. One compiled call (two fancy-indexed numpy updates cost ~2 µs at 16 slots)."""
        _account(self.steps, self.last_seen, slots, offsets, now)

    def remove(self, stream_id) -> int:
        """Forget a stream; its slot goes on the free list. Returns the slot."""
        slot = self.slot(stream_id)
        self._by_kind[self._kind[slot]].remove(slot)
        self._kind[slot] = _FREE
        self._free.append(slot)
        return slot

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        if self.max_streams is not None:
            cap = max(need, min(cap, self.max_streams))
        self.steps, self.last_seen, self._kind, self.marks = (slab.grow(cap) for slab in self._slabs)
        self.ints.grow(cap)
        self.strs.grow(cap)
        if self._on_grow is not None:
            self._on_grow(cap)
        _return_freed_memory()


@njit(cache=True, nogil=True)
def _account(steps, last_seen, slots, offsets, now):
    top = 9223372036854775807  # 2**63 - 1: a step count saturates there instead of wrapping to -2**63
    for k in range(slots.shape[0]):
        n = offsets[k + 1] - offsets[k]
        steps[slots[k]] = min(steps[slots[k]], top - n) + n
        last_seen[slots[k]] = now


@njit(cache=True, nogil=True)
def _increasing(slots):
    """How many of slots (int64) lead in strictly increasing order."""
    k = 1
    while k < slots.shape[0] and slots[k] > slots[k - 1]:
        k += 1
    return min(k, slots.shape[0])


def distinct(slots, marks=None) -> bool:
    """True when no value appears twice in slots (int64): at once when they increase (streams created together
    and stepped in that order); else with marks (a StateStore's: one byte per slot, all zero) by marking each
    slot once, in one compiled pass (a turn's 800 slots in any order: ~1 µs, against ~11 µs for the sort);
    else, or for a slot outside marks, by numpy sorting a copy (a compiled np.sort would cost seconds of cold
    start)."""
    if _increasing(slots) >= slots.shape[0]:
        return True
    if marks is not None:
        seen = _marked_twice(slots, marks)
        if seen >= 0:
            return seen == 0
    s = np.sort(slots)
    return bool((s[1:] != s[:-1]).all())


@njit(cache=True, nogil=True)
def _marked_twice(slots, marks):
    """1 if a value of slots appears twice, 0 if not, -1 if one is not an index of marks; marks (uint8, all
    zero) is all zero again after."""
    n, size = slots.shape[0], marks.shape[0]
    out, k = 0, 0
    while k < n:
        s = slots[k]
        if s < 0 or s >= size:
            out = -1
            break
        if marks[s]:
            out = 1
            break
        marks[s] = 1
        k += 1
    for j in range(k):
        marks[slots[j]] = 0
    return out


_malloc_trim = None


def _return_freed_memory():
    """Hand the arrays a growth just freed back to the OS. glibc keeps freed blocks below its mmap threshold
    (which rises to 32 MB) in the heap, so the replaced per-slot arrays and tables stayed resident: ~40 MB at
    a million streams, measured. Growth is rare (doubling), and malloc_trim takes a few ms. A no-op where
    the C library has no malloc_trim."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # no such symbol (musl, macOS), or no CDLL(None) (Windows)
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _plain(stream_id):
    """stream_id as a plain str or int (numpy ints become int), or None if it is not an id at all."""
    t = type(stream_id)
    if t is str or t is int:
        return stream_id
    try:
        return check_id(stream_id)
    except InputError:
        return None
