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

import collections
import dataclasses
import logging
import threading
from concurrent.futures import Future

from lstm_stream.errors import InputError
from lstm_stream.shardmap import ShardMap

from ..config import SERVE_CONFIGS, EngineConfig, ServeConfig, StreamsConfig
from ..core import EngineCore
from . import moves
from .ownership import Ownership

log = logging.getLogger("lstm_stream.engine")

# Options a shard sets itself (its directory and endpoint come from the cluster).
RESERVED = frozenset({"model", "bind", "snapshot_dir"})
START_TIMEOUT = 60.0  # seconds for the server thread to bind
JOB_TIMEOUT = 600.0   # seconds a job on the loop (a move's export, import, drop) may take
NOT_YET = object()    # a loop job's answer when it must run again at the next housekeeping


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """{field: value} of the serve options -> (ServeConfig, StreamsConfig, EngineConfig) keyword arguments;
    InputError naming an option that is not one, or that the cluster sets."""
    parts = ({}, {}, {})
    names = [{f.name for f in dataclasses.fields(cls)} for cls in SERVE_CONFIGS]
    for key, value in options.items():
        if key == "namespaces" and value != "off":
            raise InputError("--namespaces on is not supported on cluster shards: a stream's owner is computed "
                             "from the id the client sends, and moves would see the key's prefixed ids instead; "
                             "CURVE with roles (--curve-secret, --allow-keys, --admin-keys) is")
        if key in RESERVED:
            raise InputError(f"option {key!r} is set by the cluster for each shard; leave it out")
        k = next((k for k, n in enumerate(names) if key in n), None)
        if k is None:
            raise InputError(f"{key!r} is not an option of serve; expected one of the fields of "
                             "engine/config.py (e.g. fsync, snapshot_every, threads, max_streams)")
        parts[k][key] = value
    return parts


