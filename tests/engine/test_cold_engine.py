"""Idle streams to disk in the daemon: housekeeping evicts to <snapshot-dir>/cold.sqlite3 and tells on_evict; any
request brings a stream back; `info` counts the cold streams. End to end: real daemons, a clean restart and a
kill -9, outputs bit-identical to streams never evicted."""
import signal
import time

import numpy as np
import pytest

import lstm_stream as ls
from clients import Client
from engine.config import EngineConfig
from engine.core import EngineCore
from lstm_stream.coldstore import COLD_NAME, ColdStore

I = 4


def req(op, **fields):
    return {"v": 1, "id": 1, "op": op, **fields}


def test_housekeeping_evicts_to_the_cold_store_and_a_request_brings_a_stream_back(served_models, tmp_path):
    model = served_models["ar"][1]
    now = [1000.0]
    streams = ls.Streams(model, idle_ttl=10.0, clock=lambda: now[0], cold=ColdStore(tmp_path / COLD_NAME))
    ref = ls.Streams(model, clock=lambda: now[0])
    core = EngineCore(streams, EngineConfig(evict_every=1.0), clock=lambda: now[0])
    told = []
    core.on_evict = lambda ids, lsn: told.append((sorted(map(str, ids)), lsn))
    x = np.arange(I, dtype=np.float32) / 10
    for i in ("a", 7):
        core.call(req("step", stream=i, x=x))
        ref.step(i, x)
    now[0] += 11
    core.housekeep()
    assert told == [(["7", "a"], 0)] and len(streams) == 0
    info = core.call(req("info"))
    assert info["streams"] == 0 and info["cold"]["streams"] == 2 and info["cold"]["path"].endswith(COLD_NAME)
    assert core.call(req("streams", offset=0, limit=10))["total"] == 0  # the listing is of streams in memory
    r = core.call(req("step", stream=7, x=x))  # one request alone: Streams.step
    np.testing.assert_array_equal(r["y"], ref.step(7, x))
    core.submit(None, ls.protocol.parse_request(req("step", stream="a", x=x)))
    core.submit(None, ls.protocol.parse_request(req("step", stream="b", x=x)))
    (_, ra), (_, rb) = core.step()  # two requests: one plan, the planner's path
    np.testing.assert_array_equal(ra.result["y"], ref.step("a", x))
    assert core.call(req("info"))["cold"]["streams"] == 0 and len(streams) == 3


def wait_cold(c, n, timeout=20.0):
    """Wait until the daemon reports n cold streams and none in memory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = c.info()
        if info["cold"] is not None and info["cold"]["streams"] == n and info["streams"] == 0:
            return info
        time.sleep(0.1)
    raise AssertionError(f"not evicted in {timeout} s: {info}")


@pytest.mark.parametrize("sid", [7, "7"])
def test_daemon_evicts_to_disk_and_streams_continue_exactly_through_a_restart(daemon, served_models, tmp_path, sid):
    path, model = served_models["cls"]
    state = tmp_path / "state"
    args = ("--model", path, "--snapshot-dir", state, "--idle-ttl", "300ms")
    ids, rng = [sid, "p-1", 12], np.random.default_rng(0)
    xs = {i: rng.normal(size=(9, I)).astype(np.float32) for i in ids}
    want = {i: ls.Streams(model).step(i, xs[i]) for i in ids}  # each stream alone, never evicted
    d = daemon(*args)
    with Client(d.endpoint, timeout=30) as c:
        for t in range(3):
            for i in ids:
                np.testing.assert_array_equal(c.step(i, xs[i][t]), want[i][t])
        wait_cold(c, 3)
        for t in range(3, 6):  # back from disk
            for i in ids:
                np.testing.assert_array_equal(c.step(i, xs[i][t]), want[i][t])
        wait_cold(c, 3)  # cold again at shutdown: the snapshot holds none of them
    assert d.stop() == 0 and (state / COLD_NAME).exists()
    d2 = daemon(*args)
    with Client(d2.endpoint, timeout=30) as c:
        assert c.info()["cold"]["streams"] == 3
        for i in ids:
            np.testing.assert_array_equal(c.step(i, xs[i][6:]), want[i][6:])
            assert c.get_state(i).steps == 9


def test_evicted_after_the_last_snapshot_the_cold_version_survives_kill_9(daemon, served_models, tmp_path):
    path, model = served_models["ar"]
    args = ("--model", path, "--snapshot-dir", tmp_path / "state", "--idle-ttl", "300ms")
    xs = np.random.default_rng(1).normal(size=(7, I)).astype(np.float32)
    want = ls.Streams(model).step("a", xs)
    d = daemon(*args)
    with Client(d.endpoint, timeout=30) as c:
        c.step("a", xs[:3])
        c.snapshot()          # holds a after 3 steps
        c.step("a", xs[3:5])
        wait_cold(c, 1)       # a's row (5 steps) is newer than the snapshot
    d.stop(signal.SIGKILL)
    d2 = daemon(*args)
    with Client(d2.endpoint, timeout=30) as c:
        assert c.get_state("a").steps == 5
        np.testing.assert_array_equal(c.step("a", xs[5:]), want[5:])


def test_idle_action_evict_needs_a_snapshot_dir(daemon, served_models):
    d = daemon("--model", served_models["ar"][0], "--idle-ttl", "1s", "--idle-action", "evict", wait=False)
    assert d.wait_exit() == 2 and "--idle-action evict needs --snapshot-dir" in d.log()
