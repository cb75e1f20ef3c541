"""The asyncio client against a real daemon: 1,000 requests in flight on one connection, timeouts, errors."""
import asyncio
import inspect
import time

import numpy as np
import pytest
from daemons import run_async, serving

import lstm_stream as ls
from clients import (AsyncClient, AsyncPipeline, BadRequest, Client, ClientClosed, InputError, PipelineError, Timeout,
                     UnknownStream)

I = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory, served_models):
    yield from serving(tmp_path_factory, served_models, "cls")


run = run_async


@pytest.mark.parametrize("merge_steps", [False, True])  # 1,000 requests, or 3 (one alone, two step_many)
def test_1000_requests_in_flight_on_one_connection_all_answered_and_matched(served, merge_steps):
    endpoint, model = served
    rng = np.random.default_rng(0)
    n_streams, per_stream = 250, 4
    xs = {f"a{k}-{merge_steps}": rng.normal(size=(per_stream, I)).astype(np.float32) for k in range(n_streams)}
    calls = [(i, t) for t in range(per_stream) for i in xs]  # each stream's steps sent in order

    async def main():
        async with AsyncClient(endpoint, timeout=60, merge_steps=merge_steps) as c:
            tasks = [asyncio.ensure_future(c.step(i, xs[i][t])) for i, t in calls]
            await asyncio.sleep(0)  # every task has sent its request, none has its reply yet
            peak = c.in_flight
            results = await asyncio.gather(*tasks)
            return peak, results, c.in_flight

    peak, results, left = run(main())
    assert peak == len(calls) == 1000 and left == 0
    want = {i: ls.Streams(model).step(i, x) for i, x in xs.items()}
    for (i, t), y in zip(calls, results):
        np.testing.assert_array_equal(y, want[i][t], err_msg=f"{i} step {t}")


def test_every_method_and_typed_errors(served):
    endpoint, model = served

    async def main():
        async with AsyncClient(endpoint) as c:
            x = np.ones(I)
            y = await c.step("b", x)
            many = await c.step_many({"b2": x, "b3": x})
            s = await c.get_state("b")
            await c.set_state("b4", s)
            await c.copy("b", "b5")
            await c.reset("b2")
            await c.drop("b3")
            ids = await c.streams()
            info = await c.info()
            with pytest.raises(UnknownStream):
                await c.get_state("never")
            return y, many, s, ids, info, await c.ping()

    y, many, s, ids, info, pong = run(main())
    np.testing.assert_array_equal(y, many["b2"])
    assert s.steps == 1 and {"b", "b2", "b4", "b5"} <= set(ids) and "b3" not in ids
    assert info["fingerprint"] == model.fingerprint and pong > 0


def test_timeout_and_close(tmp_path):
    async def main():
        c = AsyncClient(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.2, retries=1)
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            await c.step("a", np.zeros(I))
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(Timeout):
            await c.info()
        assert time.monotonic() - t0 >= 0.55 and c.in_flight == 0
        await c.close()
        with pytest.raises(ClientClosed):
            await c.ping()

    run(main())


def test_async_client_mirrors_client():
    public = {n for n in dir(Client) if not n.startswith("_") and callable(getattr(Client, n))} - {"pipeline"}
    assert public <= set(dir(AsyncClient))
    assert inspect.iscoroutinefunction(AsyncClient._run) and inspect.iscoroutinefunction(AsyncClient.close)
    for name in public - {"close", "step"}:  # Client.step adds exactly_once numbering around Api.step
        assert getattr(AsyncClient, name) is getattr(Client, name), name  # one definition, awaited here


def test_the_readme_async_example_runs(served):
    """README.md's AsyncClient example, as it is written there, against a real daemon."""
    endpoint, model = served
    rng = np.random.default_rng(5)
    x7, x8 = rng.normal(size=I), rng.normal(size=I)

    async def main(samples):                            # samples: {stream id: x (I,)}
        async with AsyncClient(endpoint) as c:          # without `async with`: await c.close() at the end
            ys = await asyncio.gather(*(c.step(i, x) for i, x in samples.items()))  # all in flight at once
        return dict(zip(samples, ys))

    ys = asyncio.run(main({"readme-7": x7, "readme-8": x8}))
    ref = ls.Streams(model)
    assert list(ys) == ["readme-7", "readme-8"]
    np.testing.assert_array_equal(ys["readme-7"], ref.step("readme-7", x7))
    np.testing.assert_array_equal(ys["readme-8"], ref.step("readme-8", x8))


def test_inputs_that_are_not_real_numbers_are_refused_before_sending(served):
    async def main():
        async with AsyncClient(served[0]) as c:
            for x in ([0.1, "x", 0.3, 0.4], [True, 0, 0, 0], np.zeros(I, bool)):
                with pytest.raises(InputError, match=r"^x contains a (str|bool); expected real numbers"):
                    await c.step("aio-bad", x)
            with pytest.raises(InputError, match=r"^inputs\['aio-bad'\] contains a bool"):
                await c.step_many({"aio-bad": [False] * I})
            return await c.streams()

    assert "aio-bad" not in run(main())


def test_the_async_pipeline_mirrors_the_sync_one(served):
    """AsyncClient.pipeline(): calls queued, sent together, results in order with each failed call's exception
    in its place (the others applied), PipelineError unless return_exceptions; as Client.pipeline()."""
    endpoint, model = served
    x = np.full(I, 0.25)

    async def main():
        async with AsyncClient(endpoint, timeout=30) as c:
            async with c.pipeline() as p:
                assert isinstance(p, AsyncPipeline)
                for k in range(100):
                    p.step(f"ap{k % 7}", np.full(I, k / 100))
                p.get_state("ap3")
            first = p.results
            p = c.pipeline().step("apl-a", x).step("apl-b", np.zeros(I + 1)).step("apl-c", x)
            with pytest.raises(PipelineError) as e:
                await p.execute()
            res = await c.pipeline().step("apl-a", x).get_state("never").ping().execute(return_exceptions=True)
            return first, e.value, p.results, res, await c.streams()

    first, err, results, res, ids = run(main())
    assert len(first) == 101 and first[-1].steps == 14
    ref = ls.Streams(model)
    want = {}
    for k in range(100):
        want[f"ap{k % 7}"] = ref.step(f"ap{k % 7}", np.full(I, k / 100))
        if k >= 93:
            np.testing.assert_array_equal(first[k], want[f"ap{k % 7}"])
    good, bad, good2 = results
    assert err.results is results and err.errors == [bad] and isinstance(bad, BadRequest)
    np.testing.assert_array_equal(good, ls.Streams(model).step("apl-a", x))
    np.testing.assert_array_equal(good2, ls.Streams(model).step("apl-c", x))
    assert "apl-b" not in ids and isinstance(res[1], UnknownStream) and res[2] is not None


def test_an_async_pipeline_that_times_out_sets_results(tmp_path):
    async def main():
        async with AsyncClient(f"ipc://{tmp_path}/nobody.sock"[:100], timeout=0.2) as c:
            p = c.pipeline().ping().step("a", np.zeros(I))
            with pytest.raises(Timeout) as e:
                await p.execute()
            return p.results, e.value

    results, e = run(main())
    assert len(results) == 2 and all(isinstance(r, Timeout) for r in results) and e in results
