"""Shards on a real local Ray cluster (one per module: 2 CPUs, no dashboard, a small object store, shut down
after): several ClusterClients over 3 shards give every stream the outputs of an offline run; a shard killed
under load (ray.kill with restart, then kill -9 of its worker process) is restarted by Ray, recovers from its
snapshot and step log (--fsync always) and loses no acknowledged step; a client with a stale map is corrected.
Bounded: every wait has a deadline, the load threads stop on a flag."""
import os
import signal
import threading
import zlib

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'lstm-stream[ray]' (the test extra has it)")

import lstm_stream as ls  # noqa: E402
from clients import Client, ClusterClient  # noqa: E402
from lstm_stream.shardmap import Shard, ShardMap  # noqa: E402
from cluster_load import DEADLINE, I, Load, inputs_of, offline, start_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(ShardMap, model, storage) of 3 shards with --fsync always on a local Ray started for this module."""
    from models import random_model

    from engine.cluster import control
    d = tmp_path_factory.mktemp("ray-cluster")
    model = random_model(np.random.default_rng(21), I=I, H=16, L=2, O=3)
    model.save(d / "m.npz")
    start_ray()
    try:
        m = control.up(3, storage=str(d / "storage"), model=str(d / "m.npz"), host="127.0.0.1",
                       options={"threads": 1, "fsync": "always", "snapshot_every": 2.0})
        yield m, model, d / "storage"
        control.down()
    finally:
        ray.shutdown()


def test_several_clients_over_three_shards_equal_an_offline_run(cluster):
    m, model, _ = cluster
    outputs = {}
    errors = []

    def run(c: int):
        streams = [f"c{c}-{j}" for j in range(12)] + [1000 * (c + 1) + j for j in range(12)]
        try:
            with ClusterClient(m.endpoints[m.names[c]], timeout=30) as client:
                for n in range(8):
                    if n % 2:
                        got = client.step_many({s: _x(s, n) for s in streams})
                        for s in streams:
                            outputs.setdefault(s, []).append(got[s])
                    else:
                        for s in streams:
                            outputs.setdefault(s, []).append(client.step(s, _x(s, n)))
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and not any(t.is_alive() for t in threads)
    ref = ls.Streams(model, threads=1)
    for s, ys in outputs.items():
        want = [ref.step(s, _x(s, n)) for n in range(len(ys))]
        assert len(ys) == 8 and all(np.array_equal(a, b) for a, b in zip(ys, want)), s
    with ClusterClient(m) as c:
        info = c.info()
        assert sum(i["streams"] for i in info["shards"].values()) == len(outputs)
        for name, i in info["shards"].items():  # each shard holds exactly the streams it owns
            with Client(m.endpoints[name]) as one:
                assert all(m.owner(s) == name for s in one.streams())


def _x(s, n):
    return np.random.default_rng([zlib.crc32(str(s).encode()), n]).normal(size=I).astype(np.float32)


@pytest.mark.parametrize("how", ["ray.kill", "kill -9"])
def test_a_killed_shard_is_restarted_and_loses_no_acknowledged_step(cluster, how):
    from engine.cluster import control
    m, model, _ = cluster
    base = 0 if how == "ray.kill" else 100  # new streams for each kill
    victim = m.owner(base)
    handle = control.shard(victim)
    pid = ray.get(handle.pid.remote())
    load = Load(m, 12, base)
    try:
        load.wait_for(200)
        if how == "ray.kill":
            ray.kill(handle, no_restart=False)
        else:
            os.kill(pid, signal.SIGKILL)
        before = load.total
        load.wait_for(before + 200)  # served again: the restarted shard answers the resends and new steps
    finally:
        load.finish()
    assert ray.get(handle.pid.remote(), timeout=DEADLINE) != pid  # a new process
    with ClusterClient(m) as c:
        for k in range(load.n):
            ys, state = offline(model, base + k, len(load.acked[k]))
            got = c.get_state(base + k)
            assert got.steps == len(load.acked[k]), k  # nothing acknowledged lost, nothing applied twice
            assert np.array_equal(got.h, state.h) and np.array_equal(got.c, state.c), k
            assert np.array_equal(np.stack(load.acked[k]), ys), k
    c = control.status()["shards"][victim]
    assert c["endpoint"] == control.shard_map().endpoints[victim]


def test_a_stale_map_is_corrected(cluster):
    m, model, _ = cluster
    stale = ShardMap(1, [Shard(m.names[0], m.endpoints[m.names[0]])])
    with ClusterClient(stale, exactly_once=True, timeout=30) as c:
        ys = [c.step(f"stale-{j}", inputs_of(j, 0)) for j in range(20)]
        assert c.map.version == m.version and c.map.names == m.names
    ref = ls.Streams(model, threads=1)
    for j, y in enumerate(ys):
        assert np.array_equal(y, ref.step(f"stale-{j}", inputs_of(j, 0)))
