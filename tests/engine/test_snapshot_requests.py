"""The `snapshot` request is written in the background like a timed snapshot: the loop pauses for the fork (or
the copy) only and serves other requests while the file is written; the reply leaves once the file is durable
and describes a capture made at or after the request's turn; requests made while a write is in flight share
the next write; a failed write is a `snapshot_failed` reply; in-process callers and a stopping daemon wait for
the write (engine/persistence.py, Snapshots.request)."""
import errno
import os
import signal
import time

import numpy as np
import pytest
from test_background_snapshots import METHODS, assert_states_equal, hold_writer, populated, seeded_state, states

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.persistence import SNAPSHOT_NAME, Snapshots
from engine.snapshot_jobs import fork_available
from lstm_stream import protocol as P
from lstm_stream.snapshot import read_snapshot


@pytest.fixture(scope="module")
def model():
    from models import random_model
    return random_model(np.random.default_rng(23), I=3, H=6, L=2, O=3)


def request(op, rid, **fields):
    return P.parse_request({"v": 1, "id": rid, "op": op, **fields})


def served(core, tag, rid, op, **fields):
    """Submit one request under `tag` and run a turn: {request id: Reply} of what that turn answered."""
    assert core.submit(tag, request(op, rid, **fields)) is None
    return {reply.id: reply for _, reply in core.step()}


def until_answered(core, rid, *more, limit=60.0):
    """Housekeep and step (as the server loop does) until requests rid (and more) have their replies; the
    Reply (a tuple of them with more)."""
    want, got = (rid, *more), {}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not set(want) <= set(got):
        core.housekeep()
        got.update((reply.id, reply) for _, reply in core.step())
        time.sleep(0.001)
    assert set(want) <= set(got), f"no reply to requests {set(want) - set(got)} in {limit} s"
    return got[rid] if not more else tuple(got[k] for k in want)


@pytest.mark.parametrize("method", METHODS)
def test_a_snapshot_request_is_written_in_the_background_and_answered_once_durable(model, tmp_path, method,
                                                                                   monkeypatch):
    streams, ids = populated(model, 2000)
    snaps = Snapshots(streams, tmp_path, method=method)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps)
    release = hold_writer(streams, monkeypatch)
    # a step queued before the request in the same turn is in the file; the request itself is not answered yet
    assert core.submit("a", request("step", 1, stream=ids[0], x=[0.5, -1.0, 2.0])) is None
    assert core.submit("b", request("snapshot", 2)) is None
    replies = {reply.id: reply for _, reply in core.step()}
    assert list(replies) == [1] and snaps.busy and snaps.status()["requests"] == 1
    captured = states(streams)
    # the loop serves while the file is written (held until the test lets it go): steps, new streams, ping
    for k in range(3):
        got = served(core, "a", 10 + k, "step_many", streams=[ids[1], f"new-{k}"], x=[[1.0, 2.0, 3.0]] * 2)
        assert got[10 + k].ok
    assert core.submit("c", request("ping", 20)).ok and not snaps.answered  # (ping is answered at once)
    os.write(release, b"x")
    reply = until_answered(core, 2)
    assert reply.ok and reply.result["reason"] == "request" and reply.result["streams"] == 2000
    assert reply.result["path"] == snaps.path and reply.result["bytes"] == os.path.getsize(snaps.path)
    assert snaps.status()["requests"] == 0 and not snaps.busy
    fresh = ls.Streams(model)
    Snapshots(fresh, tmp_path).restore()
    assert_states_equal(captured, states(fresh))
    assert core.metrics["ok"] == 6 and core.ok_by_op["snapshot"] == 1


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_requests_made_during_a_write_share_the_next_one_captured_after_them(model, tmp_path):
    """A timed write in flight was captured before the requests: they wait for it, then one write for all of
    them starts at once and holds what was stepped in between."""
    streams, ids = populated(model, 500)
    snaps = Snapshots(streams, tmp_path)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps)
    release = hold_writer(streams)
    snaps.start("timer")
    timed_writer = snaps.status()["writer"]
    assert served(core, "a", 1, "step", stream="after-the-timer", x=[1.0, 1.0, 1.0])[1].ok
    for rid, tag in ((2, "a"), (3, "b")):
        assert served(core, tag, rid, "snapshot") == {}
    assert snaps.status()["requests"] == 2 and snaps.status()["writer"] == timed_writer  # no second fork
    assert served(core, "b", 4, "step", stream="after-the-requests", x=[2.0, 2.0, 2.0])[4].ok
    os.write(release, b"x")  # the timed write ends; the requests' write starts at the next housekeeping
    deadline = time.monotonic() + 60
    while snaps.status()["writer"] in (timed_writer, None) and time.monotonic() < deadline:
        core.housekeep()
        time.sleep(0.001)
    assert snaps.last["reason"] == "timer" and snaps.last["streams"] == 500 and snaps.status()["requests"] == 2
    assert served(core, "b", 5, "step", stream="during-the-second", x=[3.0, 3.0, 3.0])[5].ok
    os.write(release, b"x")
    first, second = until_answered(core, 2, 3)
    assert first.result == second.result and first.result["streams"] == 502 and first.result["reason"] == "request"
    ids = set(read_snapshot(snaps.path)["ids"])
    assert {"after-the-requests", "after-the-timer"} <= ids and "during-the-second" not in ids
    assert snaps.saves == {"timer": 1, "request": 1}


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_a_failed_write_answers_snapshot_failed_and_keeps_the_previous_file(model, tmp_path, monkeypatch, caplog):
    streams, ids = populated(model, 300)
    snaps = Snapshots(streams, tmp_path)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps)
    good = snaps.save("first")
    before = (tmp_path / SNAPSHOT_NAME).read_bytes()

    def full(path, meta=None):  # runs in the forked writer: its OSError comes back through the pipe
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(streams, "save_snapshot", full)
    assert served(core, "a", 1, "snapshot") == {}
    reply = until_answered(core, 1)
    assert not reply.ok and reply.code == P.SNAPSHOT_FAILED
    assert snaps.path in reply.message and "No space left on device" in reply.message
    assert (tmp_path / SNAPSHOT_NAME).read_bytes() == before and snaps.last == good and snaps.failures == 1
    assert "snapshot to" in caplog.text and "No space left" in caplog.text
    monkeypatch.undo()
    assert served(core, "a", 2, "snapshot") == {}
    assert until_answered(core, 2).ok and snaps.failures == 0 and snaps.last["reason"] == "request"


