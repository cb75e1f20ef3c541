"""End to end against a real daemon subprocess on loopback: concurrency, restarts, snapshots."""
import hashlib
import signal
import threading
import time

import numpy as np
import pytest

import lstm_stream as ls
from clients import Client
from engine.persistence import SNAPSHOT_NAME

I = 4


def offline(model, xs_by_stream):
    """Each stream run alone through the core, its whole sequence in one call: {id: (T, O)}."""
    return {i: ls.Streams(model).step(i, xs) for i, xs in xs_by_stream.items()}


def test_200_streams_from_4_concurrent_clients_equal_each_stream_alone(daemon, served_models):
    path, model = served_models["cls"]
    d = daemon("--model", path, endpoint=daemon.endpoint("tcp"))
    T, n_clients, per_client = 12, 4, 50
    rng = np.random.default_rng(0)
    ids = [f"pump-{k}" if k % 2 else k for k in range(n_clients * per_client)]  # str and int ids
    xs = {i: rng.normal(size=(T, I)).astype(np.float32) for i in ids}
    got = {i: [None] * T for i in ids}
    errors, barrier = [], threading.Barrier(n_clients)

    def client_run(mine, seed):
        try:
            order = np.random.default_rng(seed)
            with Client(d.endpoint, timeout=30) as c:
                barrier.wait(30)
                for t in range(T):
                    if t % 3 == 2:  # many streams in one message
                        for i, y in c.step_many({i: xs[i][t] for i in mine}).items():
                            got[i][t] = y
                    else:  # one request per stream, all in flight at once, in a shuffled order
                        shuffled = [mine[k] for k in order.permutation(len(mine))]
                        with c.pipeline() as p:
                            for i in shuffled:
                                p.step(i, xs[i][t])
                        for i, y in zip(shuffled, p.results):
                            got[i][t] = y
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=client_run, args=(ids[k::n_clients], k)) for k in range(n_clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    want = offline(model, xs)
    for i in ids:
        np.testing.assert_array_equal(np.stack(got[i]), want[i], err_msg=f"stream {i!r}")
    with Client(d.endpoint) as c:
        info = c.info()
        assert info["streams"] == len(ids) and sorted(map(str, c.streams())) == sorted(map(str, ids))
        assert info["counters"]["batched_requests"] / info["counters"]["batches"] > 1  # requests were batched


def test_sigterm_restart_continue_equals_an_uninterrupted_run(daemon, served_models, tmp_path):
    path, model = served_models["ar"]
    state, endpoint = tmp_path / "state", daemon.endpoint("tcp")
    args = ("--model", path, "--snapshot-dir", state, "--snapshot-every", "1h")
    rng = np.random.default_rng(1)
    ids = [f"s{k}" for k in range(20)] + [10**12 + k for k in range(5)]
    xs = {i: rng.normal(size=(30, I)).astype(np.float32) for i in ids}
    first = daemon(*args, endpoint=endpoint)
    with Client(endpoint, timeout=30) as c:  # the same client, across the restart
        before = {i: c.step(i, xs[i][:18]) for i in ids}
        c.copy("s0", "what-if")
        assert first.stop(signal.SIGTERM) == 0
        assert "snapshot (shutdown): 26 streams" in first.log()
        second = daemon(*args, endpoint=endpoint)
        assert "restored 26 streams" in second.log()
        after = {i: c.step(i, xs[i][18:]) for i in ids}
        assert c.get_state("s0").steps == 30 and c.get_state("what-if").steps == 18
    want = offline(model, xs)
    for i in ids:
        np.testing.assert_array_equal(np.concatenate([before[i], after[i]]), want[i], err_msg=f"stream {i!r}")


def test_snapshot_of_another_model_refuses_to_start_and_keeps_the_file(daemon, served_models, tmp_path):
    state = tmp_path / "state"
    first = daemon("--model", served_models["ar"][0], "--snapshot-dir", state)
    with Client(first.endpoint) as c:
        c.step("a", np.zeros(I))
        assert c.snapshot()["streams"] == 1
    assert first.stop() == 0
    digest = hashlib.sha256((state / SNAPSHOT_NAME).read_bytes()).hexdigest()
    wrong = daemon("--model", served_models["cls"][0], "--snapshot-dir", state, wait=False)
    assert wrong.wait_exit(120) == 2
    log = wrong.log()
    assert "refusing to start" in log and "belongs to model" in log and "left untouched" in log
    assert hashlib.sha256((state / SNAPSHOT_NAME).read_bytes()).hexdigest() == digest


def test_timed_snapshot_survives_kill_9(daemon, served_models, tmp_path):
    path, model = served_models["ar"]
    state, endpoint = tmp_path / "state", daemon.endpoint()
    first = daemon("--model", path, "--snapshot-dir", state, "--snapshot-every", "200ms", endpoint=endpoint)
    x = np.random.default_rng(2).normal(size=(5, I))
    with Client(endpoint) as c:
        y = c.step("p", x)
    deadline = time.monotonic() + 30
    while "snapshot (timer): 1 streams" not in first.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    daemon("--model", path, "--snapshot-dir", state, endpoint=endpoint)
    with Client(endpoint) as c:
        assert c.get_state("p").steps == 5
        ref = ls.Streams(model)
        np.testing.assert_array_equal(ref.step("p", x), y)
        np.testing.assert_array_equal(c.step("p", x[0]), ref.step("p", x[0]))


@pytest.mark.parametrize("bad", [("--model", "/nonexistent/model.npz"), ("--threads", "0")])
def test_start_errors_exit_2_with_a_message(daemon, served_models, bad):
    args = bad if bad[0] == "--model" else ("--model", served_models["ar"][0], *bad)
    d = daemon(*args, wait=False)
    assert d.wait_exit(120) == 2
    assert "cannot start" in d.log()


@pytest.mark.parametrize("bound", [("--max-pending", "8"), ("--max-pending-bytes", "1KiB")])
def test_a_client_faster_than_the_engine_is_pushed_back_and_nothing_is_lost(daemon, served_models, bound):
    """The daemon reads only what it can queue (--max-pending, --max-pending-bytes): a client with 500 requests in flight waits
    in ZeroMQ's queues instead of getting busy, every request is applied, and a ping from another client is
    answered meanwhile."""
    import asyncio

    from clients import AsyncClient
    d = daemon("--model", served_models["ar"][0], "--max-batch", "2", *bound)

    async def flood():
        async with AsyncClient(d.endpoint, timeout=60) as c, AsyncClient(d.endpoint, timeout=60) as other:
            steps = asyncio.gather(*(c.step("b", np.full(I, 0.1)) for _ in range(500)), return_exceptions=True)
            pong = await other.ping()
            results = await steps
            return results, pong, (await c.get_state("b")).steps, await c.info()

    results, pong, steps, info = asyncio.run(asyncio.wait_for(flood(), 120))
    assert all(isinstance(r, np.ndarray) for r in results), [r for r in results if not isinstance(r, np.ndarray)]
    assert steps == 500 and info["counters"].get("busy", 0) == 0 and pong is not None


def test_a_client_over_its_quota_gets_busy_replies_and_nothing_is_lost(daemon, served_models):
    import asyncio

    from clients import AsyncClient, Busy
    d = daemon("--model", served_models["ar"][0], "--max-batch", "2", "--max-peer-pending", "8")

    async def flood():
        async with AsyncClient(d.endpoint, timeout=60, merge_steps=False) as c:  # 500 requests, not 2
            results = await asyncio.gather(*(c.step("b", np.full(I, 0.1)) for _ in range(500)),
                                           return_exceptions=True)
            return results, (await c.get_state("b")).steps, await c.info()

    results, steps, info = asyncio.run(asyncio.wait_for(flood(), 120))
    busy = [r for r in results if isinstance(r, Busy)]
    ok = [r for r in results if isinstance(r, np.ndarray)]
    assert len(busy) + len(ok) == 500 and busy and ok  # every request answered: applied, or refused as busy
    assert steps == len(ok) and info["counters"]["busy"] == len(busy)  # a busy request was not applied
    assert "resend" in str(busy[0]) and "--max-peer-pending" in str(busy[0])


def test_serve_without_model_uses_the_shipped_default(daemon):
    defaults = pytest.importorskip("lstm_stream.defaults")
    d = daemon()
    with Client(d.endpoint) as c:
        assert c.info()["fingerprint"] == defaults.load_default_model().fingerprint
