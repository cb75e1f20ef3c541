"""Invariant 3: snapshot, restore (also in a new process), continue == never stopped; bad files change nothing."""
import os
import subprocess
import sys

import msgpack
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream.snapshot import read_snapshot
from models import random_model

TESTS = os.path.dirname(os.path.dirname(__file__))


def make(seed=3, **kw):
    return random_model(np.random.default_rng(seed), I=4, H=20, L=2, P=6, O=3, **kw)


def populated(model, rng, n=50, T=30):
    s = ls.Streams(model)
    for k in range(n):
        s.step(f"dev-{k}" if k % 3 else k, rng.normal(0, 1, (int(rng.integers(1, T)), 4)))
    return s


def test_roundtrip_in_process(tmp_path):
    rng = np.random.default_rng(0)
    model = make()
    s = populated(model, rng)
    s.drop("dev-1")
    path = tmp_path / "snap.lss"
    size = s.save_snapshot(path)
    assert size == path.stat().st_size and not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    r = ls.Streams.load_snapshot(path, model)
    assert sorted(map(str, r.ids())) == sorted(map(str, s.ids()))
    for i in s.ids():
        a, b = s.get_state(i), r.get_state(i)
        assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps
        assert type(i) is type(next(j for j in r.ids() if j == i))  # int ids stay ints
    X = rng.normal(0, 1, (len(s), 4))
    assert np.array_equal(s.step_many(s.ids(), X), r.step_many(s.ids(), X))


def test_restore_over_a_used_store_reuses_its_slots(tmp_path):
    """Restoring into a Streams that held other streams: they are dropped, their slots reused (so the states
    land on scattered slots), and every restored stream continues exactly as in the saved one."""
    rng = np.random.default_rng(1)
    model = make()
    src = populated(model, rng)
    path = tmp_path / "snap.lss"
    src.save_snapshot(path)
    dst = ls.Streams(model, initial_capacity=2)
    dst.step_many([f"old-{k}" for k in range(40)] + list(range(100, 140)), rng.normal(0, 1, (80, 4)))
    for k in range(0, 40, 3):
        dst.drop(f"old-{k}")
    assert dst.restore_snapshot(path) == len(src)
    assert sorted(map(str, dst.ids())) == sorted(map(str, src.ids())) and 100 not in dst
    X = rng.normal(0, 1, (len(src), 4))
    assert np.array_equal(src.step_many(src.ids(), X), dst.step_many(src.ids(), X))
    assert [dst.stream_info(i)["steps"] for i in src.ids()] == [src.stream_info(i)["steps"] for i in src.ids()]


