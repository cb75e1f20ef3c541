"""Bad messages sent raw over a plain zmq socket to a real daemon: each gets its error code, and the daemon
keeps serving valid requests afterwards."""
import math

import msgpack
import numpy as np
import pytest
import zmq
from daemons import DaemonFactory

MAX_STREAMS, MAX_BYTES = 4, 65536


@pytest.fixture(scope="module")
def served(tmp_path_factory, served_models):
    factory = DaemonFactory(tmp_path_factory.mktemp("bad_messages"))
    path, _ = served_models["cls"]
    try:
        yield factory("--model", path, "--max-streams", MAX_STREAMS, "--max-message-bytes", MAX_BYTES)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def endpoint(served):
    return served.endpoint


@pytest.fixture
def sock(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(endpoint)
    yield s
    s.close(0)


def pack(**fields):
    return msgpack.packb({"v": 1, "id": 7, **fields})


def arr(dtype, shape, data=None):
    a = np.ones(shape, dtype)
    return {"dtype": dtype, "shape": list(shape), "data": a.tobytes() if data is None else data}


X = [0.1, 0.2, 0.3, 0.4]
CASES = {
    "empty payload": (b"", "bad_message"),
    "not msgpack": (b"\xc1\xc1", "bad_message"),
    "truncated": (pack(op="step", stream="a", x=X)[:-5], "bad_message"),
    "trailing bytes": (pack(op="ping") + b"\x01", "bad_message"),
    "not a map": (msgpack.packb([1, "ping"]), "bad_message"),
    "invalid utf-8": (b"\x81\xa2\xff\xfe\x01", "bad_message"),
    "oversized": (pack(op="step", stream="a", x={"dtype": "float32", "shape": [1], "data": b"\0" * MAX_BYTES}),
                  "too_large"),
    "missing version": (msgpack.packb({"id": 7, "op": "ping"}), "bad_request"),
    "future version": (msgpack.packb({"v": 99, "id": 7, "op": "ping"}), "bad_version"),
    "missing op": (pack(), "bad_request"),
    "unknown op": (pack(op="launch"), "unknown_op"),
    "op not a str": (pack(op=3), "bad_request"),
    "missing stream": (pack(op="step", x=X), "bad_request"),
    "stream id a float": (pack(op="step", stream=1.5, x=X), "bad_request"),
    "stream id too long": (pack(op="step", stream="s" * 300, x=X), "bad_input"),
    "stream id beyond int64": (pack(op="step", stream=2**63, x=X), "bad_input"),
    "x a string": (pack(op="step", stream="a", x="0.1,0.2"), "bad_request"),
    "wrong width": (pack(op="step", stream="a", x=[0.1, 0.2]), "bad_input"),
    "rank 3": (pack(op="step", stream="a", x=arr("float32", (1, 1, 4))), "bad_input"),
    "zero timesteps": (pack(op="step", stream="a", x=arr("float32", (0, 4))), "bad_input"),
    "ragged lists": (pack(op="step", stream="a", x=[[1, 2, 3, 4], [1]]), "bad_input"),
    "lists of strings": (pack(op="step", stream="a", x=["a", "b", "c", "d"]), "bad_input"),
    "unknown dtype": (pack(op="step", stream="a", x=arr("complex64", (4,))), "bad_input"),
    "data shorter than shape": (pack(op="step", stream="a", x=arr("float32", (4,), b"\0" * 12)), "bad_input"),
    "negative dim": (pack(op="step", stream="a", x={"dtype": "float32", "shape": [-4], "data": b""}),
                     "bad_input"),
    "NaN": (pack(op="step", stream="a", x=[0.1, math.nan, 0.3, 0.4]), "bad_input"),
    "Inf": (pack(op="step", stream="a", x=arr("float64", (4,), np.array([1, 2, np.inf, 4.0]).tobytes())),
            "bad_input"),
    "step_many rows != ids": (pack(op="step_many", streams=["a", "b"], x=[X]), "bad_input"),
    "step_many x and xs": (pack(op="step_many", streams=["a"], x=[X], xs=[X]), "bad_request"),
    "step_many str ids, then a float": (pack(op="step_many", streams=["a", "b", 1.5], x=[X, X, X]), "bad_request"),
    "step_many str ids, then nil": (pack(op="step_many", streams=["a", None], x=[X, X]), "bad_request"),
    "step_many int ids, then a list": (pack(op="step_many", streams=[1, [2]], x=[X, X]), "bad_request"),
    "step_many ids not a list": (pack(op="step_many", streams="ab", x=[X, X]), "bad_request"),
    "unknown stream": (pack(op="get_state", stream="never-seen"), "unknown_stream"),
    "copy from unknown": (pack(op="copy", src="never-seen", dst="b"), "unknown_stream"),
    "horizon not an int": (pack(op="forecast", stream="a", horizon="10"), "bad_request"),
    "forecast, not autoregressive": (pack(op="forecast", stream="full-0", horizon=3), "unsupported"),
    "set_state wrong shape": (pack(op="set_state", stream="a", h=[[0.0]], c=[[0.0]]), "bad_input"),
    "full store": (pack(op="step", stream="one-too-many", x=X), "store_full"),
    "snapshot without dir": (pack(op="snapshot"), "unsupported"),
    # issue 22: where the spec and the daemon disagreed, and where a client had to guess
    "version a float": (msgpack.packb({"v": 1.0, "id": 7, "op": "ping"}), "bad_request"),
    "version a bool": (msgpack.packb({"v": True, "id": 7, "op": "ping"}), "bad_request"),
    "version a str": (msgpack.packb({"v": "1", "id": 7, "op": "ping"}), "bad_request"),
    "missing version and an unknown op": (msgpack.packb({"id": 7, "op": "launch"}), "bad_request"),
    "streams offset -1": (pack(op="streams", offset=-1), "bad_input"),
    "streams limit 100001": (pack(op="streams", limit=100_001), "bad_input"),
    "a bool inside nested lists": (pack(op="step", stream="a", x=[0.1, True, 0.3, 0.4]), "bad_input"),
    "step_many x of rank 1": (pack(op="step_many", streams=["a"], x=X), "bad_input"),
    "step_many xs entry of 0 samples": (pack(op="step_many", streams=["a"], xs=[arr("float32", (0, 4))]),
                                        "bad_input"),
    "an extra key in an array map": (pack(op="step", stream="a", x={**arr("float32", (4,)), "order": "F"}),
                                     "bad_input"),
    "beyond float32's range": (pack(op="step", stream="a", x=[0.1, 1e300, 0.3, 0.4]), "bad_input"),
    "truncated map": (bytes.fromhex("83a176"), "bad_message"),
}


def roundtrip(sock, data):
    sock.send(data)
    return msgpack.unpackb(sock.recv())


@pytest.fixture(scope="module")
def full_store(endpoint):
    """Fill the store to max_streams so that a new stream is refused."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(endpoint)
    try:
        for k in range(MAX_STREAMS):
            assert roundtrip(s, pack(op="step", stream=f"full-{k}", x=X))["ok"]
    finally:
        s.close(0)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_message_gets_its_error_code_and_the_daemon_keeps_serving(name, sock, full_store):
    data, code = CASES[name]
    reply = roundtrip(sock, data)
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply["error"]
    assert reply["error"]["message"]
    assert reply["id"] in (7, None)
    good = roundtrip(sock, pack(op="step", stream="full-0", x=X))
    assert good["ok"] and good["id"] == 7


@pytest.mark.parametrize("rid", [1.5, True, b"7", "r" * 129])
def test_an_invalid_request_id_gets_bad_request_with_a_nil_id(rid, sock):
    """The id cannot be echoed, so the reply's id is nil (docs/protocol.md, 2.1)."""
    reply = roundtrip(sock, msgpack.packb({"v": 1, "id": rid, "op": "ping"}))
    assert reply["id"] is None and reply["error"]["code"] == "bad_request", reply


@pytest.mark.parametrize("rid", [-7, 2**63 - 1, 2**64 - 1, -(2**63), "é" * 128])
def test_request_ids_in_the_documented_range_are_echoed(rid, sock):
    """Any msgpack int (int64 or uint64) and a str of up to 128 code points (here 256 UTF-8 bytes)."""
    assert roundtrip(sock, msgpack.packb({"v": 1, "id": rid, "op": "ping"}))["id"] == rid


@pytest.mark.parametrize("fields", [{"op": "step", "stream": "full-1", "x": [0.1, 1e300, 0.3, 0.4]},
                                    {"op": "step_many", "streams": ["full-1"], "xs": [[0.1, 1e300, 0.3, 0.4]]},
                                    {"op": "set_state", "stream": "full-1", "h": [[1e300] * 16] * 2,
                                     "c": [[0.0] * 16] * 2}])
def test_out_of_float32_range_is_named_and_leaves_stderr_alone(fields, sock, served):
    """1e300 is finite as a float64 but not as the model's float32: the message says so, and numpy's
    RuntimeWarning does not reach the daemon's output."""
    reply = roundtrip(sock, pack(**fields))
    assert reply["error"]["code"] == "bad_input", reply
    assert "out of range for float32" in reply["error"]["message"], reply
    assert "RuntimeWarning" not in served.log()


def test_a_truncated_map_says_it_is_truncated(sock):
    reply = roundtrip(sock, bytes.fromhex("83a176"))
    assert reply["id"] is None and "truncated or malformed" in reply["error"]["message"], reply
