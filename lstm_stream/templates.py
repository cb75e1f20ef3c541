"""Requests decoded from a template (Codec.decode_request): a message that differs from one decoded before only in
its request id, in the bytes of its binary `x` (and in a `step`'s seq written after x) is that request again,
with those replaced.

Why: a client that steps the same streams again and again (a gateway sending its sensors each tick, the Python
client's `step`) sends messages that are byte for byte the same but for the id it counts up and the samples. The
usual decode walks such a message three times in Python (the bounded walk, the map, the request's checks): ~8 µs
for a `step_many` of 100 ids, about a quarter of what the daemon spends on a message outside the kernel
(docs/benchmarks.md, "Requests from templates"). Here it is a slice, a dict lookup and the request's
construction: ~2.5 µs.

How: a template is kept the second time a message with its key comes (a set of key hashes remembers the first:
one-off messages cost no memory). The key is the message with its holes cut out, and where they are: the request
id's bytes (a msgpack int), the payload of x's `data` (a bin) and, in a `step` whose `seq` comes after x (as the
Python client writes it: an exactly-once client counts it up on every step), the seq's int. The holes' places
(from the message's start for the id, from its end for the payload) are learnt from the messages that made
templates (a few layouts, newest first); a message is looked up at each.

Exact by construction: the usual decode is a function of the bytes. A message whose bytes outside the holes equal
a template's, with holes of the same places and sizes, is read by msgpack exactly as the template was up to the
id (same bytes), then an int of the same size (any int is a valid id, and a valid seq: parse_request takes every
int for both; what a seq means is the planner's business), then the same bytes up to the payload (so the payload
is the same bin's, of the same length), then any bytes there (x's data is not looked into by the decode: NaN and
Inf are the planner's business), then the same bytes again (and the seq's int, as the id's). So every bound,
every charge of the decode budget and every check comes out as it did for the template, and the request is the
template's with the id, x (and seq) replaced; x as _from_map makes it (a read-only view of its own copy of the
payload, as the bin's bytes object is there: aligned, where a view into the message would not be, which made the
planner's copy of it slower). tests/clients/test_templates.py checks the two decodes against each other on requests
and mutations.

Only requests `step` and `step_many` with an int id and a binary x as their one array, on a little-endian host
(where _from_map makes no copy), become templates. The fields besides id, x and such a seq (the stream or the id
list, model, lists, a seq written before x) are the template's own objects, shared with every request made from
it; the daemon never changes a request in place (engine/access.py's namespaces give a request new lists), as for
idlists.py's lists.
"""
from __future__ import annotations

import sys

import msgpack
import numpy as np

from .idlists import first_sighting
from .messages import REQUEST_FIELDS
from .protocol import INT_SIZES as _INT_SIZE
from .protocol import int_at as _int_at

_BIN_HEADS = {0xC4: 2, 0xC5: 3, 0xC6: 5}  # bin 8, 16, 32 -> the header's size
MAX_LAYOUTS = 4  # hole places looked at per message (a client's messages have one or two)
# Finding a message's holes walks it (~3 µs: half a one-sample step's decode). Messages that never come again (ids
# that change, a seq written before x) would pay that each time for nothing: after LEARN_FREELY messages
# without a new template, only one in LEARN_EVERY is looked at (a message that does come again is still
# caught, a few sightings later).
LEARN_FREELY = 64
LEARN_EVERY = 16
OPS = ("step", "step_many")


class _Template:
    __slots__ = ("cls", "lists", "model", "values", "xk", "sk", "dtype", "shape")

    def __init__(self, req, xk: int, sk: int, values: list):
        self.cls, self.lists, self.model, self.xk, self.sk = type(req), req.lists, req.model, xk, sk
        x = values[xk]
        self.dtype, self.shape = x.dtype, None if x.ndim == 1 else x.shape
        values[xk] = None  # (not the first message's array)
        self.values = values


