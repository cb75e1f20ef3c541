"""Idle streams to disk (lstm_stream/coldstore.py, tiering.py), on real SQLite files: an evicted stream comes back
bit-identical to one never evicted, through every op, a snapshot and a restart; versions by lsn; prune; a full
store; the drop action; memory bounded by the streams in memory."""
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream.coldstore import ColdStore
from models import Clock, random_model

CONFIGS = {  # hidden sizes that are not powers of two, one to three layers, a projection, both dtypes
    "L2-H7": dict(I=3, H=7, L=2, O=2),
    "L3-H13-P5": dict(I=4, H=13, L=3, P=5, O=3),
    "L1-H6-f64": dict(I=2, H=6, L=1, O=2, dtype="float64"),
}
IDS = [7, "7", -3, "pump-9"]  # 7 and "7" are two streams


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return random_model(np.random.default_rng(hash(request.param) % 2**32), **CONFIGS[request.param])


@pytest.fixture
def ar_model():
    return random_model(np.random.default_rng(5), I=3, H=9, L=2, O=3, head_activation="none")


def pair(model, path, clock, **kwargs):
    """(a Streams with a cold store at path, a reference Streams that never evicts), on one clock."""
    return (ls.Streams(model, cold=ColdStore(path), idle_ttl=10.0, clock=clock, **kwargs),
            ls.Streams(model, clock=clock))


def same_state(a, b, i):
    sa, sb = a.get_state(i), b.get_state(i)
    assert np.array_equal(sa.h, sb.h) and np.array_equal(sa.c, sb.c), i
    assert (sa.steps, sa.last_seen) == (sb.steps, sb.last_seen), i


def feed(streams, ref, rng, ids, T=3):
    for _ in range(T):
        x = rng.normal(size=(len(ids), streams.model.input_size)).astype(streams.model.dtype)
        for i, xi in zip(ids, x):
            np.testing.assert_array_equal(streams.step(i, xi), ref.step(i, xi))


def test_evicted_streams_step_on_bit_identical(model, tmp_path):
    clock, rng = Clock(), np.random.default_rng(0)
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, rng, IDS)
    for round_ in range(3):
        clock.t += 11
        assert sorted(map(str, s.evict_idle())) == sorted(map(str, IDS)) and len(s) == 0
        assert all(s.is_cold(i) for i in IDS) and s.stats()["cold"]["streams"] == len(IDS)
        X = rng.normal(size=(len(IDS), model.input_size)).astype(model.dtype)
        np.testing.assert_array_equal(s.step_many(IDS, X), ref.step_many(IDS, X))  # many thawed in one call
        feed(s, ref, rng, IDS)
        for i in IDS:
            same_state(s, ref, i)
    assert s.cold.versions(7) == [0, 1, 2] and s.cold.versions("7") == [0, 1, 2]


OPS = {  # op name -> f(streams, id): the same call on both Streams; returns something to compare
    "step": lambda s, i: s.step(i, np.full(s.model.input_size, 0.3, s.model.dtype)),
    "step_many": lambda s, i: s.step_many([i, "new"], np.full((2, s.model.input_size), 0.2, s.model.dtype)),
    "step_batch": lambda s, i: s.step_batch([i], [np.ones((2, s.model.input_size), s.model.dtype)])[0],
    "get_state": lambda s, i: s.get_state(i).h,
    "stream_info": lambda s, i: s.stream_info(i),
    "set_state": lambda s, i: s.set_state(i, {"h": np.ones_like(s.get_state("other").h),
                                              "c": np.ones_like(s.get_state("other").c), "steps": 4}),
    "copy_src": lambda s, i: s.copy(i, "other"),
    "copy_dst": lambda s, i: s.copy("other", i),
    "reset": lambda s, i: s.reset(i),
    "forecast": lambda s, i: s.forecast(i, 4),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("sid", [7, "7"])
def test_every_op_brings_a_cold_stream_back(ar_model, tmp_path, op, sid):
    clock, rng = Clock(), np.random.default_rng(1)
    s, ref = pair(ar_model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, rng, [sid, "other", 7 if sid == "7" else "7"])
    s.evict([sid])
    assert sid not in s and s.is_cold(sid)
    got, want = OPS[op](s, sid), OPS[op](ref, sid)
    if isinstance(got, dict):
        assert got == want
    else:
        np.testing.assert_array_equal(got, want)
    assert sid in s and not s.is_cold(sid)
    for i in ref.ids():
        same_state(s, ref, i)


def test_drop_of_a_cold_stream_leaves_a_tombstone_without_bringing_it_back(model, tmp_path):
    clock = Clock()
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock, max_streams=1)
    feed(s, ref, np.random.default_rng(2), ["a"])
    s.evict(["a"])
    s.step("b", np.zeros(model.input_size, model.dtype))  # the store is full: a drop needs no room
    s.drop("a")
    assert not s.is_cold("a") and s.cold.versions("a") == [0, 1] and s.ids() == ["b"]
    assert s.cold.get("a") is None and s.cold.get("a", before=1) is not None  # a replay before the drop reads it
    with pytest.raises(ls.UnknownStreamError):
        s.drop("a")
    s.save_snapshot(tmp_path / "snap")  # a snapshot after the drop: no replay needs the versions any more
    assert s.cold.versions("a") == []


