"""The wire module: arrays, bounds, request checking, evolution rules, and no numba on the client side."""
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from lstm_stream import protocol as P


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", ">f4", ">f8"])
@pytest.mark.parametrize("shape", [(4,), (3, 4), (0, 2), (2, 1, 3)])
def test_arrays_round_trip_as_little_endian_bytes(dtype, shape):
    a = (np.arange(int(np.prod(shape))).reshape(shape) * 1.5).astype(dtype)
    m = P.array_map(a)
    assert m["shape"] == list(shape) and m["dtype"] == np.dtype(dtype).name
    assert m["data"] == a.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    back = P.to_array(msgpack.unpackb(msgpack.packb(m)))
    np.testing.assert_array_equal(back, a)
    assert back.flags.writeable and back.dtype.isnative


def test_plain_lists_are_arrays_too():
    np.testing.assert_array_equal(P.to_array([[1, 2.5], [3, 4]]), [[1, 2.5], [3, 4]])
    for bad in ([[1, 2], [3]], ["a", "b"], [{"x": 1}], [True, 0.5], [[1, 2], [3, False]], [True, 2], [True]):
        with pytest.raises(P.ProtocolError) as e:
            P.to_array(bad)
        assert e.value.code == P.BAD_INPUT
    with pytest.raises(P.ProtocolError) as e:
        P.to_array("1,2")
    assert e.value.code == P.BAD_REQUEST


@pytest.mark.parametrize("m, words", [
    ({"dtype": "float16", "shape": [1], "data": b"\0\0"}, "dtype"),
    ({"dtype": "float32", "shape": [2], "data": b"\0" * 4}, "needs 8"),
    ({"dtype": "float32", "shape": [1, 1, 1, 1, 1], "data": b"\0" * 4}, "at most 4"),
    ({"dtype": "float32", "shape": [1.0], "data": b"\0" * 4}, "non-negative ints"),
    ({"dtype": "float32", "shape": [1], "data": "abcd"}, "bin"),
    ({"dtype": "float32", "shape": [1], "data": b"\0" * 4, "order": "F"}, "exactly dtype, shape and data"),
])
def test_bad_array_maps_name_the_problem(m, words):
    with pytest.raises(P.ProtocolError, match=words) as e:
        P.to_array(m, "x")
    assert e.value.code == P.BAD_INPUT and "x." in e.value.message


def test_codec_bounds_and_structure():
    codec = P.Codec(max_message_bytes=100)
    with pytest.raises(P.ProtocolError) as e:
        codec.decode(b"\x90" * 101)
    assert e.value.code == P.TOO_LARGE
    for data in (b"", b"\xc1", msgpack.packb({"a": 1})[:-1], msgpack.packb({"a": 1}) + b"\0",
                 msgpack.packb([1]), msgpack.packb({1: 2})):
        with pytest.raises(P.ProtocolError) as e:
            codec.decode(data)
        assert e.value.code == P.BAD_MESSAGE, data


@pytest.mark.parametrize("data", [bytes.fromhex("83a176"), bytes.fromhex("92"), bytes.fromhex("81a1")])
def test_a_truncated_message_is_called_truncated(data):
    """msgpack reports a container longer than the payload as "3 exceeds max_map_len(1)"; the reply says
    what that means."""
    with pytest.raises(P.ProtocolError, match="truncated") as e:
        P.Codec().decode(data)
    assert e.value.code == P.BAD_MESSAGE


def test_requests_unknown_fields_skipped_defaults_filled():
    codec = P.Codec()
    req = codec.decode_request(codec.encode({"v": 1, "id": "r", "op": "streams", "future_field": [1, 2]}))
    assert req.op == "streams" and req.id == "r" and req.fields == {"offset": 0, "limit": P.MAX_STREAMS_PAGE}
    req = codec.decode_request(codec.request("step", 5, {"stream": 3, "x": np.ones(2), "lists": True}))
    assert req.lists and req.fields["stream"] == 3 and P.to_array(req.fields["x"]).tolist() == [1, 1]


@pytest.mark.parametrize("ids, ok", [
    (["a", "b"], True), ([1, 2], True), (["a", 1, "b"], True), ([1, "a"], True), ([], True),
    (["a", 1.5], False), (["a", None], False), ([1, b"a"], False), (["a", ["b"]], False), (["a", True], False),
    ("ab", False), (("a", "b"), False), ([1, True], False), ([1, 2, 3.0], False), ([1, 2, "a", False], False),
    ([2**70, 1], True),  # an int, as far as the protocol goes (the store then finds no such stream)
])
def test_id_lists_accept_str_and_int_only(ids, ok):
    """str and int ids, mixed in any order; anything else in the list is refused (all-str and all-int lists
    take faster checks than the others: all must agree; a bool is not an int id)."""
    msg = {"v": 1, "id": 3, "op": "step_many", "streams": ids, "x": [[0.0]] * max(len(ids), 1)}
    if ok:
        assert P.parse_request(msg).fields["streams"] == ids
    else:
        with pytest.raises(P.ProtocolError) as e:
            P.parse_request(msg)
        assert e.value.code == P.BAD_REQUEST


