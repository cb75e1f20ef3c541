"""Requests from templates (lstm_stream/templates.py) against the usual decode: whatever the payload, a codec
that keeps templates gives the request (equal fields, equal types, arrays of the same dtype, shape, bytes and
flags) or the refusal that a codec without them gives, on the first sighting of a message, the second and
every later one; templates are made only of what may be one, and bounded."""
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream import protocol as P
from lstm_stream.idlists import IdList
from lstm_stream.messages import REQUEST_FIELDS
from lstm_stream.templates import Templates

from fuzz import strategies as S

SENSORS = [f"site-4/sensor-{k:03d}" for k in range(100)]


def outcome(codec, data):
    """("request", its class, id, lists, model, fields as comparable values) or ("refused", code, message, id)."""
    try:
        req = codec.decode_request(data)
    except P.ProtocolError as e:
        return "refused", e.code, e.message, e.request_id
    return "request", type(req), (type(req.id), req.id), req.lists, req.model, \
        [(name, comparable(getattr(req, name))) for name in REQUEST_FIELDS[req.op]]


def comparable(v):
    if isinstance(v, np.ndarray):
        return "array", v.dtype.str, v.shape, v.tobytes(), v.flags.writeable, v.flags.c_contiguous, v.flags.aligned
    if isinstance(v, list):
        return "list", [comparable(i) for i in v]
    return type(v), v


def twin(codec, data):
    """Decode data with `codec` (which keeps templates) and with a fresh codec without: the same outcome."""
    got, want = outcome(codec, data), outcome(P.Codec(templates=False), data)
    assert got == want, f"template lane {got!r:.300} against the usual {want!r:.300} for {data[:120]!r}"
    return got


def step_many(rid, ids=SENSORS, *, dtype=np.float32, seed=None, **more):
    x = np.random.default_rng(seed).standard_normal((len(ids), 3)).astype(dtype)
    return msgpack.packb({"v": 1, "id": rid, "op": "step_many", "streams": ids, "x": P.array_map(x), **more})


def step(rid, stream="pump-7", shape=(3,), *, dtype=np.float32, seed=None, **more):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return msgpack.packb({"v": 1, "id": rid, "op": "step", "stream": stream, "x": P.array_map(x), **more})


