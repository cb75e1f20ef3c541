"""Str stream ids without a Python object per id: their UTF-8 bytes in one arena, a hash table of slots.

Why: a str id kept as a dict key costs ~140 bytes (the dict entry, the str object, the slot as an int object,
the slot -> id array), a large share of a small model's state per stream. Here an id costs its bytes in the
arena (which doubles, in place, so up to twice that), 12 bytes of per-slot offset and length, and 16-32 bytes of table.

Layout. arena (uint8) holds the ids' bytes back to back; soff[slot] / slen[slot] locate a slot's id (slen -1:
no str id in that slot). kv is a probe.py table of width 1, row tag << 32 | slot: most non-matching rows are
passed over on their tag without reading the arena. A dropped id's bytes stay in the arena as garbage until
compaction.

Lookups from Python pass the ids' bytes: one id as a bytes object, a list of ids as one buffer (joined with
NUL when that is unambiguous, else with their end offsets), through the compiled functions' entry points (no
per-call type resolution). Such a call still costs several times a dict lookup from Python, so ids found lately
are also kept in a bounded dict (HOT_MAX): a stream stepped one sample at a time, in-process or by the daemon,
finds its id there. Lists of GROUP_MIN_IDS ids or more go through IdGroups (groups.py) first.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..jitcache import entry_point  # (importing jitcache first sets where compiled functions are cached)
from ..slabs import Slab
from .groups import IdGroups
from .probe import EMPTY, LOW, OPTS, delete_slot, home, new_table, place, rehash, table_capacity, tag_of

# get() keeps up to this many recently found ids in a dict: a stream stepped one sample at a time looks its id
# up each time, and a dict lookup is several times cheaper than a compiled call from Python. ~8 MB at most for
# ids of 14 characters (emptied when full).
HOT_MAX = 65_536
# find_many remembers lists of at least this many ids whole (IdGroups); shorter ones cost no more to look up
# id by id, and are first looked for among the ids found lately.
GROUP_MIN_IDS = 16
# Bytes of address space reserved for the arena (slabs.py): it doubles in place up to this (ids of 16 bytes for
# 16M streams at most), and by a copy beyond.
ARENA_RESERVE = 1 << 28


@njit(**OPTS)
def _tag(buf, a, b):
    """The tag of buf[a:b]: 64-bit FNV-1a over the bytes, then probe.tag_of (whose finaliser mixes them)."""
    h = np.uint64(0xCBF29CE484222325)
    for i in range(a, b):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return tag_of(h)


@njit(**OPTS)
def find(kv, arena, soff, slen, buf, a, b):
    """The slot of the id whose bytes are buf[a:b], or -1."""
    mask = kv.shape[0] - 1
    tag = _tag(buf, a, b)
    i = home(tag, mask)
    n = b - a
    while True:
        r = kv[i, 0]
        if r == EMPTY:
            return EMPTY
        if (r >> 32) == tag:
            s = r & LOW
            if slen[s] == n:
                o = soff[s]
                k = 0
                while k < n and arena[o + k] == buf[a + k]:
                    k += 1
                if k == n:
                    return s
        i = (i + 1) & mask


@njit(**OPTS)
def find_joined(kv, arena, soff, slen, buf, out):
    """out[k] = the slot of the k-th id of buf, ids separated by single NUL bytes (none inside an id; out has
    one element per id), or -1; returns how many were not found."""
    missing, k, a, n = 0, 0, 0, len(buf)
    for i in range(n + 1):
        if i == n or buf[i] == 0:
            s = find(kv, arena, soff, slen, buf, a, i)
            out[k] = s
            if s < 0:
                missing += 1
            k += 1
            a = i + 1
    return missing


@njit(**OPTS)
def find_ends(kv, arena, soff, slen, buf, ends, out):
    """out[k] = the slot of the id buf[ends[k-1]:ends[k]] (ends[-1] taken as 0), or -1; returns the misses."""
    missing, a = 0, 0
    for k in range(ends.shape[0]):
        s = find(kv, arena, soff, slen, buf, a, ends[k])
        out[k] = s
        if s < 0:
            missing += 1
        a = ends[k]
    return missing


@njit(**OPTS)
def store_many(kv, arena, soff, slen, used, buf, ends, slots):
    """Copy the ids buf[ends[k-1]:ends[k]] into the arena from `used` on (it has room), give them slots[k],
    and insert them (none of them in the table; the load stays <= 1/2). Returns the new `used`."""
    a = 0
    for k in range(ends.shape[0]):
        n = ends[k] - a
        s = slots[k]
        for j in range(n):
            arena[used + j] = buf[a + j]
        soff[s] = used
        slen[s] = n
        place(kv, _tag(buf, a, ends[k]), s)
        used += n
        a = ends[k]
    return used


@njit(**OPTS)
def delete(kv, arena, soff, slen, slot):
    """Take slot's id out of the table (its bytes stay in the arena) and mark the slot free."""
    o = soff[slot]
    delete_slot(kv, _tag(arena, o, o + slen[slot]), slot)
    slen[slot] = -1