def test_a_thawed_stream_dropped_leaves_no_row_behind(model, tmp_path):
    s, ref = pair(model, tmp_path / "cold.sqlite3", Clock())
    feed(s, ref, np.random.default_rng(3), [5])
    s.evict([5])
    s.get_state(5)  # back in memory, its row kept until a snapshot holds it
    assert s.cold.versions(5) == [0]
    s.drop(5)
    assert s.cold.versions(5) == [0, 1] and s.cold.get(5) is None and 5 not in s  # a tombstone at 1
    s.save_snapshot(tmp_path / "snap")
    assert s.cold.versions(5) == []


def test_a_full_store_refuses_a_thaw_and_changes_nothing(model, tmp_path):
    clock, rng = Clock(), np.random.default_rng(4)
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock, max_streams=2)
    feed(s, ref, rng, ["a", "b"])
    s.evict(["a", "b"])
    assert len(s) == 0  # evicted streams take no slot: two new ones fit
    feed(s, ref, rng, ["c", "d"])
    before = {i: s.get_state(i) for i in ("c", "d")}
    x = np.zeros(model.input_size, model.dtype)
    for call in (lambda: s.step("a", x), lambda: s.get_state("a"), lambda: s.reset("b"),
                 lambda: s.step_many(["c", "a"], np.stack([x, x])), lambda: s.copy("a", "c")):
        with pytest.raises(ls.StoreFullError, match="max_streams"):
            call()
    assert sorted(s.ids()) == ["c", "d"] and s.is_cold("a") and s.is_cold("b")
    for i, st in before.items():
        now = s.get_state(i)
        assert np.array_equal(now.h, st.h) and now.steps == st.steps
    s.drop("c")
    s.copy("a", "d")  # room for one: a comes back, d takes its state
    same_state(s, ref, "a")
    assert np.array_equal(s.get_state("d").h, ref.get_state("a").h)


def test_copy_between_two_cold_streams_needs_room_for_both(model, tmp_path):
    s, ref = pair(model, tmp_path / "cold.sqlite3", Clock(), max_streams=2)
    feed(s, ref, np.random.default_rng(5), ["a", "b"])
    s.evict(["a", "b"])
    s.step("c", np.zeros(model.input_size, model.dtype))
    with pytest.raises(ls.StoreFullError):
        s.copy("a", "b")
    assert s.ids() == ["c"] and s.is_cold("a") and s.is_cold("b")


def test_the_drop_action_still_drops(model, tmp_path):
    clock = Clock()
    s = ls.Streams(model, cold=ColdStore(tmp_path / "cold.sqlite3"), idle_ttl=10.0, idle_action="drop",
                   clock=clock)
    s.step(1, np.zeros(model.input_size, model.dtype))
    clock.t += 11
    assert s.evict_idle() == [1] and len(s) == 0 and not s.is_cold(1) and s.cold.count() == 0
    with pytest.raises(ls.InputError, match="idle_action"):
        ls.Streams(model, idle_action="evict")  # no cold store to evict to
    assert ls.Streams(model, idle_ttl=1.0).idle_action == "drop"


def test_a_cold_store_of_another_model_is_refused(model, tmp_path):
    ls.Streams(model, cold=ColdStore(tmp_path / "cold.sqlite3"))
    other = random_model(np.random.default_rng(99), I=2, H=3, L=1, O=1)
    with pytest.raises(ls.SnapshotError, match="belongs to model"):
        ls.Streams(other, cold=ColdStore(tmp_path / "cold.sqlite3"))


# ---- versions, replay, prune -------------------------------------------------------------------------------
def test_a_replay_reads_the_version_current_at_its_log_position(model, tmp_path):
    path, rng = tmp_path / "cold.sqlite3", np.random.default_rng(6)
    s, ref = pair(model, path, Clock())
    feed(s, ref, rng, ["x", 3])
    first = ref.get_state("x")
    s.evict(["x", 3], lsn=10)
    feed(s, ref, rng, ["x"])
    s.evict(["x"], lsn=20)
    assert s.cold.versions("x") == [10, 20] and s.cold.next_lsn == 21
    for before, want in ((15, first), (21, ref.get_state("x")), (None, ref.get_state("x"))):
        replay = ls.Streams(model, cold=ColdStore(path))
        replay.replay_before = before
        got = replay.get_state("x")
        assert np.array_equal(got.h, want.h) and (got.steps, got.last_seen) == (want.steps, want.last_seen)
    replay.replay_before = 10
    with pytest.raises(ls.UnknownStreamError):
        replay.get_state(3)  # no version before lsn 10: not a stream yet at that point of the log