def test_a_message_seen_twice_becomes_a_template_and_later_ones_are_made_from_it():
    codec = P.Codec()
    lane = codec._templates
    for rid in (7, 8):
        twin(codec, step_many(rid))
    assert len(lane) == 1 and lane.hits == 0  # the second sighting made it
    first = codec.decode_request(step_many(9, seed=1))
    again = codec.decode_request(step_many(10, seed=2))
    assert lane.hits == 2 and first.id == 9 and again.id == 10 and first.streams is again.streams
    assert type(first.streams) is IdList and first.streams == SENSORS
    want = np.random.default_rng(2).standard_normal((100, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.x, want)
    assert not again.x.flags.writeable and again.x.dtype == np.float32 and again.x.shape == (100, 3)
    for rid in range(11, 40):  # every later one, against the usual decode
        twin(codec, step_many(rid, seed=rid))
    assert lane.hits == 2 + 29
    assert codec.template_stats() == {"kept": 1, "bytes": lane.bytes, "hits": 31} and lane.bytes > 1000


@pytest.mark.parametrize("ids", [
    [0, 1, 127], [-1, -5, -32], [128, 200, 255], [-33, -100, -128], [256, 1000, 65535], [-129, -999, -32768],
    [65536, 10**6, 2**32 - 1], [-32769, -10**6, -2**31], [2**32, 2**40, 2**63 - 1], [2**63, 2**64 - 2, 2**64 - 1],
    [-2**31 - 1, -2**40, -2**63]])
def test_request_ids_of_every_int_format(ids):
    codec = P.Codec()
    for rid in ids + ids:
        got = twin(codec, step_many(rid, seed=abs(rid) % 1000))
        assert got[2] == (int, rid)
    assert codec._templates.hits == len(ids) * 2 - 2


def test_ids_of_one_size_but_another_format_share_a_template():
    codec = P.Codec()
    for rid in (200, 201, -100, -101, 255, -128):  # uint 8 and int 8: two bytes each
        twin(codec, step(rid))
    assert codec._templates.hits == 4 and len(codec._templates) == 1


@pytest.mark.parametrize("shape", [(3,), (1, 3), (5, 3), ()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_step_in_every_shape_and_dtype(shape, dtype):
    codec = P.Codec()
    for rid in range(5):
        twin(codec, step(rid, shape=shape, dtype=dtype, seed=rid))
    assert codec._templates.hits == 3


def test_a_seq_after_x_is_a_hole_too():
    """Exactly-once steps (the Python client writes seq after x): one template for a stream whatever its seq."""
    codec = P.Codec()
    for seq in range(1, 40):
        got = twin(codec, step(seq + 1000, seq=seq, seed=seq))
        assert ("seq", (int, seq)) in got[5]
    assert len(codec._templates) == 1 and codec._templates.hits == 37
    for seq in (127, 128, 255, 256, 2**40, -1, -2**63, 2**64 - 1):  # other sizes: a template each, made again
        for k in range(3):
            twin(codec, step(k, seq=seq + k if seq + k < 2**64 else seq - k))
    before = msgpack.packb({"v": 1, "id": 1, "op": "step", "seq": 5, "stream": "a",
                            "x": P.array_map(np.ones(3, np.float32))})
    for k in range(3):  # a seq before x is part of the key: the same seq comes again, another does not match
        twin(codec, before)
        twin(codec, before.replace(b"\xa3seq\x05", b"\xa3seq\x06"))
    nil = [msgpack.packb({"v": 1, "id": k, "op": "step", "stream": "a", "x": P.array_map(np.ones(3, np.float32)),
                          "seq": None}) for k in range(4)]
    for data in nil:  # a nil seq: no hole (nil is not an int), the template holds None
        assert ("seq", (type(None), None)) in twin(codec, data)[5]


def test_the_other_fields_come_with_the_template():
    codec = P.Codec()
    for rid in range(4):
        got = twin(codec, step(rid, seq=41 + rid, model="m-1", lists=True))
        assert got[3] is True and got[4] == "m-1" and ("seq", (int, 41 + rid)) in got[5]
    for rid in range(4):
        twin(codec, step_many(rid, ids=list(range(100, 160)), model="other"))
    assert codec._templates.hits == 4


def test_what_cannot_be_a_template_is_decoded_the_usual_way():
    codec = P.Codec()
    cases = [
        [msgpack.packb({"v": 1, "id": f"r{k}", "op": "step", "stream": "a", "x": P.array_map(np.ones(3, np.float32))})
         for k in range(3)],                                                         # a str id
        [msgpack.packb({"v": 1, "id": k, "op": "step", "stream": "a", "x": [1.0, 2.0, 3.0]}) for k in range(3)],
        [msgpack.packb({"v": 1, "id": k, "op": "step_many", "streams": ["a", "b"],     # xs, not x
                        "xs": [P.array_map(np.ones(3, np.float32))] * 2}) for k in range(3)],
        [msgpack.packb({"v": 1, "id": k, "op": "get_state", "stream": "a"}) for k in range(3)],  # another op
        [msgpack.packb({"x": P.array_map(np.ones(3, np.float32)), "v": 1, "op": "step", "stream": "a", "id": k})
         for k in range(3)],                                                         # x before id
        [msgpack.packb({"v": 1, "id": None, "op": "step", "stream": "a", "x": P.array_map(np.ones(3, np.float32))})
         for _ in range(3)],                                                         # a nil id
        [msgpack.packb({"v": 1, "id": True, "op": "step", "stream": "a", "x": P.array_map(np.ones(3, np.float32))})
         for _ in range(3)],                                                         # true is not an int id
    ]
    for messages in cases:
        for data in messages:
            twin(codec, data)
    assert len(codec._templates) == 0 and codec._templates.hits == 0


def test_refusals_are_the_usual_ones_for_messages_like_a_template():
    """Messages of a template's shape whose bytes outside the holes differ: another op's fields, a bad v, a
    wrong dtype, a payload of another length: none is made from the template; each is answered as usual."""
    codec = P.Codec()
    for rid in range(3):
        twin(codec, step(rid))
    assert codec._templates.hits == 1
    base = step(5)
    variants = [base.replace(b"\xa1v\x01", b"\xa1v\x02"), base.replace(b"float32", b"float16"),
                base.replace(b"\xa4step", b"\xa4stop"), base[:-1], base + b"\x00",
                base.replace(b"\xc4\x0c", b"\xc4\x0b")[:-1]]
    for data in variants:
        assert twin(codec, data)[0] == "refused"
    assert codec._templates.hits == 1


def test_templates_are_bounded():
    lane = Templates(max_bytes=4000, max_seen=8)
    codec = P.Codec()
    codec._templates = lane
    for k in range(20):  # each of 20 lists twice: kept, until the bytes run out (then all emptied)
        ids = [f"g{k}-{j}" for j in range(60)]
        for rid in range(3):
            twin(codec, step_many(rid, ids=ids))
        assert lane.bytes <= lane.max_bytes and len(lane._seen) <= lane.max_seen
    assert 0 < len(lane) < 20


def test_messages_that_never_come_again_are_looked_at_only_now_and_then():
    """A walk for a message's holes costs about half a one-sample decode: after LEARN_FREELY messages without a
    new template only one in LEARN_EVERY is walked, and a message that comes again is still kept."""
    from lstm_stream.templates import LEARN_EVERY, LEARN_FREELY
    codec = P.Codec()
    lane = codec._templates
    for k in range(1, 1001):  # steps to ever new streams: every message another
        twin(codec, step(k, stream=f"new-{k}"))
    assert len(lane) == 0 and LEARN_FREELY <= lane.looked <= LEARN_FREELY + 1000 // LEARN_EVERY + 1
    for rid in range(4 * LEARN_EVERY):  # then one that comes again: kept after a few sightings
        twin(codec, step(rid % 100, stream="again"))
    assert len(lane) == 1 and lane.hits > 0
    lists = [msgpack.packb({"v": 1, "id": k, "op": "step", "stream": "a", "x": [1.0, 2.0]}) for k in range(9)]
    looked = lane.looked
    for data in lists:  # nested lists: never walked
        twin(codec, data)
    assert lane.looked == looked


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_decode_as_the_usual_decode_says(data):
    """One codec trained on a few messages (templates of them kept), then mutations of those messages (bit
    flips, truncation, splices, other ids, other payloads): each decoded as a codec without templates does."""
    codec = P.Codec()
    seeds = [step_many(1), step(2), step(3, shape=(4, 3), dtype=np.float64),
             step_many(4, ids=list(range(200, 264)), seq=None), step(5, seq=300)]
    for seed in seeds:
        for _ in range(2):
            twin(codec, seed)
    for _ in range(3):
        seed = data.draw(st.sampled_from(seeds))
        mutated = data.draw(S.mutated(seed))
        twin(codec, mutated)
        twin(codec, mutated)  # (a second time: it may be a template now)


@settings(max_examples=200, deadline=None)
@given(st.integers(-2**63, 2**64 - 1), st.integers(-2**63, 2**64 - 1), st.binary(min_size=12, max_size=12))
def test_any_id_and_any_payload_of_a_template(a, b, payload):
    codec = P.Codec()
    head = msgpack.packb({"v": 1, "id": a, "op": "step", "stream": "s", "x": {"dtype": "float32", "shape": [3],
                                                                                "data": payload}})
    other = msgpack.packb({"v": 1, "id": b, "op": "step", "stream": "s", "x": {"dtype": "float32", "shape": [3],
                                                                                 "data": payload[::-1]}})
    for data in (head, head, other, head, other):
        twin(codec, data)


def test_a_daemon_steps_requests_from_templates_as_any_others():
    """Through the wire and the core: the outputs of requests made from templates are the bits of a Streams
    stepped directly, and info says how many there were."""
    import lstm_stream as ls
    from engine.config import EngineConfig
    from engine.core import EngineCore
    from engine.wire import WireCore
    from models import random_model

    model = random_model(np.random.default_rng(7), I=3, H=9, L=2, O=2)
    wire = WireCore(EngineCore(ls.Streams(model), EngineConfig()))
    alone = ls.Streams(model)
    rng = np.random.default_rng(8)
    for t in range(6):
        x = rng.standard_normal((len(SENSORS), 3)).astype(np.float32)
        data = msgpack.packb({"v": 1, "id": t, "op": "step_many", "streams": SENSORS, "x": P.array_map(x)})
        assert wire.submit(None, data) is None
        (_, reply), = wire.step()
        np.testing.assert_array_equal(P.to_array(msgpack.unpackb(reply)["y"]), alone.step_many(SENSORS, x))
        one = rng.standard_normal(3).astype(np.float32)
        assert wire.submit(None, P.Codec().request("step", 100 + t, {"stream": "solo", "x": one})) is None
        (_, reply), = wire.step()
        np.testing.assert_array_equal(P.to_array(msgpack.unpackb(reply)["y"]), alone.step("solo", one))
    info = wire.call({"v": 1, "id": "i", "op": "info"})["decoded_templates"]
    assert info == {"kept": 2, "bytes": wire.codec._templates.bytes, "hits": 8}
    codec = P.Codec()
    for seq in range(1, 8):  # exactly-once steps, each sent twice: the resend is answered from its receipt
        one = rng.standard_normal(3).astype(np.float32)
        data = codec.request("step", 200 + seq, {"stream": "once", "x": one, "seq": seq})
        replies = []
        for _ in range(2):
            assert wire.submit(None, data) is None
            (_, reply), = wire.step()
            replies.append(msgpack.unpackb(reply))
        want = alone.step("once", one)
        for k, rep in enumerate(replies):
            assert rep["ok"] and rep["seq"] == seq and rep.get("duplicate", False) == (k == 1)
            np.testing.assert_array_equal(P.to_array(rep["y"]), want)
    gap = codec.request("step", 300, {"stream": "once", "x": np.ones(3, np.float32), "seq": 9})
    assert wire.submit(None, gap) is None
    (_, reply), = wire.step()
    assert msgpack.unpackb(reply)["error"]["code"] == P.SEQ_GAP
    assert wire.codec._templates.hits >= 8 + 10
