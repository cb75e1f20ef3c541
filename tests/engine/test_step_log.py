"""The step log in-process: replay reproduces every stream exactly, a failed write applies nothing, `always`
holds replies until their fsync, and sequence numbers make a step exactly-once."""
import errno

import numpy as np
import pytest

import lstm_stream as ls
from engine.config import EngineConfig
from engine.core import EngineCore
from engine.journal import Journal
from engine.records import ReplayError, recover
from lstm_stream import steplog
from models import random_model


@pytest.fixture(scope="module")
def model():
    return random_model(np.random.default_rng(11), I=5, H=13, L=2, O=3)


def _served(model, directory, policy="everysec", **kwargs):
    streams = ls.Streams(model, max_streams=40)
    journal = Journal(directory, model.fingerprint, model.dtype, fsync=policy, **kwargs)
    journal.open(0)
    return streams, journal, EngineCore(streams, EngineConfig(), journal=journal)


def _turn(core, journal, requests):
    """Submit maps as one turn; their reply maps in order (waiting for the fsync under `always`)."""
    from lstm_stream import protocol as P
    for k, msg in enumerate(requests):
        core.submit(k, P.parse_request({"v": 1, "id": k, **msg}))
    out = core.step()
    while len(out) < len(requests):
        journal.sync()
        out += core.released()
    return [r.as_map() for _, r in out]


def _everything(streams):
    ids, slots = streams._store.ids_and_slots()
    return dict(zip(ids, zip(*(a for a in streams.export_slots(slots).values()))))


def _same(a, b):
    assert a.keys() == b.keys()
    for i in a:
        for x, y in zip(a[i], b[i]):
            assert np.array_equal(np.asarray(x), np.asarray(y)), i


def _workload(rng, I, turns=40):
    """Turns of mixed requests: steps of one and several rows, step_many both ways with repeats, sequenced
    steps and their resends, NaN, state ops; ids int and str."""
    ids = [f"s{k}" for k in range(9)] + list(range(5))
    seqs = {}
    for t in range(turns):
        reqs = []
        for _ in range(int(rng.integers(1, 12))):
            i = ids[int(rng.integers(len(ids)))]
            kind = rng.random()
            if kind < 0.35:
                reqs.append({"op": "step", "stream": i, "x": rng.standard_normal(I).astype(np.float32).tolist()})
            elif kind < 0.5:
                T = int(rng.integers(2, 5))
                reqs.append({"op": "step", "stream": i, "x": rng.standard_normal((T, I)).tolist()})
            elif kind < 0.62:
                many = [ids[int(j)] for j in rng.integers(len(ids), size=int(rng.integers(1, 6)))]
                reqs.append({"op": "step_many", "streams": many,
                             "x": rng.standard_normal((len(many), I)).astype(np.float32).tolist()})
            elif kind < 0.68:
                many = [ids[int(j)] for j in rng.integers(len(ids), size=3)]
                reqs.append({"op": "step_many", "streams": many,
                             "xs": [rng.standard_normal((int(rng.integers(1, 4)), I)).tolist() for _ in many]})
            elif kind < 0.85:
                s = f"q{int(rng.integers(4))}"
                n = seqs.get(s, 0) + 1
                x = rng.standard_normal(I).tolist()
                reqs.append({"op": "step", "stream": s, "x": x, "seq": n})
                if rng.random() < 0.3:
                    reqs.append({"op": "step", "stream": s, "x": x, "seq": n})  # resent in the same turn
                seqs[s] = n
            elif kind < 0.88:
                reqs.append({"op": "step", "stream": i, "x": [float("nan")] * I})
            elif kind < 0.92:
                reqs.append({"op": "reset", "stream": i})
            elif kind < 0.95:
                reqs.append({"op": "copy", "src": i, "dst": ids[int(rng.integers(len(ids)))]})
            elif kind < 0.97:
                reqs.append({"op": "drop", "stream": i})
            else:
                reqs.append({"op": "set_state", "stream": i, "h": rng.standard_normal((2, 13)).tolist(),
                             "c": rng.standard_normal((2, 13)).tolist(), "steps": int(rng.integers(100))})
        yield reqs


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_replay_reproduces_every_stream_bit_for_bit(model, tmp_path, policy):
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    streams, journal, core = _served(model, tmp_path, policy)
    ok = sum(r["ok"] for reqs in _workload(rng, model.input_size) for r in _turn(core, journal, reqs))
    assert ok > 100 and core.metrics["error.seq_stale"] == 0  # (a sequenced resend is a duplicate, never stale)
    journal.close()
    again = ls.Streams(model, max_streams=40)
    last, stats = recover(again, tmp_path, 0)
    assert last == journal.lsn and stats["records"] == journal.lsn
    _same(_everything(streams), _everything(again))