@pytest.mark.parametrize("msg, code, rid", [
    ({"v": 1, "id": 1.5, "op": "ping"}, P.BAD_REQUEST, None),
    ({"v": 2, "id": 3, "op": "ping"}, P.BAD_VERSION, 3),
    ({"id": 3, "op": "ping"}, P.BAD_REQUEST, 3),
    ({"v": 1, "id": 3, "op": "nope"}, P.UNKNOWN_OP, 3),
    ({"v": 1, "id": 3, "op": "step", "x": [1]}, P.BAD_REQUEST, 3),
    ({"v": 1, "id": 3, "op": "step", "stream": [1], "x": [1]}, P.BAD_REQUEST, 3),
    ({"v": 1, "id": 3, "op": "step_many", "streams": ["a"]}, P.BAD_REQUEST, 3),
    ({"v": 1, "id": 3, "op": "forecast", "stream": "a", "horizon": True}, P.BAD_REQUEST, 3),
    ({"v": 1, "id": 3, "op": "ping", "lists": 1}, P.BAD_REQUEST, 3),
    ({"v": 1.0, "id": 3, "op": "ping"}, P.BAD_REQUEST, 3),   # v is the int 1: a float or a bool is a wrong type
    ({"v": True, "id": 3, "op": "ping"}, P.BAD_REQUEST, 3),
    ({"v": "1", "id": 3, "op": "ping"}, P.BAD_REQUEST, 3),
    ({"v": 2, "id": True, "op": "ping"}, P.BAD_REQUEST, None),  # the id is checked first; its reply id is nil
    ({"id": 3, "op": "nope"}, P.BAD_REQUEST, 3),                # v before op
    ({"v": 2, "id": 3, "op": "nope"}, P.BAD_VERSION, 3),
    ({"v": 1, "id": 3, "op": "step", "stream": 1.5}, P.BAD_REQUEST, 3),  # fields in order: stream before x
])
def test_bad_requests_carry_code_and_id(msg, code, rid):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(msg)
    assert (e.value.code, e.value.request_id) == (code, rid)


def test_replies_and_the_tables_are_consistent():
    codec = P.Codec()
    assert codec.decode_reply(codec.ok(4, {"y": np.zeros(2)}))["ok"] is True
    err = codec.decode_reply(codec.error(4, P.BUSY, "later"))
    assert err == {"v": 1, "id": 4, "ok": False, "error": {"code": "busy", "message": "later"}}
    assert P.IDEMPOTENT_OPS <= set(P.OPS) and P.STEP_OPS <= set(P.OPS)
    assert len(set(P.ERROR_CODES)) == len(P.ERROR_CODES)


def test_client_side_imports_load_no_numba():
    code = ("import sys, clients, lstm_stream.protocol, clients.aio; "
            "bad = sorted(m for m in sys.modules if m == 'numba' or m.startswith('numba.') "
            "or m in ('lstm_stream.model', 'lstm_stream.streams', 'lstm_stream.kernels')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_spec_documents_every_op_field_and_error_code():
    from pathlib import Path
    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for op, fields in P.REQUEST_FIELDS.items():
        assert f"### `{op}`" in spec, op
        for name in fields:
            assert f"`{name}`" in spec, (op, name)
    for code in P.ERROR_CODES:
        assert f"| `{code}` |" in spec, code
    assert f"version {P.PROTOCOL_VERSION}" in spec
    writing = spec.split("## 10. Writing a client")[1]  # points at the C client and the golden vectors
    assert "clients/c/" in writing and "tests/golden/" in writing


@pytest.mark.parametrize("rid", [None, 0, 5, -7, 2**63 - 1, 2**64 - 1, "r", "é" * 128])
def test_a_step_reply_from_its_template_is_the_maps_encoding(rid):
    """Codec.reply packs {"y": array} replies from a cached template (the daemon's hot path); the slow twin is
    the plain map encoding, which it must equal byte for byte, for any id, dtype and shape."""
    from lstm_stream.messages import Reply
    codec, rng = P.Codec(), np.random.default_rng(0)
    arrays = [rng.normal(size=4).astype(np.float32), rng.normal(size=(3, 5)), np.zeros((0, 4), np.float32),
              rng.normal(size=(1, 70_000)).astype(np.float32), np.arange(6, dtype=np.int64)]
    for y in arrays + arrays:  # the second time from the cache
        fast = codec.reply(Reply(rid, {"y": y}))
        assert fast == codec.ok(rid, {"y": y})
        back = codec.decode_reply(fast)
        assert back["id"] == rid and np.array_equal(P.to_array(back["y"]), y)
    lists = codec.decode_reply(codec.reply(Reply(rid, {"y": arrays[1]}, lists=True)))
    assert lists["y"] == arrays[1].tolist()
    view = np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1]  # not C-contiguous: the map path
    assert codec.reply(Reply(rid, {"y": view})) == codec.ok(rid, {"y": view.copy()})


@pytest.mark.parametrize("rid", [None, 5, -7, 2**64 - 1, "é" * 128])
def test_a_step_request_from_its_template_is_the_maps_encoding(rid):
    """Codec.request packs `step` from a cached template (what every Client.step sends); the slow twin is the
    plain map encoding, which it must equal byte for byte, and the daemon must read the same request."""
    codec, rng = P.Codec(), np.random.default_rng(1)
    xs = [rng.normal(size=4).astype(np.float32), rng.normal(size=(3, 5)), np.arange(6, dtype=np.int32)]
    for x in xs + xs:
        for stream in ("pump-7", 7, "é" * 256, 2**63):
            fast = codec.request("step", rid, {"stream": stream, "x": x})
            assert fast == codec.encode({"v": 1, "id": rid, "op": "step", "stream": stream, "x": x})
            req = codec.decode_request(fast)
            assert (req.id, req.stream) == (rid, stream) and np.array_equal(req.x, x)
    view = np.arange(12.0).reshape(3, 4)[:, 1]  # not C-contiguous: the map path
    assert codec.request("step", rid, {"stream": "a", "x": view}) == \
        codec.encode({"v": 1, "id": rid, "op": "step", "stream": "a", "x": view.copy()})
