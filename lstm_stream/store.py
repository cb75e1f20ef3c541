"""Per-stream bookkeeping: stream id -> slot, free slots, step counts, last-seen times, TTL eviction.

The hidden/cell slabs themselves belong to the backend (host or device memory); this store only decides
which slot a stream owns. A dropped stream's slot goes on a free list and is reused; the slab grows by
doubling, and a stream keeps its slot (and its state) across growth.
"""
from __future__ import annotations

import ctypes
from operator import countOf

import numpy as np
from numba import njit

from . import idtable
from .errors import InputError, StoreFullError, UnknownStreamError
from .state import INT64_MAX, INT64_MIN, check_id
from .jitcache import entry_point
from .strtable import StrIds

_PLAIN_ID_TYPES = frozenset((str, int))
_INT, _STR = frozenset((int,)), frozenset((str,))

# known_slots remembers lists of at least this many str ids whole (IdGroups); shorter ones cost no more to look
# up id by id (8 ids: 1.3 µs either way).
GROUP_MIN_IDS = 16


class IdGroups:
    """Slots of whole lists of known str ids, keyed by the ids joined with NUL: the id lists of step_many.

    Why: a gateway sends the same ids in every step_many (the sensors of a site, one tick at a time). Each
    id looked up is a hash and a probe of the store's id table, and in a daemon under load, where the
    kernel's state traffic evicts that table between two messages, the probes are cache misses. One joined
    key is one hash and one contiguous compare instead. 100 ids among 10,000 streams, in-process, against a
    dict of str ids (what the store used before strtable.py): 6.6 -> 1.8 µs in cache, 15.5 -> 4.3 µs after
    8 MB of other traffic; the daemon on 1 thread, 100 streams per message, three A/B runs: 0.89-1.04M ->
    1.08-1.09M samples/s.

    Correct by construction: a list is cached only when every id in it was known, a new stream never moves an
    existing one, and the store clears the cache whenever it removes a str id (drop, eviction, restore), so an
    entry never outlives a slot it holds. A list with an id that contains NUL is never cached (its join would
    not be unique). get() hands out a copy: callers may write to it.

    Only lists seen before are cached (a set of key hashes remembers them): ids grouped differently in every
    message then cost the join and a hash per list (+1.9 µs per 100 ids, on 8.2 µs for their lookups)
    and no memory. Bounded: the entries hold at most max_bytes (~19 bytes per stream in 100-id lists: a
    million streams fit in the default), the seen set max_seen hashes; either starts again empty when full."""

    __slots__ = ("max_bytes", "max_seen", "hits", "_map", "_bytes", "_seen")

    def __init__(self, max_bytes: int = 32 << 20, max_seen: int = 65_536):
        self.max_bytes, self.max_seen = max_bytes, max_seen
        self.hits = 0  # lists answered from the cache (lifetime)
        self._map: dict = {}
        self._bytes = 0
        self._seen: set = set()

    def __len__(self):
        return len(self._map)

    @staticmethod
    def key(ids):
        """The cache key of a list of ids, or None if they are not all str."""
        try:
            return "\0".join(ids)
        except TypeError:
            return None

    def get(self, key):
        """A copy of the cached slots of key, or None."""
        slots = self._map.get(key)
        if slots is None:
            return None
        self.hits += 1
        return slots.copy()

    def put(self, key: str, n: int, slots: np.ndarray) -> None:
        """Offer the slots (int64, n) of the n known ids that make key: kept if key was offered before."""
        h = hash(key)  # cached in the str since get()
        if h not in self._seen:
            if len(self._seen) >= self.max_seen:
                self._seen.clear()
            self._seen.add(h)
            return
        if key.count("\0") != n - 1:  # an id holds a NUL: another list of ids could join to the same key
            return
        size = len(key) + slots.nbytes + 200  # key characters, the slots, and both objects' headers
        if self._bytes + size > self.max_bytes:
            self._map.clear()
            self._bytes = 0
            if size > self.max_bytes:
                return
        self._map[key] = slots.copy()
        self._bytes += size

    def clear(self) -> None:
        """Forget every entry (the store removed a stream)."""
        if self._map:
            self._map.clear()
            self._bytes = 0


