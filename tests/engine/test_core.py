"""EngineCore in-process, through its wire face (WireCore: bytes in, bytes out): every op, cellular batching,
arrival order, isolation of bad requests, limits."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from models import random_model

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.wire import WireCore
from lstm_stream import protocol as P

I = 4


@pytest.fixture(scope="module")
def ar_model():
    return random_model(np.random.default_rng(3), I=I, H=8, L=2, O=I, head_activation="none")


@pytest.fixture(scope="module")
def cls_model():
    return random_model(np.random.default_rng(4), I=I, H=8, L=1, O=3)


def make_core(model, **config):
    return WireCore(EngineCore(ls.Streams(model, max_streams=config.pop("max_streams", None)),
                               EngineConfig(**config)))


def req(op, rid=1, **fields):
    return {"v": 1, "id": rid, "op": op, **fields}


def submit_all(core, msgs):
    """Queue every message, serve one turn; replies decoded, in arrival order."""
    immediate = [core.submit(k, core.codec.encode(m)) for k, m in enumerate(msgs)]
    replies = dict(core.step())
    for k, r in enumerate(immediate):
        if r is not None:
            replies[k] = r
    return [core.codec.decode(replies[k]) for k in range(len(msgs))]


def y_of(reply):
    assert reply["ok"], reply
    return P.to_array(reply["y"])


def test_step_returns_what_streams_returns(ar_model):
    core, ref = make_core(ar_model), ls.Streams(ar_model)
    x = np.random.default_rng(0).normal(size=(5, I)).astype(np.float32)
    np.testing.assert_array_equal(y_of(core.call(req("step", stream="a", x=x[0]))), ref.step("a", x[0]))
    np.testing.assert_array_equal(y_of(core.call(req("step", stream="a", x=x[1:]))), ref.step("a", x[1:]))
    np.testing.assert_array_equal(y_of(core.call(req("step", stream=7, x=x[0].tolist()))), ref.step(7, x[0]))


def test_one_turn_is_one_kernel_call_in_arrival_order(ar_model):
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(30, I)).astype(np.float32)
    ids = [f"s{k % 4}" for k in range(30)]
    core = make_core(ar_model)
    replies = submit_all(core, [req("step", k, stream=i, x=x) for k, (i, x) in enumerate(zip(ids, xs))])
    assert core.metrics["batches"] == 1 and core.metrics["batched_requests"] == 30
    ref = ls.Streams(ar_model)
    for k, (i, x) in enumerate(zip(ids, xs)):
        assert replies[k]["id"] == k
        np.testing.assert_array_equal(y_of(replies[k]), ref.step(i, x))


def test_step_many_matrix_and_ragged_forms(ar_model):
    rng = np.random.default_rng(2)
    core, ref = make_core(ar_model), ls.Streams(ar_model)
    X = rng.normal(size=(3, I)).astype(np.float32)
    y = y_of(core.call(req("step_many", streams=["a", "b", "a"], x=X)))
    np.testing.assert_array_equal(y, ref.step_many(["a", "b", "a"], X))
    xs = [rng.normal(size=(2, I)), rng.normal(size=I)]
    r = core.call(req("step_many", streams=["b", "c"], xs=xs))
    ys = [P.to_array(a) for a in r["ys"]]
    assert ys[0].shape == (2, I) and ys[1].shape == (I,)
    np.testing.assert_array_equal(ys[0], ref.step("b", xs[0]))
    np.testing.assert_array_equal(ys[1], ref.step("c", xs[1]))


def test_bad_request_in_a_batch_fails_alone(ar_model):
    x = np.ones(I, np.float32)
    core = make_core(ar_model)
    msgs = [req("step", 0, stream="a", x=x), req("step", 1, stream="b", x=[1.0, np.nan, 0, 0]),
            req("step", 2, stream="c", x=np.ones(3)), req("step", 3, stream="d" * 300, x=x),
            req("step_many", 4, streams=["a", "e"], x=np.ones((3, I))), req("step", 5, stream="a", x=x)]
    replies = submit_all(core, msgs)
    assert [r["ok"] for r in replies] == [True, False, False, False, False, True]
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {P.BAD_INPUT}
    assert "NaN" in replies[1]["error"]["message"] and "(3,)" in replies[2]["error"]["message"]
    assert sorted(core.streams.ids()) == ["a"] and core.metrics["batches"] == 1
    ref = ls.Streams(ar_model)
    ref.step("a", x)
    np.testing.assert_array_equal(y_of(replies[5]), ref.step("a", x))


def test_nan_anywhere_in_a_turn_fails_only_its_request(ar_model):
    """The planner checks NaN/Inf once per turn; when that fails, only the requests holding one are refused
    (naming the field), whichever form they came in, and the rest run as if those had not been sent."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, I)).astype(np.float32)
    inf_row, nan_rows = X[0].copy(), X[4:6].copy()
    inf_row[2], nan_rows[1, 0] = np.inf, np.nan
    msgs = [req("step", 0, stream="a", x=X[0]),                                   # bin map, model dtype
            req("step", 1, stream="b", x=inf_row),
            req("step_many", 2, streams=["c", "a"], x=X[1:3]),
            req("step_many", 3, streams=["d", "e"], xs=[X[3], nan_rows]),
            req("step", 4, stream="a", x=X[6].astype(np.float64)),                # converted on the way in
            req("step", 5, stream="c", x=X[7].tolist(), lists=True)]              # nested lists both ways
    core = make_core(ar_model)
    replies = submit_all(core, msgs)
    assert [r["ok"] for r in replies] == [True, False, True, False, True, True]
    assert replies[1]["error"] == {"code": P.BAD_INPUT, "message": "x contains NaN or Inf; expected finite values"}
    assert replies[3]["error"]["message"].startswith("xs[1] contains NaN or Inf")
    assert sorted(core.streams.ids()) == ["a", "c"]
    ref = ls.Streams(ar_model)
    np.testing.assert_array_equal(y_of(replies[0]), ref.step("a", X[0]))
    np.testing.assert_array_equal(y_of(replies[2]), ref.step_many(["c", "a"], X[1:3]))
    np.testing.assert_array_equal(y_of(replies[4]), ref.step("a", X[6]))
    assert isinstance(replies[5]["y"], list)
    np.testing.assert_array_equal(np.array(replies[5]["y"], np.float32), ref.step("c", X[7]))


