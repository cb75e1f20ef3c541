"""Golden vectors of the wire protocol: request/reply byte pairs that any language can replay (README.md).

    python tests/golden/vectors.py      # rewrite model.npz (if missing) and vectors.json from CASES

The cases run in order against one fresh daemon (DAEMON_ARGS) on model.npz, a fixed seeded model kept in this
folder, so every reply is deterministic once normalise() has blanked what may vary: clocks, the version string,
error messages (for humans; codes are the contract) and the info fields that describe the host or the build.
tests/engine/test_golden.py replays them through engine.wire.WireCore and compares the bytes.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
MODEL, VECTORS = HERE / "model.npz", HERE / "vectors.json"
MAX_STREAMS, MAX_MESSAGE_BYTES = 4, 4096
DAEMON_ARGS = ["--model", "model.npz", "--max-streams", str(MAX_STREAMS), "--max-message-bytes",
               str(MAX_MESSAGE_BYTES)]
# Codes no single request can trigger on a healthy daemon: they depend on its load, disk or bugs.
STATE_DEPENDENT_CODES = {"busy", "snapshot_failed", "internal", "log_failed", "forbidden",  # forbidden: CURVE keys
                         "wrong_shard"}  # wrong_shard: a shard of a cluster (tests/cluster/)
CLOCK_FIELDS = {"time", "uptime", "last_seen"}
INFO_FIELDS = ("protocol", "model", "fingerprint", "autoregressive", "max_streams")  # the rest: host and build


def f32(a, shape=None) -> dict:
    """A float32 array map."""
    a = np.asarray(a, np.float32)
    return {"dtype": "float32", "shape": list(a.shape if shape is None else shape), "data": a.tobytes()}


def req(op, rid, **fields) -> dict:
    return {"v": 1, "id": rid, "op": op, **fields}


X = [0.5, -1.0, 2.0]
STEP = lambda rid, **f: req("step", rid, **{"stream": "pump-7", "x": f32(X), **f})  # noqa: E731
# (name, meaning, request: a map or raw bytes). Order matters: later cases see the streams earlier ones made.
CASES = [
    ("ping", "docs/protocol.md 9: the 16-byte ping", req("ping", 1)),
    ("info", "the model (proj_size 0: no projection) and limits", req("info", 2)),
    ("step binary x", "docs/protocol.md 9: x as a float32 array map; creates pump-7", STEP(2)),
    ("step lists", "x as nested lists of float64, T = 2; the reply as lists of float64 (lists: true)",
     req("step", 3, stream="pump-7", x=[X, [0.0, 0.25, -0.5]], lists=True)),
    ("step int stream id", "an int stream id (a different stream from the str '42')",
     req("step", 4, stream=42, x=f32([X, X]))),
    ("step seq", "exactly-once: seq = the stream's number (0) + T (1); creates seq-1", req("step", 5, stream="seq-1",
                                                                                          x=f32(X), seq=1)),
    ("step seq resend", "the same seq again: the original outputs, duplicate: true",
     req("step", 6, stream="seq-1", x=f32(X), seq=1)),
    ("seq_stale", "an older seq; the error carries seq and expected", req("step", 7, stream="seq-1", x=f32(X), seq=0)),
    ("seq_gap", "a seq beyond number + T", req("step", 8, stream="seq-1", x=f32(X), seq=5)),
    ("step_many x", "one row per stream, x (N, I)", req("step_many", 9, streams=["pump-7", 42], x=f32([X, X]))),
    ("step_many xs", "one array per stream: (I,) and (T_k, I); ys shaped alike",
     req("step_many", 10, streams=["pump-7", 42], xs=[f32(X), f32([X, X])])),
    ("forecast", "horizon 2 from pump-7's state; the state is not changed", req("forecast", 11, stream="pump-7",
                                                                                horizon=2)),
    ("get_state", "h (L, P), c (L, H), steps; last_seen (float64) normalised", req("get_state", 12, stream="pump-7")),
    ("set_state", "creates s with h, c and steps (the store is now full: 4 streams)",
     req("set_state", 13, stream="s", h=f32([[0.1, -0.2, 0.3, -0.4]]), c=f32([[1.0, 2.0, -3.0, 0.5]]), steps=5)),
    ("store_full", "a fifth stream", STEP(14, stream="one-too-many")),
    ("copy", "pump-7 gets s's state and step count", req("copy", 15, src="s", dst="pump-7")),
    ("reset", "s: zero state and step count", req("reset", 16, stream="s")),
    ("streams", "a page of the ids in memory", req("streams", 17, offset=0, limit=10)),
    ("drop", "removes s", req("drop", 18, stream="s")),
    ("unknown_stream", "reading a stream that does not exist", req("get_state", 19, stream="s")),
    ("snapshot without a directory", "unsupported", req("snapshot", 20)),
    # request ids (docs/protocol.md 2.1)
    ("id absent", "the reply's id is nil", {"v": 1, "op": "ping"}),
    ("id negative", "any msgpack int: int64 ...", req("ping", -7)),
    ("id uint64", "... or uint64", req("ping", 2**64 - 1)),
    ("id 128 code points", "128 x e-acute: 256 UTF-8 bytes, accepted (lengths count code points)",
     req("ping", "é" * 128)),
    ("id 129 code points", "too long: bad_request, reply id nil", req("ping", "r" * 129)),
    ("id float", "bad_request, reply id nil", req("ping", 1.5)),
    ("id bool", "bad_request, reply id nil", req("ping", True)),
    ("id bin", "bad_request, reply id nil", req("ping", b"7")),
    # bad_message (reply id nil) and too_large
    ("not msgpack", "bad_message", b"\xc1"),
    ("truncated", "83 a1 76: a map of 3 cut short", bytes.fromhex("83a176")),
    ("trailing bytes", "bad_message", msgpack.packb(req("ping", 30)) + b"\x01"),
    ("not a map", "bad_message", msgpack.packb([1, "ping"])),
    ("non-str key", "bad_message", msgpack.packb({1: 1, "v": 1, "op": "ping"})),
    ("too_large", f"more than --max-message-bytes {MAX_MESSAGE_BYTES}", STEP(31, x=f32(np.zeros(1100)))),
    # v, op and the order of the checks: id, then v, then op, then the op's fields in order
    ("v missing", "bad_request", {"id": 32, "op": "ping"}),
    ("v 2", "bad_version", req("ping", 33) | {"v": 2}),
    ("v 1.0", "a float is not the int 1: bad_request", req("ping", 34) | {"v": 1.0}),
    ("v true", "a bool is not the int 1: bad_request", req("ping", 35) | {"v": True}),
    ("v '1'", "a str: bad_request", req("ping", 36) | {"v": "1"}),
    ("v missing and op unknown", "v is checked before op: bad_request", {"id": 37, "op": "launch"}),
    ("op unknown", "unknown_op", req("launch", 38)),
    ("op missing", "bad_request", {"v": 1, "id": 39}),
    ("field missing", "step without stream: bad_request", req("step", 40, x=X)),
    ("field wrong type", "horizon a str: bad_request", req("forecast", 41, stream="pump-7", horizon="2")),
    ("lists not a bool", "bad_request", req("ping", 42, lists=1)),
    ("step_many x and xs", "exactly one of them: bad_request", req("step_many", 43, streams=["a"], x=[X], xs=[X])),
    # bad_input
    ("x wrong width", "bad_input", STEP(44, x=[0.5, 1.0])),
    ("x NaN", "bad_input",
     STEP(45, x={"dtype": "float64", "shape": [3], "data": np.array([0, math.nan, 0]).tobytes()})),
    ("x beyond float32", "1e300 is finite as float64, not as float32: bad_input", STEP(46, x=[0.5, 1e300, 2.0])),
    ("x with a bool", "true is not a number: bad_input", STEP(47, x=[0.5, True, 2.0])),
    ("x map with an extra key", "an array map has exactly dtype, shape, data: bad_input",
     STEP(48, x={**f32(X), "order": "C"})),
    ("x zero samples", "T >= 1: bad_input", STEP(49, x=f32(np.zeros((0, 3))))),
    ("step_many x of rank 1", "x is (N, I) even for N = 1: bad_input",
     req("step_many", 50, streams=["pump-7"], x=f32(X))),
    ("step_many xs entry of 0 samples", "T_k >= 1: bad_input",
     req("step_many", 51, streams=["pump-7"], xs=[f32(np.zeros((0, 3)))])),
    ("step_many no ids", "N >= 1: bad_input", req("step_many", 52, streams=[], xs=[])),
    ("stream id empty", "bad_input", STEP(53, stream="")),
    ("stream id 257 code points", "bad_input", STEP(54, stream="s" * 257)),
    ("stream id beyond int64", "bad_input", STEP(55, stream=2**63)),
    ("stream id a float", "bad_request", STEP(56, stream=1.5)),
    ("streams offset -1", "a value out of range: bad_input", req("streams", 57, offset=-1)),
    ("streams limit 100001", "a value out of range: bad_input", req("streams", 58, limit=100_001)),
    ("set_state steps -1", "bad_input", req("set_state", 59, stream="pump-7", h=f32([[0] * 4]), c=f32([[0] * 4]),
                                              steps=-1)),
    ("forecast horizon 0", "bad_input", req("forecast", 60, stream="pump-7", horizon=0)),
    # weights updates (admin)
    ("reload the served file", "no path: the --model file again, whose weights are served already: changed false",
     req("reload", 61)),
    ("bad_model", "reload of a model file that is not there: nothing changed", req("reload", 62,
                                                                                   path="no-such-model.npz")),
    # the model a request is for (a daemon of one model answers to its file's stem)
    ("step naming the model", "the served model by name: as without a name", STEP(63, model="model")),
    ("unknown_model", "a model this daemon does not serve: error.models lists the one it does",
     STEP(64, model="fan")),
    ("model not a str", "bad_request", STEP(65, model=7)),
]


def encode(request) -> bytes:
    return request if isinstance(request, bytes) else msgpack.packb(request, use_bin_type=True)


def normalise(reply: bytes) -> bytes:
    """The reply with what may vary blanked (clocks 0.0, version "", error message ""; info cut to
    INFO_FIELDS), re-encoded: msgpack-python packs maps in order, minimal ints, float64, as the daemon does."""
    msg = msgpack.unpackb(reply, raw=False)
    if msg.get("ok") is False:
        msg["error"]["message"] = ""
    elif "protocol" in msg:  # info
        msg = {k: msg[k] for k in ("v", "id", "ok", *INFO_FIELDS)}
    return msgpack.packb(_blank_clocks(msg), use_bin_type=True)


def _blank_clocks(v):
    if isinstance(v, dict):
        return {k: 0.0 if k in CLOCK_FIELDS else _blank_clocks(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_blank_clocks(x) for x in v]
    return v


def readable(v):
    """A decoded message as JSON: bin as {"bin": hex}, NaN and Inf as {"float": "nan"}."""
    if isinstance(v, dict):
        return {str(k): readable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [readable(x) for x in v]
    if isinstance(v, bytes):
        return {"bin": v.hex()}
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    return v


def wire_core():
    """A fresh engine as the daemon runs it with DAEMON_ARGS (no sockets)."""
    import lstm_stream as ls
    from engine.core import EngineConfig, EngineCore
    from engine.wire import WireCore
    model = ls.LSTMModel.load(MODEL)
    return WireCore(EngineCore(ls.Streams(model, max_streams=MAX_STREAMS),
                               EngineConfig(max_message_bytes=MAX_MESSAGE_BYTES), model_path=str(MODEL),
                               name=MODEL.stem))


def replay(wire, data: bytes) -> bytes:
    """One request through the wire core: its encoded reply."""
    reply = wire.submit(None, data)
    return reply if reply is not None else wire.step()[-1][1]


def make_model():
    """The fixed model: I = O = 3 (autoregressive: forecast works), H = 4, one layer, no projection."""
    sys.path.insert(0, str(HERE.parent))
    from models import random_model
    return random_model(np.random.default_rng(2026), I=3, H=4, L=1, O=3, head_activation="none")


def write() -> None:
    if not MODEL.exists():
        make_model().save(MODEL)
    wire, vectors = wire_core(), []
    for name, meaning, request in CASES:
        data = encode(request)
        raw = replay(wire, data)
        reply = normalise(raw)
        msg = msgpack.unpackb(raw, raw=False)
        vectors.append({"name": name, "meaning": meaning, "request": data.hex(), "reply": reply.hex(),
                        "request_map": readable(msgpack.unpackb(data, raw=False)) if _decodes(data) else None,
                        "reply_map": readable(msgpack.unpackb(reply, raw=False)),
                        "message": msg["error"]["message"] if msg.get("ok") is False else None})
    doc = {"daemon": DAEMON_ARGS, "model": MODEL.name, "normalised": {
        "clock fields (0.0)": sorted(CLOCK_FIELDS), "error.message": "''", "info": list(INFO_FIELDS)},
        "vectors": vectors}
    VECTORS.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def _decodes(data) -> bool:
    try:
        msgpack.unpackb(data, raw=False)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    write()
    print(f"{VECTORS}: {len(CASES)} vectors")