class StateStore:
    """id -> slot maps with a free list, per-slot step counts and last-seen times, growth and eviction.

    Str ids live in a StrIds (strtable.py: their bytes in one arena, a hash table of slots), ~45 bytes a
    stream where a dict of str objects cost ~140. Int ids live in an int64 hash table (idtable.py) and a
    slot -> id int64 array, ~40 bytes. The int id arrays are made when the first int id arrives, and each
    table grows with the number of its ids.
    on_grow(capacity) is called after the slabs grow."""

    def __init__(self, *, max_streams=None, initial_capacity=64, on_grow=None):
        if max_streams is not None and max_streams < 1:
            raise InputError(f"max_streams must be >= 1 or None, got {max_streams}")
        self.max_streams = max_streams
        self.groups = IdGroups()        # whole lists of known str ids -> their slots (cleared by remove)
        self._free: list = []           # free slots below the high-water mark, reused LIFO
        self._high = 0                  # slots ever handed out (the high-water mark)
        self._on_grow = on_grow         # callback(new_capacity) that grows the backend's slabs
        cap = max(1, initial_capacity if max_streams is None else min(initial_capacity, max_streams))
        self.steps = np.zeros(cap, np.int64)
        self.last_seen = np.zeros(cap, np.float64)
        self._kind = np.zeros(cap, np.int8)  # per slot: 0 free, 1 int id, 2 str id
        self._int_id = None                  # per slot: its int id (int64), from the first int id on
        self.strs = StrIds(cap, lambda: self._high, _return_freed_memory)  # str id <-> slot (read-only outside)
        self._n_int = 0
        self.int_table = idtable.new_table(16)  # int id -> slot (read-only outside; replaced as it grows)
        self._find = None  # idtable.find's compiled entry point (get_slot)

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self):
        return self._high - len(self._free)

    def __contains__(self, stream_id):
        return self.get_slot(_plain(stream_id)) is not None

    @property
    def capacity(self) -> int:
        """Slots the slabs hold now (grows by doubling)."""
        return self.steps.shape[0]

    def ids(self) -> list:
        """Ids of all streams, in slot order."""
        return self.ids_and_slots()[0]

    def ids_and_slots(self):
        """(ids in slot order, their slots as an int64 array)."""
        slots = np.flatnonzero(self._kind[:self._high])
        kinds, ids = self._kind[slots], np.empty(len(slots), object)
        strs = np.flatnonzero(kinds == 2)
        if len(strs):
            ids[strs] = self.strs.ids_of(slots[strs])
        if self._int_id is not None:
            ints = kinds == 1
            ids[ints] = self._int_id[slots[ints]].astype(object)  # Python ints
        return ids.tolist(), slots.astype(np.int64)

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
        if t is int and INT64_MIN <= stream_id <= INT64_MAX:
            slot = (self._find or self._find_entry())(self.int_table, stream_id)
            return None if slot < 0 else slot
        return None

    def _find_entry(self):
        self._find = entry_point(idtable.find, (self.int_table, 0))
        return self._find

    def lookup(self, ids):
        """Slots of ids as an int64 array, -1 for unknown ones; None instead if any id is not a plain str or
        int (the batch hot path: a C-level pass for str ids, one compiled call for int ids)."""
        n = len(ids)
        types = _INT if _all_ints(ids) else set(map(type, ids))
        if types <= _INT:
            keys = _int64s(ids)
            if keys is None:  # beyond int64: not ids of ours, let the per-id path say so
                return self._lookup_each(ids)
            out = np.empty(n, np.int64)
            idtable.find_many(self.int_table, keys, out)
            return out
        if types <= _STR:
            return self.strs.find_list(ids)[0]
        if types <= _PLAIN_ID_TYPES:
            return self._lookup_each(ids)
        return None

    def known_slots(self, ids):
        """Slots of ids as an int64 array if every one is a known plain str or int id, else None (the batch
        hot path: a C-level pass for str ids, one compiled call for int ids)."""
        n = len(ids)
        if type(ids) is np.ndarray:  # int ids as a numpy array: one compiled lookup, no per-id Python
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or \
                    (ids.dtype.kind == "u" and n and ids.max() > INT64_MAX):
                return None
            out = np.empty(n, np.int64)
            return None if idtable.find_many(self.int_table, ids.astype(np.int64, copy=False), out) else out
        if n and type(ids[0]) is str:  # str ids (the usual case): no type scan
            if n < GROUP_MIN_IDS:
                found = self.strs.find_list(ids)  # None unless all are str
                if found is not None:
                    return None if found[1] else found[0]
            else:
                key = IdGroups.key(ids)  # None unless all are str
                if key is not None:
                    slots = self.groups.get(key)
                    if slots is not None:
                        return slots
                    slots, missing = self.strs.find_list(ids, key)
                    if missing:
                        return None
                    self.groups.put(key, n, slots)
                    return slots
        types = _INT if _all_ints(ids) else set(map(type, ids))
        if types <= _INT:
            keys = _int64s(ids)
            out = np.empty(n, np.int64)
            return None if keys is None or idtable.find_many(self.int_table, keys, out) else out
        if types <= _STR:  # the pass above met an unknown one
            return None
        slots = self.lookup(ids)
        return None if slots is None or (n and slots.min() < 0) else slots

    def _lookup_each(self, ids):
        get = self.get_slot
        return np.fromiter((-1 if s is None else s for s in map(get, ids)), np.int64, len(ids))

    def items(self):
        """(id, slot) pairs of all streams, in slot order."""
        ids, slots = self.ids_and_slots()
        return list(zip(ids, slots.tolist()))

    # ---- changes ---------------------------------------------------------------------------------
    def reserve(self, new_ids) -> None:
        """Check that the unknown ids among new_ids fit under max_streams; raise StoreFullError otherwise."""
        if self.max_streams is None or not new_ids:
            return
        n_new = sum(1 for i in set(new_ids) if i not in self)
        if len(self) + n_new > self.max_streams:
            raise StoreFullError(f"the store is full: {len(self)} of max_streams={self.max_streams} "
                                 f"streams in use, {n_new} new stream(s) asked for; drop streams or raise "
                                 "max_streams")

    def add(self, stream_id, now: float) -> int:
        """Slot for a new stream (zero state is the caller's job); grows the slabs if needed."""
        stream_id = check_id(stream_id)
        if stream_id in self:
            raise InputError(f"stream {stream_id!r} already exists")
        self.reserve([stream_id])
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._high
            if slot >= self.capacity:
                self._grow(slot + 1)
            self._high += 1
        if type(stream_id) is str:
            self.strs.add(stream_id, slot)
            self._kind[slot] = 2
        else:
            if self._int_id is None:
                self._int_id = np.zeros(self.capacity, np.int64)
            self._grow_table(self._n_int + 1)
            idtable.insert(self.int_table, stream_id, slot)
            self._n_int += 1
            self._int_id[slot] = stream_id
            self._kind[slot] = 1
        self.steps[slot] = 0
        self.last_seen[slot] = now
        return slot

    def add_many(self, ids, now: float) -> np.ndarray:
        """Slots for many new streams at once (a snapshot restore): ids plain str or int (see check_id),
        distinct and not in the store, which the caller has checked. Grows the slabs and the table once."""
        n = len(ids)
        if self.max_streams is not None and len(self) + n > self.max_streams:
            raise StoreFullError(f"the store is full: {len(self)} of max_streams={self.max_streams} streams in "
                                 f"use, {n} new stream(s) asked for")
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
        strs = np.flatnonzero(is_str)
        if len(strs):
            self.strs.add_many([ids[j] for j in strs.tolist()], slots[strs])
            self._kind[slots[strs]] = 2
        ints = np.flatnonzero(~is_str)
        if len(ints):
            if self._int_id is None:
                self._int_id = np.zeros(self.capacity, np.int64)
            keys = np.array([ids[j] for j in ints.tolist()], np.int64)
            self._grow_table(self._n_int + len(ints))
            idtable.insert_many(self.int_table, keys, slots[ints])
            self._n_int += len(ints)
            self._int_id[slots[ints]] = keys
            self._kind[slots[ints]] = 1
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
        if self._kind[slot] == 2:
            self.groups.clear()  # a cached list holding this id would keep its slot, soon another stream's
            self.strs.remove(slot)
        else:
            idtable.delete(self.int_table, self._int_id[slot])
            self._n_int -= 1
        self._kind[slot] = 0
        self._free.append(slot)
        return slot

    def idle(self, now: float, ttl: float) -> list:
        """Ids of streams not seen for more than ttl seconds."""
        n = self._high
        stale = np.flatnonzero((self.last_seen[:n] < now - ttl) & (self._kind[:n] != 0))
        if not len(stale):
            return []
        ids = np.empty(len(stale), object)
        strs = self._kind[stale] == 2
        if strs.any():
            ids[strs] = self.strs.ids_of(stale[strs])
        if not strs.all():
            ids[~strs] = self._int_id[stale[~strs]].astype(object)
        return ids.tolist()

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        if self.max_streams is not None:
            cap = max(need, min(cap, self.max_streams))
        self.steps = _resized(self.steps, cap)
        self.last_seen = _resized(self.last_seen, cap)
        self._kind = _resized(self._kind, cap)
        if self._int_id is not None:
            self._int_id = _resized(self._int_id, cap)
        self.strs.grow(cap)
        if self._on_grow is not None:
            self._on_grow(cap)
        _return_freed_memory()

    def _grow_table(self, n_keys: int) -> None:
        """Make int_table large enough for n_keys at load <= 1/2 (doubling, so growth stays rare)."""
        rows = self.int_table.shape[0]
        if 2 * n_keys <= rows:
            return
        while 2 * n_keys > rows:
            rows *= 2
        table = idtable.new_table(rows)
        idtable.rehash(self.int_table, table)
        self.int_table = table
        _return_freed_memory()