def test_a_request_refused_for_nan_takes_no_room_from_the_others_of_its_turn(ar_model):
    """Room for two streams, one in use: in one turn, a NaN step of a new stream, then good steps of two more new
    ones. The first good one is created and the second is store_full, as if the NaN one had not been sent (the
    first good one was store_full too, when the NaN one's stream still counted as being created); a
    step_many refused whole for lack of that room gets it back the same way."""
    x = np.ones(I, np.float32)
    for later in ([req("step", 1, stream="b", x=x), req("step", 2, stream="c", x=x)],
                  [req("step_many", 1, streams=["b", "a"], x=np.ones((2, I))), req("step", 2, stream="c", x=x)]):
        core = make_core(ar_model, max_streams=2)
        core.call(req("step", 9, stream="a", x=x))
        replies = submit_all(core, [req("step", 0, stream="n", x=[1.0, np.nan, 0, 0])] + later)
        assert [r["ok"] for r in replies] == [False, True, False]
        assert replies[0]["error"]["code"] == P.BAD_INPUT and replies[2]["error"]["code"] == P.STORE_FULL
        assert sorted(core.streams.ids()) == ["a", "b"]


def test_store_full_refuses_exactly_the_overflowing_requests(ar_model):
    core = make_core(ar_model, max_streams=3)
    x = np.zeros(I)
    msgs = [req("step", k, stream=s, x=x) for k, s in enumerate(["a", "b", "a", "c", "d", "b"])]
    msgs.append(req("step_many", 6, streams=["a", "e"], x=np.zeros((2, I))))
    codes = [r["ok"] or r["error"]["code"] for r in submit_all(core, msgs)]
    assert codes == [True, True, True, True, P.STORE_FULL, True, P.STORE_FULL]
    assert sorted(core.streams.ids()) == ["a", "b", "c"]


def test_other_ops_see_the_steps_that_arrived_before_them(ar_model):
    core, ref = make_core(ar_model), ls.Streams(ar_model)
    x = np.full(I, 0.5, np.float32)
    msgs = [req("step", 0, stream="a", x=x), req("get_state", 1, stream="a"), req("reset", 2, stream="a"),
            req("step", 3, stream="a", x=x), req("copy", 4, src="a", dst="b"), req("ping", 5),
            req("step", 6, stream="b", x=x), req("drop", 7, stream="a"), req("step", 8, stream="a", x=x)]
    r = submit_all(core, msgs)
    assert all(m["ok"] for m in r), r
    y1 = ref.step("a", x)
    np.testing.assert_array_equal(P.to_array(r[1]["h"]), ref.get_state("a").h)
    assert r[1]["steps"] == 1
    ref.reset("a")
    np.testing.assert_array_equal(y_of(r[3]), ref.step("a", x))
    ref.copy("a", "b")
    np.testing.assert_array_equal(y_of(r[6]), ref.step("b", x))
    np.testing.assert_array_equal(y_of(r[8]), y1)  # dropped, then new: from zero state again
    assert core.metrics["batches"] == 4  # ping does not split a batch; the others do


