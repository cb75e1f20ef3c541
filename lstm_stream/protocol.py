"""The wire protocol shared by engine/ and clients/: msgpack maps over ZeroMQ (spec: docs/protocol.md).

    request  {"v": 1, "id": <int|str|nil>, "op": <str>, ...fields of the op}
    reply    {"v": 1, "id": <echoed>, "ok": true, ...result fields}
             {"v": 1, "id": <echoed>, "ok": false, "error": {"code": <str>, "message": <str>}}
    array    {"dtype": "float32", "shape": [T, I], "data": <bin: little-endian, C order>} or nested lists

A request map is decoded into its typed Request (messages.py: one class per op) and a Reply is encoded from
its typed form; the two messages sent most (`step` and its reply) are packed from templates, byte-equal to
the maps' encoding. Evolution is append-only: new ops and fields only, each field with a default; unknown
fields are skipped.
Decoding is bounded (message size, array rank and element count) and never uses pickle. This module imports
numpy and msgpack only: the client library depends on it and must not load numba.
"""
from __future__ import annotations

import sys
from operator import countOf

import msgpack
import numpy as np

from .messages import (MAX_STREAMS_PAGE, OPS, PROTOCOL_VERSION, REQUEST_FIELDS, REQUESTS, REQUIRED,  # noqa: F401
                       Reply, Request, listified)  # (the tables and message classes are part of this module's API)

MAX_MESSAGE_BYTES = 16 * 2**20  # default bound of one encoded message; the daemon's is --max-message-bytes
MAX_ARRAY_RANK = 4
MAX_REQUEST_ID_LENGTH = 128     # characters of a str request id
MAX_MODEL_NAME_LENGTH = 64      # characters of a request's "model" (a daemon serving several: engine/multimodel.py)
# Bounded decode (docs/protocol.md, "Memory of a request"). The objects a message of n bytes decodes to are at
# most DECODE_FACTOR * n + DECODE_SLACK bytes. Of that, n pays for the bytes that strs and bins hold (an object
# is at most 80 B of header + its wire bytes: 49 B + 1 per char for ASCII, 76 B + 4 per char for UCS4); the
# rest is charged as msgpack completes each container: a list 56 B + 48 B per element (its pointer and at most
# 40 B for a scalar: an int is <= 36 B, a float 24 B, a bin's header 33 B) + 40 B more per str element (a str's
# header is <= 80 B), a map 232 B + 200 B per entry (its slot, its key's header and a scalar value) + 40 B per
# str value. A message charged more is refused (too_large) while it is being decoded, before numpy sees it.
# Before that, the message is walked once without building anything (decoding.Walker): msgpack allocates a list's element
# slots as its header declares them, so headers of elements that never come (a truncated message) would cost
# memory the charge never sees. Messages of at most DECODE_SMALL bytes whose lists have at most SMALL_LIST
# elements are decoded without the walk and the charge (the hot path: no Python call per container); their
# worst case (500 lists nested in one another, each declaring 8 elements: ~110 B per byte) is below the slack.
DECODE_FACTOR = 4
DECODE_SLACK = 64 * 1024
DECODE_SMALL = 512
SMALL_LIST = 8                  # a small message's lists (x of I <= 8 as a list); a longer one: the budgeted path
MAX_MAP_LEN = 64                # keys of one map: a request has ~10 fields, an array map 3
MAX_STR_BYTES = 4096            # one str (ids are <= 256 characters; op and dtype names are short)

