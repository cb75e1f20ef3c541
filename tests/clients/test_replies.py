"""clients.replies.ReplyReader: a step reply read from its template equals the same reply decoded in full;
anything that does not match the template byte for byte is decoded in full (or refused) as before."""
import numpy as np
import pytest

from clients.errors import BadReply
from clients.replies import MAX_SHAPES, ReplyReader
from lstm_stream import protocol as P
from lstm_stream.messages import Reply

IDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, -1, -2**40, "r-7", ""]


def decoded(data):
    """The reply as the bounded decoder gives it, y as an array."""
    reply = P.Codec().decode_reply(data)
    if isinstance(reply.get("y"), dict):
        reply["y"] = P.to_array(reply["y"], "y")
    return reply


def same(a: dict, b: dict) -> bool:
    a = dict(a, y=P.to_array(a["y"], "y")) if isinstance(a.get("y"), dict) else a
    if a.keys() != b.keys() or type(a["id"]) is not type(b["id"]) or a["id"] != b["id"]:
        return False
    ya, yb = a.get("y"), b.get("y")
    if isinstance(ya, np.ndarray) or isinstance(yb, np.ndarray):
        return ya.dtype == yb.dtype and ya.shape == yb.shape and ya.tobytes() == yb.tobytes()
    return a == b


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7)])
def test_template_reads_equal_full_decodes(dtype, shape):
    rng = np.random.default_rng(abs(hash((dtype, shape))) % 2**32)
    enc, reader = P.Codec(), ReplyReader(P.Codec())
    for k, rid in enumerate(IDS * 2):  # the second round reads every int id from the learned template
        y = rng.standard_normal(shape).astype(dtype)
        y.flat[0] = [np.nan, -np.inf, -0.0, 3.4e38][k % 4] if dtype == "float32" else y.flat[0]
        data = enc.reply(Reply(id=rid, result={"y": y}))
        got = reader(data)
        assert same(got, decoded(data))
        assert P.to_array(got["y"], "y").tobytes() == y.tobytes()
        if k >= len(IDS) and isinstance(rid, int) and rid >= 0:  # from the template: an array of its own
            assert isinstance(got["y"], np.ndarray) and got["y"].flags.writeable
            assert not np.shares_memory(got["y"], np.frombuffer(data, np.uint8))
    assert len(reader._ys) == 1  # learned once, then reused


def test_templates_are_learned_per_shape_and_capped():
    enc, reader = P.Codec(), ReplyReader(P.Codec())
    for t in range(1, MAX_SHAPES + 5):
        y = np.arange(t * 3, dtype=np.float32).reshape(t, 3) + 0.5
        for rid in (7, 70000):
            got = reader(enc.reply(Reply(id=rid, result={"y": y})))
            assert got["id"] == rid and same(got, {"v": 1, "id": rid, "ok": True, "y": y})
    assert len(reader._ys) == MAX_SHAPES


def test_other_replies_are_decoded_in_full():
    enc, reader = P.Codec(), ReplyReader(P.Codec())
    y = np.linspace(-1, 1, 4, dtype=np.float32)
    reader(enc.reply(Reply(id=1, result={"y": y})))  # learn the template
    others = [
        enc.error(2, P.BUSY, "later"),
        enc.reply(Reply(id=3, result={"y": y, "duplicate": True})),   # a receipt: one more key
        enc.reply(Reply(id=4, result={"y": y}, lists=True)),           # nested lists
        enc.reply(Reply(id=5, result={"y": y[:3]})),                    # another shape
        enc.reply(Reply(id=6, result={"y": y.astype(np.float64)})),     # another dtype
        enc.ok(7, {"time": 1.5}),
    ]
    for data in others:
        assert same(reader(data), decoded(data))


def test_a_damaged_template_reply_is_not_read_as_one():
    enc, reader = P.Codec(), ReplyReader(P.Codec())
    y = np.ones(4, dtype=np.float32)
    good = enc.reply(Reply(id=300, result={"y": y}))
    reader(good)
    for bad in (good[:-1], good + b"\x00", good[:-4]):
        with pytest.raises(BadReply):
            reader(bad)
    flipped = bytearray(good)
    flipped[good.index(b"shape") + 6] ^= 0x01  # the shape's length: not the template any more
    reply = reader(bytes(flipped))
    assert isinstance(reply["y"], dict)  # decoded in full, so the call's parse finds the mismatch
    with pytest.raises(P.ProtocolError, match="bytes"):
        P.to_array(reply["y"], "y")


def test_call_finish_takes_a_steps_array_as_the_general_path_would():
    """Call.finish returns a step's y as the reply reader gives it (a writable array, ok, this version) without
    check_reply/_y; anything else takes the general path: a read-only y is copied (as to_array does), another
    version is a BadReply, an error reply raises its error."""
    from clients._api import Call, _y
    from clients.errors import ServerError
    call = Call("step", {}, _y)
    y = np.arange(4, dtype=np.float32)
    assert call.finish({"v": 1, "id": 1, "ok": True, "y": y}) is y
    ro = y.copy()
    ro.flags.writeable = False
    out = call.finish({"v": 1, "id": 1, "ok": True, "y": ro})
    assert out is not ro and out.flags.writeable and np.array_equal(out, ro)
    with pytest.raises(BadReply):
        call.finish({"v": 2, "id": 1, "ok": True, "y": y})
    with pytest.raises(ServerError):
        call.finish({"v": 1, "id": 1, "ok": False, "error": {"code": "internal", "message": "m"}})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1,), (4,), (3, 5)])
def test_step_y_is_the_y_a_full_read_gives_for_the_usual_reply_to_that_id(dtype, shape):
    """ReplyReader.step_y (Client.step's short path): for the usual reply to request rid, the same y as the
    reader's map (same dtype, shape, bytes, writable, not a view of the message); None for any other id, and
    for any message that is not the usual reply, which the caller then reads in full."""
    rng = np.random.default_rng(abs(hash(("step_y", dtype, shape))) % 2**32)
    enc, reader = P.Codec(), ReplyReader(P.Codec())
    y0 = rng.standard_normal(shape).astype(dtype)
    assert reader.step_y(enc.reply(Reply(id=1, result={"y": y0})), 1) is None  # no template learned yet
    reader(enc.reply(Reply(id=1, result={"y": y0})))
    for rid in [r for r in IDS if isinstance(r, int) and r >= 0]:
        y = rng.standard_normal(shape).astype(dtype)
        data = enc.reply(Reply(id=rid, result={"y": y}))
        got = reader.step_y(data, rid)
        full = reader(data)["y"]
        assert got.dtype == full.dtype == y.dtype and got.shape == full.shape == y.shape
        assert got.tobytes() == full.tobytes() == y.tobytes()
        assert got.flags.writeable and not np.shares_memory(got, np.frombuffer(data, np.uint8))
        for other in {rid + 1, max(rid - 1, 0), 2**64 - 1} - {rid}:
            assert reader.step_y(data, other) is None
    others = [enc.error(9, P.BUSY, "later"), enc.reply(Reply(id=9, result={"y": y0, "duplicate": True})),
              enc.reply(Reply(id=9, result={"y": y0}, lists=True)), enc.ok(9, {"time": 1.5}),
              enc.reply(Reply(id=9, result={"y": y0.astype("float64" if dtype == "float32" else "float32")})),
              enc.reply(Reply(id=9, result={"y": np.concatenate([y0.ravel(), y0.ravel()])}))]
    good = enc.reply(Reply(id=9, result={"y": y0}))
    others += [good[:-1], good + b"\x00", b"", b"\x84"]
    for data in others:
        assert reader.step_y(data, 9) is None
