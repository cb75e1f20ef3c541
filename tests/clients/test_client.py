"""The sync client against a real daemon, and the in-process LocalClient over an EngineCore with the same
model (one Api, one behaviour): every method, errors, pipelining, timeouts."""
import time

import numpy as np
import pytest
from daemons import DaemonFactory

import lstm_stream as ls
from clients import (BadRequest, Client, ClientClosed, ClientError, InputError, LocalClient, PipelineError,
                     ServerError, State, Timeout, UnknownStream)

I = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory, served_models):
    """(endpoint, model) of a daemon with the autoregressive model and a snapshot dir."""
    tmp = tmp_path_factory.mktemp("client")
    factory = DaemonFactory(tmp)
    path, model = served_models["ar"]
    try:
        yield factory("--model", path, "--snapshot-dir", tmp / "state").endpoint, model
    finally:
        factory.close()


@pytest.fixture(params=["daemon", "in-process"])
def client(request, served, tmp_path):
    if request.param == "daemon":
        with Client(served[0], timeout=10) as c:
            yield c
        return
    from engine.core import EngineCore
    from engine.persistence import Snapshots, prepare_dir
    streams = ls.Streams(served[1])
    prepare_dir(tmp_path / "state")
    with LocalClient(EngineCore(streams, snapshots=Snapshots(streams, tmp_path / "state"))) as c:
        yield c


def test_step_and_step_many_equal_the_core(client, served):
    ref = ls.Streams(served[1])
    rng = np.random.default_rng(0)
    x1, xs, X = rng.normal(size=I), rng.normal(size=(3, I)).astype(np.float32), rng.normal(size=(2, I))
    np.testing.assert_array_equal(client.step("t1", x1), ref.step("t1", x1))
    np.testing.assert_array_equal(client.step("t1", xs), ref.step("t1", xs))
    np.testing.assert_array_equal(client.step(42, x1.tolist()), ref.step(42, x1))
    out = client.step_many({"t1": X[0], 42: X[1]})
    assert list(out) == ["t1", 42]
    np.testing.assert_array_equal(out["t1"], ref.step("t1", X[0]))
    np.testing.assert_array_equal(out[42], ref.step(42, X[1]))
    ragged = client.step_many({"t2": xs, "t3": x1})
    assert ragged["t2"].shape == (3, I) and ragged["t3"].shape == (I,)
    np.testing.assert_array_equal(ragged["t2"], ref.step("t2", xs))


def test_state_ops(client, served):
    x = np.full(I, 0.3)
    client.step("s", x)
    s = client.get_state("s")
    assert isinstance(s, State) and s.steps == 1 and s.h.shape == (2, 16) and s.last_seen > 0
    client.set_state("s2", s)
    client.copy("s", "what-if")
    np.testing.assert_array_equal(client.step("s2", x), client.step("what-if", x))
    client.set_state("s3", (s.h, s.c))
    client.set_state("s4", {"h": s.h, "c": s.c, "steps": 9})
    assert client.get_state("s4").steps == 9
    client.reset("s")
    assert client.get_state("s").steps == 0 and not client.get_state("s").h.any()
    client.drop("s")
    assert "s" not in client.streams()
    with pytest.raises(UnknownStream) as e:
        client.get_state("s")
    assert isinstance(e.value, KeyError) and e.value.code == "unknown_stream" and "'s'" in str(e.value)


def test_forecast_does_not_touch_the_stream(client, served):
    ref = ls.Streams(served[1])
    x = np.random.default_rng(1).normal(size=(4, I))
    client.step("f", x)
    ref.step("f", x)
    before = client.get_state("f")
    np.testing.assert_array_equal(client.forecast("f", horizon=50), ref.forecast("f", 50))
    after = client.get_state("f")
    np.testing.assert_array_equal(before.h, after.h)
    assert before.steps == after.steps


