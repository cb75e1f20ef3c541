"""What every reply to a fuzzed message must be, read from docs/protocol.md and checked on its bytes alone.

    outcome = check_reply(frames, reply_bytes, model=..., max_message_bytes=...)   # "step:ok", "step:bad_input"
    outcome = check_decode(codec, data)                                           # the decoder alone

A Failure says what was wrong. The rules: a reply is a map {v: 1, id, ok}; an error has a code of the spec's
table (docs/protocol.md §5) other than `internal` (a bug, by definition) and a message; the reply's id is the
request's id, or nil when the spec says so (§2.1); the first checks of "Which error wins" hold (framing, the
map, id, v, op); an op gets only the codes its section names; a success carries the op's result fields, its
arrays finite and of the model's sizes.
"""
from __future__ import annotations

import re
from pathlib import Path

import msgpack
import numpy as np

from lstm_stream import protocol as P
from lstm_stream.messages import OPS

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NEVER = {P.INTERNAL}  # documented, but a fuzzed request that gets it found a bug
DECODE_CODES = {P.BAD_MESSAGE, P.TOO_LARGE}  # refused before the map was read: the reply's id is nil
ANY_OP = {P.BAD_REQUEST, P.BUSY}  # any op: a field (or `lists`) of the wrong type; a client over its quota
MUTATES = {P.LOG_FAILED}
OP_CODES = {  # besides ANY_OP; from docs/protocol.md §4 and §5 (bad_input: an invalid id or value)
    "ping": set(), "info": set(), "streams": {P.BAD_INPUT},
    "step": {P.BAD_INPUT, P.TOO_LARGE, P.STORE_FULL, P.SEQ_STALE, P.SEQ_GAP, *MUTATES},
    "step_many": {P.BAD_INPUT, P.TOO_LARGE, P.STORE_FULL, *MUTATES},
    "forecast": {P.BAD_INPUT, P.TOO_LARGE, P.UNSUPPORTED, P.UNKNOWN_STREAM},
    "get_state": {P.BAD_INPUT, P.UNKNOWN_STREAM},
    "set_state": {P.BAD_INPUT, P.STORE_FULL, *MUTATES},
    "copy": {P.BAD_INPUT, P.UNKNOWN_STREAM, P.STORE_FULL, *MUTATES},
    "reset": {P.BAD_INPUT, P.UNKNOWN_STREAM, *MUTATES}, "drop": {P.BAD_INPUT, P.UNKNOWN_STREAM, *MUTATES},
    "snapshot": {P.UNSUPPORTED, P.SNAPSHOT_FAILED},
    "reload": {P.BAD_MODEL, P.UNSUPPORTED, P.SNAPSHOT_FAILED, *MUTATES},
}
RESULT_KEYS = {  # what a success carries (more fields may be added: a subset, except for the empty results)
    "ping": {"time"}, "info": {"protocol", "model", "fingerprint", "counters", "max_message_bytes"},
    "streams": {"streams", "total"}, "step": {"y"}, "forecast": {"y"}, "get_state": {"h", "c", "steps", "last_seen"},
    "set_state": set(), "copy": set(), "reset": set(), "drop": set(),
    "snapshot": {"path", "bytes", "streams", "seconds", "reason", "time"},
    "reload": {"fingerprint", "previous", "streams"},
}


class Failure(AssertionError):
    """A reply (or a decode) that breaks the spec: the message says which rule."""


def documented_codes() -> list:
    """The error codes of docs/protocol.md's table (§5), in its order."""
    section = SPEC.read_text().split("## 5. Error codes", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.M)


DOCUMENTED = frozenset(documented_codes())


