"""A request whose list of stream ids came before, decoded without building that list again (Codec.decode_request).

Why: a gateway sends the same ids in every `step_many` (the sensors of a site, one tick at a time), and msgpack
builds a str object per id each time, then the decode budget's hook looks at every one: for 100 ids of 10
characters, ~5 of the ~9 µs the daemon spends decoding the message (docs/benchmarks.md, "Id lists decoded
once"). Here the request map is read key by key (one Unpacker kept, as decoding.Walker keeps one), `streams`
is skipped (msgpack's skip builds nothing) and its bytes are looked up: a list whose bytes came before is the
same list object again. The daemon never changes a request's list in place (engine/access.py's namespaces
give a request a new one), so sharing it is safe.

Its slow twin is Codec.decode, the map as msgpack builds it: tests/clients/test_idlists.py checks, on
requests and on fuzzed payloads, that the two give equal maps whenever this one answers. Equal by
construction:
- the walk (decoding.Walker) runs first, as on the usual path: a truncated or malformed message is refused
  there, before any container exists;
- the other values are decoded with the usual limits (a list's at most the smallest the usual decode gives
  any message: a longer one is refused at its header here) and the decode budget's hooks (decoding.Budget);
  a list of theirs that holds a str is declined, so every charge but the id list's is a fixed amount and the
  order of the charges cannot change the outcome;
- the id list is decoded (once) with the usual limits, and a list or map inside it declines it as soon as
  msgpack completes one (so the lane never builds more of it than the usual path, which charges each); its
  charge is the budget hook's formula, and the lane answers only when the charge fits in what the budget has
  left after everything else (so the usual path, which charges it earlier, charges the same and accepts too);
- anything else it is not sure of (a key that is not a str, `streams` twice, a list of other things than str
  and int ids, a limit reached, trailing bytes) is declined: None, and the caller decodes the message the
  usual way, which gives the exact refusal.
"""
from __future__ import annotations

from operator import countOf

import msgpack

# An id list of fewer bytes is decoded each time (two or three ids: nothing to save).
MIN_SPAN = 64
REUSE_BYTES = 64 * 1024  # as decoding.Walker: the messages the lane takes, and its Unpacker's buffer


class _Declined(Exception):
    pass


def first_sighting(seen: set, h: int, max_seen: int) -> bool:
    """Whether hash h is new to `seen` (then added; the set starts again empty once it holds max_seen): what
    the id lists and the templates (templates.py) keep is kept at its second sighting, so one-offs cost a hash."""
    if h in seen:
        return False
    if len(seen) >= max_seen:
        seen.clear()
    seen.add(h)
    return True


class IdList(list):
    """A request's list of stream ids as IdLists keeps it (shared by every request whose list has its bytes:
    never changed in place). joined: "\\0".join(ids) for a list of strs (None otherwise), which the str id
    index would otherwise build again to look the list up (ids/strs.py, find_many's key)."""

    __slots__ = ("joined",)


