"""Pipelines that send runs of plain steps as one step_many (clients/coalesce.py) give what the steps sent one
by one give: outputs bit for bit (dtype and shape too), each step's own error, the same order, the same states;
against a real daemon (sync and asyncio) and in process."""

import numpy as np
import pytest
from daemons import run_async, serving

import lstm_stream as ls
from clients import AsyncClient, BadRequest, Client, LocalClient, ServerError, StoreFull, Timeout
from clients import coalesce
from clients._api import Call

I = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory, served_models):
    """(endpoint, model) of a daemon of at most 400 streams (store_full is one of the refusals tested)."""
    yield from serving(tmp_path_factory, served_models, "ar", "--max-streams", "400")


def requests(c) -> int:
    return c.info()["counters"]["requests"]


def mixed_calls(rng, prefix: str) -> list:
    """(stream, x) of 60 steps over 23 streams (repeated ids): 30 of float32 samples, two of (T, I), 20 of
    float64 samples, 8 of float32: two runs merged (30 and 20 steps), 10 steps sent alone."""
    out = []
    for k in range(60):
        if k in (30, 31):
            x = rng.normal(size=(k - 28, I)).astype(np.float32)
        else:
            x = rng.normal(size=I).astype(np.float64 if 32 <= k < 52 else np.float32)
        out.append((f"{prefix}{k % 23}", x))
    return out


MIXED_REQUESTS = 2 + 10  # the requests mixed_calls' steps make when merged


def same(a, b) -> bool:
    return type(a) is type(b) and (not isinstance(a, np.ndarray) or (
        a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)))


