"""Shards on a real local Ray cluster (one per module: 2 CPUs, no dashboard, a small object store, shut down
after): several ClusterClients over 3 shards give every stream the outputs of an offline run; a shard killed
under load (ray.kill with restart, then kill -9 of its worker process) is restarted by Ray, recovers from its
snapshot and step log (--fsync always) and loses no acknowledged step; a client with a stale map is corrected.
Bounded: every wait has a deadline, the load threads stop on a flag."""
import os
import signal
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'lstm-stream[ray]' (the test extra has it)")

import lstm_stream as ls  # noqa: E402
from clients import Client, ClientError, ClusterClient  # noqa: E402
from lstm_stream.shardmap import Shard, ShardMap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
I = 4
DEADLINE = 240.0  # seconds for a restarted shard to serve again (a loaded 2-core CI machine; usually ~10 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(ShardMap, model, storage) of 3 shards with --fsync always on a local Ray started for this module."""
    from models import random_model

    from engine.cluster import control
    d = tmp_path_factory.mktemp("ray-cluster")
    model = random_model(np.random.default_rng(21), I=I, H=16, L=2, O=3)
    model.save(d / "m.npz")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if "LSTM_STREAM_CACHE_DIR" in os.environ:
        env["LSTM_STREAM_CACHE_DIR"] = os.environ["LSTM_STREAM_CACHE_DIR"]
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        m = control.up(3, storage=str(d / "storage"), model=str(d / "m.npz"), host="127.0.0.1",
                       options={"threads": 1, "fsync": "always", "snapshot_every": 2.0})
        yield m, model, d / "storage"
        control.down()
    finally:
        ray.shutdown()


def inputs_of(k: int, n: int) -> np.ndarray:
    """Stream k's n-th sample: fixed by (k, n), so that an offline run can replay it."""
    return np.random.default_rng((k, n)).normal(size=I).astype(np.float32)


def offline(model, k: int, steps: int):
    """(outputs (steps, O), final state) of stream k stepped through its first `steps` samples, one at a time."""
    s = ls.Streams(model, threads=1)
    ys = np.stack([s.step(k, inputs_of(k, n)) for n in range(steps)])
    return ys, s.get_state(k)


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


class Load:
    """A thread stepping streams 0..n-1 round robin with an exactly-once ClusterClient (resent through a shard's
    restart with the same seq), keeping each acknowledged output, until stopped."""

    def __init__(self, m, n: int, base: int):
        self.m, self.n, self.base = m, n, base
        self.acked = [[] for _ in range(n)]
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with ClusterClient(self.m, timeout=2.0, retries=int(DEADLINE / 2), exactly_once=True) as c:
                k = 0
                while not self.stop.is_set():
                    y = c.step(self.base + k, inputs_of(self.base + k, len(self.acked[k])))
                    self.acked[k].append(y)
                    k = (k + 1) % self.n
        except ClientError as e:
            self.error = e

    @property
    def total(self) -> int:
        return sum(map(len, self.acked))

    def wait_for(self, total: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while self.total < total and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.error is None and self.total >= total, (self.error, self.total, total)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive() and self.error is None, self.error


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
