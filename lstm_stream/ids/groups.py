"""IdGroups: the slots of whole lists of known str ids, keyed by the ids joined with NUL (step_many's id lists).

Why: a gateway sends the same ids in every step_many (the sensors of a site, one tick at a time). Each id
looked up is a hash and a probe of the id table, and in a daemon under load, where the kernel's state traffic
evicts that table between two messages, the probes are cache misses. One joined key is one hash and one
contiguous compare instead (docs/benchmarks.md has the figures).
"""
from __future__ import annotations

import numpy as np


class IdGroups:
    """Slots of whole lists of known str ids, keyed by "\\0".join(ids).

    Correct by construction: a list is cached only when every id in it was known, a new stream never moves an
    existing one, and the owner clears the cache whenever it removes a str id (drop, eviction, restore), so an
    entry never outlives a slot it holds. A list with an id that contains NUL is never cached (its join would
    not be unique). get() hands out a copy: callers may write to it.

    Only lists seen before are cached (a set of key hashes remembers them): ids grouped differently in every
    message then cost the join and a hash per list, and no memory. Bounded: the entries hold at most max_bytes
    (~19 bytes per stream in 100-id lists: a million streams fit in the default), the seen set max_seen
    hashes; either starts again empty when full."""

    __slots__ = ("_bytes", "_map", "_seen", "hits", "max_bytes", "max_seen")

    def __init__(self, max_bytes: int = 32 << 20, max_seen: int = 65_536):
        self.max_bytes, self.max_seen = max_bytes, max_seen
        self.hits = 0  # lists answered from the cache (lifetime)
        self._map: dict = {}
        self._bytes = 0
        self._seen: set = set()

    def __len__(self):
        return len(self._map)

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
        """Forget every entry (the owner removed an id)."""
        if self._map:
            self._map.clear()
            self._bytes = 0
