"""Stream id -> slot: one IdIndex per kind of id, int (ints.IntIds) and str (strs.StrIds).

Both keep their ids in a compiled open-addressing table of the same layout (probe.py: a row ends in
tag << 32 | slot, so its home is known from the row alone and one insert, backshift delete and rehash serve
both), plus per-slot arrays for slot -> id: an int id sits in its table row, a str id's bytes in one arena.
No Python object per id: ~40-50 bytes a stream at a million where a dict cost 110-140. The StateStore (store.py) owns
the slots and asks the index of an id's kind; the str index also caches ids found lately and whole id lists
(groups.py), as a daemon steps the same ids again and again.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .ints import IntIds
from .strs import StrIds

__all__ = ["IdIndex", "IntIds", "StrIds", "warm_up"]


@runtime_checkable
class IdIndex(Protocol):
    """What the StateStore asks of the id -> slot map of one kind of id (slots are ints below capacity)."""

    capacity: int

    def __len__(self) -> int:
        """How many ids it holds."""

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays."""

    def get(self, stream_id):
        """The slot of an id of this kind, or None."""

    def find_many(self, ids):
        """(slots as int64, -1 for unknown ids; how many were unknown) for a list of ids, or None if they
        are not all of this kind."""

    def ids_of(self, slots) -> list:
        """The ids of slots (int64 array, each holding an id of this kind), as a list."""

    def add(self, stream_id, slot: int) -> None:
        """Give slot the id (not held yet)."""

    def add_many(self, ids, slots: np.ndarray) -> None:
        """Give slots[k] the id ids[k] (distinct, none held yet)."""

    def remove(self, slot: int) -> None:
        """Forget slot's id."""

    def grow(self, capacity: int) -> None:
        """Make room for ids in slots below capacity (the owner's slabs grew)."""


def warm_up() -> None:
    """Compile (or load from Numba's cache) every function both indexes use, on throwaway ones."""
    for index, ids in ((IntIds(64), list(range(-20, 19)) + [2**63 - 1]),
                       (StrIds(64), [f"warm-up-stream-{k:03d}-of-the-id-tables" for k in range(39)] + ["\u00e9"])):
        index.add(ids[0], 0)
        index.add_many(ids[1:], np.arange(1, 40))  # the table grows (rehash); the str arena too (in place)
        index.get(ids[0])
        index.find_many(ids)                       # str: by end offsets (one id is not ASCII)
        index.find_many(ids[:20])                  # str: joined with NUL
        index.ids_of(np.arange(40))
        for slot in range(20):                     # str: a third of the arena garbage, then ids it has no
            index.remove(slot)                     # room for: compacted
        index.add_many(ids[:20], np.arange(20))
        index.remove(0)
