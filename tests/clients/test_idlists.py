"""The id-list lane (lstm_stream/idlists.py) against its slow twin, the usual bounded decode: whatever the
payload, Codec.decode(data, lane=True) gives the map Codec.decode(data) gives (equal values, equal types, keys
in the same order) or the same refusal, on the first sighting of an id list, the second and every later one;
lists kept are shared, bounded, and never refused or accepted where the usual path would not."""
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream import protocol as P
from lstm_stream.idlists import MIN_SPAN, IdList, IdLists

from fuzz import strategies as S


def outcome(decode, data):
    """What decoding data gives: ("map", its exact msgpack encoding, its key order) or ("refused", code,
    message, request id)."""
    try:
        msg = decode(data)
    except P.ProtocolError as e:
        return "refused", e.code, e.message, e.request_id
    return "map", msgpack.packb(msg, use_bin_type=True), list(msg) if isinstance(msg, dict) else None


def twin(data, codec=None, times=3):
    """Decode data `times` times through one laned codec, each against a fresh usual decode; the lane's map."""
    codec = codec or P.Codec()
    for _ in range(times):
        want = outcome(P.Codec().decode, data)
        got = outcome(lambda d: codec.decode(d, lane=True), data)
        assert got == want, f"lane {got[:2]!r:.300} against the usual {want[:2]!r:.300} for {data[:120]!r}"
    return codec


def step_many(ids, rows=None, *, x="binary", head=(("v", 1), ("id", 7), ("op", "step_many")), **more):
    rows = len(ids) if rows is None else rows
    a = np.random.default_rng(len(ids)).standard_normal((rows, 3)).astype(np.float32)
    xv = P.array_map(a) if x == "binary" else a.tolist()
    return msgpack.packb({**dict(head), "streams": ids, "x": xv, **more}, use_bin_type=True)


SENSORS = [f"site-4/sensor-{k:03d}" for k in range(100)]


def test_a_list_seen_twice_is_kept_and_shared_with_its_join():
    codec = P.Codec()
    data = step_many(SENSORS)
    first = codec.decode_request(data)
    assert type(first.streams) is IdList and first.streams == SENSORS
    assert len(codec._id_lists) == 0  # seen once: only its hash remembered
    second = codec.decode_request(step_many(SENSORS, head=(("v", 1), ("id", "other"), ("op", "step_many"))))
    third = codec.decode_request(data)
    lane = codec._id_lists
    assert len(lane) == 1 and lane.hits == 1 and third.streams is second.streams
    assert third.streams.joined == "\0".join(SENSORS) and third.id == 7 and second.id == "other"
    np.testing.assert_array_equal(third.x, first.x)


def test_maps_are_equal_to_the_usual_decode_on_every_sighting():
    for ids in (SENSORS, list(range(-50, 50)), [2**63 - 1] * 20, SENSORS[:40] + list(range(40)),
                ["\u00e9t\u00e9-" + s for s in SENSORS[:30]], ["a\0b", "a", "b\0"] * 10, ["x" * 4096] * 2, []):
        codec = P.Codec()
        for data in (step_many(ids), step_many(ids, x="lists"), step_many(ids, extra={"k": [1, 2.5, None]}),
                     step_many(ids, lists=True, seq=None), step_many(ids, pad="p" * 700)):
            twin(data, codec)


@pytest.mark.parametrize("odd", [
    {"streams": [["nested"]] * 40},                       # containers in the list: declined
    {"streams": ["ok"] * 30 + [None]},                    # nil
    {"streams": ["ok"] * 30 + [True]},                    # a bool is no id
    {"streams": ["ok"] * 30 + [1.5]},                     # nor a float
    {"streams": [b"bytes-id"] * 30},                      # nor a bin
    {"streams": "not-a-list" * 20},
    {"streams": {"a": 1}, "pad": "p" * 600},
    {"tags": ["a", "b"] * 20, "pad": "p" * 600},         # another list of strs: declined
    {"rows": [[0.5] * 8] * 1400, "pad": "p" * 600},        # another list longer than the lane's (1,365)
])
def test_odd_values_get_what_the_usual_decode_gives(odd):
    twin(msgpack.packb({"v": 1, "id": 1, "op": "step_many", **odd}, use_bin_type=True))


def test_streams_twice_bytes_keys_and_trailing_bytes_get_what_the_usual_decode_gives():
    ids = msgpack.packb(SENSORS)
    body = b"\x84" + msgpack.packb("v") + b"\x01" + msgpack.packb("op") + msgpack.packb("step_many")
    twin(body + msgpack.packb("streams") + ids + msgpack.packb("streams") + ids)           # a key twice
    twin(body + msgpack.packb(b"streams", use_bin_type=True) + ids + b"\xa1k\x01")        # a bytes key
    twin(step_many(SENSORS) + b"\x00")                                                    # trailing bytes
    twin(step_many(SENSORS)[:-3])                                                         # truncated
    twin(b"\x92" + msgpack.packb(SENSORS) + b"\x01")                                     # not a map


