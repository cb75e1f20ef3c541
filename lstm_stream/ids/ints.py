"""Int stream ids: an int64 -> slot hash table (the key inline in each row) and a slot -> id array.

40-72 bytes a stream (32-64 of table rows by the table's load, 8 of slot -> id) where a Python dict with its int
objects costs ~110, a large share of a small model's state per stream. kv is a probe.py table of width 2: row
[key, tag << 32 | slot], so a lookup reads one row per probe and never the slot -> id array. The kernels below
take the arrays, so compiled code can look ids up too (jitcache.py keys the cache on every source of the
package).
"""
from __future__ import annotations

from operator import countOf

import numpy as np
from numba import njit

from ..jitcache import entry_point  # (importing jitcache first sets where compiled functions are cached)
from ..slabs import Slab
from ..state import INT64_MAX, INT64_MIN
from . import probe
from .probe import EMPTY, LOW, OPTS, delete_slot, home, place, rehash, table_capacity, tag_of


def new_table(capacity: int) -> np.ndarray:
    """An empty int id table of `capacity` rows (a power of two): (capacity, 2) int64."""
    return probe.new_table(capacity, 2)


@njit(inline="always", **OPTS)
def _tag(key):
    return tag_of(np.uint64(key))


@njit(**OPTS)
def find(kv, key):
    """The slot of key, or -1."""
    mask = kv.shape[0] - 1
    i = home(_tag(key), mask)
    while kv[i, 1] != EMPTY:
        if kv[i, 0] == key:
            return kv[i, 1] & LOW
        i = (i + 1) & mask
    return EMPTY


@njit(**OPTS)
def find_many(kv, keys, out):
    """out[k] = slot of keys[k], or -1; returns how many were not found."""
    missing = 0
    for k in range(keys.shape[0]):
        out[k] = find(kv, keys[k])
        if out[k] == EMPTY:
            missing += 1
    return missing


@njit(**OPTS)
def insert(kv, key, slot):
    """Map key to slot (key must not be in the table; the caller keeps the load <= 1/2)."""
    kv[place(kv, _tag(key), slot), 0] = key


@njit(**OPTS)
def insert_many(kv, keys, slots):
    """insert() for each keys[k] -> slots[k] (none of them in the table; the load stays <= 1/2)."""
    for k in range(keys.shape[0]):
        insert(kv, keys[k], slots[k])


@njit(**OPTS)
def delete(kv, key):
    """Remove key; returns its slot, or -1 if it was not there."""
    slot = find(kv, key)
    if slot != EMPTY:
        delete_slot(kv, _tag(key), slot)
    return slot


class IntIds:
    """int id <-> slot for a StateStore (an IdIndex): the table and the per-slot ids.

    The owner calls grow(capacity) when its slabs grow; released() is called after the table was replaced.
    The per-slot array is made when the first int id arrives: a store of str ids only pays nothing here."""

    def __init__(self, capacity: int, released=lambda: None):
        self._released = released               # called after the table was replaced (to hand memory back)
        self.kv = new_table(16)                 # (rows, 2) int64 (read-only outside; replaced as it grows)
        self.keys = np.zeros(0, np.int64)       # per slot: its int id, from the first int id on (slabs.py)
        self._slab = None                       # keys' Slab once made
        self.capacity = capacity
        self.n = 0
        self._find = None                       # find's compiled entry point (get)
        self._find_many = None                  # find_many's

    def __len__(self):
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the table and the per-slot ids."""
        return self.kv.nbytes + self.keys.nbytes

    def get(self, stream_id: int):
        """The slot of an int id, or None (also for ints beyond int64)."""
        if INT64_MIN <= stream_id <= INT64_MAX:
            s = (self._find or self._entries()[0])(self.kv, stream_id)
            if s >= 0:
                return s
        return None

    def _entries(self):
        """Compile (or load from the cache) the lookups' entry points, once: the tables that replace this one
        later have the same type."""
        self._find = entry_point(find, (self.kv, 0))
        self._find_many = entry_point(find_many, (self.kv, np.zeros(0, np.int64), np.zeros(0, np.int64)))
        return self._find, self._find_many

    def find_many(self, ids):
        """(slots as int64, -1 for unknown ids; how many were unknown) for a list of ints or a 1-D integer
        array, or None if they are not all plain ints within int64."""
        keys = _as_keys(ids)
        if keys is None:
            return None
        out = np.empty(len(keys), np.int64)
        return out, (self._find_many or self._entries()[1])(self.kv, keys, out)

    def ids_of(self, slots) -> list:
        """The int ids of slots (int64 array; each must hold one), as Python ints."""
        return self.keys[slots].tolist()

    def add(self, stream_id: int, slot: int) -> None:
        """Give slot the int id (not in the table)."""
        self._fit(self.n + 1)
        insert(self.kv, stream_id, slot)
        self.keys[slot] = stream_id
        self.n += 1

    def add_many(self, ids, slots: np.ndarray) -> None:
        """Give slots[k] the int id ids[k] (distinct, none in the table)."""
        keys = np.array(ids, np.int64)
        self._fit(self.n + len(keys))
        insert_many(self.kv, keys, slots)
        self.keys[slots] = keys
        self.n += len(keys)

    def remove(self, slot: int) -> None:
        """Forget slot's int id."""
        delete(self.kv, self.keys[slot])
        self.n -= 1

    def grow(self, capacity: int) -> None:
        """Per-slot ids for `capacity` slots (the owner's slabs grew)."""
        self.capacity = capacity
        if self._slab is not None:
            self.keys = self._slab.grow(capacity)

    def _fit(self, n_keys: int) -> None:
        """Room for n_keys: the per-slot ids made, the table doubled to keep the load <= 1/2."""
        if self._slab is None:
            self._slab = Slab(self.capacity, (), np.int64)
            self.keys = self._slab.array
        if 2 * n_keys <= self.kv.shape[0]:
            return
        kv = new_table(table_capacity(n_keys))
        rehash(self.kv, kv)
        self.kv = kv
        self._released()


def _as_keys(ids):
    """ids as an int64 array, or None if they are not all plain ints (or numpy integers) within int64."""
    if type(ids) is np.ndarray:
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or \
                (ids.dtype.kind == "u" and len(ids) and ids.max() > INT64_MAX):
            return None
        keys = np.ascontiguousarray(ids, np.int64)
        return keys if keys.flags.writeable else keys.copy()  # (the entry point takes exactly this type)
    if not ids:
        return np.zeros(0, np.int64)
    # one C-level pass counting the items whose type is int (bool is not): half the time of a set of types
    if type(ids[0]) is not int or countOf(map(type, ids), int) != len(ids):
        return None
    try:
        return np.array(ids, np.int64)
    except OverflowError:  # beyond int64: not ids of ours
        return None