@njit(**OPTS)
def compact(arena, soff, slen, out):
    """Copy the live ids into `out` back to back, in slot order, updating soff; returns the bytes used."""
    used = 0
    for s in range(slen.shape[0]):
        n = slen[s]
        if n >= 0:
            o = soff[s]
            for j in range(n):
                out[used + j] = arena[o + j]
            soff[s] = used
            used += n
    return used


@njit(**OPTS)
def gather(arena, soff, slen, slots, ends):
    """The ids of slots (each holding one) back to back in one uint8 array; ends[k] = where slots[k]'s ends."""
    total = 0
    for k in range(slots.shape[0]):
        total += slen[slots[k]]
        ends[k] = total
    out = np.empty(total, np.uint8)
    a = 0
    for k in range(slots.shape[0]):
        o, n = soff[slots[k]], slen[slots[k]]
        for j in range(n):
            out[a + j] = arena[o + j]
        a += n
    return out


@njit(**OPTS)
def find_bytes(kv, arena, soff, slen, key):
    """find() for one id given as a bytes object."""
    return find(kv, arena, soff, slen, key, 0, len(key))


def _encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")  # lossless for any str, lone surrogates included


def _encode_all(ids):
    """The ids' bytes back to back, and where each ends (int64)."""
    bs = [_encode(s) for s in ids]
    return b"".join(bs), np.cumsum(np.fromiter(map(len, bs), np.int64, len(bs)))