def test_the_budget_decides_as_it_does_on_the_usual_path():
    """Near the decode bound the id list's charge depends on what is left: the lane answers only when the
    usual path surely accepts it, and the outcome is the usual path's either way."""
    for n_ids in (500, 800, 900, 1_000, 1_200, 1_500, 3_000, 7_000, 14_000):
        for width in (1, 2, 6):
            ids = [("%0" + str(width) + "d") % (k % 10 ** width) for k in range(n_ids)]
            for pad in (0, 4000):
                twin(msgpack.packb({"v": 1, "id": 1, "op": "step_many", "streams": ids,
                                    "x": [[0.5] * 4] * 8, "pad": [0] * 16, "z": {"p": "q" * pad}}, use_bin_type=True))


def test_the_same_list_in_messages_of_other_lengths_meets_their_limits():
    ids = [str(k % 10) for k in range(1_500)]  # 1,500 one-character strs: 1.5 KB of list
    codec = P.Codec()
    for pad in (0, 0, 0, 30_000, 0, 50_000, 0):
        twin(msgpack.packb({"v": 1, "id": 1, "op": "step_many", "streams": ids, "p": "q" * pad}), codec, times=2)


def test_kept_lists_are_bounded_and_start_again_when_full():
    lane = IdLists(P.MAX_MAP_LEN, P.MAX_STR_BYTES, 1365, max_bytes=40_000)
    codec = P.Codec()
    codec._id_lists = lane
    for site in range(8):
        ids = [f"site-{site}/sensor-{k:03d}" for k in range(100)]
        for _ in range(2):
            codec.decode_request(step_many(ids))
        assert lane._bytes <= lane.max_bytes and 1 <= len(lane) <= 3  # ~12.6 KB each (its estimate)
    lane.clear()
    assert len(lane) == 0 and lane._bytes == 0
    few = ["a", "b", "c"]  # a list shorter than MIN_SPAN bytes is never kept
    assert len(msgpack.packb(few)) < MIN_SPAN
    for _ in range(3):
        codec.decode_request(step_many(few, pad="p" * 600))
    assert len(lane) == 0


@st.composite
def lane_payload(draw):
    """A step_many of a long enough id list (strs, ints or both; binary x or lists), often mutated."""
    kind = draw(st.sampled_from(["str", "int", "mixed", "unicode"]))
    n = draw(st.integers(1, 300))
    ids = {"str": [f"dev-{k}" for k in range(n)], "int": list(range(n)),
           "mixed": [k if k % 3 else f"s{k}" for k in range(n)],
           "unicode": [f"\u00e9{k}\u4e2d" for k in range(n)]}[kind]
    data = step_many(ids, x=draw(st.sampled_from(["binary", "lists"])), pad="p" * draw(st.sampled_from([0, 600])))
    if draw(st.booleans()):
        data = draw(S.mutated(data))
    return data


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(lane_payload(), S.message().map(lambda c: c.data)))
def test_fuzzed_payloads_decode_as_the_usual_path_decodes_them(data):
    twin(data)


def test_a_daemon_serves_kept_lists_bit_for_bit_and_namespaced_keys_get_their_own_streams(tmp_path):
    """Through the engine: steps of one id list sent by two step keys under namespaces, answered from the kept
    list, give each key's streams the outputs that the same steps give them one at a time; the namespaces give
    each request a list of its own, so the kept one is never changed."""
    import zmq.auth

    import lstm_stream as ls
    from engine.access import Access
    from engine.config import EngineConfig
    from engine.core import EngineCore
    from engine.wire import WireCore
    from models import random_model

    users = []
    for name in ("one", "two"):
        public, secret = zmq.auth.create_certificates(str(tmp_path), name)
        users.append(zmq.auth.load_certificate(public)[0].decode("ascii"))
    access = Access(str(tmp_path), None, namespaces=True)
    model = random_model(np.random.default_rng(3), I=3, H=7, L=1, O=2)
    wire = WireCore(EngineCore(ls.Streams(model), EngineConfig(), access=access))
    wire.codec._templates = None  # (these messages differ only in id: templates would answer them first)
    alone = {user: ls.Streams(model) for user in users}
    rng = np.random.default_rng(5)
    for t in range(4):
        for user in users:
            x = rng.standard_normal((len(SENSORS), 3)).astype(np.float32)
            data = msgpack.packb({"v": 1, "id": t, "op": "step_many", "streams": SENSORS, "x": P.array_map(x)})
            assert wire.submit(None, data, user) is None
            (_, reply), = wire.step()
            y = P.to_array(msgpack.unpackb(reply)["y"])
            want = np.stack([alone[user].step(s, x[k]) for k, s in enumerate(SENSORS)])
            np.testing.assert_array_equal(y, want)
    lane = wire.codec._id_lists
    assert lane.hits == 6 and len(lane) == 1
    assert list(next(iter(lane._lists.values()))[0]) == SENSORS
    assert len(wire.streams) == 2 * len(SENSORS)