def errors_alike(a, b) -> bool:
    """Two results alike: equal arrays, or errors of the same class, code and message."""
    if isinstance(a, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return same(a, b)


# ---- the split into runs ----------------------------------------------------------------------------------
def step(stream="s", x=None, seq=None):
    fields = {"stream": stream, "x": np.zeros(I, np.float32) if x is None else x}
    if seq is not None:
        fields["seq"] = seq
    return Call("step", fields, None)


def shape_of(items) -> list:
    return [("run", it.start, len(it.steps)) if isinstance(it, coalesce.Run) else it for it in items]


def test_runs_of_at_least_min_run_plain_steps_are_merged_and_the_rest_sent_alone():
    m = coalesce.MIN_RUN
    calls = [step() for _ in range(m - 1)] + [Call("ping", {}, None)] + [step() for _ in range(m)] \
        + [step(seq=3)] + [step() for _ in range(m + 2)] + [step(x=np.zeros((2, I), np.float32))]
    assert shape_of(coalesce.split(calls)) == \
        list(range(m)) + [("run", m, m), 2 * m] + [("run", 2 * m + 1, m + 2), 3 * m + 3]
    assert not coalesce.Rounds(calls[:m - 1]).merged and coalesce.Rounds(calls).merged


def test_a_run_holds_steps_of_one_input_shape_and_dtype():
    m = coalesce.MIN_RUN
    calls = [step() for _ in range(m)] + [step(x=np.zeros(I, np.float64)) for _ in range(m)] \
        + [step(x=np.zeros(I + 1, np.float32)) for _ in range(m - 1)]
    assert shape_of(coalesce.split(calls)) == [("run", 0, m), ("run", m, m)] + list(range(2 * m, 3 * m - 1))
    run = coalesce.split(calls)[1]
    assert run.call.op == "step_many" and run.call.fields["x"].shape == (m, I)
    assert run.call.fields["x"].dtype == np.float64 and run.call.fields["streams"] == ["s"] * m


def test_a_run_is_cut_at_max_run_steps_and_max_run_bytes():
    calls = [step() for _ in range(coalesce.MAX_RUN + 20)]
    assert shape_of(coalesce.split(calls)) == [("run", 0, coalesce.MAX_RUN), ("run", coalesce.MAX_RUN, 20)]
    wide = np.zeros(4096, np.float32)  # 16 KiB a row: 3 rows to a run of at most 64 KiB
    calls = [step(x=wide) for _ in range(coalesce.MIN_RUN)]
    items = coalesce.split(calls)
    assert {len(it.steps) for it in items if isinstance(it, coalesce.Run)} == {3}
    assert all(len(coalesce._CODEC.request("step_many", 0, it.call.fields)) <= coalesce.MAX_RUN_BYTES
               for it in items if isinstance(it, coalesce.Run))


def test_a_run_of_long_ids_is_cut_to_max_run_bytes():
    calls = [step(f"{k:0>120}", np.zeros(1, np.float32)) for k in range(coalesce.MAX_RUN)]
    items = coalesce.split(calls)
    runs = [it for it in items if isinstance(it, coalesce.Run)]
    assert len(runs) > 1 and sum(len(r.steps) for r in runs) == len(calls)
    assert all(len(coalesce._CODEC.request("step_many", 0, r.call.fields)) <= coalesce.MAX_RUN_BYTES for r in runs)


def test_the_densest_run_the_limits_allow_is_within_the_daemons_decode_bounds():
    """1,024 one-character ids with rows of one float32: the most objects per wire byte a run can hold. The
    daemon's bounded decode (protocol.DECODE_FACTOR) must take it whole, or it would refuse it before reading
    its id, and the run's steps would only time out."""
    from lstm_stream import protocol as P
    for ids in ([chr(48 + k % 64) for k in range(coalesce.MAX_RUN)], list(range(coalesce.MAX_RUN))):
        calls = [step(i, np.zeros(1, np.float32)) for i in ids]
        run = coalesce.take_run(calls, 0, len(calls))
        assert len(run.steps) == coalesce.MAX_RUN
        data = P.Codec().request("step_many", 2**40, run.call.fields)
        assert P.Codec().decode(data)["streams"] == ids


# ---- against a real daemon and in process -----------------------------------------------------------------
@pytest.fixture(params=["daemon", "in-process"])
def client(request, served):
    if request.param == "daemon":
        with Client(served[0], timeout=20) as c:
            yield c
        return
    with LocalClient.serving(served[1]) as c:
        yield c


def run_pipeline(c, calls, merge: bool, extra=()):
    p = c.pipeline(merge_steps=merge)
    for stream, x in calls:
        p.step(stream, x)
    for name, args in extra:
        getattr(p, name)(*args)
    return p.execute(return_exceptions=True)


def test_merged_steps_equal_separate_steps_bit_for_bit(client):
    rng = np.random.default_rng(20261205)
    calls = mixed_calls(rng, "")
    before = requests(client)
    merged = run_pipeline(client, [(f"m-{s}", x) for s, x in calls], True)
    sent = requests(client) - before
    separate = run_pipeline(client, [(f"u-{s}", x) for s, x in calls], False)
    assert sent == MIXED_REQUESTS + 1  # (and the info that reads the counter)
    assert all(same(a, b) for a, b in zip(merged, separate)) and len(merged) == len(calls)
    for k in range(23):  # and the streams' states
        a, b = client.get_state(f"m-{k}"), client.get_state(f"u-{k}")
        assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps


def test_a_refused_run_is_sent_again_step_by_step_each_with_its_own_result(client):
    rng = np.random.default_rng(7)
    calls = [(f"r{k % 11}", rng.normal(size=I).astype(np.float32)) for k in range(40)]
    calls[9] = ("r9", np.array([0.1, np.nan, 0.2, 0.3], np.float32))  # the run's shape and dtype, refused:
    calls[30] = ("r8", np.array([0.1, 0.2, np.inf, 0.3], np.float32))  # the whole run is refused
    extra = [("get_state", ("m-r8",)), ("step", ("m-r8", calls[0][1]))]
    before = requests(client)
    merged = run_pipeline(client, [(f"m-{s}", x) for s, x in calls], True, extra)
    assert requests(client) - before == 1 + 40 + 2 + 1  # the refused run, its steps alone, the two after; info
    separate = run_pipeline(client, [(f"u-{s}", x) for s, x in calls], False,
                            [("get_state", ("u-r8",)), ("step", ("u-r8", calls[0][1]))])
    assert isinstance(merged[9], BadRequest) and isinstance(merged[30], BadRequest)
    for k, (a, b) in enumerate(zip(merged[:40], separate[:40])):
        assert errors_alike(a, b), k
    # the get_state after the run saw the run's steps applied (order kept), and the step after it came after
    a, b = merged[40], separate[40]
    assert a.steps == b.steps and np.array_equal(a.h, b.h)
    assert same(merged[41], separate[41])


def test_a_run_over_the_store_limit_gets_the_separate_steps_results(served):
    """400 streams at most: a run of 300 new streams after 200 is refused whole; resent one by one, the first
    200 fit and the rest get store_full, as separate steps do."""
    endpoint, _ = served
    rng = np.random.default_rng(3)
    with Client(endpoint, timeout=20) as c:
        free = 400 - c.info()["streams"]
        xs = rng.normal(size=(free + 50, I)).astype(np.float32)
        res = run_pipeline(c, [(f"full-{k}", xs[k]) for k in range(free + 50)], True)
        assert all(isinstance(r, np.ndarray) for r in res[:free])
        assert all(isinstance(r, StoreFull) for r in res[free:])
        for k in range(free):
            c.drop(f"full-{k}")


def test_an_internal_error_or_a_timeout_is_not_resent():
    rounds = coalesce.Rounds([step(f"s{k}") for k in range(coalesce.MIN_RUN)])
    sent = rounds.next()
    assert [c.op for c in sent] == ["step_many"]
    boom = ServerError("internal", "boom")
    rounds.take([boom])
    assert rounds.next() is None and rounds.results == [boom] * coalesce.MIN_RUN
    rounds = coalesce.Rounds([Call("ping", {}, None)] + [step(f"s{k}") for k in range(coalesce.MIN_RUN)])
    assert [c.op for c in rounds.next()] == ["ping", "step_many"]
    assert rounds.partial(["pong", coalesce.MISSING]) == ["pong"] + [coalesce.MISSING] * coalesce.MIN_RUN


def test_each_merged_step_gets_its_row_through_its_own_parse():
    calls = [Call("step", {"stream": f"s{k}", "x": np.zeros(I, np.float32)}, lambda r: ("mine", r["y"]))
             for k in range(coalesce.MIN_RUN)]
    rounds = coalesce.Rounds(calls)
    rounds.next()
    rows = [np.full(2, k, np.float32) for k in range(coalesce.MIN_RUN)]
    rounds.take([rows])
    assert rounds.next() is None
    assert [(tag, y[0]) for tag, y in rounds.results] == [("mine", k) for k in range(coalesce.MIN_RUN)]


def test_a_run_answered_with_rows_not_one_per_step_is_a_bad_reply_for_each():
    from clients import BadReply
    rounds = coalesce.Rounds([step(f"s{k}") for k in range(coalesce.MIN_RUN)])
    rounds.next()
    rounds.take([[np.zeros(4, np.float32)] * 3])
    assert rounds.next() is None and all(isinstance(r, BadReply) for r in rounds.results)


def test_after_a_failed_round_trip_a_refused_runs_steps_have_no_result():
    """(The pipeline then gives them its Timeout: they were not applied, and the refusal was another row's.)"""
    rounds = coalesce.Rounds([Call("ping", {}, None)] + [step(f"s{k}") for k in range(coalesce.MIN_RUN)])
    rounds.next()
    refused = BadRequest("bad_input", "x[3] holds a NaN")
    assert rounds.partial(["pong", refused]) == ["pong"] + [coalesce.MISSING] * coalesce.MIN_RUN


def test_a_timed_out_merged_pipeline_sets_results(tmp_path):
    with Client(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.2) as c:
        p = c.pipeline().ping()
        for k in range(coalesce.MIN_RUN):
            p.step(f"a{k}", np.zeros(I))
        p.ping()
        with pytest.raises(Timeout) as e:
            p.execute()
        assert p.results == [e.value] * (coalesce.MIN_RUN + 2)


def test_the_async_pipeline_merges_as_the_sync_one(served):
    """A clean pipeline (fewer requests reach the daemon), then one with a refused run (a bad input)."""
    endpoint, _ = served
    rng = np.random.default_rng(11)
    clean = mixed_calls(rng, "a")
    bad = mixed_calls(rng, "a")
    bad[17] = ("a17", np.zeros(I + 2, np.float32))

    async def main():
        async with AsyncClient(endpoint, timeout=20) as ac:
            out = []
            for prefix, merge in (("am-", True), ("au-", False)):
                for calls in (clean, bad):
                    p = ac.pipeline(merge_steps=merge)
                    for s, x in calls:
                        p.step(prefix + s, x)
                    p.get_state(prefix + calls[0][0])
                    before = (await ac.info())["counters"]["requests"]
                    got = await p.execute(return_exceptions=True)
                    out.append((got, (await ac.info())["counters"]["requests"] - before))
            return out
    got = run_async(main(), 60)
    assert got[0][1] == MIXED_REQUESTS + 2 and got[2][1] == len(clean) + 2  # (and the get_state, the info)
    for (merged, _), (separate, _) in ((got[0], got[2]), (got[1], got[3])):
        assert all(errors_alike(a, b) for a, b in zip(merged[:-1], separate[:-1]))
        assert merged[-1].steps == separate[-1].steps and np.array_equal(merged[-1].h, separate[-1].h)
    assert isinstance(got[1][0][17], BadRequest)


def test_in_process_merged_equals_the_reference_streams(served_models):
    _, model = served_models["cls"]
    ref = ls.Streams(model)
    rng = np.random.default_rng(5)
    calls = mixed_calls(rng, "p")
    with LocalClient.serving(model) as c:
        got = run_pipeline(c, calls, True)
    for (s, x), y in zip(calls, got):
        np.testing.assert_array_equal(y, ref.step(s, x))
