"""Open addressing shared by the int and the str id tables: one row layout, so one insert, delete and rehash.

kv is (rows, w) int64, rows a power of two (at most 2**31), kept at load <= 1/2 by its owner. The last column
of a row is EMPTY (-1) or tag << 32 | slot: tag is 31 bits of the key's hash (tag_of), slot a slot number
below 2**32. The columns before it hold the key when it fits in a row (int ids: w = 2, the key in column 0);
str ids keep theirs in an arena and use w = 1. A row's home is tag & rows - 1, so the row alone says where
it belongs: deleting shifts the rest of the probe run back (no tombstones, a lookup stops at the first empty
row) and growing re-places rows without reading any key. Linear probing from the home.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import jitcache  # noqa: F401  (where the compiled functions are cached; before any @njit)
from ..slabs import small_pages

OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}  # every compiled function of the package
EMPTY = -1
LOW = 0xFFFFFFFF  # a row's slot bits


def new_table(rows: int, width: int) -> np.ndarray:
    """An empty table of `rows` rows (a power of two) of `width` int64 columns."""
    kv = small_pages((rows, width), np.int64)  # (written whole here, on the loop: slabs.small_pages)
    kv[:, -1] = EMPTY
    return kv


def table_capacity(n: int) -> int:
    """Rows for up to n keys at load <= 1/2: the power of two >= 2n (at least 16)."""
    cap = 16
    while cap < 2 * n:
        cap *= 2
    return cap


@njit(inline="always", **OPTS)
def tag_of(h):
    """The tag of a 64-bit hash h (uint64): its 31 high bits after murmur3's finaliser, as int64."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return np.int64(h >> np.uint64(33))


@njit(inline="always", **OPTS)
def home(tag, mask):
    """The first row a key of this tag may occupy."""
    return tag & mask


@njit(**OPTS)
def place(kv, tag, slot):
    """Put tag << 32 | slot in the first empty row from the tag's home; returns that row (for the key)."""
    mask, w = kv.shape[0] - 1, kv.shape[1] - 1
    i = home(tag, mask)
    while kv[i, w] != EMPTY:
        i = (i + 1) & mask
    kv[i, w] = (tag << 32) | slot
    return i


@njit(**OPTS)
def backshift(kv, i):
    """Empty row i, then move later rows of its probe run back into the gap wherever their home allows, so no
    lookup ever stops early (Knuth's algorithm R)."""
    mask, w = kv.shape[0] - 1, kv.shape[1] - 1
    j = i
    while True:
        kv[i, w] = EMPTY
        while True:
            j = (j + 1) & mask
            if kv[j, w] == EMPTY:
                return
            h = home(kv[j, w] >> 32, mask)
            # row j may move to the gap at i unless its home lies cyclically in (i, j]
            if (i <= j and (h <= i or h > j)) or (i > j and h <= i and h > j):
                break
        for c in range(w + 1):
            kv[i, c] = kv[j, c]
        i = j


@njit(**OPTS)
def delete_slot(kv, tag, slot):
    """Remove the row of slot, whose key has this tag; False if there is none."""
    mask, w = kv.shape[0] - 1, kv.shape[1] - 1
    i = home(tag, mask)
    while kv[i, w] != EMPTY:
        if kv[i, w] & LOW == slot:
            backshift(kv, i)
            return True
        i = (i + 1) & mask
    return False


@njit(**OPTS)
def rehash(old, new):
    """Re-place every row of table `old` in the empty table `new` (same width, any power of two rows)."""
    w = old.shape[1] - 1
    for r in range(old.shape[0]):
        row = old[r, w]
        if row != EMPTY:
            i = place(new, row >> 32, row & LOW)
            for c in range(w):
                new[i, c] = old[r, c]
