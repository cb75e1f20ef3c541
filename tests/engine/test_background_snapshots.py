"""Snapshots written in the background (engine/snapshot_jobs.py): the file is every stream at the capture turn
whatever the loop does meanwhile; meta and on_durable; the loop answers while a write is in flight; a killed
writer or a kill -9 of the daemon during a write leaves the previous snapshot intact."""
import os
import signal
import time

import numpy as np
import pytest
from models import random_model

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.persistence import SNAPSHOT_NAME, Snapshots, remove_stale_temporaries
from engine.snapshot_jobs import fork_available
from lstm_stream.snapshot import read_snapshot

METHODS = ["fork", "thread"] if fork_available() else ["thread"]


@pytest.fixture(scope="module")
def model():
    return random_model(np.random.default_rng(21), I=3, H=6, L=2, O=3)


def populated(model, n, seed=0):
    s = ls.Streams(model)
    rng = np.random.default_rng(seed)
    ids = [f"s{k}" if k % 2 else k for k in range(n)]
    s.step_many(ids, rng.normal(size=(n, 3)))
    s.step_many(ids[::3], rng.normal(size=(len(ids[::3]), 3)))
    return s, ids


def states(streams):
    return {i: streams.get_state(i) for i in streams.ids()}


def assert_states_equal(a, b):
    assert sorted(map(str, a)) == sorted(map(str, b))
    for i, x in a.items():
        y = b[i]
        assert np.array_equal(x.h, y.h) and np.array_equal(x.c, y.c), i
        assert (x.steps, x.last_seen) == (y.steps, y.last_seen), i


def hold_writer(streams, monkeypatch=None):
    """A pipe write end: the snapshot writer (a forked child, or with monkeypatch the thread too) waits until
    the test writes a byte to it, so that the loop provably runs while the write is in flight."""
    import lstm_stream.snapshot
    r, w = os.pipe()
    save, write = streams.save_snapshot, lstm_stream.snapshot.write_snapshot

    def held(path, meta=None):
        os.read(r, 1)
        return save(path, meta=meta)

    def held_write(*args, **kwargs):
        os.read(r, 1)
        return write(*args, **kwargs)
    streams.save_snapshot = held
    if monkeypatch is not None:
        monkeypatch.setattr(lstm_stream.snapshot, "write_snapshot", held_write)
    return w


@pytest.mark.parametrize("method", METHODS)
def test_background_snapshot_is_the_capture_turn_however_the_loop_steps_meanwhile(model, tmp_path, method,
                                                                                  monkeypatch):
    streams, ids = populated(model, 3000)
    lsn, durable = [41], []
    snaps = Snapshots(streams, tmp_path, method=method, position=lambda: {"log_lsn": lsn[0]},
                      on_durable=durable.append)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps)
    captured = states(streams)
    release = hold_writer(streams, monkeypatch)
    snaps.start("test")
    lsn[0] = 99
    rng = np.random.default_rng(1)
    for _ in range(5):  # every stream changes (each page of the slabs is written), some go, some come
        assert core.call({"v": 1, "id": 1, "op": "ping"})["ok"]
        streams.step_many(ids, rng.normal(size=(len(ids), 3)))
        core.housekeep()
        assert snaps.busy and snaps.last is None and not durable
    streams.drop(ids[5])
    streams.step_many([f"new-{k}" for k in range(500)], rng.normal(size=(500, 3)))
    os.write(release, b"x")
    record = snaps.wait()
    assert not snaps.busy and record["streams"] == 3000 and record["reason"] == "test"
    assert durable == [{"log_lsn": 41}] and read_snapshot(snaps.path)["meta"] == {"log_lsn": 41}
    fresh = ls.Streams(model)
    again = Snapshots(fresh, tmp_path)
    assert again.restore() == 3000 and again.restored_meta == {"log_lsn": 41}
    assert_states_equal(captured, states(fresh))
    assert os.listdir(tmp_path) == [SNAPSHOT_NAME]


def test_a_restore_without_a_file_has_empty_meta(model, tmp_path):
    snaps = Snapshots(ls.Streams(model), tmp_path)
    assert snaps.restore() is None and snaps.restored_meta == {}