CONTINUE = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import lstm_stream as ls
model = ls.load_model({model!r})
s = ls.Streams.load_snapshot({snap!r}, model)
X = np.load({xs!r})
Y = np.stack([s.step_many(["a", 2, "c"], X[t]) for t in range(len(X))])
np.save({out!r}, Y)
"""


def test_restore_in_new_process_continues_bit_identically(tmp_path):
    rng = np.random.default_rng(1)
    model = make()
    model.save(tmp_path / "m.npz")
    warm, cont = rng.normal(0, 1, (40, 3, 4)), rng.normal(0, 1, (60, 3, 4)).astype(np.float32)
    np.save(tmp_path / "xs.npy", cont)
    s = ls.Streams(model)
    for t in range(40):
        s.step_many(["a", 2, "c"], warm[t])
    s.save_snapshot(tmp_path / "s.lss")
    uninterrupted = np.stack([s.step_many(["a", 2, "c"], cont[t]) for t in range(60)])
    code = CONTINUE.format(tests=TESTS, model=str(tmp_path / "m.npz"), snap=str(tmp_path / "s.lss"),
                           xs=str(tmp_path / "xs.npy"), out=str(tmp_path / "out.npy"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), uninterrupted)


def test_other_model_is_refused_and_nothing_changes(tmp_path):
    rng = np.random.default_rng(2)
    s = populated(make(3), rng)
    s.save_snapshot(tmp_path / "s.lss")
    other = ls.Streams(make(4))
    other.step("mine", np.ones(4))
    before = other.get_state("mine")
    with pytest.raises(ls.SnapshotError, match="belongs to model"):
        other.restore_snapshot(tmp_path / "s.lss")
    assert other.ids() == ["mine"] and np.array_equal(other.get_state("mine").h, before.h)


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_damaged_file_gives_clear_error_and_changes_nothing(tmp_path, damage):
    rng = np.random.default_rng(5)
    model = make()
    s = populated(model, rng, n=10)
    path = tmp_path / "s.lss"
    s.save_snapshot(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "magic":
        data[:8] = b"NOTSNAPS"
    else:
        data = b""
    path.write_bytes(bytes(data))
    target = populated(model, np.random.default_rng(9), n=5)
    ids, states = target.ids(), [target.get_state(i).c for i in target.ids()]
    with pytest.raises(ls.SnapshotError, match="truncated|corrupted|not an lstm-stream snapshot"):
        target.restore_snapshot(path)
    assert target.ids() == ids
    assert all(np.array_equal(target.get_state(i).c, c) for i, c in zip(ids, states))


def test_missing_file(tmp_path):
    with pytest.raises(ls.SnapshotError, match="does not exist"):
        read_snapshot(tmp_path / "nope.lss")


def test_failed_write_keeps_previous_snapshot(tmp_path, monkeypatch):
    model = make()
    s = populated(model, np.random.default_rng(6), n=5)
    path = tmp_path / "s.lss"
    s.save_snapshot(path)
    good = path.read_bytes()
    s.step("new", np.ones(4))

    def boom(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        s.save_snapshot(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["s.lss"]


def test_empty_store_snapshot(tmp_path):
    model = make()
    ls.Streams(model).save_snapshot(tmp_path / "e.lss")
    assert len(ls.Streams.load_snapshot(tmp_path / "e.lss", model)) == 0


# ---- format version 2: meta, blocks, extra arrays; version 1 still read -------------------------------
def write_version_1(path, streams):
    """A snapshot as lstm-stream wrote it before format version 2 (whole arrays, no meta, no block), by hand."""
    import hashlib
    import struct
    import time

    import msgpack
    ids = streams.ids()
    arrays = {k: np.ascontiguousarray(v) for k, v in streams.export_slots(np.array(
        [streams.known_slot(i) for i in ids], np.int64)).items() if k in ("h", "c", "steps", "last_seen")}
    h = arrays["h"]
    header = msgpack.packb({
        "fingerprint": streams.model.fingerprint, "dtype": str(h.dtype), "num_layers": h.shape[1],
        "state_size": h.shape[2], "hidden_size": arrays["c"].shape[2], "count": len(ids),
        "created": time.time(), "ids": ids,
        "arrays": [[k, str(a.dtype), list(a.shape)] for k, a in arrays.items()]}, use_bin_type=True)
    body = struct.pack("<8sIQ", b"LSTMSNAP", 1, len(header)) + header + b"".join(a.tobytes() for a in arrays.values())
    path.write_bytes(body + hashlib.sha256(body).digest())


def assert_same_streams(a, b):
    assert sorted(map(str, a.ids())) == sorted(map(str, b.ids()))
    for i in a.ids():
        x, y = a.get_state(i), b.get_state(i)
        assert np.array_equal(x.h, y.h) and np.array_equal(x.c, y.c) and x.steps == y.steps
        assert x.last_seen == y.last_seen


def test_a_version_1_file_still_loads(tmp_path):
    model = make()
    s = populated(model, np.random.default_rng(11), n=30)
    write_version_1(tmp_path / "v1.lss", s)
    snap = read_snapshot(tmp_path / "v1.lss", fingerprint=model.fingerprint)
    assert snap["meta"] == {} and snap["arrays"] == ["h", "c", "steps", "last_seen"]
    assert_same_streams(s, ls.Streams.load_snapshot(tmp_path / "v1.lss", model))


@pytest.mark.parametrize("n, block", [(0, 4), (1, 4), (10, 4), (12, 4), (10, 100)])
def test_blocks_meta_and_extra_arrays_round_trip(tmp_path, n, block):
    """A file written a block at a time holds the same arrays as whole; meta and an array the reader does not
    require come back as written."""
    from lstm_stream.snapshot import FORMAT_VERSION, write_snapshot_blocks
    rng = np.random.default_rng(n)
    ids = [f"s{k}" if k % 2 else k for k in range(n)]
    arrays = {"h": rng.normal(size=(n, 2, 6)).astype(np.float32), "c": rng.normal(size=(n, 2, 20)).astype(np.float32),
              "steps": rng.integers(0, 99, n), "last_seen": rng.random(n), "last_seq": rng.integers(-5, 5, (n, 3))}
    meta = {"log_lsn": 1234, "cold_lsn": 99, "note": "x"}
    size = write_snapshot_blocks(tmp_path / "b.lss", fingerprint="f", count=n, meta=meta, block=block,
                                 ids=lambda: (ids[k:k + 3] for k in range(0, n, 3)),
                                 export=lambda a, b: {k: v[a:b] for k, v in arrays.items()})
    snap = read_snapshot(tmp_path / "b.lss", fingerprint="f")
    assert size == (tmp_path / "b.lss").stat().st_size and snap["header"]["block"] == block
    assert (tmp_path / "b.lss").read_bytes()[8:12] == FORMAT_VERSION.to_bytes(4, "little") == b"\2\0\0\0"
    assert snap["meta"] == meta and snap["ids"] == ids and snap["arrays"] == list(arrays)
    for k, v in arrays.items():
        assert snap[k].dtype == v.dtype and np.array_equal(snap[k], v), k


def test_blocks_writer_streams_the_ids_and_refuses_ids_that_change(tmp_path):
    """The ids are read twice, a chunk at a time (once to size the header, once to write it: no list or packed
    copy of every id is built); a count that does not match, or ids that differ between the two readings,
    leave no file behind."""
    from lstm_stream.snapshot import write_snapshot_blocks
    n, rng = 10, np.random.default_rng(5)
    arrays = {"h": rng.normal(size=(n, 1, 3)).astype(np.float32), "c": rng.normal(size=(n, 1, 3)).astype(np.float32),
              "steps": rng.integers(0, 99, n), "last_seen": rng.random(n)}
    export = lambda a, b: {k: v[a:b] for k, v in arrays.items()}  # noqa: E731
    readings = []

    def ids():
        readings.append(0)
        for k in range(0, n, 4):
            readings[-1] += 1
            yield [f"id-{j}" for j in range(k, min(k + 4, n))]
    write_snapshot_blocks(tmp_path / "ok.lss", fingerprint="f", count=n, ids=ids, export=export, block=4)
    assert readings == [3, 3] and read_snapshot(tmp_path / "ok.lss")["ids"] == [f"id-{j}" for j in range(n)]
    with pytest.raises(ValueError, match="9 ids for a snapshot of 10 streams"):
        write_snapshot_blocks(tmp_path / "short.lss", fingerprint="f", count=n, export=export, block=4,
                              ids=lambda: [[f"id-{j}" for j in range(9)]])
    longer = iter([[["a"] * n], [["bb"] * n]])  # the second reading's ids pack longer than the first's
    with pytest.raises(ValueError, match="changed between the two passes"):
        write_snapshot_blocks(tmp_path / "moved.lss", fingerprint="f", count=n, export=export, block=4,
                              ids=lambda: next(longer))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.lss"]


def test_blocks_writer_memory_does_not_grow_with_the_ids(tmp_path):
    """The writer's own memory is about one block, however many ids the file holds: 200,000 ids pack into
    ~3 MB of header, and the write (traced by tracemalloc, numpy's buffers included) never holds a quarter."""
    import tracemalloc
    from lstm_stream.snapshot import write_snapshot_blocks
    n, block = 200_000, 1_000
    one = {"h": np.ones((block, 1, 2), np.float32), "c": np.ones((block, 1, 2), np.float32),
           "steps": np.arange(block), "last_seen": np.ones(block)}

    def ids():
        return ([f"sensor-{k:07d}" for k in range(a, a + block)] for a in range(0, n, block))
    tracemalloc.start()
    try:
        write_snapshot_blocks(tmp_path / "big.lss", fingerprint="f", count=n, ids=ids, block=block,
                              export=lambda a, b: {k: v[:b - a].copy() for k, v in one.items()})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    snap = read_snapshot(tmp_path / "big.lss")
    assert snap["ids"][-1] == f"sensor-{n - 1:07d}" and len(snap["ids"]) == n
    packed = n * len(msgpack.packb("sensor-0000000"))
    assert peak < packed / 4, (peak, packed)


def test_streams_save_in_blocks_with_meta_and_restore(tmp_path, monkeypatch):
    """Streams.save_snapshot across several blocks (one slot dropped in between) restores bit-identically;
    a file with an array this version does not know still restores."""
    import lstm_stream.snapshotting as streams_module
    monkeypatch.setattr(streams_module, "SNAPSHOT_BLOCK", 7)
    model = make()
    s = populated(model, np.random.default_rng(12), n=40)
    s.drop("dev-5")
    s.save_snapshot(tmp_path / "s.lss", meta={"log_lsn": 7})
    assert read_snapshot(tmp_path / "s.lss")["meta"] == {"log_lsn": 7}
    assert_same_streams(s, ls.Streams.load_snapshot(tmp_path / "s.lss", model))
    from lstm_stream.snapshot import write_snapshot
    ids, slots = s.ids(), np.array([s.known_slot(i) for i in s.ids()], np.int64)
    write_snapshot(tmp_path / "x.lss", fingerprint=model.fingerprint, ids=ids,
                   arrays={**s.export_slots(slots), "future": np.ones((len(ids), 2))})
    assert read_snapshot(tmp_path / "x.lss")["future"].shape == (len(ids), 2)
    assert_same_streams(s, ls.Streams.load_snapshot(tmp_path / "x.lss", model))


def test_import_slots_leaves_a_missing_per_slot_array_at_its_default():
    model = make()
    s = populated(model, np.random.default_rng(13), n=3)
    slot = s.known_slot("dev-1")
    before = s.stream_info("dev-1")["last_seen"]
    arrays = s.export_slots(np.array([slot], np.int64))
    del arrays["last_seen"]
    arrays["steps"][:] = 77
    s.import_slots(np.array([slot], np.int64), arrays)
    assert s.stream_info("dev-1") == {"steps": 77, "last_seen": before}