def test_replay_after_a_part_of_the_log_continues_from_there(model, tmp_path):
    rng = np.random.default_rng(5)
    streams, journal, core = _served(model, tmp_path)
    work = list(_workload(rng, model.input_size, turns=30))
    for reqs in work[:15]:
        _turn(core, journal, reqs)
    middle = ls.Streams(model, max_streams=40)
    middle.import_slots(middle._store.add_many(streams.ids(), 0.0), streams.export_slots(
        streams._store.ids_and_slots()[1]))  # a copy of the state at this point, as a snapshot would hold
    covered = journal.lsn
    for reqs in work[15:]:
        _turn(core, journal, reqs)
    journal.close()
    recover(middle, tmp_path, covered)
    _same(_everything(streams), _everything(middle))
    with pytest.raises(ReplayError, match="does not continue the snapshot"):
        recover(ls.Streams(model, max_streams=40), tmp_path, covered)  # onto the wrong state: refused


def test_a_failed_write_refuses_the_turn_and_applies_nothing(model, tmp_path):
    clock = [0.0]
    streams, journal, core = _served(model, tmp_path, clock=lambda: clock[0])
    x = np.arange(5, dtype=np.float32) / 7
    assert _turn(core, journal, [{"op": "step", "stream": "a", "x": x}])[0]["ok"]
    before = streams.get_state("a")
    real = journal._seg.write

    def full(data):
        raise OSError(errno.ENOSPC, "No space left on device")
    journal._seg.write = full
    replies = _turn(core, journal, [{"op": "step", "stream": "a", "x": x}, {"op": "get_state", "stream": "a"},
                                    {"op": "reset", "stream": "a"}, {"op": "step", "stream": "b", "x": x}])
    assert [r["ok"] for r in replies] == [False, True, False, False]
    assert {replies[k]["error"]["code"] for k in (0, 2, 3)} == {"log_failed"}
    assert "No space left" in replies[0]["error"]["message"] and "nothing was applied" in replies[0]["error"]["message"]
    after = streams.get_state("a")
    assert after.steps == before.steps and np.array_equal(after.h, before.h) and "b" not in streams
    info = core.call({"v": 1, "op": "info"})["log"]
    assert info["failing"] and info["failures"] == 1 and "No space" in info["last_error"]
    journal._seg.write = real  # the disk has room again, but the retry time has not come: still refused
    assert _turn(core, journal, [{"op": "step", "stream": "a", "x": x}])[0]["error"]["code"] == "log_failed"
    clock[0] += 1.0
    assert _turn(core, journal, [{"op": "step", "stream": "a", "x": x}])[0]["ok"]
    assert not core.call({"v": 1, "op": "info"})["log"]["failing"]
    journal.close()
    again = ls.Streams(model, max_streams=40)
    recover(again, tmp_path, 0)
    _same(_everything(streams), _everything(again))


