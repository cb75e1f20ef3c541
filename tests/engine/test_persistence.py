"""Snapshots policy in-process: restore, timer only when dirty, on request, wrong model refused untouched;
a failing timer backs off; and at a real daemon's start: an unwritable directory, stale temporary files."""
import hashlib
import logging
import os

import numpy as np
import pytest
from models import Clock, random_model

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.persistence import SNAPSHOT_NAME, Snapshots, prepare_dir
from engine.snapshot_jobs import fork_available
from lstm_stream import protocol as P


@pytest.fixture(scope="module")
def model():
    return random_model(np.random.default_rng(8), I=3, H=6, L=1, O=3)


def test_restore_without_a_file_starts_empty(model, tmp_path):
    snaps = Snapshots(ls.Streams(model), tmp_path / "state")
    assert snaps.restore() is None and (tmp_path / "state").is_dir()


def test_timer_saves_only_when_something_changed(model, tmp_path):
    clock, streams = Clock(), ls.Streams(model)
    snaps = Snapshots(streams, tmp_path, every=30.0, clock=clock)
    core = EngineCore(streams, EngineConfig(), snapshots=snaps, clock=clock)
    clock.t += 31
    core.housekeep()
    assert snaps.last is None  # nothing changed: no file written
    core.call({"v": 1, "id": 1, "op": "step", "stream": "a", "x": [0.1, 0.2, 0.3]})
    core.housekeep()
    assert snaps.last is None or snaps.last["reason"] != "timer"  # not due yet (re-armed at t+31)
    clock.t += 30
    core.housekeep()  # starts the write in the background
    assert snaps.busy and snaps.wait()["reason"] == "timer" and snaps.last["streams"] == 1 and not snaps.busy
    assert snaps.deadline() == clock.t + 30 and not snaps.dirty


def test_snapshot_op_and_restore_in_a_new_store(model, tmp_path):
    streams = ls.Streams(model)
    core = EngineCore(streams, snapshots=Snapshots(streams, tmp_path))
    x = np.random.default_rng(0).normal(size=(4, 3))
    core.call({"v": 1, "id": 1, "op": "step", "stream": "a", "x": x})
    r = core.call({"v": 1, "id": 2, "op": "snapshot"})
    assert r["ok"] and r["streams"] == 1 and r["path"].endswith(SNAPSHOT_NAME) and r["reason"] == "request"
    fresh = ls.Streams(model)
    assert Snapshots(fresh, tmp_path).restore() == 1
    np.testing.assert_array_equal(fresh.step("a", x), streams.step("a", x))


def test_snapshot_of_another_model_is_refused_and_left_untouched(model, tmp_path):
    streams = ls.Streams(model)
    streams.step("a", np.zeros(3))
    Snapshots(streams, tmp_path).save("test")
    path = tmp_path / SNAPSHOT_NAME
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    other = random_model(np.random.default_rng(9), I=3, H=6, L=1, O=3)
    with pytest.raises(ls.SnapshotError, match="belongs to model"):
        Snapshots(ls.Streams(other), tmp_path).restore()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_failed_snapshot_is_an_error_reply_and_the_engine_keeps_serving(model, tmp_path):
    streams = ls.Streams(model)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    snaps = Snapshots(streams, tmp_path)
    snaps.path = str(blocked / SNAPSHOT_NAME)  # a path under a regular file cannot be written
    core = EngineCore(streams, snapshots=snaps)
    r = core.call({"v": 1, "id": 1, "op": "snapshot"})
    assert r["error"]["code"] == P.SNAPSHOT_FAILED
    assert core.call({"v": 1, "id": 2, "op": "ping"})["ok"]


