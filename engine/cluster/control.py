"""The Python API of a cluster on Ray (the caller has called ray.init: a local Ray, or an existing cluster).

    from engine.cluster import control
    m = control.up(3, storage="/mnt/cluster", model="pump.npz")   # -> ShardMap; shards s0, s1, s2
    control.status()       # {"map": ..., "shards": {name: {endpoint, streams, pid, node, ...}}}
    control.down()         # each shard snapshots and stops; the actors go

Actors are detached (they outlive the driver that made them, as long as the Ray cluster lives) and named in
the namespace "lstm-stream", so `up` again finds the running ones (get_if_exists) instead of starting twins.
"""
from __future__ import annotations

import ray

from lstm_stream.shardmap import ShardMap

from .actors import KEEPER, NAMESPACE, MapKeeper, ShardActor, shard_actor_name
from .storage import SharedPath

# Restart forever (a shard is worth restarting however often it dies); a method call that meets a dead
# actor waits for its restart and is retried (they are all reads or idempotent).
ACTOR_OPTIONS = dict(namespace=NAMESPACE, lifetime="detached", max_restarts=-1, max_task_retries=-1,
                     num_cpus=0, get_if_exists=True)


def up(shards: int | None, *, storage: str, model: str | None = None, host: str | None = None,
       options: dict | None = None, names: list | None = None, log_level: str = "info") -> ShardMap:
    """Start (or find running) the map keeper and every shard; returns the map once every shard serves.
    A storage that holds a map already (a cluster started there before) keeps its shards: `shards` must
    then be None or their number."""
    store = SharedPath(storage)
    names = store.shard_names(shards, names)
    keeper = MapKeeper.options(name=KEEPER, **ACTOR_OPTIONS).remote(store.describe(), names)
    ray.get(keeper.get.remote())
    handles = [ShardActor.options(name=shard_actor_name(n), **ACTOR_OPTIONS).remote(
        n, store.describe(), model, host, dict(options or {}), log_level) for n in names]
    ray.get([h.endpoint.remote() for h in handles])  # each constructor has recovered and bound
    return shard_map()


def shard_map() -> ShardMap:
    """The keeper's current map."""
    return ShardMap.from_map(ray.get(ray.get_actor(KEEPER, namespace=NAMESPACE).get.remote()))


def shard(name: str):
    """The actor handle of shard `name`."""
    return ray.get_actor(shard_actor_name(name), namespace=NAMESPACE)


def status() -> dict:
    """The map and each shard's status (endpoint, streams, map version, pid, node, log position)."""
    m = shard_map()
    return {"map": m.as_map(), "shards": dict(zip(m.names, ray.get([shard(n).status.remote() for n in m.names])))}


def down() -> None:
    """Stop every shard (each serves what is queued, snapshots, closes its log), then remove the actors."""
    m = shard_map()
    handles = [shard(n) for n in m.names]
    ray.get([h.stop.remote() for h in handles])
    for h in handles:
        ray.kill(h, no_restart=True)
    ray.kill(ray.get_actor(KEEPER, namespace=NAMESPACE), no_restart=True)