class ShardCore(EngineCore):
    """EngineCore plus jobs that another thread hands to the loop thread (the Ray actor's: a move's export,
    import and drop, moves.py): each runs at the loop's housekeeping, between turns, so that it sees the
    streams as no request is changing them; a job answering NOT_YET runs again at the next one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._jobs: collections.deque = collections.deque()  # (fn, Future); deque: thread-safe append/popleft
        self._stopped = False

    def on_loop(self, fn) -> Future:
        """Run fn() on the loop thread soon; its result (or exception) in the returned Future."""
        future = Future()
        if self._stopped:
            future.set_exception(RuntimeError("the shard has stopped"))
        else:
            self._jobs.append((fn, future))
        return future

    def queued_any(self, check) -> bool:
        """Whether check(request) is true for a request still queued (not served yet)."""
        return any(check(req) for q in self._queues.values() for _, req, _ in q)

    def housekeep(self, now: float | None = None) -> float:
        deadline = super().housekeep(now)
        for _ in range(len(self._jobs)):
            fn, future = self._jobs.popleft()
            try:
                result = fn()
            except Exception as e:
                future.set_exception(e)
                continue
            if result is NOT_YET:
                self._jobs.append((fn, future))
            else:
                future.set_result(result)
        return min(deadline, self._clock() + 0.01) if self._jobs else deadline

    def fail_jobs(self) -> None:
        """Fail the jobs left when the loop stops (and those handed over later)."""
        self._stopped = True
        while self._jobs:
            self._jobs.popleft()[1].set_exception(RuntimeError("the shard stopped before this job ran"))


class ShardEngine:
    """A recovered engine serving on its own thread, refusing ids it does not own with wrong_shard."""

    def __init__(self, name: str, directory: str, shard_map: ShardMap, *, model: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, options: dict | None = None,
                 next_map: ShardMap | None = None):
        from lstm_stream import warm

        from ..startup import open_state
        if name not in shard_map.names and (next_map is None or name not in next_map.names):
            raise InputError(f"shard {name!r} is not in the shard map ({', '.join(shard_map.names)})")
        if name not in shard_map.names:  # a shard being added: it owns its streams under the next map
            shard_map, next_map = next_map, None
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
        self.ownership = Ownership(name, shard_map, next_map)
        self._drop_foreign()
        self._config = EngineConfig(**engine_kw)
        self._access, self._curve = _keys(self.serve)  # CURVE: the same key files on every shard
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

        from ..server import Server
        core = ShardCore(self.streams, self._config, snapshots=self.snapshots, journal=self.journal,
                         access=self._access)
        core.ownership = self.ownership
        for bind in self._binds:
            try:
                self.server = Server(core, bind, curve=self._curve)
                break
            except zmq.ZMQError as e:
                log.warning("shard %s: cannot bind %s (%s)", self.name, bind, e)
                self._error = e
        if self.server is None:
            self._ready.set()
            return
        self._error, self.core, self.endpoint = None, core, self.server.endpoints[0]
        from ..cli import is_loopback
        if self._curve is None and not is_loopback(self.endpoint):
            log.warning("shard %s listens on %s, not a loopback address, without CURVE: anyone who can reach it "
                        "may read and change its streams (docs/cluster.md, Keys)", self.name, self.endpoint)
        log.info("shard %s serving %d streams on %s (shard map version %d)", self.name, len(self.streams),
                 self.endpoint, self.ownership.map.version)
        self._ready.set()
        try:
            self.server.run()
        finally:
            core.fail_jobs()

    def reload_keys(self) -> None:
        """Re-read the client key directories at the loop's next housekeeping (serve's SIGHUP)."""
        if self._access is not None:
            self._access.request_reload()

    def set_map(self, shard_map: ShardMap, next_map: ShardMap | None = None) -> None:
        """Check ownership against `shard_map` (and `next_map` while a rescale runs) from now on; a map older
        than the one held is ignored (pushes may arrive out of order)."""
        if self.name not in shard_map.names and next_map is not None and self.name in next_map.names:
            shard_map, next_map = next_map, None  # being added: it lives by the next map already
        if shard_map.version >= self.ownership.map.version:  # (removed: a map without it; it owns nothing)
            self.ownership.set_map(shard_map, next_map)

    def _drop_foreign(self) -> None:
        """At start, before serving: drop the streams this shard owns neither now nor under the next map (left
        by a move published while this shard was down, between its export and its drop): no request can reach
        them any more."""
        own = self.ownership
        ids = self.streams.ids()
        keep = {own.name}
        now = own.map.owners(ids)
        later = own.next.owners(ids) if own.next is not None else now
        foreign = [i for i, a, b in zip(ids, now, later) if a not in keep and b not in keep]
        if foreign:
            moves.drop_streams(self.streams, foreign)
            if self.snapshots is not None:
                self.snapshots.save("move")
            log.warning("shard %s: dropped %d streams it no longer owns (moved to other shards)", self.name,
                        len(foreign))

    # ---- moves (moves.py): called from the actor's thread, run on the loop's ------------------------------
    def _job(self, fn):
        return self.core.on_loop(fn).result(JOB_TIMEOUT)

    def export_moving(self, next_map: ShardMap) -> dict:
        """Refuse the streams moving under next_map from now on, wait until no queued request names one,
        then {target shard: (ids, arrays)} of every moving stream (moves.export_streams)."""
        own = self.ownership
        if own.next is None or own.next.version != next_map.version:
            own.set_map(own.map, next_map)

        def export():
            if self.core.queued_any(lambda req: own(req) is not None):
                return NOT_YET
            ids = moves.moving_ids(self.streams, self.name, next_map)
            ids, arrays = moves.export_streams(self.streams, ids)
            out = {}
            for k, target in enumerate(next_map.owners(ids)):
                out.setdefault(target, []).append(k)
            return {t: ([ids[k] for k in ks], {n: a[ks] for n, a in arrays.items()}) for t, ks in out.items()}
        return self._job(export)

    def import_streams(self, ids: list, arrays: dict) -> int:
        """Create the streams moving here, then write a snapshot (they survive this shard's restart)."""
        def run():
            n = moves.import_streams(self.streams, ids, arrays)
            self.core._mutated()
            if self.snapshots is not None:
                self.snapshots.save("move")
            return n
        return self._job(run)

    def finish_move(self) -> int:
        """After the map that moved them is published: drop the streams this shard no longer owns (those it
        exported; also right after a restart that lost track of them), then snapshot."""
        return self._drop_unowned(self.ownership.map)

    def abort_move(self, shard_map: ShardMap) -> int:
        """A rescale given up before it was published: serve the moving streams again (their state never left
        this shard) and drop the streams imported for it (not owned under shard_map)."""
        self.ownership.set_map(shard_map, None)
        return self._drop_unowned(shard_map) if self.name in shard_map.names else 0

    def _drop_unowned(self, shard_map: ShardMap) -> int:
        def run():
            ids = self.streams.ids()
            gone = [i for i, o in zip(ids, shard_map.owners(ids)) if o != self.name]
            n = moves.drop_streams(self.streams, gone)
            if n and self.snapshots is not None:
                self.core._mutated()
                self.snapshots.save("move")
            return n
        return self._job(run)

    def status(self) -> dict:
        """Name, endpoint, streams and the map version (read from another thread: counts, no iteration)."""
        return {"name": self.name, "endpoint": self.endpoint, "streams": len(self.streams),
                "map_version": self.ownership.map.version,
                "next_version": None if self.ownership.next is None else self.ownership.next.version,
                "directory": self.serve.snapshot_dir,
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


def _keys(serve):
    """(Access, (public, secret)) of a shard started with --curve-secret, else (None, None)."""
    if serve.curve_secret is None:
        return None, None
    from ..access import Access, read_secret_key
    return Access(serve.allow_keys, serve.admin_keys), read_secret_key(serve.curve_secret)