class StrIds:
    """str id <-> slot for a StateStore (an IdIndex): the arena, the per-slot offsets and lengths, the table,
    the ids found lately and the whole-list cache.

    The owner calls grow(capacity) when its slabs grow; released() is called after the table or the arena was
    replaced. The per-slot arrays are made when the first str id arrives: a store of int ids only pays nothing
    here."""

    def __init__(self, capacity: int, released=lambda: None):
        self._released = released               # called after arrays were replaced (to hand memory back)
        self.kv = new_table(16, 1)              # (rows, 1) int64 (read-only outside; replaced as it grows)
        self._arena = Slab(1024, (), np.uint8, reserve=ARENA_RESERVE)  # grown in place (slabs.py)
        self.arena = self._arena.array
        self.used = 0                           # arena bytes written
        self.garbage = 0                        # of which belong to removed ids
        self.capacity = capacity
        self.soff = np.zeros(0, np.int64)       # per slot, from the first str id on (grown in place: slabs.py)
        self.slen = np.full(0, -1, np.int32)
        self._slabs = None                      # (soff's Slab, slen's) once made
        self.n = 0
        self.groups = IdGroups()                # whole lists of known ids -> their slots (cleared by remove)
        self._hot: dict = {}                    # str id -> slot, ids get() found lately (emptied by remove)
        self._get = None                        # find_bytes' compiled entry point
        self._joined = None                     # find_joined's

    def __len__(self):
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the table, the arena and the per-slot offsets and lengths."""
        return self.kv.nbytes + self.arena.nbytes + self.soff.nbytes + self.slen.nbytes

    # ---- lookups ---------------------------------------------------------------------------------
    def get(self, stream_id: str):
        """The slot of a str id, or None."""
        s = self._hot.get(stream_id)
        if s is not None:
            return s
        key = _encode(stream_id)
        fn = self._get or self._entries()[0]
        s = fn(self.kv, self.arena, self.soff, self.slen, key)
        if s < 0:
            return None
        self._remember(((stream_id, s),), 1)
        return s

    def find_many(self, ids, key=None):
        """(slots as int64, -1 for unknown ids; how many were unknown) for a list of str ids, or None if
        they are not all str. key: "\\0".join(ids), when the caller has it already."""
        n = len(ids)
        if n < GROUP_MIN_IDS:  # ids found lately: no compiled call
            try:
                return np.fromiter(map(self._hot.__getitem__, ids), np.int64, n), 0
            except (KeyError, TypeError):  # one is not hot, or not even hashable
                pass
            if n == 0:
                return np.zeros(0, np.int64), 0
        if key is None:
            try:
                key = "\0".join(ids)
            except TypeError:  # not all str
                return None
        if n >= GROUP_MIN_IDS:  # a list seen before: one hash of the joined ids
            slots = self.groups.get(key)
            if slots is not None:
                return slots, 0
        out = np.empty(n, np.int64)
        missing = self._find_joined(ids, key, out)
        if not missing:
            if n >= GROUP_MIN_IDS:
                self.groups.put(key, n, out)
            else:
                self._remember(zip(ids, out.tolist()), n)
        return out, missing

    def _find_joined(self, ids, key, out):
        if key.isascii() and key.count("\0") == len(ids) - 1:  # one bytes object, split in the compiled loop
            fn = self._joined or self._entries()[1]
            return fn(self.kv, self.arena, self.soff, self.slen, key.encode("ascii"), out)
        buf, ends = _encode_all(ids)
        return find_ends(self.kv, self.arena, self.soff, self.slen, buf, ends, out)

    def ids_of(self, slots) -> list:
        """The str ids of slots (int64 array; each must hold one), as a list."""
        ends = np.empty(len(slots), np.int64)
        buf = gather(self.arena, self.soff, self.slen, np.asarray(slots, np.int64), ends).tobytes()
        starts = np.concatenate(([0], ends[:-1])).tolist()
        if buf.isascii():
            text = buf.decode("ascii")
            return [text[a:b] for a, b in zip(starts, ends.tolist())]
        return [buf[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends.tolist())]

    def _remember(self, pairs, n):
        if len(self._hot) + n > HOT_MAX:
            self._hot.clear()
        self._hot.update(pairs)

    def _entries(self):
        """Compile (or load from the cache) the lookups' entry points, once: the arrays that replace these
        later have the same types."""
        arrays = (self.kv, self.arena, self.soff, self.slen)
        self._get = entry_point(find_bytes, arrays + (b"",))
        self._joined = entry_point(find_joined, arrays + (b"", np.empty(0, np.int64)))
        return self._get, self._joined

    # ---- changes ---------------------------------------------------------------------------------
    def add(self, stream_id: str, slot: int) -> None:
        """Give slot the str id (not in the table)."""
        b = _encode(stream_id)
        self.add_many_bytes(b, np.array([len(b)], np.int64), np.array([slot], np.int64))

    def add_many(self, ids: list, slots: np.ndarray) -> None:
        """Give slots[k] the str id ids[k] (distinct, none in the table)."""
        buf, ends = _encode_all(ids)
        self.add_many_bytes(buf, ends, np.asarray(slots, np.int64))

    def add_many_bytes(self, buf: bytes, ends: np.ndarray, slots: np.ndarray) -> None:
        """add_many for ids already encoded: buf holds them back to back, ends[k] where the k-th ends."""
        n = len(slots)
        if len(self.soff) < self.capacity:
            self._resize()
        self._fit_table(self.n + n)
        self._fit_arena(len(buf))
        self.used = store_many(self.kv, self.arena, self.soff, self.slen, self.used, buf, ends, slots)
        self.n += n

    def remove(self, slot: int) -> None:
        """Forget slot's str id (and every cached list: one holding it would keep a slot soon another's)."""
        self._hot.clear()
        self.groups.clear()
        self.garbage += int(self.slen[slot])
        delete(self.kv, self.arena, self.soff, self.slen, slot)
        self.n -= 1

    def grow(self, capacity: int) -> None:
        """Per-slot arrays for `capacity` slots (the owner's slabs grew)."""
        self.capacity = capacity
        if self._slabs is not None:
            self._resize()

    def _resize(self):
        """soff and slen for `capacity` slots: made on the first str id, then grown in place."""
        if self._slabs is None:
            self._slabs = Slab(self.capacity, (), np.int64), Slab(self.capacity, (), np.int32, fill=-1)
        self.soff, self.slen = (slab.grow(self.capacity) for slab in self._slabs)

    def _fit_table(self, n_keys: int) -> None:
        if 2 * n_keys <= self.kv.shape[0]:
            return
        kv = new_table(table_capacity(n_keys), 1)
        rehash(self.kv, kv)
        self.kv = kv
        self._released()

    def _fit_arena(self, extra: int) -> None:
        """Room for `extra` more bytes at the arena's end. While removed ids hold less than a quarter of it, it
        doubles in place (slabs.py: no copy). Else its live ids are compacted, copied back to back into a new
        arena (the same size if that makes room, else doubled until they fit), so it stays at least half used
        by live ids, bar the garbage a doubling in place keeps (under an eighth)."""
        size = self.arena.shape[0]
        if self.used + extra <= size:
            return
        if self.garbage < size // 4:
            while self.used + extra > size:
                size *= 2
            self.arena = self._arena.grow(size)
            return
        live = self.used - self.garbage
        while live + extra > size:
            size *= 2
        arena = Slab(size, (), np.uint8, reserve=ARENA_RESERVE)  # (a Slab reserves at least its rows)
        self.used = compact(self.arena, self.soff, self.slen, arena.array)
        self._arena, self.arena, self.garbage = arena, arena.array, 0
        self._released()