def test_the_timer_starts_background_writes_and_never_waits_for_one(model, tmp_path, monkeypatch):
    from models import Clock
    clock = Clock()
    streams, ids = populated(model, 100)
    snaps = Snapshots(streams, tmp_path, every=1.0, clock=clock)
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps, clock=clock)
    snaps.dirty = True
    release = hold_writer(streams, monkeypatch)
    clock.t += 1
    core.housekeep()
    assert snaps.busy and snaps.status()["busy"]
    assert core.housekeep() <= clock.t + 0.1  # the loop comes back soon to see the write end
    core.call({"v": 1, "id": 1, "op": "step", "stream": "late", "x": [1.0, 2.0, 3.0]})  # dirty again
    clock.t += 5  # due again while the first is in flight: no second one, no wait
    core.housekeep()
    assert snaps.busy and snaps.last is None
    os.write(release, b"x")
    deadline = time.monotonic() + 60
    while snaps.last is None and time.monotonic() < deadline:
        core.housekeep()
        time.sleep(0.001)
    # the turn that saw it end started the next one at once: the timer was due, the step made it dirty
    assert snaps.last["reason"] == "timer" and snaps.last["streams"] == 100 and snaps.busy and not snaps.dirty
    os.write(release, b"x")
    assert snaps.wait()["streams"] == 101


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_a_killed_writer_is_a_failed_save_and_leaves_only_its_temporary_file(model, tmp_path, caplog):
    streams, ids = populated(model, 200)
    snaps = Snapshots(streams, tmp_path)
    first = snaps.save("first")
    good = (tmp_path / SNAPSHOT_NAME).read_bytes()
    streams.step(ids[0], np.ones(3))
    snaps.dirty = True
    release = hold_writer(streams)
    snaps.start("doomed")
    pid = snaps.status()["writer"]
    os.kill(pid, signal.SIGKILL)
    assert snaps.wait() is None and snaps.failures == 1 and snaps.dirty and snaps.last == first
    assert "killed by SIGKILL" in snaps.last_error
    assert (tmp_path / SNAPSHOT_NAME).read_bytes() == good
    os.close(release)
    # a writer killed mid-file leaves '<snapshot>.tmp-<its pid>': the next start's clean-up removes it
    (tmp_path / f"{SNAPSHOT_NAME}.tmp-{pid}").write_bytes(b"\0" * 100)
    assert remove_stale_temporaries(tmp_path) == [f"{SNAPSHOT_NAME}.tmp-{pid}"]
    assert snaps.save("again")["reason"] == "again" and snaps.failures == 0


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_save_waits_for_the_write_in_flight_then_writes_the_latest_state(model, tmp_path):
    streams, ids = populated(model, 300)
    snaps = Snapshots(streams, tmp_path)
    release = hold_writer(streams)
    snaps.start("timer")
    streams.step(ids[1], np.ones(3))
    latest = states(streams)
    os.write(release, b"x")
    os.write(release, b"x")  # the save below goes through the same held function
    assert snaps.save("shutdown")["reason"] == "shutdown" and not snaps.busy
    fresh = ls.Streams(model)
    Snapshots(fresh, tmp_path).restore()
    assert_states_equal(latest, states(fresh))


# ---- a real daemon ----------------------------------------------------------------------------------------
def process_state(pid):
    """The state letter of /proc/<pid>/stat ('R', 'S', 'T' stopped, 'Z' zombie), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def seeded_state(tmp_path, model, n):
    """A state directory (tmp_path/state) whose snapshot holds n streams of `model` (ids 0..n-1, one step each)."""
    state = tmp_path / "state"
    state.mkdir()
    seed = ls.Streams(model)
    seed.step_many(np.arange(n), np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32))
    seed.save_snapshot(state / SNAPSHOT_NAME)
    return state


def catch_a_writer(client, state, *, stop: bool, tries=200):
    """Make the state dirty and wait for the timer's background write to be writing its temporary file (so
    it is past its set-up: it dies with its parent); with stop, freeze it (SIGSTOP), making sure it was
    caught before it ended. Returns the writer's pid."""
    for k in range(tries):
        client.step(f"dirty-{k}", np.zeros(4))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = client.info()["snapshot"]["writer"]
            if pid is not None:
                break
        tmp = state / f"{SNAPSHOT_NAME}.tmp-{pid}"
        while pid is not None and not tmp.exists() and process_state(pid) not in ("Z", None):
            time.sleep(0.0005)
        if pid is None or not tmp.exists():
            continue
        if not stop:
            return pid
        os.kill(pid, signal.SIGSTOP)
        while process_state(pid) not in ("T", "t", "Z", None):
            time.sleep(0.001)
        if process_state(pid) in ("T", "t"):
            return pid
    raise AssertionError(f"no background write caught in {tries} tries")


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_kill_9_during_background_writes_keeps_the_previous_snapshot(daemon, served_models, tmp_path):
    """Three times: a daemon with 100,000 streams writes a timed snapshot in a forked child; it answers ping
    and steps while the child writes (frozen by SIGSTOP in the first two rounds: a property, not a timing);
    then kill -9. The snapshot file is a whole, valid snapshot (the previous one unless the child had renamed
    the new one), the child dies with its parent, it leaves at most its '.tmp-<pid>' file, which the next
    start removes, and the daemon starts again from the file."""
    from clients import Client
    path, model = served_models["ar"]
    n = 100_000
    state = seeded_state(tmp_path, model, n)
    left = None
    for round in range(3):
        d = daemon("--model", path, "--snapshot-dir", state, "--snapshot-every", "50ms")
        if left is not None:
            assert not (state / left).exists() and f"removed {state / left}" in d.log()
        before = (state / SNAPSHOT_NAME).read_bytes()
        with Client(d.endpoint, timeout=10) as c:
            pid = catch_a_writer(c, state, stop=round < 2)
            if round < 2:
                assert c.ping() is not None and c.info()["snapshot"]["busy"]
                assert c.step("while-writing", np.zeros(4)).shape == (4,)
        d.proc.kill()
        d.proc.wait(30)
        deadline = time.monotonic() + 30
        while process_state(pid) not in ("Z", None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(pid) in ("Z", None), "the writer outlived its daemon"
        snap = read_snapshot(state / SNAPSHOT_NAME, fingerprint=model.fingerprint)
        assert len(snap["ids"]) >= n
        temporaries = [p.name for p in state.iterdir() if p.name not in (SNAPSHOT_NAME, "log", "ids.json")]
        assert temporaries in ([], [f"{SNAPSHOT_NAME}.tmp-{pid}"]), temporaries
        if temporaries:  # it was killed before its rename: the file is the one it found
            assert (state / SNAPSHOT_NAME).read_bytes() == before
        left = temporaries[0] if temporaries else None
    d = daemon("--model", path, "--snapshot-dir", state)
    assert sorted(os.listdir(state)) == ["ids.json", "log", SNAPSHOT_NAME]  # ids.json: --namespaces, recorded
    with Client(d.endpoint, timeout=10) as c:  # the file, and the step log's records after it
        assert c.info()["streams"] >= len(snap["ids"]) and c.get_state("while-writing").steps == 2
    assert d.stop() == 0
