"""A shard's ownership check: which of a request's stream ids this shard owns under its current shard map.

EngineCore.submit calls it (core.ownership) on every request before queuing it; a request naming a stream
that another shard owns is refused whole with `wrong_shard` and the map's version (nothing applied, as for any
error reply), so a client with a stale map refreshes it and resends. Ops without a stream id (ping, info,
streams, snapshot) are every shard's. The map is replaced as a whole (set_map) from another thread (the Ray
actor's): one attribute assignment, which the loop thread reads once per request.
"""
from __future__ import annotations

from lstm_stream.shardmap import ShardMap

CACHE_LIMIT = 1 << 20  # ids whose ownership is remembered (one blake2b each otherwise); cleared when full


class Ownership:
    """Callable on a Request: None if this shard owns every stream it names, else (message, detail)."""

    def __init__(self, name: str, shard_map: ShardMap):
        self.name = name
        self._state = (shard_map, {})  # (map, id -> owned?) replaced together

    @property
    def map(self) -> ShardMap:
        """The shard map this shard checks against."""
        return self._state[0]

    def set_map(self, shard_map: ShardMap) -> None:
        """Check against `shard_map` from now on (the cache is kept when the owners cannot have changed)."""
        old, cache = self._state
        if shard_map.names != old.names:
            cache = {}
        self._state = (shard_map, cache)

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
        shard_map, cache = self._state
        name = self.name
        foreign = []
        for i in ids:
            owned = cache.get(i) if type(i) is str else cache.get((i,))  # "7" and 7 are different streams
            if owned is None:
                try:
                    owned = shard_map.owner(i) == name
                except (TypeError, ValueError, OverflowError):  # not an id: the op's own checks refuse it
                    continue
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[i if type(i) is str else (i,)] = owned
            if not owned:
                foreign.append(i)
        if not foreign:
            return None
        shown = ", ".join(repr(i) for i in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                                           else "")
        return (f"shard {name!r} does not own stream(s) {shown} under shard map version {shard_map.version} "
                f"(owner of the first: {shard_map.owner(foreign[0])!r}); nothing was applied: refresh the map "
                "(the `cluster` field of `info`) and send to the owner", {"version": shard_map.version})
