"""One shard: the engine of `lstm-stream serve` (open_state, EngineCore, the ZeroMQ Server) on a thread of
this process, with the ownership check of a cluster; Ray-free (engine/cluster/actors.py puts it in an actor).

    engine = ShardEngine("s0", "/mnt/cluster/shards/s0", shard_map, model="pump.npz", host="10.0.0.5")
    engine.endpoint         # tcp://10.0.0.5:40123 (a free port, or `port` when given and free)
    engine.set_map(m)       # a new shard map (from the map keeper)
    engine.stop()           # finish what is queued, snapshot, close the log

The constructor recovers before it binds, exactly as serve does: the snapshot in the shard's directory, then
the step log after it, replayed through the deterministic kernels. So a shard that Ray restarts (a new process
running this constructor again) answers its first request with every acknowledged step applied, under
`fsync="always"` even after kill -9. Options are the fields of engine/config.py's three configs, by name.
"""
from __future__ import annotations

import dataclasses
import logging
import threading

from lstm_stream.errors import InputError
from lstm_stream.shardmap import ShardMap

from ..config import SERVE_CONFIGS, EngineConfig, ServeConfig, StreamsConfig
from .ownership import Ownership

log = logging.getLogger("lstm_stream.engine")

# Options a shard sets itself (its directory and endpoint come from the cluster).
RESERVED = frozenset({"model", "bind", "snapshot_dir", "curve_secret", "allow_keys", "admin_keys", "namespaces"})
START_TIMEOUT = 60.0  # seconds for the server thread to bind


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """{field: value} of the serve options -> (ServeConfig, StreamsConfig, EngineConfig) keyword arguments;
    InputError naming an option that is not one, or that the cluster sets."""
    parts = ({}, {}, {})
    names = [{f.name for f in dataclasses.fields(cls)} for cls in SERVE_CONFIGS]
    for key, value in options.items():
        if key in RESERVED:
            raise InputError(f"option {key!r} is set by the cluster for each shard; leave it out")
        k = next((k for k, n in enumerate(names) if key in n), None)
        if k is None:
            raise InputError(f"{key!r} is not an option of serve; expected one of the fields of "
                             "engine/config.py (e.g. fsync, snapshot_every, threads, max_streams)")
        parts[k][key] = value
    return parts


class ShardEngine:
    """A recovered engine serving on its own thread, refusing ids it does not own with wrong_shard."""

    def __init__(self, name: str, directory: str, shard_map: ShardMap, *, model: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, options: dict | None = None):
        from lstm_stream import warm

        from ..startup import open_state
        if name not in shard_map.names:
            raise InputError(f"shard {name!r} is not in the shard map ({', '.join(shard_map.names)})")
        serve_kw, streams_kw, engine_kw = split_options(options or {})
        self.name = name
        self._binds = [f"tcp://{host}:{port}"] if port else []
        self._binds.append(f"tcp://{host}:*")  # the port of a previous start may be taken: any free one then
        self.serve = ServeConfig(model=model, bind=(self._binds[0],), snapshot_dir=directory, **serve_kw)
        self.streams, self.snapshots, self.journal = open_state(self.serve, StreamsConfig(**streams_kw))
        warm.finish_background(wait=True)  # a kernel left to compile in a child (cold cache): here, not in the
        # loop, so that engines started one after another in one process never start a second child each
        if self.snapshots is not None:
            self.snapshots.method = "thread"  # never fork a process that runs Ray's threads (gRPC and fork)
        self.ownership = Ownership(name, shard_map)
        self._config = EngineConfig(**engine_kw)
        self.endpoint = None
        self.core = self.server = None
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"shard-{name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"shard {name!r} could not bind {self._binds}: {self._error}")

    def _run(self):
        """The server's thread: its socket is made, used and closed here only (ZeroMQ: one thread per socket)."""
        import zmq

        from ..core import EngineCore
        from ..server import Server
        core = EngineCore(self.streams, self._config, snapshots=self.snapshots, journal=self.journal)
        core.ownership = self.ownership
        for bind in self._binds:
            try:
                self.server = Server(core, bind)
                break
            except zmq.ZMQError as e:
                log.warning("shard %s: cannot bind %s (%s)", self.name, bind, e)
                self._error = e
        if self.server is None:
            self._ready.set()
            return
        self._error, self.core, self.endpoint = None, core, self.server.endpoints[0]
        log.info("shard %s serving %d streams on %s (shard map version %d)", self.name, len(self.streams),
                 self.endpoint, self.ownership.map.version)
        self._ready.set()
        self.server.run()

    def set_map(self, shard_map: ShardMap) -> None:
        """Check ownership against `shard_map` from now on (the `cluster` field of info shows it)."""
        if shard_map.version > self.ownership.map.version:
            self.ownership.set_map(shard_map)

    def status(self) -> dict:
        """Name, endpoint, streams and the map version (read from another thread: counts, no iteration)."""
        return {"name": self.name, "endpoint": self.endpoint, "streams": len(self.streams),
                "map_version": self.ownership.map.version, "directory": self.serve.snapshot_dir,
                "log_lsn": None if self.journal is None else self.journal.lsn,
                "requests": 0 if self.core is None else self.core.metrics["requests"]}

    def stop(self, timeout: float = 60.0) -> bool:
        """Serve what is queued, stop the loop, snapshot, close the step log; whether the snapshot was written."""
        from lstm_stream import warm
        if self.server is not None:
            self.server.stop()
            self._thread.join(timeout)
        warm.cancel_background()
        if self.server is not None and self.server.fatal:  # the log could not be made durable: no snapshot
            return False
        ok = True
        if self.snapshots is not None:
            try:
                self.snapshots.save("shutdown")
            except Exception:
                log.exception("shard %s: shutdown snapshot to %s failed", self.name, self.snapshots.path)
                ok = False
        if self.journal is not None:
            self.journal.close()
        return ok