def test_in_process_calls_wait_for_the_write(model, tmp_path):
    """EngineCore.call and WireCore.call (tests, tools, the in-process client) return the durable reply."""
    from engine.wire import WireCore
    streams, ids = populated(model, 100)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=Snapshots(streams, tmp_path))
    reply = core.call({"v": 1, "id": 1, "op": "snapshot"})
    assert reply["ok"] and reply["streams"] == 100 and os.path.exists(reply["path"])
    core.call({"v": 1, "id": 2, "op": "step", "stream": "one-more", "x": [1.0, 2.0, 3.0]})
    reply = WireCore(core).call({"v": 1, "id": 3, "op": "snapshot"})
    assert reply["ok"] and reply["streams"] == 101
    assert len(read_snapshot(reply["path"])["ids"]) == 101
    without = EngineCore(ls.Streams(model), EngineConfig(metrics_every=1e9))
    reply = without.call({"v": 1, "id": 4, "op": "snapshot"})
    assert not reply["ok"] and reply["error"]["code"] == P.UNSUPPORTED


# ---- a real daemon ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_a_daemon_serves_while_a_requested_snapshot_is_written(daemon, served_models, tmp_path):
    """A daemon with 100,000 streams: a `snapshot` request's writer is frozen (SIGSTOP) as soon as it shows in
    `info`; meanwhile another client's ping and steps are answered (a property, not a timing); once it runs
    again the request is answered with the file, which holds the step before the request and not the one
    made during the write; a restart has both."""
    import threading
    from clients import Client
    path, model = served_models["ar"]
    n = 100_000
    state = seeded_state(tmp_path, model, n)
    d = daemon("--model", path, "--snapshot-dir", state)
    got = {}
    with Client(d.endpoint, timeout=30) as c, Client(d.endpoint, timeout=30) as asker:
        c.step("before", np.ones(4, np.float32))
        thread = threading.Thread(target=lambda: got.update(reply=asker.snapshot()))
        thread.start()
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = c.info()["snapshot"]["writer"]
        assert pid is not None, "no writer seen"
        os.kill(pid, signal.SIGSTOP)
        try:
            assert c.ping() is not None and c.info()["snapshot"]["requests"] == 1
            y = c.step("during", np.ones(4, np.float32))
            assert y.shape == (4,) and "reply" not in got
        finally:
            os.kill(pid, signal.SIGCONT)
        thread.join(60)
        reply = got["reply"]
        assert reply["reason"] == "request" and reply["streams"] == n + 1
        ids = set(read_snapshot(state / SNAPSHOT_NAME)["ids"])
        assert "before" in ids and "during" not in ids
        during = c.get_state("during")
    assert d.stop() == 0
    d = daemon("--model", path, "--snapshot-dir", state)
    with Client(d.endpoint, timeout=10) as c:
        again = c.get_state("during")
        assert np.array_equal(again.h, during.h) and again.steps == during.steps == 1
        assert c.info()["streams"] == n + 2
    assert d.stop() == 0