def test_state_ops_and_errors(ar_model, cls_model):
    core = make_core(ar_model)
    assert core.call(req("get_state", stream="nope"))["error"]["code"] == P.UNKNOWN_STREAM
    st = core.call(req("get_state", stream="nope", lists=True))
    assert st["error"]["code"] == P.UNKNOWN_STREAM
    h, c = np.ones((2, 8)), np.zeros((2, 8))
    assert core.call(req("set_state", stream="z", h=h, c=c, steps=5))["ok"]
    got = core.call(req("get_state", stream="z", lists=True))
    assert got["h"] == h.tolist() and got["c"] == c.tolist() and got["steps"] == 5
    bad = core.call(req("set_state", stream="z", h=np.ones((2, 7)), c=c))
    assert bad["error"]["code"] == P.BAD_INPUT and "(2, 8)" in bad["error"]["message"]
    assert core.call(req("set_state", stream="z", h=h, c=c, steps=-1))["error"]["code"] == P.BAD_INPUT
    assert core.call(req("copy", src="nope", dst="y"))["error"]["code"] == P.UNKNOWN_STREAM
    assert core.call(req("streams"))["streams"] == ["z"]
    assert core.call(req("streams", offset=-1))["error"]["code"] == P.BAD_INPUT  # a value out of range
    assert core.call(req("snapshot"))["error"]["code"] == P.UNSUPPORTED


@pytest.mark.parametrize("fields, message", [
    ({"steps": 2**63}, "steps' must be an int from 0 to 2**63-1"),
    ({"steps": 2**64 - 1}, "steps' must be an int from 0 to 2**63-1"),
    ({"steps": -1}, "steps' must be an int from 0 to 2**63-1"),
    ({"h": np.ones((2, 7))}, "'h' has shape (2, 7); expected (2, 8)"),
    ({"c": np.ones(8)}, "'c' has shape (8,)"),
    ({"h": np.full((2, 8), np.nan)}, "'h' contains NaN"),
    ({"c": [[np.inf] * 8] * 2}, "'c' contains NaN or Inf"),
])
def test_a_refused_set_state_changes_nothing(ar_model, fields, message):
    """bad_input, and the existing stream keeps its h, c and steps; a new id is not created."""
    core = make_core(ar_model)
    core.call(req("step", stream="a", x=np.full((3, I), 0.5)))
    before = core.call(req("get_state", stream="a", lists=True))
    state = {"h": np.zeros((2, 8)), "c": np.zeros((2, 8)), "steps": 7, **fields}
    for stream in ("a", "new"):
        r = core.call(req("set_state", stream=stream, **state))
        assert r["error"]["code"] == P.BAD_INPUT and message in r["error"]["message"], r
    assert core.call(req("get_state", stream="a", lists=True)) == before and before["steps"] == 3
    assert core.call(req("streams"))["streams"] == ["a"]
    assert core.call(req("set_state", stream="a", h=np.zeros((2, 8)), c=np.zeros((2, 8)), steps=2**63 - 1))["ok"]
    assert core.call(req("get_state", stream="a"))["steps"] == 2**63 - 1


def test_forecast(ar_model, cls_model):
    core, ref = make_core(ar_model), ls.Streams(ar_model)
    x = np.full((3, I), 0.25)
    core.call(req("step", stream="a", x=x))
    ref.step("a", x)
    y = y_of(core.call(req("forecast", stream="a", horizon=6)))
    np.testing.assert_array_equal(y, ref.forecast("a", 6))
    assert core.call(req("forecast", stream="a", horizon=0))["error"]["code"] == P.BAD_INPUT
    cls = make_core(cls_model)
    cls.call(req("step", stream="a", x=x))
    r = cls.call(req("forecast", stream="a", horizon=3))
    assert r["error"]["code"] == P.UNSUPPORTED and "autoregressive" in r["error"]["message"]


