"""AsyncClient(merge_steps=True): the plain steps made in one turn of the event loop go out as one step_many
(clients/outbox.py), and every caller gets what the steps sent one by one give: outputs bit for bit, its own
error, the same order, timeouts; against a real daemon, and the run's outcomes forced on a client whose
daemon never answers."""
import asyncio
import time

import numpy as np
import pytest
from daemons import run_async, serving

import lstm_stream as ls
from clients import AsyncClient, BadRequest, InternalError, Timeout
from clients import coalesce

I = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory, served_models):
    yield from serving(tmp_path_factory, served_models, "ar")


run = run_async


def alike(a, b) -> bool:
    if isinstance(a, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


async def twins(endpoint, make_calls):
    """make_calls(client, prefix) -> awaitables, gathered on a merging client and on one that does not; their
    results (exceptions in place) and how many requests each sent (the daemon's counter)."""
    out = []
    for prefix, merge in (("m-", True), ("u-", False)):
        async with AsyncClient(endpoint, timeout=20, merge_steps=merge) as c:
            before = (await c.info())["counters"]["requests"]
            got = await asyncio.gather(*make_calls(c, prefix), return_exceptions=True)
            out.append((got, (await c.info())["counters"]["requests"] - before - 1))
    return out


def test_gathered_steps_go_as_one_step_many_with_the_same_outputs(served):
    endpoint, _ = served
    rng = np.random.default_rng(20261205)
    calls = []
    for k in range(70):  # over 29 streams (repeated ids): 40 float32 samples, two (T, I), 28 float64 samples
        if k in (40, 41):
            x = rng.normal(size=(k - 38, I)).astype(np.float32)
        else:
            x = rng.normal(size=I).astype(np.float32 if k < 40 else np.float64)
        calls.append((f"g{k % 29}", x))
    (merged, n_merged), (separate, n_separate) = run(twins(
        endpoint, lambda c, pre: [c.step(pre + s, x) for s, x in calls]))
    assert n_separate == len(calls)
    assert n_merged == 5  # the first step alone, 39 as one, the two (T, I) alone, 28 as one
    assert all(alike(a, b) for a, b in zip(merged, separate))


def test_a_refused_run_gives_each_step_its_own_result_and_calls_keep_their_order(served):
    endpoint, _ = served
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(40, I)).astype(np.float32)

    def make(c, pre):
        out = []
        for k in range(40):
            x = np.array([0.5, np.nan, 0.5, 0.5], np.float32) if k == 12 else xs[k]  # refuses the run it is in
            out.append(c.step(f"{pre}o{k % 5}", x))
        return out + [c.get_state(f"{pre}o3"), c.step(f"{pre}o3", xs[0])]
    (merged, n_merged), (separate, _) = run(twins(endpoint, make))
    assert n_merged == 1 + 1 + 39 + 2  # the first alone, the run refused, its 39 steps alone, the two after
    assert isinstance(merged[12], BadRequest)
    assert all(alike(a, b) for a, b in zip(merged[:40], separate[:40]))
    assert merged[40].steps == separate[40].steps == 8 and np.array_equal(merged[40].h, separate[40].h)
    assert alike(merged[41], separate[41])


def test_tasks_stepping_in_a_loop_equal_the_reference(served):
    endpoint, model = served
    rng = np.random.default_rng(4)
    n_tasks, n_steps = 48, 30
    xs = rng.normal(size=(n_tasks, n_steps, I)).astype(np.float32)

    async def main():
        async with AsyncClient(endpoint, timeout=20) as c:
            async def worker(k):
                return [await c.step(f"loop{k}", xs[k, t]) for t in range(n_steps)]
            before = (await c.info())["counters"]["requests"]
            ys = await asyncio.gather(*(worker(k) for k in range(n_tasks)))
            return ys, (await c.info())["counters"]["requests"] - before - 1
    ys, sent = run(main())
    assert sent < n_tasks * n_steps / 4  # the steps woken by one reply went out together
    ref = ls.Streams(model)
    for k in range(n_tasks):
        np.testing.assert_array_equal(np.stack(ys[k]), ref.step(f"loop{k}", xs[k]))


def test_queued_steps_without_a_daemon_time_out_and_the_queue_moves_on(tmp_path):
    async def main():
        async with AsyncClient(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.3) as c:
            t0 = time.monotonic()
            got = await asyncio.gather(*(c.step(f"t{k}", np.zeros(I)) for k in range(40)),
                                       return_exceptions=True)
            took = time.monotonic() - t0
            assert all(isinstance(r, Timeout) for r in got) and took < 2.0 and c.in_flight == 0
            with pytest.raises(Timeout):  # and the queue moved on
                await c.ping()
    run(main())


