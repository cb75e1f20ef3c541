"""The steps of a live move (engine/cluster/moves.py) on ShardEngines in this process, without Ray: while a
rescale runs the source refuses only its moving streams (wrong_shard, moving, the next version); the export
carries state and sequence receipts, so the target continues each stream bit for bit and answers a resent
sequenced step with its original outputs; after publish the source drops them; an abort gives them back; a
shard that restarts holding streams it no longer owns drops them."""
import numpy as np
import pytest

import lstm_stream as ls
from clients import Client, ClusterClient, WrongShard
from engine.cluster.shard import ShardEngine
from lstm_stream.shardmap import Shard, ShardMap

OPTIONS = {"threads": 1, "fsync": "always"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from models import random_model
    m = random_model(np.random.default_rng(6), I=4, H=16, L=2, O=3)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    m.save(path)
    return str(path), m


def x_of(k, n):
    return np.random.default_rng((k, n)).normal(size=4).astype(np.float32)


def stepped(model, tmp_path, n=40):
    """Shard s0 alone (map v1) holding streams 0..n-1, each stepped 3 times with seq; the reference run."""
    v1 = ShardMap(1, [Shard("s0", "")])
    a = ShardEngine("s0", str(tmp_path / "s0"), v1, model=model[0], options=OPTIONS)
    v1 = ShardMap(2, [Shard("s0", a.endpoint)])
    a.set_map(v1)
    ref = ls.Streams(model[1], threads=1)
    last = {}
    with Client(a.endpoint) as c:
        for t in range(3):
            for k in range(n):
                last[k] = c.step(k, x_of(k, t), seq=t + 1)
                assert np.array_equal(last[k], ref.step(k, x_of(k, t)))
    return a, v1, ref, last


def test_a_move_keeps_state_and_receipts(model, tmp_path):
    a, v1, ref, last = stepped(model, tmp_path)
    v2 = ShardMap(3, [Shard("s0", a.endpoint), Shard("s1", "")])
    b = ShardEngine("s1", str(tmp_path / "s1"), v1, model=model[0], options=OPTIONS, next_map=v2)
    v2 = ShardMap(3, [Shard("s0", a.endpoint), Shard("s1", b.endpoint)])
    try:
        moving = [k for k in range(40) if v2.owner(k) == "s1"]
        staying = [k for k in range(40) if v2.owner(k) == "s0"]
        assert moving and staying
        a.set_map(v1, v2)  # begin
        with Client(a.endpoint) as c:
            with pytest.raises(WrongShard, match="are moving from shard 's0' to 's1'") as e:
                c.step(moving[0], x_of(moving[0], 3), seq=4)
            assert e.value.version == 3
            y = c.step(staying[0], x_of(staying[0], 3), seq=4)  # the others are served on
            assert np.array_equal(y, ref.step(staying[0], x_of(staying[0], 3)))
        exported = a.export_moving(v2)
        assert list(exported) == ["s1"] and sorted(exported["s1"][0]) == moving
        assert b.import_streams(*exported["s1"]) == len(moving)
        for e in (a, b):
            e.set_map(v2)  # publish
        assert a.finish_move() == len(moving)
        with Client(a.endpoint) as c:
            assert sorted(c.streams()) == staying
            with pytest.raises(WrongShard, match="does not own") as e:
                c.get_state(moving[0])
            assert e.value.version == 3
        with ClusterClient(v2) as c:  # the moved streams continue bit for bit on s1
            k = moving[0]
            assert np.array_equal(c.step(k, x_of(k, 2), seq=3), last[k])  # a resend: the original outputs
            assert c.get_state(k).steps == 3
            for k in moving:
                assert np.array_equal(c.step(k, x_of(k, 3), seq=4), ref.step(k, x_of(k, 3)))
                got, want = c.get_state(k), ref.get_state(k)
                assert np.array_equal(got.h, want.h) and np.array_equal(got.c, want.c) and got.steps == 4
    finally:
        a.stop()
        b.stop()


def test_an_abort_gives_the_moving_streams_back(model, tmp_path):
    a, v1, ref, _ = stepped(model, tmp_path, n=20)
    v2 = ShardMap(3, [Shard("s0", a.endpoint), Shard("s1", "tcp://127.0.0.1:1")])
    try:
        exported = a.export_moving(v2)
        moving = exported["s1"][0]
        a.abort_move(v1)
        with Client(a.endpoint) as c:
            for k in moving:  # served again, from the state that never left
                assert np.array_equal(c.step(k, x_of(k, 3), seq=4), ref.step(k, x_of(k, 3)))
            assert len(c.streams()) == 20
    finally:
        a.stop()


def test_a_restarted_shard_drops_streams_it_no_longer_owns(model, tmp_path):
    a, v1, ref, _ = stepped(model, tmp_path, n=20)
    v2 = ShardMap(3, [Shard("s0", a.endpoint), Shard("s1", "tcp://127.0.0.1:1")])
    a.export_moving(v2)
    a.set_map(v2)  # published, and the shard stops before its finish_move
    a.stop()
    a = ShardEngine("s0", str(tmp_path / "s0"), v2, model=model[0], options=OPTIONS)
    try:
        with Client(a.endpoint) as c:
            assert sorted(c.streams()) == [k for k in range(20) if v2.owner(k) == "s0"]
    finally:
        a.stop()
