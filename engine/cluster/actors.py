"""The Ray side of a cluster: the map keeper (a named, detached actor holding the shard map) and the shard
actor (a ShardEngine in a Ray worker process). Imported only when the cluster feature is used (it imports ray).

Ray places the actors, notices a dead one and restarts it (max_restarts=-1: always). A restarted actor runs
its constructor again in a new process, so each one's state comes back from storage (engine/cluster/
storage.py), never from memory: the keeper reads the saved map; a shard restores its snapshot and replays its
step log before it binds (ShardEngine), then tells the keeper its endpoint (the same port when it can get it
again, so that clients' ZeroMQ sockets simply reconnect).
"""
from __future__ import annotations

import logging
import os

import ray

from lstm_stream.shardmap import Shard, ShardMap

from .storage import check_shard_name, open_storage

NAMESPACE = "lstm-stream"
KEEPER = "lstm-stream-map"
log = logging.getLogger("lstm_stream.engine")


def shard_actor_name(name: str) -> str:
    """The Ray actor name of shard `name` (in NAMESPACE)."""
    return f"lstm-stream-shard-{name}"


def _endpoint_port(endpoint: str, host: str) -> int:
    """The port of a tcp://HOST:PORT endpoint if HOST is `host`, else 0 (bind any free port)."""
    prefix = f"tcp://{host}:"
    return int(endpoint[len(prefix):]) if endpoint.startswith(prefix) and endpoint[len(prefix):].isdigit() else 0


@ray.remote
class MapKeeper:
    """The shard map: version, shards and their endpoints; saved to storage on every change and pushed to
    every shard (fire and forget: a shard that misses a push still refuses only what it does not own). While
    a rescale runs it also holds `next`, the map being made (moves.py), saved beside the map."""

    def __init__(self, storage: str, names: list):
        self._storage = open_storage(storage)
        saved = self._storage.read_map()
        if saved is not None:
            self._map = ShardMap.from_map(saved)
        else:
            self._map = ShardMap(1, [Shard(check_shard_name(n), "") for n in names])
            self._storage.write_map(self._map.as_map())
        saved = self._storage.read_map("next")
        self._next = None if saved is None else ShardMap.from_map(saved)

    def get(self) -> dict:
        """The current map's wire form."""
        return self._map.as_map()

    def get_next(self):
        """The wire form of the map a rescale is making, or None."""
        return None if self._next is None else self._next.as_map()

    def register(self, name: str, endpoint: str) -> dict:
        """Shard `name` now listens on `endpoint`: a new version if that changed; returns the map (the next
        one for a shard being added)."""
        if name in self._map.names:
            if self._map.endpoints[name] != endpoint:
                self._map = self._map.with_shard(name, endpoint)
                self._storage.write_map(self._map.as_map())
                if self._next is not None:  # next stays one version ahead, with the same endpoint
                    self._set_next([Shard(s.name, endpoint if s.name == name else s.endpoint)
                                    for s in self._next.shards])
                self._push()
            return self._map.as_map()
        if self._next is None or name not in self._next.names:
            raise ValueError(f"shard {name!r} is not in the shard map ({', '.join(self._map.names)})")
        if self._next.endpoints[name] != endpoint:
            self._set_next([Shard(s.name, endpoint if s.name == name else s.endpoint) for s in self._next.shards])
            self._push()
        return self._next.as_map()

    def begin(self, names: list) -> dict:
        """Start a rescale to shards `names`: next = version + 1 (endpoints kept; new shards have none yet)."""
        if self._next is not None:
            raise ValueError(f"a rescale to shard map version {self._next.version} "
                             f"({', '.join(self._next.names)}) is in progress; finish or abort it first")
        self._set_next([Shard(check_shard_name(n), self._map.endpoints.get(n, "")) for n in names])
        self._push()
        return self._next.as_map()

    def publish(self) -> dict:
        """Make next the map (the rescale's moves are in place); returns it."""
        if self._next is None:
            raise ValueError("no rescale is in progress")
        if any(not s.endpoint for s in self._next.shards):
            raise ValueError(f"shard(s) {[s.name for s in self._next.shards if not s.endpoint]} have not started")
        old, self._map, self._next = self._map, self._next, None
        self._storage.write_map(self._map.as_map())
        self._storage.write_map(None, "next")
        self._push(also=old.names)
        return self._map.as_map()

    def abort(self) -> dict:
        """Give up the rescale in progress (nothing was published): the map stays."""
        self._next = None
        self._storage.write_map(None, "next")
        self._push()
        return self._map.as_map()

    def _set_next(self, shards):
        self._next = ShardMap(self._map.version + 1, shards)
        self._storage.write_map(self._next.as_map(), "next")

    def _push(self, also=()):
        m, n = self._map.as_map(), self.get_next()
        for name in dict.fromkeys([*self._map.names, *(self._next.names if self._next else ()), *also]):
            try:
                ray.get_actor(shard_actor_name(name), namespace=NAMESPACE).set_map.remote(m, n)
            except ValueError:  # not created yet: it reads the maps when it starts
                pass


