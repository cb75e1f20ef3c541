"""Snapshots policy in-process: restore, timer only when dirty, on request, wrong model refused untouched."""
import hashlib

import numpy as np
import pytest
from models import Clock, random_model

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.persistence import SNAPSHOT_NAME, Snapshots
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
    core.housekeep()
    assert snaps.last["reason"] == "timer" and snaps.last["streams"] == 1
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