def failing_timer(model, tmp_path, every=1.0, method=None):
    """(clock, core, snaps, state dir, attempts): a timed Snapshots whose directory has been replaced by a
    regular file, so that creating the temporary file fails in the OS (NotADirectoryError), and one stream
    changed since. attempts lists every attempt: each call to save_snapshot in this process (the real one,
    which fails) and each background write, which this test waits for as it starts (a forked child fails in
    a few ms, but the fake clock would run on meanwhile)."""
    clock, streams = Clock(), ls.Streams(model)
    state = tmp_path / "state"
    snaps = Snapshots(streams, state, every=every, clock=clock, method=method)
    snaps.restore()
    core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps, clock=clock)
    assert core.call({"v": 1, "id": 1, "op": "step", "stream": "a", "x": [0.1, 0.2, 0.3]})["ok"]
    state.rmdir()
    state.write_text("a regular file where the snapshot directory was")
    attempts, save, start = [], streams.save_snapshot, snaps.start
    streams.save_snapshot = lambda path, meta=None: attempts.append(path) or save(path, meta=meta)

    def start_and_wait(reason):
        attempts.append(reason)
        start(reason)
        snaps.wait()
    snaps.start = start_and_wait
    return clock, core, snaps, state, attempts


def snapshot_info(core):
    return core.call({"v": 1, "id": 9, "op": "info"})["snapshot"]


@pytest.mark.parametrize("method", ["fork", "thread"])
def test_a_failing_timed_snapshot_backs_off_logs_little_and_recovers(model, tmp_path, caplog, method):
    """Timed snapshots are written in the background, by a forked child or a thread: the same back-off."""
    if method == "fork" and not fork_available():
        pytest.skip("fork writes need Linux")
    caplog.set_level(logging.INFO, logger="lstm_stream.engine")
    clock, core, snaps, state, attempts = failing_timer(model, tmp_path, method=method)
    caplog.clear()
    start, past = clock.t, 0
    while clock.t < start + 60:  # a minute of a busy loop: housekeeping every 10 ms
        clock.t += 0.01
        past += core.housekeep() <= clock.t  # a deadline in the past: the server loop would spin on it
    # back-off from the 1 s period, doubling up to 10 periods: attempts at 1, 2, 4, 8, 16, 26, 36, 46, 56 s
    assert len(attempts) == 9 and past == 0
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 4 and lines[0][0] == "ERROR" and "Not a directory" in lines[0][1], lines
    assert [m.split(":")[0] for _, m in lines[1:]] == [f"timed snapshot to {snaps.path} still failing"] * 3
    assert not any(r.exc_info for r in caplog.records)  # an OSError needs no traceback
    assert "8 failed attempts" in lines[-1][1]
    info = snapshot_info(core)
    assert info["failing"] is True and info["failures"] == 9 and "Not a directory" in info["last_error"]
    assert 0 < info["next_attempt_in"] <= 10 and info["path"] == snaps.path and info["every"] == 1.0
    assert "last" in info and info["last"] is None  # nothing saved yet

    # A snapshot request still tries at once, and the shutdown snapshot too.
    r = core.call({"v": 1, "id": 2, "op": "snapshot"})
    assert r["error"]["code"] == P.SNAPSHOT_FAILED and "Not a directory" in r["error"]["message"]
    with pytest.raises(NotADirectoryError):
        snaps.save("shutdown")
    assert len(attempts) == 11

    caplog.clear()
    state.unlink()
    state.mkdir()
    clock.t += info["next_attempt_in"]
    core.housekeep()
    assert len(attempts) == 12 and snaps.last["reason"] == "timer" and (state / SNAPSHOT_NAME).exists()
    recovered = [r for r in caplog.records if "work again" in r.getMessage()]
    assert len(recovered) == 1 and "after 11 failed attempts" in recovered[0].getMessage()
    info = snapshot_info(core)
    assert (info["failing"], info["failures"], info["last_error"], info["next_attempt_in"]) == (False, 0, None,
                                                                                                 None)
    core.call({"v": 1, "id": 3, "op": "step", "stream": "a", "x": [0.1, 0.2, 0.3]})
    clock.t += 1.0  # back on the period
    core.housekeep()
    assert len(attempts) == 13 and snaps.last["time"] >= recovered[0].created