@njit(cache=True, nogil=True)
def _account(steps, last_seen, slots, offsets, now):
    top = 9223372036854775807  # 2**63 - 1: a step count saturates there instead of wrapping to -2**63
    for k in range(slots.shape[0]):
        n = offsets[k + 1] - offsets[k]
        steps[slots[k]] = min(steps[slots[k]], top - n) + n
        last_seen[slots[k]] = now


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


def _all_ints(ids) -> bool:
    """Whether every item of a non-empty list is a plain int (not a bool): one C-level pass counting the items
    whose type is int, half the time of collecting the set of types (4,096 ids: 50 against 110 µs)."""
    return bool(ids) and type(ids[0]) is int and countOf(map(type, ids), int) == len(ids)


def _int64s(ids):
    """A list of Python ints as an int64 array, or None if one is outside int64."""
    try:
        return np.array(ids, np.int64) if len(ids) else np.zeros(0, np.int64)
    except OverflowError:
        return None


def _plain(stream_id):
    """stream_id as a plain str or int (numpy ints become int), or None if it is not an id at all."""
    t = type(stream_id)
    if t is str or t is int:
        return stream_id
    try:
        return check_id(stream_id)
    except InputError:
        return None


def _resized(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + a.shape[1:], a.dtype)
    out[: a.shape[0]] = a
    return out