def test_info(ar_model):
    core = make_core(ar_model, max_streams=10)
    core.call(req("step", stream="a", x=np.zeros(I)))
    info = core.call(req("info"))
    assert info["fingerprint"] == ar_model.fingerprint and info["model"] == ar_model.config()
    assert info["backend"] == "cpu" and info["streams"] == 1 and info["max_streams"] == 10
    assert info["protocol"] == P.PROTOCOL_VERSION and info["counters"]["batches"] == 1


def test_busy_when_the_queue_is_full(ar_model):
    core = make_core(ar_model, max_pending=3, max_batch=2)
    x = np.zeros(I)
    immediate = [core.submit(k, core.codec.request("step", k, {"stream": "a", "x": x})) for k in range(5)]
    assert immediate[:3] == [None] * 3
    for data in immediate[3:]:
        r = core.codec.decode(data)
        assert r["error"]["code"] == P.BUSY and "not applied" in r["error"]["message"]
    assert len(core.step()) == 2 and core.pending == 1 and len(core.step()) == 1
    assert core.streams.stream_info("a")["steps"] == 3


def test_undecodable_requests_get_error_replies(ar_model):
    core = make_core(ar_model, max_message_bytes=1000)
    cases = [(b"\xc1", P.BAD_MESSAGE), (b"\x93\x01\x02\x03", P.BAD_MESSAGE), (b"\x00" * 1001, P.TOO_LARGE),
             (core.codec.encode({"v": 1, "id": 9, "op": "fly"}), P.UNKNOWN_OP)]
    for data, code in cases:
        r = core.codec.decode(core.submit(None, data))
        assert r["ok"] is False and r["error"]["code"] == code
    assert core.pending == 0 and core.metrics["errors"] == 4


POOL = [0, 1, "a", "b", 2**40, "c"]  # int and str ids; each run creates some and reuses them across turns


@given(st.lists(st.tuples(st.sampled_from(["step", "matrix", "ragged"]),
                          st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=4),
                          st.integers(1, 3), st.booleans()), min_size=1, max_size=25),
       st.integers(1, 6), st.integers(1, 12))
def test_any_split_into_turns_equals_streams_alone(ops, max_batch, max_turn_samples):
    """Any mix of step and step_many requests (repeated ids, new and known streams, str and int ids), split
    into turns of any size (by request count or by samples), gives every stream the outputs it gets stepped
    alone."""
    model = random_model(np.random.default_rng(5), I=2, H=4, L=1, O=2)
    core = WireCore(EngineCore(ls.Streams(model), EngineConfig(max_batch=max_batch,
                                                                max_turn_samples=max_turn_samples)))
    rng = np.random.default_rng(len(ops))
    msgs, expect, alone = [], [], {}

    def ref(i, x):
        alone.setdefault(i, ls.Streams(model))
        return alone[i].step(i, x)

    for k, (kind, picks, T, one) in enumerate(ops):
        ids = [POOL[p] for p in picks]
        if kind == "step":
            x = rng.normal(size=(2,) if one else (T, 2)).astype(np.float32)
            msgs.append(core.codec.request("step", k, {"stream": ids[0], "x": x}))
            expect.append(ref(ids[0], x))
        elif kind == "matrix":
            X = rng.normal(size=(len(ids), 2)).astype(np.float32)
            msgs.append(core.codec.request("step_many", k, {"streams": ids, "x": X}))
            expect.append(np.stack([ref(i, x) for i, x in zip(ids, X)]))
        else:
            xs = [rng.normal(size=(2,) if one else (T, 2)).astype(np.float32) for _ in ids]
            msgs.append(core.codec.request("step_many", k, {"streams": ids, "xs": xs}))
            expect.append([ref(i, x) for i, x in zip(ids, xs)])
    for k, m in enumerate(msgs):
        assert core.submit(k, m) is None
    replies = {}
    while core.pending:
        replies.update(core.step())
    for k, want in enumerate(expect):
        r = core.codec.decode(replies[k])
        if isinstance(want, list):
            assert r["ok"] and len(r["ys"]) == len(want), r
            for y, w in zip(r["ys"], want):
                np.testing.assert_array_equal(P.to_array(y), w)
        else:
            np.testing.assert_array_equal(y_of(r), want)


