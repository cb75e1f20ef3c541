"""The Python API of a cluster on Ray (the caller has called ray.init: a local Ray, or an existing cluster).

    from engine.cluster import control
    m = control.up(3, storage="/mnt/cluster", model="pump.npz")   # -> ShardMap; shards s0, s1, s2
    control.status()       # {"map": ..., "shards": {name: {endpoint, streams, pid, node, ...}}}
    control.add_shard("s3")          # streams whose owner becomes s3 move there, live (moves.py)
    control.remove_shard("s0")       # s0's streams move to their new owners; s0 stops
    control.down()         # each shard snapshots and stops; the actors go

Actors are detached (they outlive the driver that made them, as long as the Ray cluster lives) and named in
the namespace "lstm-stream", so `up` again finds the running ones (get_if_exists) instead of starting twins.
"""
from __future__ import annotations

import ray

import logging
import time

from lstm_stream.errors import InputError
from lstm_stream.shardmap import ShardMap

from .actors import KEEPER, NAMESPACE, MapKeeper, ShardActor, shard_actor_name
from .storage import SharedPath, check_shard_name, retire

log = logging.getLogger("lstm_stream.engine")

# Restart forever (a shard is worth restarting however often it dies); a method call that meets a dead
# actor waits for its restart and is retried (they are all reads or idempotent).
ACTOR_OPTIONS = dict(namespace=NAMESPACE, lifetime="detached", max_restarts=-1, max_task_retries=-1,
                     num_cpus=0, get_if_exists=True)
# Shards use none of Ray's CPUs (long-lived servers, not tasks), so Ray's default placement could pack them
# all on one node: SPREAD puts them on as many nodes as it can.
SHARD_OPTIONS = dict(ACTOR_OPTIONS, scheduling_strategy="SPREAD")


def up(shards: int | None, *, storage: str, model: str | None = None, host: str | None = None,
       options: dict | None = None, names: list | None = None, log_level: str = "info") -> ShardMap:
    """Start (or find running) the map keeper and every shard; returns the map once every shard serves.
    A storage that holds a map already (a cluster started there before) keeps its shards: `shards` must
    then be None or their number."""
    store = SharedPath(storage)
    names = store.shard_names(shards, names)
    store.write_map({"model": model, "host": host, "options": dict(options or {}), "log_level": log_level},
                    "config")  # what shards added later start with
    keeper = MapKeeper.options(name=KEEPER, **ACTOR_OPTIONS).remote(store.describe(), names)
    ray.get(keeper.get.remote())
    handles = [ShardActor.options(name=shard_actor_name(n), **SHARD_OPTIONS).remote(
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


def reload_keys() -> None:
    """Every shard re-reads its CURVE client key directories (serve's SIGHUP)."""
    ray.get([shard(n).reload_keys.remote() for n in shard_map().names])


def down() -> None:
    """Stop every shard (each serves what is queued, snapshots, closes its log), then remove the actors."""
    m = shard_map()
    handles = [shard(n) for n in m.names]
    ray.get([h.stop.remote() for h in handles])
    for h in handles:
        ray.kill(h, no_restart=True)
    ray.kill(ray.get_actor(KEEPER, namespace=NAMESPACE), no_restart=True)


def _start(names, store: SharedPath):
    """Shard actors for `names` (found if running), with the options `up` saved; returns their handles once
    each has recovered and bound."""
    cfg = store.read_map("config") or {}
    handles = [ShardActor.options(name=shard_actor_name(n), **SHARD_OPTIONS).remote(
        n, store.describe(), cfg.get("model"), cfg.get("host"), cfg.get("options", {}), cfg.get("log_level", "info"))
        for n in names]
    ray.get([h.endpoint.remote() for h in handles])
    return handles


def add_shard(name: str, *, storage: str) -> ShardMap:
    """Add shard `name`: the streams whose owner becomes it move there, live (rescale)."""
    m = shard_map()
    if check_shard_name(name) in m.names:
        raise InputError(f"shard {name!r} is in the cluster already ({', '.join(m.names)})")
    return rescale([*m.names, name], storage=storage)


def remove_shard(name: str, *, storage: str) -> ShardMap:
    """Remove shard `name`: its streams move to their owners among the others, live; then it stops."""
    m = shard_map()
    if name not in m.names:
        raise InputError(f"shard {name!r} is not in the cluster ({', '.join(m.names)})")
    if len(m.names) == 1:
        raise InputError(f"shard {name!r} is the cluster's only shard; a cluster needs at least one")
    return rescale([n for n in m.names if n != name], storage=storage)


LAST_RESCALE: dict = {}  # seconds of each phase of the last rescale in this process (the log, bench/cluster.py)


def rescale(names: list, *, storage: str) -> ShardMap:
    """Go to shards `names` moving only the streams whose owner changes, no step lost or applied twice
    (moves.py: begin, export, import, publish, finish). On a failure before publishing, the rescale is
    aborted (the map stays; moving streams are served by their old owners again) and the error raised."""
    store = SharedPath(storage)
    keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    old = shard_map()
    nxt = ray.get(keeper.begin.remote(list(names)))
    clock, t = time.perf_counter, {"start": time.perf_counter()}
    try:
        added = [n for n in names if n not in old.names]
        _start(added, store)
        t["started"] = clock()
        nxt = ray.get(keeper.get_next.remote())  # with the new shards' endpoints
        exports = [shard(n).export_moving.remote(nxt) for n in old.names]  # ObjectRefs: shard to shard
        counts = ray.get([shard(n).import_streams.remote(exports) for n in names])
        moved = dict(zip(names, counts))
        t["imported"] = clock()
        m = ShardMap.from_map(ray.get(keeper.publish.remote()))
    except BaseException:
        log.exception("rescale to %s failed; aborting it", names)
        abort_move(storage=storage)
        raise
    ray.get([shard(n).set_map.remote(m.as_map(), None) for n in dict.fromkeys([*m.names, *old.names])])
    # (every shard holds the new map before the old owners drop what moved)
    t["published"] = clock()
    ray.get([shard(n).finish_move.remote() for n in old.names])
    t["finished"] = clock()
    LAST_RESCALE.clear()
    LAST_RESCALE.update(start_shards=t["started"] - t["start"], move=t["imported"] - t["started"],
                        publish=t["published"] - t["imported"], drop=t["finished"] - t["published"],
                        streams=sum(moved.values()))
    for n in old.names:
        if n not in m.names:
            h = shard(n)
            ray.get(h.stop.remote())
            ray.kill(h, no_restart=True)
            log.info("shard %s removed; its directory is kept as %s", n, retire(store, n, m.version))
    log.info("rescaled to shard map version %d: %s; %s", m.version, ", ".join(f"{n} +{k}" for n, k in moved.items()),
             ", ".join(f"{k} {v:.2f} s" for k, v in LAST_RESCALE.items() if k != "streams"))
    return m


def abort_move(*, storage: str) -> ShardMap:
    """Give up a rescale that was not published: the map stays; every shard serves its streams again and
    drops what it imported for the rescale; shards started for it are removed."""
    keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    nxt = ray.get(keeper.get_next.remote())
    m = ShardMap.from_map(ray.get(keeper.abort.remote()))
    ray.get([shard(n).abort_move.remote(m.as_map()) for n in m.names])
    for s in (nxt or {}).get("shards", []):
        if s["name"] not in m.names:
            try:
                h = shard(s["name"])
            except ValueError:
                continue
            ray.kill(h, no_restart=True)
            retire(SharedPath(storage), s["name"], nxt["version"])
    return m