class Templates:
    """The lane: call(data) -> the Request, or None (decode it the usual way, then learn(data, request)).

    Bounded as idlists.IdLists is: the templates take at most max_bytes (estimated: the key's bytes and ~300 B
    a template), the set of first sightings at most max_seen hashes; either starts again empty when full."""

    __slots__ = ("_kept", "_layouts", "_seen", "_bytes", "_misses", "hits", "looked", "max_bytes", "max_seen")

    def __init__(self, *, max_bytes: int = 16 << 20, max_seen: int = 65_536):
        self.max_bytes, self.max_seen = max_bytes, max_seen
        self.hits = 0  # requests made from a template (lifetime)
        self._kept: dict = {}  # key -> _Template
        # where the holes were: (the id's offset, the payload's start and end counted from the message's end, the
        # size of the bin header before the payload and its format byte, the seq's offset from the end or 0)
        self._layouts: list = []
        self._seen: set = set()
        self._bytes = 0
        self._misses = 0  # messages learn() took since the last template was made
        self.looked = 0  # messages whose holes were looked for (lifetime)

    def __len__(self):
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """The estimated bytes of the templates kept (at most max_bytes)."""
        return self._bytes

    def __call__(self, data):
        """The request data encodes, made from a template; None if no template has data's key."""
        if not self._kept or type(data) is not bytes:
            return None
        n = len(data)
        for at, start, end, head, fmt, back in self._layouts:
            pay, stop = n - start, n - end
            if pay <= at + 2 or at >= n or data[pay - head] != fmt:  # (not x's bin header there: no template)
                continue
            size = _INT_SIZE.get(data[at])
            if size is None or at + size > pay - 2:
                continue
            q, qsize = n - back, 0
            if back:  # a seq after the payload: a third hole
                qsize = _INT_SIZE.get(data[q]) if stop <= q else None
                if qsize is None or q + qsize > n:
                    continue
            t = self._kept.get(_key(data, at, size, pay, stop, q, qsize))
            if t is None:
                continue
            x = np.frombuffer(data[pay:stop], t.dtype)  # (its own bytes, as the usual decode's bin: aligned)
            if t.shape is not None:
                x = x.reshape(t.shape)
            values = t.values.copy()
            values[t.xk] = x
            if back:
                values[t.sk] = _int_at(data, q, qsize)
            req = t.cls(_int_at(data, at, size), t.lists, *values)
            if t.model is not None:
                req.model = t.model
            self.hits += 1
            return req
        return None

    def learn(self, data, req) -> None:
        """After the usual decode gave `req` for `data`: keep data as a template if it may be one and its key
        came before (else remember the key's hash)."""
        if req.op not in OPS or type(req.id) is not int or type(data) is not bytes or sys.byteorder != "little":
            return
        x = req.x
        if type(x) is not np.ndarray or x.flags.writeable or getattr(req, "xs", None) is not None:
            return  # (a writable x was not a view of a bin: nested lists)
        self._misses += 1
        if self._misses > LEARN_FREELY and self._misses % LEARN_EVERY:
            return
        self.looked += 1
        names = list(REQUEST_FIELDS[req.op])
        values = [getattr(req, name) for name in names]
        xk = names.index("x")
        holes = _holes(data, x.nbytes)
        if holes is None:
            return
        at, size, head, pay, stop, q, qsize = holes
        if at + size > pay - 2:  # (the layouts have the id first; a message with x first is not looked up)
            return
        if _INT_SIZE.get(data[at]) != size or _int_at(data, at, size) != req.id \
                or data[pay:stop] != x.tobytes():  # (what the usual decode made of those bytes: checked)
            return
        if q < stop or type(getattr(req, "seq", None)) is not int or _INT_SIZE.get(data[q]) != qsize \
                or _int_at(data, q, qsize) != req.seq:  # no seq, or not an int after the payload: no third hole
            q = qsize = 0
        key = _key(data, at, size, pay, stop, q, qsize)
        back = key[4]
        if first_sighting(self._seen, hash(key), self.max_seen) or key in self._kept:
            return
        cost = len(key[-1]) + 300
        if self._bytes + cost > self.max_bytes:
            self.clear()
            if cost > self.max_bytes:
                return
        self._kept[key] = _Template(req, xk, names.index("seq") if back else -1, values)
        self._bytes += cost
        self._misses = 0
        layout = key[0], key[2], key[3], head, data[pay - head], back
        if layout in self._layouts:
            self._layouts.remove(layout)
        self._layouts.insert(0, layout)
        del self._layouts[MAX_LAYOUTS:]

    def clear(self) -> None:
        """Forget every template (and the first sightings)."""
        self._kept.clear()
        self._seen.clear()
        self._layouts.clear()
        self._bytes = 0


def _key(data: bytes, at: int, size: int, pay: int, stop: int, q: int, qsize: int) -> tuple:
    """A template's key: where the holes are (the id's offset and size; the payload's start and end and the
    seq's offset, each from the end, 0 for no seq; the seq's size) and the message's bytes without them."""
    n = len(data)
    if qsize:
        return at, size, n - pay, n - stop, n - q, qsize, data[:at] + data[at + size:pay] + data[stop:q] + \
            data[q + qsize:]
    return at, size, n - pay, n - stop, 0, 0, data[:at] + data[at + size:pay] + data[stop:]


def _holes(data: bytes, nbytes: int):
    """(the request id's offset and size, the size of the bin header of x's data, its payload's start and end,
    the offset and size of the value of a top-level "seq" or (0, 0)) in a request map that the usual decode
    took, or None unless each is there exactly once (a top-level "id", a top-level "x" map with one "data", a
    bin of nbytes; at most one "seq")."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1024))
    u.feed(data)
    ident = payload = None
    seq = (0, 0)
    try:
        for _ in range(u.read_map_header()):
            key = u.unpack()
            if key == "id":
                if ident is not None:
                    return None
                at = u.tell()
                u.skip()
                ident = at, u.tell() - at
            elif key == "seq":
                if seq[1]:
                    return None
                at = u.tell()
                u.skip()
                seq = at, u.tell() - at
            elif key == "x":
                if payload is not None:
                    return None
                for _ in range(u.read_map_header()):
                    if u.unpack() == "data":
                        if payload is not None:
                            return None
                        at = u.tell()
                        u.skip()
                        head = _BIN_HEADS.get(data[at])
                        if head is None or u.tell() - at - head != nbytes:
                            return None
                        payload = head, at + head, u.tell()
                    else:
                        u.skip()
                if payload is None:
                    return None
            else:
                u.skip()
    except Exception:  # (not a map of those things: no template)
        return None
    if ident is None or payload is None or u.tell() != len(data):
        return None
    return ident + payload + seq