# ---- error codes (stable; clients switch on them) ------------------------------------------------
BAD_MESSAGE = "bad_message"        # not msgpack, truncated, trailing bytes, not a map, wrong frame count
BAD_REQUEST = "bad_request"        # a map, but a field is missing or has the wrong type
BAD_VERSION = "bad_version"        # "v" is not a version this daemon speaks
UNKNOWN_OP = "unknown_op"
TOO_LARGE = "too_large"            # the message is larger than the daemon's bound
BAD_INPUT = "bad_input"            # an array or id is invalid: shape, dtype, NaN/Inf, id length or range
UNKNOWN_STREAM = "unknown_stream"
STORE_FULL = "store_full"          # max_streams reached; nothing was applied
UNSUPPORTED = "unsupported"        # the op cannot run here (forecast on a non-autoregressive model, ...)
BUSY = "busy"                      # the engine's queue is full; nothing was applied, resend later
SNAPSHOT_FAILED = "snapshot_failed"
INTERNAL = "internal"              # a bug: the daemon logged it and keeps serving
SEQ_STALE = "seq_stale"            # a step's seq was applied before (and is not the last one): error.seq is now
SEQ_GAP = "seq_gap"                # a step's seq skips steps: error.seq is the stream's number, error.expected
LOG_FAILED = "log_failed"          # the step log cannot be written: nothing was applied, reads still work
FORBIDDEN = "forbidden"            # this client's key may not do this op (CURVE roles): nothing was applied
WRONG_SHARD = "wrong_shard"        # a shard of a cluster does not own a stream of the request: error.version is
                                   # its shard map's version; nothing was applied (docs/cluster.md)
UNKNOWN_MODEL = "unknown_model"    # the request's "model" is not one this daemon serves (or it names none and
                                   # the daemon has no default): error.models lists the names it serves
BAD_MODEL = "bad_model"            # a reload's model file cannot be read, is not a model, or has other sizes
                                   # than the served one (without reset): nothing was changed
ERROR_CODES = (BAD_MESSAGE, BAD_REQUEST, BAD_VERSION, UNKNOWN_OP, TOO_LARGE, BAD_INPUT, UNKNOWN_STREAM,
               STORE_FULL, UNSUPPORTED, BUSY, SNAPSHOT_FAILED, INTERNAL, SEQ_STALE, SEQ_GAP, LOG_FAILED, FORBIDDEN,
               WRONG_SHARD, UNKNOWN_MODEL, BAD_MODEL)

# ---- ops: which may be batched, which may be resent ---------------------------------------------
STEP_OPS = frozenset({"step", "step_many"})
# Safe to resend after a timeout: applying them twice leaves the same state (absent concurrent writers).
IDEMPOTENT_OPS = frozenset({"ping", "info", "streams", "forecast", "get_state", "set_state", "copy", "reset"})

# Wire dtypes: every array travels little-endian; replies use the model's dtype.
WIRE_DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8",
               "<f4": "<f4", "<f8": "<f8", "<i4": "<i4", "<i8": "<i8"}
_DTYPE_NAMES = {np.dtype(n): n for n in ("float32", "float64", "int32", "int64")}
_NATIVE_LE = sys.byteorder == "little"
# wire dtype name -> (little-endian dtype, native dtype, whether they are the same), built once (np.dtype()
# or a dtype comparison per message is not free)
_WIRE = {name: (np.dtype(le), np.dtype(le).newbyteorder("="), np.dtype(le) == np.dtype(le).newbyteorder("="))
         for name, le in WIRE_DTYPES.items()}


class ProtocolError(Exception):
    """A message that cannot be served as sent: carries a stable `code` and, when known, the request id."""

    def __init__(self, code: str, message: str, request_id=None):
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


# ---- arrays ---------------------------------------------------------------------------------------
def wire_dtype_name(dtype):
    """The wire name ("float32", ...) of a numpy dtype in native byte order, or None if the wire has none."""
    return _DTYPE_NAMES.get(np.dtype(dtype))


def array_map(a: np.ndarray) -> dict:
    """A numpy array as the wire's {"dtype", "shape", "data"} map (data little-endian, C order)."""
    name = _DTYPE_NAMES.get(a.dtype) if _NATIVE_LE and type(a) is np.ndarray else None
    if name is not None:  # the usual case: a wire dtype in this (little-endian) host's order
        return {"dtype": name, "shape": list(a.shape), "data": a.tobytes()}  # tobytes is C order
    a = np.asarray(a)
    name = wire_dtype_name(a.dtype) or a.dtype.name
    if not _NATIVE_LE or a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return {"dtype": name, "shape": list(a.shape), "data": a.tobytes()}  # tobytes is C order