def test_prune_keeps_what_a_later_replay_could_need(model, tmp_path):
    cold = ColdStore(tmp_path / "cold.sqlite3")
    s = ls.Streams(model)
    x = np.zeros(model.input_size, model.dtype)
    for i in ("old", "twice", "back", "late"):
        s.step(i, x)
    arrays = s.export_slots(np.arange(4, dtype=np.int64))
    cold.put(["old", "twice", "back"], arrays, lsn=1)
    cold.put(["twice", "back"], arrays, lsn=3)
    cold.put(["twice", "late"], arrays, lsn=7)  # after the snapshot below
    cold.put(["back"], arrays, lsn=4)
    in_memory = {"back", "late"}  # "back" came back before the snapshot; "late" left after it
    assert cold.prune(5, in_memory) == 4
    assert {i: cold.versions(i) for i in ("old", "twice", "back", "late")} == {
        "old": [1], "twice": [3, 7], "back": [], "late": [7]}
    assert cold.prune(5, in_memory) == 0  # idempotent


def test_int_and_str_ids_are_distinct_rows(tmp_path):
    cold = ColdStore(tmp_path / "cold.sqlite3")
    arrays = {"h": np.arange(4.0).reshape(2, 2)}
    cold.put([7, "7"], arrays, lsn=0)
    assert cold.get(7)[1]["h"].tolist() == [0.0, 1.0] and cold.get("7")[1]["h"].tolist() == [2.0, 3.0]
    assert sorted(map(repr, cold.ids())) == ["'7'", "7"] and cold.count() == 2
    cold.delete(7, 1)
    assert cold.get(7) is None and not cold.has(7) and cold.has("7") and cold.ids() == ["7"]
    with pytest.raises(Exception):
        cold.put(["7"], arrays, lsn=0)  # a version is never overwritten
    assert cold.get("7")[1]["h"].tolist() == [2.0, 3.0]


# ---- snapshots and restarts (a new Streams and a new ColdStore on the same files) ------------------------
def restart(model, tmp_path, clock):
    s = ls.Streams(model, cold=ColdStore(tmp_path / "cold.sqlite3"), idle_ttl=10.0, clock=clock)
    s.restore_snapshot(tmp_path / "snap")
    return s


def test_evict_snapshot_restart_step_on_bit_identical(model, tmp_path):
    clock, rng = Clock(), np.random.default_rng(7)
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, rng, IDS + ["hot"])
    s.evict(IDS[:2])
    s.get_state(IDS[1])  # back before the snapshot: the snapshot holds it, its row is pruned
    s.save_snapshot(tmp_path / "snap")
    assert s.cold.versions(IDS[0]) == [0] and s.cold.versions(IDS[1]) == []
    s2 = restart(model, tmp_path, clock)
    assert sorted(map(str, s2.ids())) == sorted(map(str, IDS[1:] + ["hot"])) and s2.is_cold(IDS[0])
    feed(s2, ref, rng, IDS + ["hot"])
    for i in IDS + ["hot"]:
        same_state(s2, ref, i)


def test_evicted_after_the_snapshot_the_cold_version_wins_at_restart(model, tmp_path):
    clock, rng = Clock(), np.random.default_rng(8)
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, rng, ["a", "b"])
    s.save_snapshot(tmp_path / "snap")  # holds a and b
    feed(s, ref, rng, ["a"])
    s.evict(["a"])  # then a crash: the snapshot's a is older than its row
    s2 = restart(model, tmp_path, clock)
    assert s2.ids() == ["b"] and s2.is_cold("a")
    same_state(s2, ref, "a")
    same_state(s2, ref, "b")


def test_a_crash_between_the_snapshot_and_its_prune_keeps_the_snapshot_version(model, tmp_path):
    """The snapshot's meta says which lsn it covers; a crash after the file is renamed, before the prune,
    leaves rows that the restart's settle and full prune sort out."""
    clock, rng = Clock(), np.random.default_rng(9)
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, rng, ["a"])
    s.save_snapshot(tmp_path / "snap")
    s.evict(["a"])
    feed(s, ref, rng, ["a"])  # back and stepped: newer than its row
    s.snapshot_durable = lambda meta: (_ for _ in ()).throw(OSError("killed"))
    with pytest.raises(OSError):
        s.save_snapshot(tmp_path / "snap")  # the file is durable, the prune is not
    s2 = restart(model, tmp_path, clock)
    assert s2.ids() == ["a"] and not s2.is_cold("a") and s2.cold.versions("a") == []
    same_state(s2, ref, "a")


def test_a_stream_dropped_while_cold_stays_dropped_after_a_restart(model, tmp_path):
    clock = Clock()
    s, ref = pair(model, tmp_path / "cold.sqlite3", clock)
    feed(s, ref, np.random.default_rng(10), ["a", "b"])
    s.evict(["a", "b"])
    s.drop("a")
    s.save_snapshot(tmp_path / "snap")
    s2 = restart(model, tmp_path, clock)
    assert not s2.is_cold("a") and s2.is_cold("b") and len(s2) == 0
