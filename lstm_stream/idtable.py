"""An int64 -> slot hash table in one numpy array, for int stream ids: ~40 bytes a stream where a Python dict
with its int objects costs ~110 (at a million streams that is most of the gap to the state's own bytes).

kv is (capacity, 2) int64, capacity a power of two: row i holds [key, slot], slot -1 when the row is empty.
Open addressing with linear probing from a mixed hash of the key; deletion shifts the rest of the probe run
back (no tombstones), so a lookup stops at the first empty row. The owner keeps the load at most 1/2.
Every function is compiled (Numba, cache=True) and takes the array, so the CPU step kernel can look an id up
in the same call that steps it (jitcache.py keys the compiled code on every source of the package).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import jitcache  # noqa: F401  (where the compiled functions are cached; before any @njit)

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
EMPTY = -1


def new_table(capacity: int) -> np.ndarray:
    """An empty table of `capacity` rows (a power of two)."""
    kv = np.empty((capacity, 2), np.int64)
    kv[:, 1] = EMPTY
    return kv


def table_capacity(n: int) -> int:
    """Rows for up to n keys at load <= 1/2: the power of two >= 2n (at least 16)."""
    cap = 16
    while cap < 2 * n:
        cap *= 2
    return cap


@njit(**_OPTS)
def _home(key, mask):
    """The key's first row: a multiply-xorshift mix, so sequential or strided ids spread evenly."""
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@njit(**_OPTS)
def find(kv, key):
    """The slot of key, or -1."""
    mask = kv.shape[0] - 1
    i = _home(key, mask)
    while kv[i, 1] != EMPTY:
        if kv[i, 0] == key:
            return kv[i, 1]
        i = (i + 1) & mask
    return EMPTY


@njit(**_OPTS)
def find_many(kv, keys, out):
    """out[k] = slot of keys[k], or -1; returns how many were not found."""
    missing = 0
    for k in range(keys.shape[0]):
        out[k] = find(kv, keys[k])
        if out[k] == EMPTY:
            missing += 1
    return missing


@njit(**_OPTS)
def insert(kv, key, slot):
    """Map key to slot (key must not be in the table; the caller keeps the load <= 1/2)."""
    mask = kv.shape[0] - 1
    i = _home(key, mask)
    while kv[i, 1] != EMPTY:
        i = (i + 1) & mask
    kv[i, 0] = key
    kv[i, 1] = slot


@njit(**_OPTS)
def insert_many(kv, keys, slots):
    """insert() for each keys[k] -> slots[k] (none of them in the table; the load stays <= 1/2)."""
    for k in range(keys.shape[0]):
        insert(kv, keys[k], slots[k])


@njit(**_OPTS)
def delete(kv, key):
    """Remove key; returns its slot, or -1 if it was not there. Later rows of the probe run move back into
    the gap when their home row allows it, so no lookup ever stops early."""
    mask = kv.shape[0] - 1
    i = _home(key, mask)
    while kv[i, 1] != EMPTY and kv[i, 0] != key:
        i = (i + 1) & mask
    slot = kv[i, 1]
    if slot == EMPTY:
        return EMPTY
    j = i
    while True:
        kv[i, 1] = EMPTY
        while True:
            j = (j + 1) & mask
            if kv[j, 1] == EMPTY:
                return slot
            h = _home(kv[j, 0], mask)
            # row j may move to the gap at i unless its home lies cyclically in (i, j]
            if (i <= j and (h <= i or h > j)) or (i > j and h <= i and h > j):
                break
        kv[i, 0], kv[i, 1] = kv[j, 0], kv[j, 1]
        i = j


@njit(**_OPTS)
def rehash(old, new):
    """Insert every entry of table `old` into the empty table `new`."""
    for i in range(old.shape[0]):
        if old[i, 1] != EMPTY:
            insert(new, old[i, 0], old[i, 1])


@njit(**_OPTS)
def _increasing(slots):
    """How many of slots (int64) lead in strictly increasing order."""
    k = 1
    while k < slots.shape[0] and slots[k] > slots[k - 1]:
        k += 1
    return min(k, slots.shape[0])


def distinct(slots) -> bool:
    """True when no value appears twice in slots (int64): at once when they increase (streams created
    together and stepped in that order: 0.6 µs for 700), else by numpy sorting a copy (a few µs; a compiled
    np.sort would cost 1.3 s of cold start for a rare case)."""
    n = slots.shape[0]
    if _increasing(slots) >= n:
        return True
    s = np.sort(slots)
    return bool((s[1:] != s[:-1]).all())
