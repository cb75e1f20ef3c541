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
    every shard (fire and forget: a shard that misses a push still refuses only what it does not own)."""

    def __init__(self, storage: str, names: list):
        self._storage = open_storage(storage)
        saved = self._storage.read_map()
        if saved is not None:
            self._map = ShardMap.from_map(saved)
        else:
            self._map = ShardMap(1, [Shard(check_shard_name(n), "") for n in names])
            self._storage.write_map(self._map.as_map())

    def get(self) -> dict:
        """The current map's wire form."""
        return self._map.as_map()

    def register(self, name: str, endpoint: str) -> dict:
        """Shard `name` now listens on `endpoint`: a new version if that changed; returns the map."""
        if name not in self._map.names:
            raise ValueError(f"shard {name!r} is not in the shard map ({', '.join(self._map.names)})")
        if self._map.endpoints[name] != endpoint:
            self._map = self._map.with_shard(name, endpoint)
            self._storage.write_map(self._map.as_map())
            self._push()
        return self._map.as_map()

    def _push(self):
        m = self._map.as_map()
        for name in self._map.names:
            try:
                ray.get_actor(shard_actor_name(name), namespace=NAMESPACE).set_map.remote(m)
            except ValueError:  # not created yet: it reads the map when it starts
                pass


@ray.remote
class ShardActor:
    """A ShardEngine named `name`, its directory from the storage, its map from the keeper."""

    def __init__(self, name: str, storage: str, model, host, options: dict, log_level: str = "info"):
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .shard import ShardEngine
        keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
        shard_map = ShardMap.from_map(ray.get(keeper.get.remote()))
        host = host or ray.util.get_node_ip_address()
        port = _endpoint_port(shard_map.endpoints.get(name, ""), host)  # a restart: the same port if free
        self.engine = ShardEngine(name, open_storage(storage).path_for(name), shard_map, model=model, host=host,
                                  port=port, options=options)
        self.engine.set_map(ShardMap.from_map(ray.get(keeper.register.remote(name, self.engine.endpoint))))

    def endpoint(self) -> str:
        """Where this shard's engine listens."""
        return self.engine.endpoint

    def set_map(self, m: dict) -> None:
        """A new shard map from the keeper."""
        self.engine.set_map(ShardMap.from_map(m))

    def status(self) -> dict:
        """ShardEngine.status, with this process's pid and node."""
        return {**self.engine.status(), "pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def pid(self) -> int:
        """The worker process's pid (tests kill it)."""
        return os.getpid()

    def stop(self) -> bool:
        """Stop the engine (snapshot, close the log); the caller then kills the actor without restart."""
        return self.engine.stop()