def test_always_holds_replies_until_their_record_is_durable(model, tmp_path):
    streams, journal, core = _served(model, tmp_path, "always")
    from lstm_stream import protocol as P
    with journal._fd_busy:  # the fsync thread cannot finish while we hold the file
        core.submit("a", P.parse_request({"v": 1, "id": 1, "op": "step", "stream": "s", "x": [0.1] * 5}))
        assert core.step() == [] and core.held == 1
        core.submit("b", P.parse_request({"v": 1, "id": 2, "op": "get_state", "stream": "s"}))
        assert core.step() == [] and core.held == 2  # a later read waits behind it: replies keep their order
        assert journal.durable < journal.lsn
    out = []
    for _ in range(200):
        journal.woken()
        out += core.step()
        if len(out) == 2:
            break
        import time
        time.sleep(0.01)
    assert [t for t, _ in out] == ["a", "b"] and journal.durable == journal.lsn
    journal.close()


def test_sequence_numbers_apply_each_step_once(model, tmp_path):
    streams, journal, core = _served(model, tmp_path)
    rng = np.random.default_rng(8)
    x1, x2 = rng.standard_normal((2, 5)).astype(np.float32)
    r = _turn(core, journal, [{"op": "step", "stream": "p", "x": x1, "seq": 1},
                              {"op": "step", "stream": "p", "x": x1, "seq": 1}])  # resent before the reply
    assert r[0]["seq"] == 1 and r[1]["duplicate"] and np.array_equal(r[0]["y"], r[1]["y"])
    assert streams.get_state("p").steps == 1
    again = _turn(core, journal, [{"op": "step", "stream": "p", "x": x1, "seq": 1}])[0]  # resent later
    assert again["duplicate"] and np.array_equal(again["y"], r[0]["y"]) and streams.get_state("p").steps == 1
    two = _turn(core, journal, [{"op": "step", "stream": "p", "x": np.stack([x2, x1]), "seq": 3}])[0]
    assert two["y"].shape == (2, 3) and streams.get_state("p").steps == 3
    stale = _turn(core, journal, [{"op": "step", "stream": "p", "x": x1, "seq": 1}])[0]["error"]
    assert stale["code"] == "seq_stale" and stale["seq"] == 3 and stale["expected"] == 4
    gap = _turn(core, journal, [{"op": "step", "stream": "p", "x": x1, "seq": 9}])[0]["error"]
    assert gap["code"] == "seq_gap" and gap["seq"] == 3 and gap["expected"] == 4 and "seq 4, got 9" in gap["message"]
    dup2 = _turn(core, journal, [{"op": "step", "stream": "p", "x": np.stack([x2, x1]), "seq": 3}])[0]
    assert dup2["duplicate"] and np.array_equal(dup2["y"], two["y"])
    plain = _turn(core, journal, [{"op": "step", "stream": "p", "x": x1}])[0]  # unsequenced: as before
    assert plain["ok"] and "seq" not in plain and streams.get_state("p").steps == 4
    assert _turn(core, journal, [{"op": "step", "stream": "p", "x": x1, "seq": 3}])[0]["error"]["code"] == "seq_stale"
    # the receipt survives replay: a resend after a restart is answered, not applied
    last = _turn(core, journal, [{"op": "step", "stream": "p", "x": x2, "seq": 5}])[0]
    journal.close()
    restarted = ls.Streams(model, max_streams=40)
    recover(restarted, tmp_path, 0)
    j2 = Journal(tmp_path, model.fingerprint, model.dtype)
    j2.open(journal.lsn)
    core2 = EngineCore(restarted, EngineConfig(), journal=j2)
    resent = _turn(core2, j2, [{"op": "step", "stream": "p", "x": x2, "seq": 5}])[0]
    assert resent["duplicate"] and np.array_equal(resent["y"], last["y"]) and restarted.get_state("p").steps == 5
    j2.close()