def lenient(data: bytes):
    """The request as plain msgpack reads it (any keys, any size), or None if it is not msgpack at all."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None


def _strict(data: bytes) -> bool:
    """Whether msgpack reads `data` with str keys only (then the decoder may refuse it as too_large, not as
    bad_message: §5, bad_message is for what is not msgpack, truncated, trailing bytes, not a map)."""
    try:
        return isinstance(msgpack.unpackb(data, raw=False, strict_map_key=True), dict)
    except Exception:
        return False


def payload_frames(frames) -> tuple:
    """The frames after an empty delimiter, which a REQ socket (or a DEALER copying it) sends first (§1)."""
    return tuple(frames[1:]) if len(frames) == 2 and frames[0] == b"" else tuple(frames)


def valid_id(rid) -> bool:
    return rid is None or type(rid) is int or (type(rid) is str and len(rid) <= P.MAX_REQUEST_ID_LENGTH)


def check_decode(codec: P.Codec, data: bytes) -> str:
    """Decode `data` as the daemon does; the outcome ("op:decoded" or "decode:<code>"), or Failure if the
    decoder raised anything but a ProtocolError with a documented code and a message."""
    try:
        req = codec.decode_request(data)
    except P.ProtocolError as e:
        if e.code not in DOCUMENTED or e.code in NEVER or not (isinstance(e.message, str) and e.message):
            raise Failure(f"decode refused with code {e.code!r}, message {e.message!r}") from None
        return f"decode:{e.code}"
    except Exception as e:
        raise Failure(f"decode raised {type(e).__name__}: {e}") from e
    return f"{req.op}:decoded"


def check_reply(frames, reply: bytes, *, output_size: int, state_shape: tuple, max_message_bytes: int,
                extra_codes=frozenset()) -> str:
    """Check one reply against the request that got it (frames: what the client sent, the payload last);
    returns "op:ok" or "op:<code>" ("-" when no op could be read). extra_codes: codes this target may also
    give (forbidden under access control)."""
    try:
        r = msgpack.unpackb(reply, raw=False)
    except Exception as e:
        raise Failure(f"the reply is not msgpack ({type(e).__name__}: {e}): {reply[:80]!r}") from None
    if not isinstance(r, dict) or r.get("v") != 1 or type(r.get("ok")) is not bool or "id" not in r:
        raise Failure(f"the reply is not a map with v 1, ok and id: {r!r:.200}")
    code = None
    if not r["ok"]:
        err = r.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not err["message"]:
            raise Failure(f"an error reply without a code and a message: {r!r:.200}")
        code = err.get("code")
        if code not in DOCUMENTED or code in NEVER:
            raise Failure(f"error code {code!r} ({err['message']}) is not one a request may get")
    frames = payload_frames(frames)
    data = frames[-1] if frames else b""
    if len(frames) != 1:
        return _expect("-", code, {P.BAD_MESSAGE}, r, None, "a message of another frame count than one")
    if len(data) > max_message_bytes:
        return _expect("-", code, {P.TOO_LARGE}, r, None, "a message over max_message_bytes")
    req = lenient(data)
    if not isinstance(req, dict):
        return _expect("-", code, DECODE_CODES, r, None, "a payload that is not a map")
    if code == P.BAD_MESSAGE and _strict(data):
        raise Failure(f"bad_message for a payload msgpack reads as a map with str keys: {r!r:.300}")
    if code == P.BAD_MESSAGE or (code == P.TOO_LARGE and r["id"] is None):  # a map the bounded decoder refused
        return _expect("-", code, DECODE_CODES, r, None, "a map over the decoder's bounds")
    rid = req.get("id")
    if not valid_id(rid):
        return _expect("-", code, {P.BAD_REQUEST}, r, None, f"an invalid id {rid!r:.40}")
    v, op = req.get("v"), req.get("op")
    if type(v) is not int:
        return _expect("-", code, {P.BAD_REQUEST}, r, rid, f"v {v!r}")
    if v != 1:
        return _expect("-", code, {P.BAD_VERSION}, r, rid, f"v {v!r}")
    if type(op) is not str:
        return _expect("-", code, {P.BAD_REQUEST}, r, rid, f"op {op!r:.40}")
    if op not in OPS:
        return _expect("-", code, {P.UNKNOWN_OP}, r, rid, f"op {op!r:.40}")
    _id_is(r, rid, f"op {op}")
    if code is not None:  # a request naming a model ("model") the target does not serve: unknown_model
        named = {P.UNKNOWN_MODEL} if isinstance(req.get("model"), str) else set()
        return _expect(op, code, ANY_OP | OP_CODES[op] | set(extra_codes) | named, r, rid, f"op {op}")
    _check_result(op, req, r, output_size, state_shape)
    return f"{op}:ok"


def _id_is(r, rid, what):
    """The reply's id is rid, of the same type (1 is not true); nil when rid is nil."""
    if r["id"] != rid or type(r["id"]) is not type(rid):
        raise Failure(f"{what}: the reply's id is {r['id']!r}, expected {rid!r}")


def _expect(op, code, allowed, r, rid, what) -> str:
    """The error code is one of `allowed` and the reply's id is rid (nil when it could not be echoed)."""
    if code not in allowed:
        raise Failure(f"{what}: got {code or 'ok'}, expected one of {sorted(map(str, allowed))}: {r!r:.300}")
    _id_is(r, rid, what)
    return f"{op}:{code}"


def _check_result(op, req, r, O, state_shape):
    result = set(r) - {"v", "id", "ok"}
    if op == "step_many":
        need = {"y"} if req.get("x") is not None else {"ys"}
    else:
        need = RESULT_KEYS[op]
    if not need <= result or (not need and result):
        raise Failure(f"{op} succeeded with fields {sorted(result)}, expected {sorted(need) or 'none'}")
    arrays = {"y": [r.get("y")], "ys": r.get("ys") or [], "h": [r.get("h")], "c": [r.get("c")]}
    for name in need & arrays.keys():
        for a in arrays[name]:
            a = np.asarray(P.to_array(a))
            last = {"h": state_shape[1], "c": state_shape[1]}.get(name, O)
            if a.ndim not in (1, 2) or a.shape[-1] != last or not np.isfinite(a).all():
                raise Failure(f"{op} succeeded with {name} of shape {a.shape}, expected (..., {last}), finite")
    if op == "get_state" and (type(r["steps"]) is not int or r["steps"] < 0):
        raise Failure(f"get_state's steps is {r['steps']!r}")