def test_housekeeping_evicts_idle_streams_and_logs_metrics(ar_model, caplog):
    now = [1000.0]
    streams = ls.Streams(ar_model, idle_ttl=10.0, clock=lambda: now[0])
    core = EngineCore(streams, EngineConfig(evict_every=1.0, metrics_every=60.0), clock=lambda: now[0])
    core.call(req("step", stream="old", x=np.zeros(I)))
    now[0] += 8
    core.call(req("step", stream="new", x=np.zeros(I)))
    core.call(req("step", stream="new", x=np.ones(3)))  # one error among three requests
    now[0] += 5
    with caplog.at_level("INFO", logger="lstm_stream.engine"):
        deadline = core.housekeep()
        assert streams.ids() == ["new"] and deadline == now[0] + 1.0
        now[0] += 60
        core.housekeep()
    lines = [r.getMessage() for r in caplog.records]
    assert any("evicted 1 streams idle" in m for m in lines)
    metrics = [r for r in caplog.records if r.getMessage().startswith("served 3 requests")]
    assert metrics and metrics[0].levelname == "WARNING" and "errors 1 (33.33%)" in metrics[0].getMessage()


def test_a_dropped_stream_in_a_repeated_id_list_starts_again_from_zero():
    """The store caches the slots of an id list seen twice (store.IdGroups); after a drop between two
    step_many requests of the same list, and a new stream that reuses the freed slot, the dropped id must get
    a new stream of its own, and every other stream its own state."""
    model = random_model(np.random.default_rng(8), I=2, H=4, L=1, O=2)
    core = WireCore(EngineCore(ls.Streams(model)))
    ids = [f"sensor-{k}" for k in range(20)]
    rng = np.random.default_rng(9)
    alone = {}

    def ref(i, x):
        alone.setdefault(i, ls.Streams(model))
        return alone[i].step(i, x)

    for turn in range(4):
        msgs, want = [], []
        for k in range(3):
            X = rng.normal(size=(len(ids), 2)).astype(np.float32)
            msgs.append(core.codec.request("step_many", 10 * turn + k, {"streams": ids, "x": X}))
            want.append(np.stack([ref(i, x) for i, x in zip(ids, X)]))
            if k == 1:  # a drop between two requests of the same list, and a new stream that takes its slot
                gone = ids[(turn * 7) % len(ids)]
                msgs.append(core.codec.request("drop", 100 + turn, {"stream": gone}))
                want.append(None)
                del alone[gone]
                x = rng.normal(size=2).astype(np.float32)
                msgs.append(core.codec.request("step", 200 + turn, {"stream": f"new-{turn}", "x": x}))
                want.append(ref(f"new-{turn}", x))
        for k, m in enumerate(msgs):
            assert core.submit(k, m) is None
        replies = dict(core.step())
        for k, w in enumerate(want):
            r = core.codec.decode(replies[k])
            assert r["ok"], r
            if w is not None:
                np.testing.assert_array_equal(y_of(r), w)
    assert core.streams.get_state(ids[0]).steps == 3 * 4 - 2  # dropped after turn 0's second request
    assert all(core.streams.get_state(f"new-{t}").steps == 1 for t in range(4))
    info = core.call(req("info"))["id_lists"]
    # turn 0 creates the streams; turn 1 sees the list (request 1 caches it); in turns 2 and 3 request 0
    # caches it again and request 1 hits; each drop empties the cache, and each request 2 names the
    # dropped id, so it is looked up id by id
    assert info == {"cached": 0, "hits": 2}


def test_a_step_alone_and_the_same_step_in_a_plan_answer_alike(ar_model):
    """A turn of one `step` request runs Streams.step directly (the low-load path); within a turn of several
    requests the planner runs it. Both must give the same bits and the same errors."""
    x, xs = np.linspace(-1, 1, I).astype(np.float32), np.linspace(0, 1, 3 * I).reshape(3, I)
    cases = [dict(stream="a", x=x), dict(stream=7, x=xs), dict(stream="a", x=x.tolist()),
             dict(stream="b", x=np.ones(I + 1)), dict(stream="c", x=[np.nan] * I), dict(stream="d" * 300, x=x),
             dict(stream="new", x=x), dict(stream="new2", x=[np.inf] * I)]
    alone, planned = make_core(ar_model, max_streams=3), make_core(ar_model, max_streams=4)
    submit_all(planned, [req("step", 0, stream="other", x=x)])  # the one more stream that the room allows
    for k, case in enumerate(cases):
        a = submit_all(alone, [req("step", k, **case)])[0]
        p = submit_all(planned, [req("step", k, **case), req("step", 99, stream="other", x=x)])[0]
        assert a["ok"] == p["ok"], (case, a, p)
        if a["ok"]:
            np.testing.assert_array_equal(y_of(a), y_of(p))
            assert y_of(a).shape == y_of(p).shape
        else:
            assert a["error"] == p["error"], (case, a, p)
    assert alone.metrics["batches"] == 4 and planned.metrics["batches"] == 1 + len(cases)