def test_info_streams_snapshot_ping(client, served):
    client.step("i", np.zeros(I))
    info = client.info()
    assert info["fingerprint"] == served[1].fingerprint and info["model"]["input_size"] == I
    assert info["streams"] >= 1 and info["backend"] == "cpu"
    assert "i" in client.streams() and len(client.streams(limit=1)) == 1
    snap = client.snapshot()
    assert snap["streams"] == info["streams"] and snap["bytes"] > 0
    assert abs(client.ping() - time.time()) < 60


def test_errors_are_typed(client):
    with pytest.raises(BadRequest) as e:
        client.step("e", np.zeros(I + 1))
    assert isinstance(e.value, ValueError) and e.value.code == "bad_input" and f"({I},)" in str(e.value)
    with pytest.raises(BadRequest, match="NaN"):
        client.step("e", [0, np.nan, 0, 0])
    client.step("e0", np.zeros(I))
    with pytest.raises(ServerError, match="horizon"):
        client.forecast("e0", horizon=10**9)
    assert client.ping()  # still serving


def test_pipeline_results_in_order_with_exceptions(client):
    with client.pipeline() as p:
        for k in range(100):
            p.step(f"p{k % 7}", np.full(I, k / 100))
        p.get_state("p3")
    assert len(p.results) == 101 and p.results[-1].steps == 14
    p = client.pipeline().step("p0", np.zeros(I)).get_state("never").ping()
    res = p.execute(return_exceptions=True)
    assert isinstance(res[1], UnknownStream) and res[2] is not None
    p = client.pipeline().get_state("never")
    with pytest.raises(PipelineError) as e:
        p.execute()
    assert isinstance(e.value.results[0], UnknownStream) and e.value.__cause__ is e.value.results[0]


def test_a_failed_pipeline_call_says_what_was_applied(client, served):
    ref = ls.Streams(served[1])
    x = np.full(I, 0.25)
    p = client.pipeline().step("pl-a", x).step("pl-b", np.zeros(I + 1)).step("pl-c", x)
    with pytest.raises(PipelineError) as e:
        p.execute()
    good, bad, good2 = e.value.results
    assert p.results is e.value.results and e.value.errors == [bad] and isinstance(e.value, ClientError)
    np.testing.assert_array_equal(good, ref.step("pl-a", x))
    np.testing.assert_array_equal(good2, ref.step("pl-c", x))
    assert isinstance(bad, BadRequest) and bad.code == "bad_input" and f"({I},)" in str(bad)
    assert str(e.value).startswith("1 of 3 pipelined calls failed (the others were applied; see .results); the "
                                   "first, call 1: BadRequest: [bad_input]"), str(e.value)
    states = client.pipeline().get_state("pl-a").get_state("pl-c").execute()  # the good ones were applied
    assert [s.steps for s in states] == [1, 1] and "pl-b" not in client.streams()
    with pytest.raises(PipelineError):  # the same from a with block
        with client.pipeline() as p:
            p.step("pl-a", x).reset("pl-c").get_state("pl-never")
    assert p.results[0].shape == (I,) and p.results[1] is None and isinstance(p.results[2], UnknownStream)
    assert client.get_state("pl-a").steps == 2
    res = client.pipeline().step("pl-c", x).step("pl-b", np.zeros(I + 1)).execute(return_exceptions=True)
    assert isinstance(res[1], BadRequest) and client.get_state("pl-c").steps == 1  # reset, then one step


def test_a_timed_out_pipeline_sets_results(tmp_path):
    with Client(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.2) as c:
        p = c.pipeline().ping().step("a", np.zeros(I))
        with pytest.raises(Timeout) as e:
            p.execute()
        assert p.results == [e.value, e.value]