def test_a_long_failure_episode_is_logged_a_few_times_an_hour(model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lstm_stream.engine")
    clock, core, snaps, state, attempts = failing_timer(model, tmp_path, every=30.0)
    caplog.clear()
    start, turns = clock.t, 0
    while clock.t < start + 3 * 3600 and turns < 10_000:  # three hours, from one deadline to the next
        clock.t = max(core.housekeep(), clock.t + 0.001)
        turns += 1
    assert turns < 100, "the loop kept waking up: a deadline in the past"
    assert snaps.max_delay == 300.0  # 10 periods, under the 10 minute cap
    assert 3 * 3600 / 300 <= len(attempts) <= 3 * 3600 / 300 + 5
    # the first in full, then at 2, 4, 8, 16, 32 failures and at least every 10 minutes
    assert len(caplog.records) <= 1 + 5 + 3 * 6, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)


def test_prepare_dir_refuses_an_unwritable_directory(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    for where, err in [(blocked / "state", "Not a directory"), (blocked, "File exists"), ("/proc", "")]:
        with pytest.raises(OSError, match=f"snapshot directory '{where}' cannot be written: .*{err}"):
            prepare_dir(where)


def make_stale_files(state):
    """Temporary snapshot files that killed daemons left ({name: size}) and files that are not such ({name:
    content})."""
    state.mkdir()
    stale = {f"{SNAPSHOT_NAME}.tmp-4242": 1000, f"{SNAPSHOT_NAME}.tmp-77": 5}
    other = {f"{SNAPSHOT_NAME}.tmp-12.bak": "x", f"{SNAPSHOT_NAME}.tmp-": "x", f"{SNAPSHOT_NAME}.tmp-x1": "x",
             "other.lstmsnap.tmp-5": "x", "notes.txt": "keep me"}
    for name, size in stale.items():
        (state / name).write_bytes(b"\0" * size)
    for name, text in other.items():
        (state / name).write_text(text)
    return stale, other


def test_prepare_dir_removes_stale_temporary_files_but_not_its_own(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lstm_stream.engine")
    state = tmp_path / "state"
    stale, other = make_stale_files(state)
    own = state / f"{SNAPSHOT_NAME}.tmp-{os.getpid()}"  # this process's: it may be writing it
    own.write_text("mine")
    prepare_dir(state)
    assert sorted(p.name for p in state.iterdir()) == sorted([*other, own.name])
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert sorted(removed) == sorted(f"removed {state / n} ({size} bytes): a snapshot that process "
                                     f"{n.rsplit('-', 1)[1]} was writing when it was killed"
                                     for n, size in stale.items())


# ---- at a real daemon's start -------------------------------------------------------------------------------
def test_a_daemon_removes_stale_temporary_snapshot_files_at_start(daemon, served_models, tmp_path):
    state = tmp_path / "state"
    stale, other = make_stale_files(state)
    d = daemon("--model", served_models["ar"][0], "--snapshot-dir", state)
    # (log: the step log; ids.json: whether the directory's ids are namespaced, engine/startup.py)
    assert sorted(p.name for p in state.iterdir() if p.name not in ("log", "ids.json")) == sorted(other)
    assert (state / "notes.txt").read_text() == "keep me"
    log = d.log()
    for name, size in stale.items():
        assert f"removed {state / name} ({size} bytes)" in log
    assert d.stop() == 0 and (state / SNAPSHOT_NAME).exists()


@pytest.mark.parametrize("where", ["under a regular file", "/proc"])
def test_a_daemon_refuses_to_start_on_a_snapshot_dir_it_cannot_write(daemon, served_models, tmp_path, where):
    """Even as root: a path under a regular file cannot be created, and /proc takes no new files."""
    if where == "/proc":
        snapdir, err = "/proc", "No such file or directory"
    else:
        (tmp_path / "file").write_text("not a directory")
        snapdir, err = tmp_path / "file" / "state", "Not a directory"
    d = daemon("--model", served_models["ar"][0], "--snapshot-dir", snapdir, wait=False)
    assert d.wait_exit(120) == 2
    log = d.log()
    assert f"cannot start: snapshot directory '{snapdir}' cannot be written: [Errno" in log and err in log, log
    assert "listening on" not in log and "Traceback" not in log
