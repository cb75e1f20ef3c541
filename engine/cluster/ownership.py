"""A shard's ownership check: which of a request's stream ids this shard owns under its current shard map.

EngineCore.submit calls it (core.ownership) on every request before queuing it; a request naming a stream
that another shard owns is refused whole with `wrong_shard` and the map's version (nothing applied, as for any
error reply), so a client with a stale map refreshes it and resends. While the cluster is rescaled (moves.py)
the shard also knows the `next` map: a stream it owns now but not under `next` is moving, and requests naming
it are refused the same way with next's version (and "moving": true) until the move is published. Ops without
a stream id (ping, info, streams, snapshot) are every shard's. The maps are replaced as a whole from another
thread (the Ray actor's): one attribute assignment, which the loop thread reads once per request.
"""
from __future__ import annotations

from lstm_stream.shardmap import ShardMap

CACHE_LIMIT = 1 << 20  # ids whose ownership is remembered (one blake2b each otherwise); cleared when full


class Ownership:
    """Callable on a Request: None if this shard owns every stream it names, else (message, detail)."""

    def __init__(self, name: str, shard_map: ShardMap, next_map: ShardMap | None = None):
        self.name = name
        self._state = (shard_map, {}, next_map, {})  # (map, id -> owned?, next map, id -> stays?) together

    @property
    def map(self) -> ShardMap:
        """The shard map this shard checks against."""
        return self._state[0]

    @property
    def next(self) -> ShardMap | None:
        """The map a rescale is moving to, or None."""
        return self._state[2]

    def set_map(self, shard_map: ShardMap, next_map: ShardMap | None = None) -> None:
        """Check against `shard_map` (and `next_map` while a rescale runs) from now on; caches are kept where
        the owners cannot have changed."""
        old, cache, old_next, stays = self._state
        if shard_map.names != old.names:
            cache = {}
        if next_map is None or old_next is None or next_map.names != old_next.names:
            stays = {}
        self._state = (shard_map, cache, next_map, stays)

    def moving(self, stream_id) -> bool:
        """Whether a stream this shard owns now is moving to another shard (a rescale runs)."""
        next_map = self._state[2]
        return next_map is not None and next_map.owner(stream_id) != self.name

    def __call__(self, req):
        op = req.op
        if op == "step_many":
            ids = req.streams
        elif op == "copy":
            ids = (req.src, req.dst)
        elif hasattr(req, "stream"):
            ids = (req.stream,)
        else:
            return None
        shard_map, cache, next_map, stays = self._state
        name = self.name
        foreign, moving = [], []
        for i in ids:
            key = i if type(i) is str else (i,)  # "7" and 7 are different streams
            owned = cache.get(key)
            if owned is None:
                try:
                    owned = shard_map.owner(i) == name
                except (TypeError, ValueError, OverflowError):  # not an id: the op's own checks refuse it
                    continue
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[key] = owned
            if not owned:
                foreign.append(i)
            elif next_map is not None:
                stay = stays.get(key)
                if stay is None:
                    stay = stays[key] = next_map.owner(i) == name
                if not stay:
                    moving.append(i)
        if foreign:
            return (f"shard {name!r} does not own stream(s) {_shown(foreign)} under shard map version "
                    f"{shard_map.version} (owner of the first: {shard_map.owner(foreign[0])!r}); nothing was "
                    "applied: refresh the map (the `cluster` field of `info`) and send to the owner",
                    {"version": shard_map.version})
        if moving:
            return (f"stream(s) {_shown(moving)} are moving from shard {name!r} to {next_map.owner(moving[0])!r} "
                    f"(shard map version {next_map.version} is being made); nothing was applied: resend once "
                    "that version is published", {"version": next_map.version, "moving": True})
        return None


def _shown(ids) -> str:
    return ", ".join(repr(i) for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
