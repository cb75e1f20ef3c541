"""The shard map of a cluster: which shard owns which stream, and where each shard listens (docs/cluster.md).

    m = ShardMap(version=3, shards=[Shard("s0", "tcp://10.0.0.5:40001"), Shard("s1", "tcp://10.0.0.6:40002")])
    m.owner("pump-7")            # -> "s1": the shard whose score for the id is highest
    m.owners(ids)                # the same for many ids at once (numpy)
    ShardMap.from_map(info["cluster"])   # the wire form (the `cluster` field of `info` on a shard)

Ownership is rendezvous (highest random weight) hashing: every (shard, stream) pair gets a 64-bit score and
a stream belongs to the shard with the highest one. It depends on the shard names only (never on endpoints or
list order), so a shard that moves to another address keeps its streams, and adding or removing a shard moves
only the streams whose highest score changes: about 1/N of them when N becomes N+1, none between the others.

The score, defined byte for byte so that a client in any language routes like this one:

    key(id)    = b"s" + UTF-8 bytes of a str id  |  b"i" + 8 bytes little-endian two's complement of an int id
    h(id)      = blake2b(key(id), digest_size=8) read as a little-endian uint64
    seed(name) = blake2b(b"shard:" + UTF-8 bytes of the shard name, digest_size=8), little-endian uint64
    score      = mix(h(id) XOR seed(name)), mix = splitmix64's finaliser (all arithmetic modulo 2**64):
                 z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31
    owner(id)  = the shard with the highest score; equal scores (never seen) go to the smaller name

A str id and an int id never share a key ("7" and 7 are different streams, as on a daemon). One blake2b per
id, not per (id, shard): the per-shard part is a few integer operations, done for many ids at once with numpy.
Python's hash() is never used: it differs between processes. Numpy, hashlib and msgpack only: clients use it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

HASH = "hrw-blake2b-splitmix64"  # the name of the rule above, carried in the map (a new rule: a new name)
_MASK = (1 << 64) - 1
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def stream_key(stream_id) -> bytes:
    """The canonical bytes of a stream id (str or int64); TypeError/ValueError for anything else."""
    if isinstance(stream_id, str):
        return b"s" + stream_id.encode("utf-8")
    if isinstance(stream_id, (int, np.integer)) and not isinstance(stream_id, (bool, np.bool_)):
        return b"i" + int(stream_id).to_bytes(8, "little", signed=True)  # OverflowError beyond int64
    raise TypeError(f"stream id must be a str or an int, got {type(stream_id).__name__}")


def stream_hash(stream_id) -> int:
    """h(id): the stream's 64-bit hash (an int)."""
    return int.from_bytes(hashlib.blake2b(stream_key(stream_id), digest_size=8).digest(), "little")


def shard_seed(name: str) -> int:
    """seed(name): the shard's 64-bit seed."""
    return int.from_bytes(hashlib.blake2b(b"shard:" + name.encode("utf-8"), digest_size=8).digest(), "little")


def mix(z: int) -> int:
    """splitmix64's finaliser on one 64-bit int."""
    z ^= z >> 30
    z = (z * _M1) & _MASK
    z ^= z >> 27
    z = (z * _M2) & _MASK
    return z ^ (z >> 31)


def score(stream_id, name: str) -> int:
    """The (stream, shard) score of rendezvous hashing."""
    return mix(stream_hash(stream_id) ^ shard_seed(name))


def _mix_array(z: np.ndarray) -> np.ndarray:
    """mix() over a uint64 array (numpy's uint64 arithmetic wraps modulo 2**64, as the rule says)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_M1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Shard:
    """One shard: its name (what ownership hashes) and the endpoint its engine listens on."""

    name: str
    endpoint: str


class ShardMap:
    """A version of the cluster's membership: shards by name, each with its endpoint; owner() by HRW."""

    def __init__(self, version: int, shards):
        shards = sorted(shards, key=lambda s: s.name)  # the tie-break order (smaller name first)
        names = [s.name for s in shards]
        if not shards:
            raise ValueError("a shard map needs at least one shard")
        if len(set(names)) != len(names):
            raise ValueError(f"shard names must be distinct, got {names}")
        if type(version) is not int or version < 1:
            raise ValueError(f"a shard map's version must be an int >= 1, got {version!r}")
        self.version = version
        self.shards = tuple(shards)
        self.names = tuple(names)
        self.endpoints = {s.name: s.endpoint for s in shards}
        self._seeds = np.array([shard_seed(n) for n in names], np.uint64)
        self._seed_ints = [int(s) for s in self._seeds]

    def owner(self, stream_id) -> str:
        """The name of the shard that owns stream_id."""
        h = stream_hash(stream_id)
        best, best_score = 0, -1
        for k, seed in enumerate(self._seed_ints):
            s = mix(h ^ seed)
            if s > best_score:  # strictly greater: an equal score stays with the smaller name
                best, best_score = k, s
        return self.names[best]

    def owners(self, ids) -> list:
        """owner() of each id, computed for all of them at once."""
        if not ids:
            return []
        hashes = np.fromiter((stream_hash(i) for i in ids), np.uint64, len(ids))
        scores = _mix_array(hashes[:, None] ^ self._seeds[None, :])  # (n, shards)
        return [self.names[k] for k in np.argmax(scores, axis=1).tolist()]  # argmax: the first (smaller name)

    def with_shard(self, name: str, endpoint: str) -> "ShardMap":
        """The next version: shard `name` added, or its endpoint changed."""
        rest = [s for s in self.shards if s.name != name]
        return ShardMap(self.version + 1, [*rest, Shard(name, endpoint)])

    def as_map(self) -> dict:
        """The wire form: {"version", "hash", "shards": [{"name", "endpoint"}, ...]} (names sorted)."""
        return {"version": self.version, "hash": HASH,
                "shards": [{"name": s.name, "endpoint": s.endpoint} for s in self.shards]}

    @classmethod
    def from_map(cls, m) -> "ShardMap":
        """A map from its wire form; ValueError naming what is wrong."""
        if not isinstance(m, dict):
            raise ValueError(f"a shard map is a map {{version, hash, shards}}, got {type(m).__name__}")
        if m.get("hash") != HASH:
            raise ValueError(f"shard map hash rule {m.get('hash')!r} is not one this client knows ({HASH})")
        shards = m.get("shards")
        if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                   and isinstance(s.get("endpoint"), str) for s in shards):
            raise ValueError("a shard map's shards must be a list of {name: str, endpoint: str}")
        return cls(m.get("version"), [Shard(s["name"], s["endpoint"]) for s in shards])

    def __eq__(self, other):
        return isinstance(other, ShardMap) and self.as_map() == other.as_map()

    def __repr__(self):
        return f"ShardMap(version={self.version}, shards={list(self.endpoints.items())})"