def to_array(value, field: str = "array", *, copy: bool = True) -> np.ndarray:
    """A wire array (bin map or nested lists of numbers; a numpy array in-process) as a numpy array, writable
    and owning its data; with copy=False a bin map's array may be a read-only view of the message's bytes.
    ProtocolError if it is not an array."""
    if type(value) is dict:
        return _from_map(value, field, copy)
    if type(value) is np.ndarray:
        return value if not copy or value.flags.writeable else value.copy()
    if isinstance(value, (list, tuple)):
        v, depth = value, 0
        while isinstance(v, (list, tuple)) and v and depth <= MAX_ARRAY_RANK:  # the first element's depth
            v, depth = v[0], depth + 1
        if depth > MAX_ARRAY_RANK:
            raise ProtocolError(BAD_INPUT, f"{field}: nested lists deeper than {MAX_ARRAY_RANK} levels; expected "
                                           f"an array of rank <= {MAX_ARRAY_RANK}")
        bad = _non_number(value, depth) if depth else None
        if bad is not None:  # before numpy, which would make strs into a str array 4 bytes a char (or worse)
            raise ProtocolError(BAD_INPUT, f"{field}: expected (nested) lists of numbers, got {bad}")
        try:
            a = np.array(value)
        except (ValueError, TypeError) as e:
            raise ProtocolError(BAD_INPUT, f"{field}: nested lists are not a rectangular array ({e})") from None
        if a.dtype.kind not in "fiu" or a.ndim > MAX_ARRAY_RANK:
            raise ProtocolError(BAD_INPUT, f"{field}: expected (nested) lists of numbers, got elements of "
                                           f"type {a.dtype} with rank {a.ndim}")
        return a
    raise ProtocolError(BAD_REQUEST, f"{field}: expected an array map {{dtype, shape, data}} or a list of "
                                     f"numbers, got {type(value).__name__}")


def _non_number(rows, depth: int):
    """None if nested lists `rows` hold only rows (lists) down to `depth` and ints and floats there, else what
    was found instead: numpy would read [true, 0.5] as [1.0, 0.5], and the wire has no bool numbers
    (docs/protocol.md, Arrays); a str or a map would become an array of objects or of strs first."""
    if depth == 1:
        n, floats = len(rows), countOf(map(type, rows), float)
        if floats == n or floats + countOf(map(type, rows), int) == n:
            return None
        odd = next((type(v) for v in rows if type(v) is not float and type(v) is not int
                    and not isinstance(v, (np.integer, np.floating))), None)  # (numpy numbers: in-process)
        if odd is None:
            return None
        if odd is bool:
            return "a bool (true and false are not numbers)"
        return f"an element of type {odd.__name__}"
    for r in rows:
        if type(r) is not list and type(r) is not tuple:
            return f"an element of type {type(r).__name__} where a row (a list) was expected"
        bad = _non_number(r, depth - 1)
        if bad is not None:
            return bad
    return None


def _from_map(m: dict, field: str, copy: bool = True) -> np.ndarray:
    if len(m) > 3:  # a key we do not know could change what the bytes mean (an order, a byte order): refuse
        extra = ", ".join(f"{field}.{k}" for k in sorted(map(str, m.keys() - {"dtype", "shape", "data"})))
        raise ProtocolError(BAD_INPUT, f"{extra}: unknown key(s); an array map has exactly dtype, shape and data")
    dtype, shape, data = m.get("dtype"), m.get("shape"), m.get("data")
    wire = _WIRE.get(dtype) if type(dtype) is str else None
    if wire is None:
        raise ProtocolError(BAD_INPUT, f"{field}.dtype is {dtype!r}; expected one of float32, float64, int32, "
                                       "int64 (little-endian)")
    n = _elements(shape)
    if n < 0:
        raise ProtocolError(BAD_INPUT, f"{field}.shape is {shape!r}; expected a list of at most "
                                       f"{MAX_ARRAY_RANK} non-negative ints")
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(BAD_INPUT, f"{field}.data is {type(data).__name__}; expected bin (raw bytes)")
    dt, native, same = wire
    if len(data) != n * dt.itemsize:
        raise ProtocolError(BAD_INPUT, f"{field}.data has {len(data)} bytes; shape {list(shape)} of {dtype} "
                                       f"needs {n * dt.itemsize}")
    a = np.frombuffer(data, dt)  # a read-only view of the message
    if len(shape) != 1:
        a = a.reshape(shape)
    if not same:
        return a.astype(native)  # a big-endian host: a native copy
    return a.copy() if copy else a