def test_the_per_request_bound_on_new_streams_holds_for_kept_lists():
    """--max-request-new-streams looks at a kept list (an IdList, a list) as at any other."""
    import lstm_stream as ls
    from engine.config import EngineConfig
    from engine.core import EngineCore
    from engine.wire import WireCore
    from models import random_model

    model = random_model(np.random.default_rng(4), I=3, H=5, L=1, O=2)
    wire = WireCore(EngineCore(ls.Streams(model), EngineConfig(max_request_new_streams=50)))
    wire.codec._templates = None  # (these messages differ only in id: templates would answer them first)
    x = P.array_map(np.ones((len(SENSORS), 3), np.float32))
    for t in range(3):
        reply = msgpack.unpackb(wire.submit(None, msgpack.packb({"v": 1, "id": t, "op": "step_many",
                                                                 "streams": SENSORS, "x": x})))
        assert reply["error"]["code"] == P.TOO_LARGE and "--max-request-new-streams" in reply["error"]["message"]
    assert wire.codec._id_lists.hits == 1 and len(wire.streams) == 0
    lane = wire.codec._id_lists
    kept = wire.call({"v": 1, "id": "i", "op": "info"})["decoded_id_lists"]  # (what info says of them)
    assert kept == {"kept": 1, "bytes": lane.bytes, "hits": 1} and 0 < lane.bytes <= lane.max_bytes


def test_the_lane_keeps_its_unpacker_over_messages_of_every_size_up_to_its_bound():
    """One Unpacker serves message after message (its buffer never fills: each message is read whole), so
    the lane answers every well-formed request up to REUSE_BYTES and drops the Unpacker only after one it
    declines."""
    from lstm_stream import decoding
    from lstm_stream.idlists import REUSE_BYTES

    codec = P.Codec()
    rng = np.random.default_rng(8)
    lane = None
    for k in range(300):
        ids = SENSORS[: 1 + k % 100]
        most = REUSE_BYTES - len(step_many(ids, pad=b"")) - 4  # (a bin's header grows from 2 to 5 bytes)
        data = step_many(ids, pad=b"p" * (int(rng.integers(0, most)) if k % 7 else most))  # every 7th: near the bound
        n = len(data)
        assert n <= REUSE_BYTES
        budget = decoding.Budget(decoding.charge_limit(n), P.DECODE_FACTOR * n + P.DECODE_SLACK)
        codec._walk(data)
        lane = lane or IdLists(P.MAX_MAP_LEN, P.MAX_STR_BYTES, decoding.charge_limit(0) // 48)
        unpacker = lane._unpacker
        msg = lane(data, codec._limits_of(n)["max_array_len"], budget)
        assert msg is not None and msg == P.Codec().decode(data), (k, n)
        assert unpacker is None or lane._unpacker is unpacker  # kept from message to message
    assert lane(b"\x81\xa1k" + msgpack.packb([1] * 20_000), 1365, decoding.Budget(10**9, 10**9)) is None
    assert lane._unpacker is None  # dropped after a message it declined


def test_a_list_inside_the_id_list_declines_it_before_more_is_built():
    """streams holding lists (71 lists of 16 empty lists: ~77 KB of objects from 1.4 KB, more than the decode
    bound allows): the lane stops at the second list msgpack completes, having built almost nothing; the usual
    path then refuses the message within its budget (found by the fuzz suite's memory check)."""
    import tracemalloc

    from lstm_stream import decoding
    data = msgpack.packb({"v": 1, "id": 1, "op": "step_many", "streams": [[[]] * 16] * 71,
                          "x": P.array_map(np.ones((71, 3), np.float32))})
    n = len(data)
    lane = IdLists(P.MAX_MAP_LEN, P.MAX_STR_BYTES, decoding.charge_limit(0) // 48)
    lane(b"\x81\xa1k\x01", 1365, decoding.Budget(10**9, 10**9))  # (its Unpacker made before the count)
    tracemalloc.start()
    try:
        got = lane(data, decoding.charge_limit(n) // 48, decoding.Budget(decoding.charge_limit(n), 4 * n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got is None and peak < 16_000, peak
    twin(data)