@ray.remote
class ShardActor:
    """A ShardEngine named `name`, its directory from the storage, its map from the keeper."""

    def __init__(self, name: str, storage: str, model, host, options: dict, log_level: str = "info"):
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .shard import ShardEngine
        keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
        shard_map, next_map = ray.get([keeper.get.remote(), keeper.get_next.remote()])
        shard_map = ShardMap.from_map(shard_map)
        next_map = None if next_map is None else ShardMap.from_map(next_map)
        host = host or ray.util.get_node_ip_address()
        known = shard_map.endpoints.get(name) or (next_map.endpoints.get(name, "") if next_map else "")
        port = _endpoint_port(known, host)  # a restart: the same port if it is free
        self.engine = ShardEngine(name, open_storage(storage).path_for(name), shard_map, model=model, host=host,
                                  port=port, options=options, next_map=next_map)
        ray.get(keeper.register.remote(name, self.engine.endpoint))  # (pushes the maps back here if they changed)

    def endpoint(self) -> str:
        """Where this shard's engine listens."""
        return self.engine.endpoint

    def set_map(self, m: dict, next_map: dict | None = None) -> int:
        """New maps from the keeper (the map, and the next one while a rescale runs); the version held."""
        self.engine.set_map(ShardMap.from_map(m), None if next_map is None else ShardMap.from_map(next_map))
        return self.engine.ownership.map.version

    def export_moving(self, next_map: dict) -> dict:
        """ShardEngine.export_moving: {target: (ids, arrays)} of the streams leaving under next_map."""
        return self.engine.export_moving(ShardMap.from_map(next_map))

    def import_streams(self, exports: list) -> int:
        """Import this shard's part of every source's export (ObjectRefs resolved by Ray)."""
        n = 0
        for export in ray.get(list(exports)):  # (refs inside a list are not resolved for us)
            ids, arrays = export.get(self.engine.name, ([], {}))
            n += self.engine.import_streams(ids, arrays)
        return n

    def finish_move(self) -> int:
        """ShardEngine.finish_move: drop what was exported, once the new map is published."""
        return self.engine.finish_move()

    def abort_move(self, m: dict) -> int:
        """ShardEngine.abort_move."""
        return self.engine.abort_move(ShardMap.from_map(m))

    def status(self) -> dict:
        """ShardEngine.status, with this process's pid and node."""
        return {**self.engine.status(), "pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def reload_keys(self) -> None:
        """Re-read the CURVE client key directories (serve's SIGHUP)."""
        self.engine.reload_keys()

    def pid(self) -> int:
        """The worker process's pid (tests kill it)."""
        return os.getpid()

    def stop(self) -> bool:
        """Stop the engine (snapshot, close the log); the caller then kills the actor without restart."""
        return self.engine.stop()