def test_requests_over_the_per_request_bounds_are_too_large_and_change_nothing(ar_model):
    core = make_core(ar_model, max_request_samples=8, max_request_new_streams=3)
    core.call(req("step", stream="k0", x=np.zeros(I).tolist()))
    cases = [
        (req("step", stream="a", x=np.zeros((9, I)).tolist()), "--max-request-samples", 8),
        (req("step_many", streams=[f"n{k}" for k in range(4)], x=np.zeros((4, I)).tolist()),
         "--max-request-new-streams", 3),
        (req("step_many", streams=["k0"], xs=[np.zeros((9, I)).tolist()]), "--max-request-samples", 8),
        (req("forecast", stream="k0", horizon=9), "--max-request-samples", 8),
    ]
    for msg, option, limit in cases:
        r = core.call(msg)
        assert r["ok"] is False and r["error"]["code"] == P.TOO_LARGE, r
        assert option in r["error"]["message"] and "nothing was applied" in r["error"]["message"]
        assert r["error"]["option"] == option and r["error"]["limit"] == limit
    assert core.streams.ids() == ["k0"] and core.streams.stream_info("k0")["steps"] == 1
    # at the bounds: accepted (3 new streams and a known one; 8 samples)
    assert core.call(req("step_many", streams=["n0", "n1", "n2", "k0"], x=np.zeros((4, I)).tolist()))["ok"]
    assert core.call(req("step", stream="a", x=np.zeros((8, I)).tolist()))["ok"]
    assert core.call(req("forecast", stream="k0", horizon=8))["ok"]


def test_ping_and_info_are_answered_at_once_never_queued_never_busy(ar_model):
    core = make_core(ar_model, max_pending=2)
    x = np.zeros(I)
    for k in range(2):
        assert core.submit(("peer",), core.codec.request("step", k, {"stream": "a", "x": x})) is None
    for op in ("ping", "info"):
        r = core.codec.decode(core.submit(("peer",), core.codec.encode(req(op, 9))))
        assert r["ok"] is True and r["id"] == 9
    assert core.pending == 2
    busy = core.codec.decode(core.submit(("peer",), core.codec.request("step", 5, {"stream": "a", "x": x})))
    assert busy["error"]["code"] == P.BUSY  # the in-process safety net: the server stops reading before


def test_the_queue_counts_its_wire_bytes(ar_model):
    core = make_core(ar_model)
    data = [core.codec.request("step", k, {"stream": "a", "x": np.zeros(I)}) for k in range(3)]
    for d in data:
        assert core.submit((b"p",), d) is None
    assert core.core.pending_bytes == sum(map(len, data))
    assert core.codec.decode(core.submit((b"p",), core.codec.encode(req("ping"))))["ok"]  # not queued
    assert core.core.pending_bytes == sum(map(len, data))
    core.step()
    assert core.core.pending_bytes == 0 and core.pending == 0


def test_clients_are_served_round_robin_each_in_its_own_order(ar_model):
    """A flooding client's backlog does not delay another client's request; each client's requests keep
    their order (outputs equal each stream stepped alone)."""
    core = make_core(ar_model, max_batch=4)
    x = np.random.default_rng(0).normal(size=(30, I))
    for k in range(20):
        core.submit((b"flood",), core.codec.request("step", k, {"stream": "f", "x": x[k]}))
    core.submit((b"late",), core.codec.request("step", 100, {"stream": "g", "x": x[20]}))
    first = [core.codec.decode(d)["id"] for _, d in core.step()]
    assert 100 in first and len(first) == 4
    got = first + [core.codec.decode(d)["id"] for _ in range(10) for _, d in core.step()]
    assert [i for i in got if i != 100] == list(range(20))
    assert core.streams.stream_info("f")["steps"] == 20


def test_a_client_over_its_quota_gets_busy_others_do_not(ar_model):
    core = make_core(ar_model, max_peer_pending=2)
    x = np.zeros(I)
    out = [core.submit((b"a",), core.codec.request("step", k, {"stream": "a", "x": x})) for k in range(3)]
    assert out[:2] == [None, None]
    r = core.codec.decode(out[2])
    assert r["error"]["code"] == P.BUSY and "--max-peer-pending 2" in r["error"]["message"]
    assert core.submit((b"b",), core.codec.request("step", 9, {"stream": "b", "x": x})) is None
    assert len(core.step()) == 3 and core.streams.stream_info("a")["steps"] == 2
