"""Shards on Ray (docs/benchmarks.md, "Shards on Ray"; docs/cluster.md scales these figures on paper).

    python -m bench.cluster            # ~4 minutes
    python -m bench.cluster --quick    # a smoke run

One model (I=8, H=64, O=8, float32), every server with its state directory and step log (--fsync everysec):

    throughput  samples/s of step_many messages of 100 streams (16 in flight per connection): one plain
                daemon (`serve`), a cluster of 1 shard, a cluster of 2 shards (one connection per shard, each
                sending only its shard's streams); rounds interleaved, medians
    routing     the client's cost per request: ClusterClient against Client, each stepping 100 streams per
                step_many on a 1-shard cluster (the same server); and the owner of one id (cached, not)
    move        add a shard to a 1-shard cluster holding --move-streams streams: the seconds add_shard takes
                (about half of them move), and the same to remove it again
    restart     kill -9 of a shard's worker after N step_many records in its log since the snapshot: seconds
                until it answers again (Ray's restart, imports, kernels from the cache, snapshot, replay)
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from . import common

I, H, O = 8, 64, 8
PER_MESSAGE = 100
WINDOW = 16


def _model(path):
    sys.path.insert(0, str(common.ROOT / "tests"))
    from models import random_model
    random_model(np.random.default_rng(0), I=I, H=H, L=1, O=O).save(path)


def _pool(ids, seed=0):
    """Encoded step_many messages of PER_MESSAGE of `ids` each."""
    import msgpack

    from .servers import wire_array
    rng = np.random.default_rng(seed)
    out = []
    for k in range(0, len(ids) - PER_MESSAGE + 1, PER_MESSAGE):
        x = rng.standard_normal((PER_MESSAGE, I), dtype=np.float32)
        out.append(msgpack.packb({"v": 1, "id": k, "op": "step_many", "streams": ids[k:k + PER_MESSAGE],
                                  "x": wire_array(x)}))
    return out


def _rate(targets, seconds) -> float:
    """samples/s of LoadGens run at once, one thread each, over (endpoint, pool) targets."""
    import zmq

    from .loadgen import LoadGen
    ctx = zmq.Context.instance()
    gens = [LoadGen(ep, ctx) for ep, _ in targets]
    rates = [0.0] * len(gens)

    def run(k):
        rates[k] = gens[k].throughput(targets[k][1], WINDOW, seconds)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(gens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in gens:
        g.close()
    return sum(rates) * PER_MESSAGE


def throughput(a, d, model_path, plain_ep) -> tuple:
    """{setup: (median samples/s, its range, the plain daemon's median in the same rounds)}. One cluster per
    Ray namespace at a time (the keeper's name is fixed), so each cluster size is measured against the plain
    daemon in rounds of its own, the order alternating."""
    from engine.cluster import control
    ids = [f"s{k}" for k in range(10_000)]
    out = {}
    for n in (1, 2):
        m = control.up(n, storage=f"{d}/shards{n}", model=model_path, host="127.0.0.1", options={"threads": 1})
        owners = m.owners(ids)
        setups = {"plain daemon": [(plain_ep, _pool(ids))],
                  f"{n} shard{'s' * (n > 1)}": [(m.endpoints[s], _pool([i for i, o in zip(ids, owners) if o == s]))
                                                for s in m.names]}
        for targets in setups.values():  # create the streams, warm up
            _rate(targets, 1.0)
        rates = {k: [] for k in setups}
        for rnd in range(a.rounds):
            for k in (list(setups) if rnd % 2 == 0 else list(setups)[::-1]):
                rates[k].append(_rate(setups[k], a.seconds))
        key = list(setups)[1]
        out[key] = (statistics.median(rates[key]), (min(rates[key]), max(rates[key])),
                    statistics.median(rates["plain daemon"]))
        if n == 1:
            costs = routing(a, m)
        control.down()
    return out, costs


def routing(a, one) -> dict:
    from clients import Client, ClusterClient
    from lstm_stream.shardmap import Shard, ShardMap
    ids = [f"r{k}" for k in range(PER_MESSAGE)]
    batch = {i: np.ones(I, np.float32) for i in ids}
    ep = one.endpoints[one.names[0]]
    with Client(ep) as c, ClusterClient(one) as cc:
        for f in (c.step_many, cc.step_many):
            f(batch)
        t = {"Client": [], "ClusterClient": []}
        for _ in range(a.rounds * 5):
            for name, f in (("Client", c.step_many), ("ClusterClient", cc.step_many)):
                t0 = time.perf_counter()
                for _ in range(200):
                    f(batch)
                t[name].append((time.perf_counter() - t0) / 200)
    m = ShardMap(1, [Shard(f"s{k}", "") for k in range(16)])
    fresh = [f"id-{k}" for k in range(20_000)]
    t0 = time.perf_counter()
    for i in fresh:
        m.owner(i)
    single = (time.perf_counter() - t0) / len(fresh)
    t0 = time.perf_counter()
    m.owners(fresh)
    vector = (time.perf_counter() - t0) / len(fresh)
    with ClusterClient(m) as cc:
        for i in fresh:
            cc.owner(i)
        t0 = time.perf_counter()
        for i in fresh:
            cc.owner(i)
        cached = (time.perf_counter() - t0) / len(fresh)
    return {"Client": statistics.median(t["Client"]), "ClusterClient": statistics.median(t["ClusterClient"]),
            "owner": single, "owners": vector, "cached": cached}


def move(a, d, model_path) -> dict:
    from clients import ClusterClient
    from engine.cluster import control
    m = control.up(None, storage=f"{d}/move", model=model_path, host="127.0.0.1", names=["m0"],
                   options={"threads": 1, "max_request_new_streams": 10_000})
    with ClusterClient(m, timeout=60) as c:
        for k in range(0, a.move_streams, 10_000):
            c.step_many({f"mv{j}": np.ones(I, np.float32) for j in range(k, min(k + 10_000, a.move_streams))})
    t0 = time.perf_counter()
    m1 = control.add_shard("m1", storage=f"{d}/move")
    add_s = time.perf_counter() - t0
    phases = dict(control.LAST_RESCALE)
    moved = sum(1 for o in m1.owners([f"mv{j}" for j in range(a.move_streams)]) if o == "m1")
    t0 = time.perf_counter()
    control.remove_shard("m1", storage=f"{d}/move")
    remove_s = time.perf_counter() - t0
    back = dict(control.LAST_RESCALE)
    control.down()
    return {"streams": a.move_streams, "moved": moved, "add": add_s, "remove": remove_s, "phases": phases,
            "back": back}


def restart(a, d, model_path) -> list:
    import ray

    from clients import Client, ClusterClient
    from engine.cluster import control
    out = []
    for n, records in enumerate(a.records):
        name = f"k{n}"
        m = control.up(None, storage=f"{d}/restart{n}", model=model_path, host="127.0.0.1", names=[name],
                       options={"threads": 1})
        with ClusterClient(m, timeout=60) as c:
            ids = [f"k{j}" for j in range(PER_MESSAGE)]
            c.step_many({i: np.ones(I, np.float32) for i in ids})
            c.snapshot()
            for _ in range(records):
                c.step_many({i: np.ones(I, np.float32) for i in ids})
        h = control.shard(name)
        pid = ray.get(h.pid.remote())
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        with Client(m.endpoints[name], timeout=1.0, retries=0) as c:
            deadline = t0 + 300
            while time.perf_counter() < deadline:
                try:
                    c.get_state("k0")
                    break
                except Exception:
                    c._reopen()
        out.append((records, time.perf_counter() - t0))
        control.down()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    common.resolve_doc(a)
    a.rounds, a.seconds = (2, 1.0) if a.quick else (5, 3.0)
    a.move_streams = 20_000 if a.quick else 200_000
    a.records = [0, 1_000] if a.quick else [0, 1_000, 10_000]
    common.exit_on_sigterm()
    import ray
    d = tempfile.mkdtemp(prefix="bench-cluster-")
    model_path = f"{d}/m.npz"
    _model(model_path)
    port = common.free_port()
    plain_ep = f"tcp://127.0.0.1:{port}"
    env = common.clean_env()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {k: env[k] for k in ("PYTHONPATH", "LSTM_STREAM_CACHE_DIR") if k in env}})
    try:
        with common.subprocess_server([sys.executable, "-m", "engine.cli", "serve", "--model", model_path, "--bind",
                                       plain_ep, "--threads", "1", "--snapshot-dir", f"{d}/plain"], env=env,
                                      log_path=f"{d}/plain.log"):
            from .loadgen import LoadGen
            import zmq
            g = LoadGen(plain_ep, zmq.Context.instance())
            g.wait_ready(120)
            g.close()
            rates, r = throughput(a, d, model_path, plain_ep)
        mv = move(a, d, model_path)
        rs = restart(a, d, model_path)
    finally:
        ray.shutdown()
        subprocess.run(["rm", "-rf", d], check=False)
    lines = ["## Shards on Ray", "", "`python -m bench.cluster" + (" --quick`" if a.quick else "`") +
             f" (I={I}, H={H}, O={O} float32; step log on, `--fsync everysec`; `--threads 1` per server; a local "
             f"Ray of 2 CPUs; step_many of {PER_MESSAGE} streams, {WINDOW} in flight per connection, one connection "
             "per shard). **The host is a shared 2-core VM** (other jobs ran beside this one): compare the rows "
             "of one run, not absolute figures.", *common.machine_lines(), "",
             common.table(["server", "samples/s (median)", "range", "plain daemon, same rounds", "ratio"],
                          [[k, f"{v:,.0f}", f"{lo:,.0f}-{hi:,.0f}", f"{p:,.0f}", f"{v / p:.2f}x"]
                           for k, (v, (lo, hi), p) in rates.items()]), "",
             f"Routing, per step_many of {PER_MESSAGE} streams on a 1-shard cluster: Client "
             f"{r['Client'] * 1e6:,.0f} µs, ClusterClient {r['ClusterClient'] * 1e6:,.0f} µs "
             f"(+{(r['ClusterClient'] - r['Client']) * 1e6:,.0f} µs). The owner of one id among 16 shards: "
             f"{r['owner'] * 1e6:.2f} µs computed, {r['owners'] * 1e6:.2f} µs per id in a batch (numpy), "
             f"{r['cached'] * 1e6:.2f} µs from the client's cache.", "",
             f"Moving: a 1-shard cluster holding {mv['streams']:,} streams. add_shard took {mv['add']:.1f} s: "
             f"starting the new shard {mv['phases']['start_shards']:.1f} s, then moving {mv['moved']:,} streams "
             f"(export, transfer, import, the target's snapshot) {mv['phases']['move']:.1f} s "
             f"({mv['moved'] / mv['phases']['move']:,.0f} streams/s), publishing {mv['phases']['publish']:.2f} s, "
             f"dropping them at the source (and its snapshot) {mv['phases']['drop']:.1f} s. remove_shard moved "
             f"them back in {mv['remove']:.1f} s (moving {mv['back']['move']:.1f} s).", "",
             common.table(["step_many records in the log since the snapshot", "kill -9 to answering (s)"],
                          [[f"{n:,}", f"{s:.1f}"] for n, s in rs])]
    common.publish("cluster", "\n".join(lines), a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