async def forced(tmp_path, reply_of):
    """Gather MIN_RUN + 1 steps on a client whose daemon never answers, answer the merged run with
    reply_of(run's request id), and return what each step got."""
    async with AsyncClient(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.5) as c:
        box = c._outbox
        tasks = [asyncio.ensure_future(c.step(f"f{k}", np.zeros(I))) for k in range(coalesce.MIN_RUN + 1)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert box.run_rid is not None and c.in_flight == len(tasks)
        c._pending[box.run_rid].set_result(reply_of(box.run_rid))
        return await asyncio.gather(*tasks, return_exceptions=True), box


def test_an_internal_error_of_a_run_reaches_every_step_unsent_again(tmp_path):
    got, box = run(forced(tmp_path, lambda rid: {"v": 1, "id": rid, "ok": False,
                                                 "error": {"code": "internal", "message": "boom"}}))
    assert isinstance(got[0], Timeout)  # the first went alone, to nobody
    assert all(isinstance(r, InternalError) and "boom" in str(r) for r in got[1:])


def test_a_refused_run_is_sent_again_step_by_step(tmp_path):
    """A refusal means nothing was applied: each step is sent again alone (here: to nobody, so each times
    out on its own deadline rather than getting the run's error)."""
    got, _ = run(forced(tmp_path, lambda rid: {"v": 1, "id": rid, "ok": False,
                                               "error": {"code": "bad_input", "message": "one bad row"}}))
    assert all(isinstance(r, Timeout) for r in got)


def test_a_run_answered_with_too_few_rows_is_a_bad_reply_for_each_step(tmp_path):
    from clients import BadReply
    got, _ = run(forced(tmp_path, lambda rid: {"v": 1, "id": rid, "ok": True, "y": np.zeros((3, 4), np.float32)}))
    assert all(isinstance(r, BadReply) for r in got[1:])


def test_a_pipeline_goes_out_after_the_steps_made_before_it_resends_included(served):
    endpoint, _ = served
    xs = np.random.default_rng(9).normal(size=(20, I)).astype(np.float32)
    xs[5, 2] = np.nan  # refuses the run of steps 1-19: they are resent one by one

    async def main():
        async with AsyncClient(endpoint, timeout=20) as c:
            steps = [asyncio.ensure_future(c.step("drain", x)) for x in xs]
            await asyncio.sleep(0)  # the steps are made (the first sent, the others queued)
            state = (await c.pipeline().get_state("drain").execute())[0]
            return state, await asyncio.gather(*steps, return_exceptions=True)
    state, got = run(main())
    assert isinstance(got[5], BadRequest) and sum(isinstance(y, np.ndarray) for y in got) == 19
    assert state.steps == 19


def test_a_step_that_cannot_be_encoded_gets_its_error_and_the_others_their_results(served):
    endpoint, _ = served
    xs = np.random.default_rng(10).normal(size=(30, I)).astype(np.float32)

    def make(c, pre):
        return [c.step(object() if k == 11 else f"{pre}e{k}", xs[k]) for k in range(30)]
    (merged, _), (separate, _) = run(twins(endpoint, make))
    assert isinstance(merged[11], TypeError) and isinstance(separate[11], TypeError)
    assert all(alike(a, b) for k, (a, b) in enumerate(zip(merged, separate)) if k != 11)


def test_steps_cancelled_while_queued_are_never_sent(served):
    endpoint, _ = served
    x = np.ones(I, np.float32)

    async def main():
        async with AsyncClient(endpoint, timeout=20) as c:
            tasks = [asyncio.ensure_future(c.step(f"cx{k}", x)) for k in range(40)]
            await asyncio.sleep(0)  # the first sent, the others queued until the end of the turn
            for k in (3, 7, 30):
                tasks[k].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return [await c.seq(f"cx{k}") for k in range(40)], c.in_flight
    steps, left = run(main())
    assert steps == [0 if k in (3, 7, 30) else 1 for k in range(40)] and left == 0


def test_a_pipeline_behind_a_queue_that_cannot_send_times_out(tmp_path):
    """No daemon and a queue of one message: a step's send waits for room forever (the step itself times out);
    a pipeline made after it waits for it to be sent, at most its timeout."""
    async def main():
        async with AsyncClient(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.3, hwm=1) as c:
            steps = [asyncio.ensure_future(c.step(f"s{k}", np.zeros(I))) for k in range(4)]
            for _ in range(3):
                await asyncio.sleep(0)
            assert c._outbox.busy
            t0 = time.monotonic()
            p = c.pipeline().ping()
            with pytest.raises(Timeout):
                await p.execute()
            assert isinstance(p.results[0], Timeout) and time.monotonic() - t0 < 2.0
            assert all(isinstance(r, Timeout) for r in await asyncio.gather(*steps, return_exceptions=True))
    run(main())
