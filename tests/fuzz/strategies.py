"""Hypothesis strategies for the wire: requests of every op (mostly well formed, each field sometimes wrong),
mutations of encoded messages, arbitrary msgpack, and raw bytes.

    message()          # -> Case(kind, frames): what one fuzzed client sends (usually one frame)
    request_map()      # -> a request map of any op (its fields valid or not), before encoding
    valid_request()    # -> (op, id, fields) the decoder must accept and give back unchanged

The model under fuzz has I = WIDTH inputs, L = LAYERS layers and hidden size HIDDEN (make_model() in
harness.py); requests aim at those sizes most of the time so that they reach the ops, not only the decoder.
Stream ids come from a small pool (so that ops meet streams that exist) plus arbitrary ones; no fuzzed message
may carry the bytes WITNESS_MARK, which the witness streams' ids hold (harness.py drops such a message before
sending it), so the fuzz can never touch a witness.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
from hypothesis import strategies as st

from lstm_stream.messages import OPS

WIDTH, LAYERS, HIDDEN = 4, 2, 8
WITNESS_MARK = b"witness"
INT64 = (-(2**63), 2**63 - 1)
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "vectors.json"


@dataclass(frozen=True)
class Case:
    """One fuzzed send: its kind (good, field, valid, mutated, msgpack, bytes, frames, id list) and its ZeroMQ
    frames."""
    kind: str
    frames: tuple

    @property
    def data(self) -> bytes:
        return self.frames[-1] if self.frames else b""


@functools.cache
def golden_requests() -> list:
    """The encoded requests of tests/golden/vectors.json: seeds for the byte mutations."""
    return [bytes.fromhex(v["request"]) for v in json.loads(GOLDEN.read_text())["vectors"]]


def pool_steps() -> list:
    """Encoded steps that create every stream of POOL (before the fuzz, so that its ops meet streams)."""
    return [encode({"v": 1, "id": k, "op": "step", "stream": sid, "x": [0.25] * WIDTH}) for k, sid in enumerate(POOL)]


# ---- scalars ----------------------------------------------------------------------------------------
POOL = ["a", "b", "pump-7", 0, 1, -1, 7, INT64[1], INT64[0], "é" * 3]
edge_ints = st.sampled_from([0, 1, -1, 2, 2**31, -(2**31) - 1, INT64[1], INT64[0], 2**63, 2**64 - 1, 10**6])
any_int = st.one_of(edge_ints, st.integers(-3, 70), st.integers(INT64[0], 2**64 - 1))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [0.0, -0.0, 0.5, -1.0, 1e300, -1e300, 3.5e38, 1e-45, math.nan, math.inf, -math.inf]))
text = st.text(max_size=12).filter(lambda s: "witness" not in s)
wrong = st.one_of(st.none(), st.booleans(), floats, any_int, text, st.binary(max_size=8),
                  st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(text, any_int, max_size=2))


def stream_ids() -> st.SearchStrategy:
    """Mostly ids of the pool (streams that exist), sometimes any valid one, sometimes an invalid one."""
    valid = st.one_of(st.sampled_from(POOL), text.filter(bool), st.integers(*INT64))
    invalid = st.one_of(st.just(""), st.just("s" * 257), st.sampled_from([2**63, 2**64 - 1]),
                        wrong)
    pool = st.sampled_from(POOL)
    return st.one_of(pool, pool, pool, pool, valid, invalid)


def request_ids() -> st.SearchStrategy:
    """Valid request ids (every msgpack int, a str of <= 128 chars, nil) and invalid ones."""
    return st.one_of(st.none(), st.integers(INT64[0], 2**64 - 1), st.text(max_size=130).filter(
        lambda s: "witness" not in s), st.sampled_from(["é" * 128, "r" * 129, 1.5, True, b"7"]))


# ---- arrays -----------------------------------------------------------------------------------------
DTYPES = ["float32", "float64", "int32", "int64", "<f4", "<f8", "<i4", "<i8"]


@st.composite
def array_values(draw, shape) -> np.ndarray:
    """An array of `shape`: usually ordinary floats, sometimes NaN, Inf, huge or denormal values."""
    n = int(np.prod(shape))
    if draw(st.integers(0, 3)):
        seed = draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).normal(0, 1, n).reshape(shape)
    return np.array(draw(st.lists(floats, min_size=n, max_size=n)), np.float64).reshape(shape)


@st.composite
def wire_array(draw, rows=None, width=WIDTH) -> object:
    """x (or h, c) on the wire: an array map or nested lists, of the expected shape most of the time."""
    if rows is None:
        rows = draw(st.sampled_from([None, 1, 2, 3, 0, 17]))
    shape = (width,) if rows is None else (rows, width)
    if not draw(st.integers(0, 7)):  # an odd shape: another width, rank 0, 3 or 5, an empty dimension
        shape = draw(st.sampled_from([(width + 1,), (1, width - 1), (), (1, 1, width), (1, 1, 1, 1, width),
                                      (0,), (2, 0), (width, 0, 3)]))
    a = draw(array_values(shape))
    form = draw(st.sampled_from(["map"] * 4 + ["lists"] * 2 + ["bad map", "bad lists"]))
    if form == "lists":
        return a.tolist()
    if form == "bad lists":
        return draw(st.sampled_from([[[0.1, 0.2], [0.3]], [0.1, True, 0.3, 0.4], ["a"] * width,
                                     [[[[[0.0]]]]], [[]], [], [None] * width, [[0.5] * width] * 3 + [0.5]]))
    dtype = draw(st.sampled_from(DTYPES))
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as float32 is inf: a case like any other
        data = a.astype(np.dtype(dtype)).tobytes() if "i" not in dtype else \
            np.nan_to_num(a, posinf=0, neginf=0).clip(-1e9, 1e9).astype(np.dtype(dtype)).tobytes()
    m = {"dtype": dtype, "shape": list(shape), "data": data}
    if form == "bad map":
        key = draw(st.sampled_from(["dtype", "shape", "data", "extra", "drop"]))
        if key == "drop":
            del m[draw(st.sampled_from(["dtype", "shape", "data"]))]
        elif key == "extra":
            m["order"] = "F"
        elif key == "data":
            m["data"] = draw(st.sampled_from([data[:-1], data + b"\0", b"", data.hex(), list(data[:4])]))
        elif key == "shape":
            m["shape"] = draw(st.sampled_from([[-1], [2**62, 2**62], [1.0, width], "4", [width] * 5, None,
                                               [True, width], [2**64 - 1]]))
        else:
            m["dtype"] = draw(st.sampled_from(["complex64", ">f4", "float16", "", 4, None, "bool"]))
    return m


# ---- requests -----------------------------------------------------------------------------------
@st.composite
def op_fields(draw, op) -> dict:
    """The fields of `op`, mostly of the right kind and sizes."""
    sid = stream_ids
    if op == "streams":
        return {"offset": draw(st.one_of(st.integers(-2, 12), edge_ints)),
                "limit": draw(st.one_of(st.integers(0, 12), edge_ints))}
    if op == "step":
        f = {"stream": draw(sid()), "x": draw(wire_array())}
        if draw(st.booleans()):
            f["seq"] = draw(st.one_of(st.integers(0, 8), edge_ints))
        return f
    if op == "step_many":
        n = draw(st.integers(1, 5))
        f = {"streams": draw(st.lists(sid(), min_size=n, max_size=n))}
        if draw(st.booleans()):
            f["x"] = draw(wire_array(rows=draw(st.sampled_from([n, n, n + 1, None]))))
        else:
            f["xs"] = draw(st.lists(wire_array(), min_size=n, max_size=n + draw(st.sampled_from([0, 0, 1]))))
        return f
    if op == "forecast":
        return {"stream": draw(sid()), "horizon": draw(st.one_of(st.integers(-1, 6), edge_ints))}
    if op == "set_state":
        rows = draw(st.sampled_from([LAYERS, LAYERS, 1, 3]))
        return {"stream": draw(sid()), "h": draw(wire_array(rows, HIDDEN)), "c": draw(wire_array(rows, HIDDEN)),
                "steps": draw(st.one_of(st.integers(0, 9), edge_ints))}
    if op == "copy":
        return {"src": draw(sid()), "dst": draw(sid())}
    if op in ("get_state", "reset", "drop"):
        return {"stream": draw(sid())}
    return {}


@st.composite
def request_map(draw) -> dict:
    """A request map of any op; now and then a field missing, of the wrong type, an extra key, a wrong v, op
    or lists."""
    op = draw(st.sampled_from(OPS))
    msg = {"v": 1, "id": draw(request_ids()), "op": op, **draw(op_fields(op))}
    if draw(st.booleans()):
        msg["lists"] = draw(st.one_of(st.booleans(), st.booleans(), wrong))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):  # spoil a field (or v, id, op), add one, or drop one
        key = draw(st.sampled_from(sorted(msg)))
        what = draw(st.sampled_from(["wrong", "drop", "extra", "nil"]))
        if what == "wrong":
            msg[key] = draw(wrong)
        elif what == "drop":
            msg.pop(key)
        elif what == "nil":
            msg[key] = None
        else:
            msg[draw(text)] = draw(wrong)
    return msg


@st.composite
def good_request(draw) -> dict:
    """A request the engine serves (finite values, the model's sizes, pool or fresh ids): real work for the
    witnesses' turns to share."""
    op = draw(st.sampled_from(["step"] * 4 + ["step_many"] * 3 + ["set_state", "copy", "reset", "drop",
                                                                  "get_state", "forecast", "streams", "info"]))
    sid = st.one_of(st.sampled_from(POOL), st.integers(0, 50), st.text("abc", min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)

    def x(rows=None):
        a = rng.normal(0, 3, (WIDTH,) if rows is None else (rows, WIDTH))
        return a.tolist() if draw(st.booleans()) else _wire(a.astype(draw(st.sampled_from(["float32", "float64"]))))
    if op == "step":
        f = {"stream": draw(sid), "x": x(draw(st.sampled_from([None, 1, 2, 5])))}
    elif op == "step_many":
        ids = draw(st.lists(sid, min_size=1, max_size=6))
        f = {"streams": ids, **({"x": x(len(ids))} if draw(st.booleans()) else
                                {"xs": [x(draw(st.sampled_from([None, 1, 3]))) for _ in ids]})}
    elif op == "set_state":
        f = {"stream": draw(sid), "h": _wire(rng.normal(0, 1, (LAYERS, HIDDEN)).astype(np.float32)),
             "c": _wire(rng.normal(0, 1, (LAYERS, HIDDEN)).astype(np.float32)), "steps": draw(st.integers(0, 99))}
    elif op == "copy":
        f = {"src": draw(sid), "dst": draw(sid)}
    elif op == "forecast":
        f = {"stream": draw(sid), "horizon": draw(st.integers(1, 5))}
    elif op == "streams":
        f = {"offset": draw(st.integers(0, 5)), "limit": draw(st.integers(0, 5))}
    elif op == "info":
        f = {}
    else:
        f = {"stream": draw(sid)}
    return {"v": 1, "id": draw(st.integers(0, 2**32)), "op": op, **f, **({"lists": True} if draw(st.booleans())
                                                                        else {})}


@st.composite
def valid_request(draw) -> tuple:
    """(op, request id, fields) of a request the decoder accepts: binary arrays of wire dtypes (any values,
    any rank <= 4 shapes), str and int ids. The engine may still refuse it (shapes, NaN): the decoder may not."""
    op = draw(st.sampled_from(OPS))
    rid = draw(st.one_of(st.none(), st.integers(INT64[0], 2**64 - 1), st.text(max_size=128)))
    ids = st.one_of(st.text(min_size=1, max_size=20), st.integers(*INT64))

    def arr():
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
        dtype = draw(st.sampled_from(["float32", "float64", "int32", "int64"]))
        if dtype[0] == "i":
            return np.random.default_rng(draw(st.integers(0, 99))).integers(-9, 9, shape).astype(dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as float32 is inf: a value like any other
            return draw(array_values(shape)).astype(dtype)
    fields = {"streams": lambda: {"offset": draw(st.integers(0, 9)), "limit": draw(st.integers(0, 9))},
              "step": lambda: {"stream": draw(ids), "x": arr(),
                               **({"seq": draw(st.integers(0, 99))} if draw(st.booleans()) else {})},
              "step_many": lambda: {"streams": draw(st.lists(ids, min_size=1, max_size=4)),
                                    **({"x": arr()} if draw(st.booleans()) else {"xs": [arr(), arr()]})},
              "forecast": lambda: {"stream": draw(ids), "horizon": draw(st.integers(1, 9))},
              "set_state": lambda: {"stream": draw(ids), "h": arr(), "c": arr(), "steps": draw(st.integers(0, 9))},
              "copy": lambda: {"src": draw(ids), "dst": draw(ids)}}
    one = {"get_state", "reset", "drop"}
    return op, rid, fields[op]() if op in fields else {"stream": draw(ids)} if op in one else {}


# ---- bytes ------------------------------------------------------------------------------------------
def encode(msg) -> bytes:
    """msgpack bytes of a map whose arrays are already wire maps (bin as bin, str as str)."""
    return msgpack.packb(msg, use_bin_type=True)


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), any_int, floats, text, st.binary(max_size=16)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20)


@st.composite
def arbitrary_msgpack(draw) -> bytes:
    """Any msgpack value, usually a map with string keys (what a request is), sometimes not; some ext types
    and int keys, which the decoder refuses."""
    value = draw(st.one_of(st.dictionaries(st.sampled_from(["v", "id", "op", "stream", "x", "xs", "streams",
                                                            "lists", "seq"]) | text, msgpack_values, max_size=6),
                           msgpack_values))
    if draw(st.integers(0, 9)) == 0:
        value = {draw(st.integers(0, 3)): value} if draw(st.booleans()) else \
            {"v": 1, "op": "step", "x": msgpack.ExtType(draw(st.integers(0, 127)), draw(st.binary(max_size=8)))}
    return msgpack.packb(value, use_bin_type=True)


HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xc6\x7f\xff\xff\xff",
           b"\xdc\xff\xff", b"\xde\x00\x41", b"\xc1", b"\xd4\x05\x00", b"\x9f", b"\x8f"]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """`seed` after 1-3 mutations: bit flips, truncation, a spliced piece, a huge declared length, nesting."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "flip", "byte", "truncate", "splice", "header", "nest", "append",
                                    "repeat"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "byte" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xc0, 0xc1, 0xc4, 0xd9, 0xdc,
                                             0xdd, 0xde, 0xdf, 0xff]))
        elif how == "truncate":
            del data[at:]
        elif how == "splice":
            piece = draw(st.binary(min_size=1, max_size=16))
            data[at:at + draw(st.integers(0, 4))] = piece
        elif how == "header":
            data[at:at] = draw(st.sampled_from(HEADERS))
        elif how == "nest":  # containers in containers; the long ones declare elements that never come
            depth = draw(st.sampled_from([1, 8, 600, 5000]))
            data[at:at] = draw(st.sampled_from([b"\x91", b"\x81\xa1x", b"\x9f", b"\xdc\x01\x00",
                                                b"\xdd\x00\x00\x10\x00"])) * depth
        elif how == "append":
            data += draw(st.binary(max_size=8))
        elif how == "repeat" and data:
            data[at:at] = data[at:at + 16] * draw(st.integers(1, 40))
    return bytes(data)


def clean(data: bytes) -> bool:
    """Whether a fuzzed payload leaves the witness streams alone (it cannot name one)."""
    return WITNESS_MARK not in data


# Lists of stream ids that come again and again, as a gateway's sensors do: long enough for the daemon to keep
# them decoded (lstm_stream/idlists.py), so that the fuzz reaches requests whose list the daemon kept, and
# requests made from templates (lstm_stream/templates.py: the same message but for an int id and x's data).
ID_LISTS = [POOL + [f"lane-{k}" for k in range(10)], [f"gw/{k}" for k in range(40)], list(range(100, 140)),
            POOL + [f"lane-{k}" for k in range(40)]]


@st.composite
def id_list_request(draw) -> bytes:
    """A step_many of one of ID_LISTS, its x of the right rows most of the time; sometimes mutated."""
    ids = draw(st.sampled_from(ID_LISTS))
    data = encode({"v": 1, "id": draw(request_ids()), "op": "step_many", "streams": ids,
                   "x": draw(wire_array(rows=len(ids)))})
    return draw(mutated(data)) if not draw(st.integers(0, 3)) else data


@st.composite
def message(draw) -> Case:
    """One fuzzed send: a request the engine serves, one with a field or two wrong, a mutated message,
    arbitrary msgpack, raw bytes, other framings (an empty delimiter first, as REQ sends; wrong counts), or a
    step_many of an id list that comes again and again (id_list_request)."""
    kind = draw(st.sampled_from(["good"] * 5 + ["field"] * 4 + ["valid"] + ["mutated"] * 3 + ["msgpack"] * 2 +
                                ["bytes", "frames"] + ["id list"] * 2))
    if kind == "id list":
        return Case(kind, (draw(id_list_request()),))
    if kind == "good":
        data = encode(draw(good_request()))
    elif kind == "field":
        data = encode(draw(request_map()))
    elif kind == "valid":
        op, rid, fields = draw(valid_request())
        data = encode({"v": 1, "id": rid, "op": op, **{k: _wire(v) for k, v in fields.items()}})
    elif kind == "mutated":
        seed = draw(st.sampled_from(golden_requests())) if draw(st.booleans()) else encode(draw(request_map()))
        data = draw(mutated(seed))
    elif kind == "msgpack":
        data = draw(arbitrary_msgpack())
    elif kind == "bytes":
        data = draw(st.binary(max_size=64))
    else:
        body = encode(draw(request_map()))
        return Case(kind, draw(st.sampled_from([(b"", body), (b"", b"", body), (body, body), (b"x", body),
                                                (b"", body, b"")])))
    return Case(kind, (data,))


def _wire(v):
    if isinstance(v, np.ndarray):
        return {"dtype": v.dtype.name, "shape": list(v.shape), "data": v.tobytes()}
    if isinstance(v, list):
        return [_wire(a) for a in v]
    return v
