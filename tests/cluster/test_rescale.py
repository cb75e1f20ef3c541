"""Rescaling a live cluster on a local Ray (moves.py): add a shard, then remove one, while a client steps
streams exactly-once. Only the streams whose owner changes move (checked against the hash), each shard ends
holding exactly its streams, none lost or doubled, and every output and state is bit-identical to an offline
run of the acknowledged steps. Bounded: every wait has a deadline."""
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'lstm-stream[ray]' (the test extra has it)")

import lstm_stream as ls  # noqa: E402
from clients import Client, ClusterClient  # noqa: E402
from cluster_load import I, Load, inputs_of, offline, start_ray  # noqa: E402

STREAMS = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from models import random_model

    from engine.cluster import control
    d = tmp_path_factory.mktemp("rescale")
    model = random_model(np.random.default_rng(22), I=I, H=16, L=2, O=3)
    model.save(d / "m.npz")
    start_ray()
    try:
        m = control.up(2, storage=str(d / "storage"), model=str(d / "m.npz"), host="127.0.0.1",
                       options={"threads": 1, "fsync": "always"})
        yield m, model, str(d / "storage")
        control.down()
    finally:
        ray.shutdown()


def held(m) -> dict:
    """{shard: set of its streams}, asked from each shard directly."""
    out = {}
    for name, endpoint in m.endpoints.items():
        with Client(endpoint, timeout=30) as c:
            out[name] = set(c.streams())
    return out


def test_add_then_remove_a_shard_under_load(cluster):
    from engine.cluster import control
    m0, model, storage = cluster
    load = Load(m0, STREAMS, 0)
    try:
        load.wait_for(3 * STREAMS)
        before = held(m0)
        m1 = control.add_shard("s2", storage=storage)
        load.wait_for(load.total + 2 * STREAMS)  # served on, through the new map
        after = held(m1)
        ids = list(range(STREAMS))
        moved = {i for i in ids if m0.owner(i) != m1.owner(i)}
        assert moved and all(m1.owner(i) == "s2" for i in moved)  # adding moves streams only to the new shard
        assert after["s2"] == moved
        with ClusterClient(m1) as c:  # the load's client (map m0) was told by wrong_shard where they went
            assert sum(i["counters"].get("error.wrong_shard", 0) for i in c.info()["shards"].values()) > 0
        for name in ("s0", "s1"):
            assert after[name] == before[name] - moved
        m2 = control.remove_shard("s0", storage=storage)
        load.wait_for(load.total + 2 * STREAMS)
        final = held(m2)
        assert m2.names == ("s1", "s2") and m2.version > m1.version > m0.version
        for i in ids:  # removing moves only s0's streams
            assert m2.owner(i) == m1.owner(i) or m1.owner(i) == "s0"
        assert final == {n: {i for i in ids if m2.owner(i) == n} for n in m2.names}
        assert os.path.isdir(os.path.join(storage, "shards", f"s0.removed-v{m2.version}"))
        with pytest.raises(ValueError):
            control.shard("s0")  # its actor is gone
    finally:
        load.finish()
    with ClusterClient(m2) as c:
        for k in range(STREAMS):
            ys, state = offline(model, k, len(load.acked[k]))
            got = c.get_state(k)
            assert got.steps == len(load.acked[k]), k  # none lost, none applied twice
            assert np.array_equal(got.h, state.h) and np.array_equal(got.c, state.c), k
            assert np.array_equal(np.stack(load.acked[k]), ys), k


def test_a_second_rescale_is_refused_while_one_runs(cluster):
    from engine.cluster import control
    from engine.cluster.actors import KEEPER, NAMESPACE
    keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    m = control.shard_map()
    ray.get(keeper.begin.remote([*m.names, "x9"]))
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="is in progress; finish or abort it first"):
            control.add_shard("x8", storage=cluster[2])
    finally:
        assert control.abort_move(storage=cluster[2]) == m
    assert control.shard_map() == m
    with ClusterClient(m) as c:
        c.step("after-abort", inputs_of(0, 0))  # every stream is served again


def test_a_source_killed_mid_move_keeps_refusing_its_moving_streams(cluster):
    """kill -9 of a source between its export and the publish: Ray restarts it, it reads the keeper's next map
    and still refuses its moving streams (so the exported copies stay the only ones that change); the move
    then completes and every stream continues exactly."""
    import signal

    from clients import WrongShard
    from engine.cluster import control
    from engine.cluster.actors import KEEPER, NAMESPACE
    from engine.cluster.storage import SharedPath
    from lstm_stream.shardmap import ShardMap
    _, model, storage = cluster
    keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    m = control.shard_map()
    ids = [f"mid-{k}" for k in range(30)]
    with ClusterClient(m, exactly_once=True, timeout=30) as c:
        for i in ids:
            c.step(i, inputs_of(0, 0))
    ray.get(keeper.begin.remote([*m.names, "s9"]))
    control._start(["s9"], SharedPath(storage))
    nxt = ray.get(keeper.get_next.remote())
    moving = [i for i in ids if ShardMap.from_map(nxt).owner(i) == "s9"]
    source = m.owner(moving[0])
    exports = [control.shard(n).export_moving.remote(nxt) for n in m.names]
    ray.wait(exports, num_returns=len(exports), timeout=120)
    pid = ray.get(control.shard(source).pid.remote())
    os.kill(pid, signal.SIGKILL)
    assert ray.get(control.shard(source).pid.remote(), timeout=240) != pid  # restarted
    with Client(control.shard_map().endpoints[source], timeout=30) as c:
        stream = next(i for i in moving if m.owner(i) == source)
        with pytest.raises(WrongShard, match="are moving"):
            c.step(stream, inputs_of(0, 1), seq=2)
    ray.get([control.shard(n).import_streams.remote(exports) for n in [*m.names, "s9"]])
    new = ShardMap.from_map(ray.get(keeper.publish.remote()))
    ray.get([control.shard(n).set_map.remote(new.as_map(), None) for n in new.names])
    ray.get([control.shard(n).finish_move.remote() for n in m.names])
    with ClusterClient(new, exactly_once=True, timeout=30) as c:
        for i in ids:
            got = c.step(i, inputs_of(0, 1))
            ref = ls.Streams(model, threads=1)
            ref.step(i, inputs_of(0, 0))
            assert np.array_equal(got, ref.step(i, inputs_of(0, 1))), i
            assert c.get_state(i).steps == 2
    with Client(new.endpoints["s9"]) as c:
        assert {i for i in ids if i in set(c.streams())} == set(moving)