class IdLists:
    """The lane: call(data, max_list, budget) -> the request map, or None (declined: decode it as usual).

    Bounded as IdGroups is: the lists kept take at most max_bytes (bytes, list and str objects, estimated:
    ~9 KB for 100 ids of 10 characters, so 16 MiB keeps ~1,800 such lists, 180,000 streams); a list is kept
    the second time its bytes come (a set of their hashes, at most max_seen, remembers the first), so ids
    grouped differently in every message cost no memory. Either starts again empty when full."""

    __slots__ = ("_lists", "_bytes", "_seen", "_unpacker", "_at", "_budget", "_span_lists", "hits", "max_bytes",
                 "max_seen", "max_map_len", "max_str_len", "other_lists")

    def __init__(self, max_map_len: int, max_str_len: int, other_lists: int, *, max_bytes: int = 16 << 20,
                 max_seen: int = 65_536):
        # The protocol's limits (protocol.py imports this module, not the other way): keys of a map, bytes of a
        # str, and other_lists, the elements of the other lists, at most the smallest max_array_len the usual
        # decode gives any message (a longer list is refused at its header, and the usual path decides).
        self.max_map_len, self.max_str_len, self.other_lists = max_map_len, max_str_len, other_lists
        self.max_bytes, self.max_seen = max_bytes, max_seen
        self.hits = 0  # id lists answered from what was kept (lifetime)
        self._lists: dict = {}  # the list's msgpack bytes -> (the list, its budget charge)
        self._bytes = 0
        self._seen: set = set()
        self._unpacker, self._at = None, 0  # the Unpacker, and its tell() after the last message
        self._budget = None  # the message's decoding.Budget, while it is read
        self._span_lists = 0  # lists completed while an id list is decoded (the id list itself: one)

    def __len__(self):
        return len(self._lists)

    @property
    def bytes(self) -> int:
        """The estimated bytes of the lists kept (at most max_bytes)."""
        return self._bytes

    def __call__(self, data, max_list: int, budget) -> dict | None:
        """data's request map, decoded with max_list as msgpack's max_array_len and its containers charged to
        budget (a decoding.Budget), as Codec._decode_budgeted decodes it after the walk; or None."""
        u = self._unpacker
        if u is None:
            u = self._unpacker = msgpack.Unpacker(
                max_buffer_size=REUSE_BYTES, read_size=REUSE_BYTES, raw=False, strict_map_key=True, use_list=True,
                list_hook=self._list, object_hook=self._map, max_bin_len=REUSE_BYTES, max_str_len=self.max_str_len,
                max_array_len=self.other_lists, max_map_len=self.max_map_len, max_ext_len=0)
            self._at = 0
        self._budget = budget
        try:
            u.feed(data)
            msg = self._read(u, data, max_list)
        except Exception:  # declined, refused or malformed: the usual path decides; the Unpacker may hold a part
            self._unpacker = None
            return None
        except BaseException:
            self._unpacker = None
            raise
        finally:
            self._budget = None
        self._at = u.tell()
        return msg

    def _read(self, u, data, max_list: int) -> dict:
        at = self._at
        msg, charge = {}, -1
        n = u.read_map_header()  # (raises for anything but a map)
        if n > self.max_map_len:
            raise _Declined
        for _ in range(n):
            key = u.unpack()
            if type(key) is not str:  # (msgpack also takes bytes keys: the usual path decides)
                raise _Declined
            if key == "streams":
                if charge >= 0:
                    raise _Declined
                a = u.tell() - at
                u.skip()
                msg[key], charge = self._ids(data[a:u.tell() - at], max_list)
            else:
                msg[key] = u.unpack()
        if u.tell() - at != len(data):  # (the walk refused bytes after the map; a map header over its limit)
            raise _Declined
        self._map(msg)
        if charge > self._budget.left:
            raise _Declined
        return msg

    def _ids(self, span: bytes, max_list: int) -> tuple:
        """(the list span encodes, the budget hook's charge for it), decoded once span has come twice."""
        kept = self._lists.get(span)
        if kept is not None:
            if len(kept[0]) > max_list:
                raise _Declined
            self.hits += 1
            return kept
        self._span_lists = 0
        ids = msgpack.unpackb(span, raw=False, use_list=True, max_array_len=max_list, max_str_len=self.max_str_len,
                              max_bin_len=0, max_map_len=0, max_ext_len=0, list_hook=self._span_list,
                              object_hook=self._span_map)
        if type(ids) is not list:
            raise _Declined
        n = len(ids)
        strs = countOf(map(type, ids), str)
        if strs + countOf(map(type, ids), int) != n:  # (containers, nil, bools, floats, bins)
            raise _Declined
        # decoding.Budget.list's charge: a list whose first element is a str is charged as strs throughout
        charge = 56 + 48 * n + 40 * (n if n and type(ids[0]) is str else strs)
        if len(span) < MIN_SPAN:
            return ids, charge
        ids = IdList(ids)
        ids.joined = "\0".join(ids) if strs == n else None
        kept = ids, charge
        self._keep(span, kept)
        return kept

    def _keep(self, span: bytes, kept: tuple) -> None:
        if first_sighting(self._seen, hash(span), self.max_seen):
            return
        size = 3 * len(span) + 64 * len(kept[0]) + 256  # the bytes key, the join, the list's slots and strs
        if self._bytes + size > self.max_bytes:
            self._lists.clear()
            self._bytes = 0
            if size > self.max_bytes:
                return
        self._lists[span] = kept
        self._bytes += size

    def clear(self) -> None:
        """Forget every list kept."""
        self._lists.clear()
        self._seen.clear()
        self._bytes = 0

    # msgpack's hooks while an id list is decoded: a list or map inside it declines it at once, before more of
    # it is built than the usual path builds (its containers are not charged here; msgpack completes the
    # inner ones first, so a second list is one inside the id list)
    def _span_list(self, v):
        self._span_lists += 1
        if self._span_lists > 1:
            raise _Declined
        return v

    def _span_map(self, v):
        raise _Declined

    # msgpack's hooks while the other values are decoded
    def _list(self, v):
        if len(v) and countOf(map(type, v), str):  # its charge would depend on what is left: decline
            raise _Declined
        return self._budget.list(v)

    def _map(self, v):
        return self._budget.map(v)