def _elements(shape) -> int:
    """The element count of a wire shape (a list of at most MAX_ARRAY_RANK ints >= 0), or -1 if it is not one."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_ARRAY_RANK:
        return -1
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return -1
        n *= d
    return n


def lists_of(a: np.ndarray) -> list:
    """A numpy array as nested lists (the reply form when a request sets "lists": true)."""
    return np.asarray(a).tolist()


# msgpack's int formats -> the encoded size: positive and negative fixint, uint 8-64, int 8-64
INT_SIZES = {**{b: 1 for b in range(0x00, 0x80)}, **{b: 1 for b in range(0xE0, 0x100)},
             0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
_SIGNED_INTS = frozenset((0xD0, 0xD1, 0xD2, 0xD3))


def int_at(data: bytes, at: int, size: int) -> int:
    """The msgpack int at data[at:at + size], whose format byte data[at] has that size (INT_SIZES): what
    msgpack decodes there, read without it (templates.py's request ids and seqs, clients/replies.py's ids)."""
    f = data[at]
    if size == 1:
        return f if f < 0x80 else f - 0x100
    return int.from_bytes(data[at + 1:at + size], "big", signed=f in _SIGNED_INTS)


# ---- encoding and decoding -------------------------------------------------------------------------
def _default(obj):
    if isinstance(obj, np.ndarray):
        return array_map(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} on the wire")


_X_KEY = msgpack.packb("x")                                               # step's array field
_OK_Y_KEYS = msgpack.packb("ok") + msgpack.packb(True) + msgpack.packb("y")  # a step reply's, up to its array


class Codec:
    """Encoder (one reused Packer) and bounded decoder; one per socket owner, not shared between threads."""

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES, model: str | None = None,
                 templates: bool = True):
        self.max_message_bytes = max_message_bytes
        # model: the "model" field of every request encoded (a daemon serving several: engine/multimodel.py)
        self._model = {} if model is None else {"model": model}
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True, default=_default)
        # The two messages sent most, each from a template (byte-equal to the map's encoding, tested):
        # ok(id, {"y": y})      = _ok_head, id, the array head of ("ok": true, "y"), y's bytes
        # request("step", id, {"stream": s, "x": x}) = _step_head, id, _step_mid, s, the array head of "x", x's bytes
        pack = self._packer.pack
        self._ok_head = b"\x84" + pack("v") + pack(PROTOCOL_VERSION) + pack("id")
        self._step_head = (b"\x86" if model is not None else b"\x85") + pack("v") + pack(PROTOCOL_VERSION) + pack("id")
        self._step_mid = pack("op") + pack("step") + (b"" if model is None else pack("model") + pack(model)) + \
            pack("stream")
        self._array_heads: dict = {}  # (prefix, dtype, shape) -> bytes
        self._limits: dict = {}       # message length (<= DECODE_SMALL) -> msgpack's limits for it (decode)
        self._budgeted_limits: dict = {}  # the same for longer messages (_decode_budgeted), at most 256 lengths
        self._walk = _decoding.Walker()   # the walk before a budgeted decode, with one Unpacker kept
        self._id_lists = None             # requests' id lists decoded once (idlists.py), made by decode_request
        self._templates = _templates.Templates() if templates else None  # requests as templates (templates.py)

    def _array_head(self, prefix: bytes, a: np.ndarray):
        """prefix + the packed array map of a up to its data (None if a is not a wire dtype in this host's
        order, or not C-contiguous): the bytes before a.tobytes() in a message that ends with a's map."""
        key = (prefix, a.dtype, a.shape)
        head = self._array_heads.get(key)
        if head is not None:
            return head
        name = _DTYPE_NAMES.get(a.dtype) if _NATIVE_LE and a.flags.c_contiguous else None
        if name is None:
            return None
        head = prefix + self._packer.pack({"dtype": name, "shape": list(a.shape), "data": bytes(a.nbytes)})
        head = head[:len(head) - a.nbytes]
        if len(self._array_heads) >= 256:  # shapes (T, O) vary with T: keep the cache small
            self._array_heads.clear()
        self._array_heads[key] = head
        return head

    def encode(self, msg: dict) -> bytes:
        """One message (numpy arrays in it become array maps) as msgpack bytes."""
        return self._packer.pack(msg)

    def request(self, op: str, request_id, fields: dict) -> bytes:
        """An encoded request."""
        if op == "step" and len(fields) == 2:
            x = fields.get("x")
            if type(x) is np.ndarray and "stream" in fields:
                data = self.step_request(request_id, fields["stream"], x)
                if data is not None:
                    return data
        return self.encode({"v": PROTOCOL_VERSION, "id": request_id, "op": op, **self._model, **fields})

    def step_request(self, request_id, stream, x: np.ndarray) -> bytes | None:
        """request("step", request_id, {"stream": stream, "x": x}) from its template, for an array x of a wire
        dtype (None for any other x: encode it with request())."""
        head = self._array_head(_X_KEY, x)
        if head is None:
            return None
        pack = self._packer.pack
        return self._step_head + pack(request_id) + self._step_mid + pack(stream) + head + x.tobytes()

    def ok(self, request_id, result: dict) -> bytes:
        """An encoded success reply."""
        return self.encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **result})

    def error(self, request_id, code: str, message: str, detail: dict | None = None) -> bytes:
        """An encoded error reply (detail: extra fields of the error map)."""
        return self.encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": False,
                            "error": {"code": code, "message": message, **(detail or {})}})

    def reply(self, reply: Reply) -> bytes:
        """An encoded Reply (its arrays as array maps, or nested lists when it asks for them)."""
        if reply.code is not None:
            return self.error(reply.id, reply.code, reply.message, reply.detail)
        result = reply.result
        if not reply.lists and len(result) == 1:  # a step's reply, {"y": array}: from a template
            y = result.get("y")
            if type(y) is np.ndarray:
                head = self._array_head(_OK_Y_KEYS, y)
                if head is not None:
                    return self._ok_head + self._packer.pack(reply.id) + head + y.tobytes()
        return self.ok(reply.id, listified(result) if reply.lists else result)

    def decode(self, data, *, lane: bool = False) -> dict:
        """msgpack bytes -> map, with size and structure bounds (see DECODE_FACTOR); ProtocolError otherwise.
        lane: a request's list of stream ids that came before is not built again (idlists.py; requests only:
        the map is the same, its `streams` list shared with earlier maps)."""
        n = len(data)
        if n > self.max_message_bytes:
            raise ProtocolError(TOO_LARGE, f"message of {n} bytes is larger than the bound of "
                                           f"{self.max_message_bytes} bytes")
        if n <= DECODE_SMALL:  # the hot path: no walk, no charge; lists of at most SMALL_LIST elements
            limits = self._limits.get(n)  # they depend on the length only: built once per length
            if limits is None:
                limits = self._limits[n] = _decoding.limits(n, SMALL_LIST)
            try:
                msg = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **limits)
            except ValueError as e:
                if "exceeds max_array_len" not in str(e) or _decoding.declared(e) > n:
                    raise _decoding.refusal(e, n) from None
                msg = self._decode_budgeted(data, n, lane)  # a longer list: the path of large messages
            except Exception as e:  # msgpack raises ExtraData, StackError, UnicodeDecodeError...
                raise _decoding.refusal(e, n) from None
        else:
            msg = self._decode_budgeted(data, n, lane)
        if not isinstance(msg, dict):
            raise ProtocolError(BAD_MESSAGE, f"a message must be a msgpack map, got {type(msg).__name__}")
        return msg

    def _limits_of(self, n: int) -> dict:
        """msgpack's limits for a budgeted decode of n bytes (a list is charged 48 B per element: one longer
        than the budget pays for is refused at its header)."""
        limits = self._budgeted_limits.get(n)  # a client's messages of one shape have one length: built once
        if limits is None:
            if len(self._budgeted_limits) >= 256:
                self._budgeted_limits.clear()
            limits = self._budgeted_limits[n] = _decoding.limits(n, _decoding.charge_limit(n) // 48)
        return limits

    def _decode_budgeted(self, data, n: int, lane: bool = False):
        """Walk the message (nothing built), then decode it with every container charged to its budget (with
        lane, first through idlists.IdLists: the map it gives is the one msgpack would build, or None)."""
        limits = self._limits_of(n)
        budget = _decoding.Budget(_decoding.charge_limit(n), DECODE_FACTOR * n + DECODE_SLACK)
        try:
            self._walk(data)
            if lane and n <= _idlists.REUSE_BYTES:
                if self._id_lists is None:
                    self._id_lists = _idlists.IdLists(MAX_MAP_LEN, MAX_STR_BYTES, _decoding.charge_limit(0) // 48)
                msg = self._id_lists(data, limits["max_array_len"], budget)
                if msg is not None:
                    return msg
                budget = _decoding.Budget(_decoding.charge_limit(n), DECODE_FACTOR * n + DECODE_SLACK)  # afresh
            return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, list_hook=budget.list,
                                   object_hook=budget.map, **limits)
        except _decoding.OverBudget as e:
            raise ProtocolError(TOO_LARGE, f"message of {n} bytes would decode to more than {e.args[0]} bytes "
                                           f"of objects ({DECODE_FACTOR}x its size + {DECODE_SLACK}): too many "
                                           "lists, maps or numbers; send arrays in the binary form "
                                           "{dtype, shape, data}") from None
        except Exception as e:  # msgpack raises ValueError, OutOfData, ExtraData, StackError, UnicodeDecodeError...
            raise _decoding.refusal(e, n) from None

    def decode_request(self, data) -> Request:
        """Bytes -> the typed Request (see parse_request); ProtocolError (carrying the id if known). A message
        that is an earlier one's but for its int id, its binary x's bytes (and a seq after x) is made from that
        one's template (templates.py: the same Request as the usual decode's); templates=False turns that off."""
        lane = self._templates
        if lane is not None:
            req = lane(data)
            if req is not None:
                return req
        req = _parsing.parse_request(self.decode(data, lane=True))
        if lane is not None:
            lane.learn(data, req)
        return req

    def template_stats(self) -> dict:
        """The templates decode_request keeps (templates.py): how many, their estimated bytes, and the requests
        made from them."""
        lane = self._templates
        return {"kept": 0, "bytes": 0, "hits": 0} if lane is None else \
            {"kept": len(lane), "bytes": lane.bytes, "hits": lane.hits}

    def id_list_stats(self) -> dict:
        """The id lists decode_request keeps (idlists.py): how many, their estimated bytes, and the requests
        whose list came from them."""
        lane = self._id_lists
        return {"kept": 0, "bytes": 0, "hits": 0} if lane is None else \
            {"kept": len(lane), "bytes": lane.bytes, "hits": lane.hits}

    def decode_reply(self, data) -> dict:
        """Bytes -> reply map with "id" and "ok" checked (arrays still maps: see to_array)."""
        msg = self.decode(data)
        if "ok" not in msg or "id" not in msg:
            raise ProtocolError(BAD_MESSAGE, "a reply must have 'id' and 'ok'")
        return msg


# A decoded map -> its typed Request is parsing.py's (it imports this module's names, so it comes last, as a
# module: `from . import` works while either of the two is still being imported; protocol.parse_request is it).
from . import decoding as _decoding  # noqa: E402  (the bounded decode; it imports this module's names too)
from . import idlists as _idlists  # noqa: E402
from . import templates as _templates  # noqa: E402
from . import parsing as _parsing  # noqa: E402


def __getattr__(name):
    if name == "parse_request":
        return _parsing.parse_request
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