def test_sequence_errors_change_nothing_and_new_streams_start_at_zero(model, tmp_path):
    streams, journal, core = _served(model, tmp_path)
    x = np.ones(5, np.float32)
    assert _turn(core, journal, [{"op": "step", "stream": "n", "x": x, "seq": 2}])[0]["error"]["code"] == "seq_gap"
    assert "n" not in streams  # nothing created
    assert _turn(core, journal, [{"op": "step", "stream": "n", "x": x, "seq": 1}])[0]["seq"] == 1
    _turn(core, journal, [{"op": "reset", "stream": "n"}])
    err = _turn(core, journal, [{"op": "step", "stream": "n", "x": x, "seq": 1}])[0]  # the receipt went with reset
    assert err["ok"] and "duplicate" not in err and streams.get_state("n").steps == 1
    journal.close()


def test_the_log_refuses_another_models_records(model, tmp_path):
    _, journal, core = _served(model, tmp_path)
    _turn(core, journal, [{"op": "step", "stream": "a", "x": [0.5] * 5}])
    journal.close()
    other = random_model(np.random.default_rng(99), I=5, H=13, L=2, O=3)
    with pytest.raises(steplog.LogCorruptError, match="not the loaded model"):
        recover(ls.Streams(other), tmp_path, 0)


def test_replay_with_a_cold_store_gives_every_stream_wherever_it_was(model, tmp_path):
    """Streams evicted, thawed, evicted again, dropped while cold and created again, after a snapshot: the
    restart (snapshot, then the log replayed, which evicts nothing and reads the versions the snapshot knew)
    gives each stream exactly its state."""
    from lstm_stream.coldstore import ColdStore
    from lstm_stream.snapshot import read_snapshot
    rng = np.random.default_rng(21)
    cold_path, snap = tmp_path / "cold.sqlite3", tmp_path / "streams.lstmsnap"
    streams = ls.Streams(model, cold=ColdStore(cold_path), idle_ttl=1e6)
    journal = Journal(tmp_path / "log", model.fingerprint, model.dtype)
    journal.open(0)
    core = EngineCore(streams, EngineConfig(), journal=journal)
    ids = ["a", "b", "c", "d", 5]

    def step(*which):
        _turn(core, journal, [{"op": "step", "stream": i, "x": rng.standard_normal((2, 5))} for i in which])

    step(*ids)
    step("a", "c", 5)
    streams.evict(["a", "b"])
    streams.save_snapshot(snap, meta={"log_lsn": journal.lsn})
    step("a", "c")                       # a back from its version
    streams.evict(["c", "d"])
    step("d")                            # d back
    _turn(core, journal, [{"op": "drop", "stream": "b"}])  # dropped while cold: a tombstone
    step("b")                            # a new b from zero
    _turn(core, journal, [{"op": "reset", "stream": 5}, {"op": "step", "stream": "a", "x": [0.3] * 5, "seq": 9}])
    streams.evict(["a"])                 # a cold again, a newer version
    step("a")
    journal.close()
    want = {i: streams.get_state(i) for i in ids}

    again = ls.Streams(model, cold=ColdStore(cold_path), idle_ttl=1e6)
    again.restore_snapshot(snap, cold_wins=False)
    meta = read_snapshot(snap)["meta"]
    again.replaying(meta["cold_lsn"])
    recover(again, tmp_path / "log", meta["log_lsn"])
    again.replaying(None)
    for i in ids:
        got = again.get_state(i)
        assert got.steps == want[i].steps and np.array_equal(got.h, want[i].h) and np.array_equal(got.c, want[i].c), i
    assert again.receipt("a", 9, 1) is None and again.sequence("a")[0] == want["a"].steps


@pytest.mark.parametrize("ids, form", [(["a", "pump-7", "é" * 3], 1), ([7, -3, 2**63 - 1], 2), (["a\0b", "c"], 0),
                                       (["x", 5], 0), (["\ud800", "y"], 0), ([1], 2)])
def test_record_ids_round_trip_in_every_form(ids, form):
    """str ids as one NUL-joined bin (1), int ids as int64 bytes (2), anything else as the list (0)."""
    from engine.records import packed_ids, unpacked_ids
    got, data = packed_ids(ids)
    back = unpacked_ids(got, data)
    assert got == form and back == ids and [type(i) for i in back] == [type(i) for i in ids]