@pytest.mark.parametrize("call, message", [
    (lambda c: c.step("in-a", [0.1, "x", 0.3, 0.4]), "x contains a str"),
    (lambda c: c.step("in-a", [True, 0.2, 0.3, 0.4]), "x contains a bool"),
    (lambda c: c.step("in-a", [[0.1, 0.2, 0.3, 0.4], [0, 0, False, 0]]), "x contains a bool"),
    (lambda c: c.step("in-a", np.ones(I, dtype=bool)), "x contains a bool"),
    (lambda c: c.step("in-a", [0.1, None, 0.3, 0.4]), "x contains None"),
    (lambda c: c.step_many({"in-a": np.zeros(I), "in-b": [0, 1, True, 0]}), "inputs['in-b'] contains a bool"),
    (lambda c: c.step_many({"in-a": np.zeros((2, I)), 7: ["1", 2, 3, 4]}), "inputs[7] contains a str"),
    (lambda c: c.set_state("in-a", (np.zeros((2, 16)), np.zeros((2, 16), bool))), "c contains a bool"),
    (lambda c: c.set_state("in-a", {"h": [[True] * 16] * 2, "c": np.zeros((2, 16))}), "h contains a bool"),
    (lambda c: c.pipeline().step("in-a", np.zeros(I)).step("in-b", [0, 0, 0, True]), "x contains a bool")])
def test_inputs_that_are_not_real_numbers_are_refused_before_sending(client, call, message):
    with pytest.raises(InputError) as e:
        call(client)
    assert str(e.value) == f"{message}; expected real numbers (float or int)"
    assert isinstance(e.value, ValueError) and isinstance(e.value, ClientError)
    assert not {"in-a", "in-b", 7} & set(client.streams())  # nothing was sent
    with pytest.raises(InputError, match=r"x is not an array of numbers \(.*inhomogeneous"):
        client.step("in-a", [[0.1, 0.2, 0.3, 0.4], [0.1]])


def test_a_plain_step_takes_the_short_path_and_answers_as_the_general_one(served):
    """Client.step of an array sent as it is, without seq, skips Api.step and _run (Client._step_plain): its
    outputs are those of the general path (Api.step, through _run) on a twin stream, bit for bit, and so are
    its errors."""
    from clients._api import Api
    rng = np.random.default_rng(11)
    with Client(served[0], timeout=10) as c:
        through_run = []
        run = c._run
        c._run = lambda call: (through_run.append(call.op), run(call))[1]
        xs = [rng.normal(size=I).astype(np.float32), rng.normal(size=I), rng.normal(size=(3, I)).astype(np.float32)]
        for k, x in enumerate(xs * 2):
            np.testing.assert_array_equal(c.step(f"short-{k % 3}", x), Api.step(c, f"general-{k % 3}", x))
        assert through_run == ["step"] * 6  # the general calls only
        for bad in (np.zeros(I + 1), np.array([0, np.nan, 0, 0])):
            with pytest.raises(BadRequest) as short:
                c.step("short-bad", bad)
            with pytest.raises(BadRequest) as general:
                Api.step(c, "general-bad", bad)
            assert (short.value.code, str(short.value)) == (general.value.code, str(general.value))
        assert through_run == ["step"] * 8


def test_timeouts_raise_clearly_and_only_idempotent_ops_retry(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"[:100]
    with Client(endpoint, timeout=0.2, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(Timeout, match="no reply") as e:
            c.step("a", np.zeros(I))
        assert isinstance(e.value, TimeoutError) and time.monotonic() - t0 < 0.5  # a step is never resent
        sock = c._sock
        with pytest.raises(Timeout):
            c.step("a", np.zeros(I, np.float32))
        assert c._sock is not sock  # replaced: a late reply cannot answer the next call
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            c.ping()
        assert time.monotonic() - t0 >= 0.55  # ping is idempotent: 3 attempts
    with pytest.raises(ClientClosed):
        c.ping()


@pytest.mark.parametrize("opts", [{"timeout": 0}, {"timeout": None}, {"retries": -1}, {"hwm": 0}])
def test_options_are_validated_and_keyword_only(opts):
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", **opts)
    with pytest.raises(TypeError):
        Client("tcp://127.0.0.1:1", 5.0)

