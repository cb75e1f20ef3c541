"""Where a cluster keeps what must outlive a shard's process: each shard's snapshots and step log, and the
shard map. A restarted shard may come back on another node, so this must be reachable from every node.

    storage = SharedPath("/mnt/lstm-cluster")
    storage.path_for("s0")     # -> /mnt/lstm-cluster/shards/s0: the shard's --snapshot-dir (snapshot + log/)
    storage.map_path()         # -> /mnt/lstm-cluster/map.json: the latest shard map

The interface is these two names, so that another storage (object storage with a local cache that uploads
each durable snapshot and log segment) can follow without touching the shard; SharedPath is a directory that
every node mounts at the same path (NFS, CephFS, or one machine's disk in tests and `cluster up` alone).
"""
from __future__ import annotations

import json
import os
import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_shard_name(name) -> str:
    """name if it can name a shard (and its directory): 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -"""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"shard name {name!r} is not 1-64 characters of letters, digits, '.', '_', '-' "
                         "(starting with a letter or digit)")
    return name


class Storage:
    """What a cluster needs from its storage (see the module docstring)."""

    def path_for(self, shard: str) -> str:  # pragma: no cover - the interface
        """A local directory holding this shard's snapshots and step log (created if missing)."""
        raise NotImplementedError

    def map_path(self, which: str = "map") -> str:  # pragma: no cover - the interface
        """A local file path for the shard map ("map"), or the map a rescale is making ("next")."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - the interface
        """What a Ray actor needs to open the same storage again (a str given to open_storage)."""
        raise NotImplementedError


class SharedPath(Storage):
    """A directory at the same path on every node."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def path_for(self, shard: str) -> str:
        path = os.path.join(self.root, "shards", check_shard_name(shard))
        os.makedirs(path, exist_ok=True)
        return path

    def map_path(self, which: str = "map") -> str:
        os.makedirs(self.root, exist_ok=True)
        return os.path.join(self.root, f"{which}.json")

    def describe(self) -> str:
        return self.root

    def read_map(self, which: str = "map"):
        """The saved shard map's wire form (or the next map's), or None if none was saved."""
        try:
            with open(self.map_path(which), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def shard_names(self, shards: int | None, names: list | None = None) -> list:
        """The shards' names of a cluster on this storage: those of its saved map (`shards` must then be None
        or their number), else `names`, else s0 .. s{shards-1}; InputError saying what does not match."""
        from lstm_stream.errors import InputError
        saved = self.read_map()
        if saved is not None:
            saved_names = [s["name"] for s in saved["shards"]]
            if (shards is not None and shards != len(saved_names)) or (names is not None and names != saved_names):
                raise InputError(f"storage {self.root} holds a cluster of {len(saved_names)} shards "
                                 f"({', '.join(saved_names)}); start it with --shards {len(saved_names)}, or use "
                                 "another --storage for a new cluster")
            return saved_names
        if names is None:
            if type(shards) is not int or shards < 1:
                raise InputError(f"--shards must be an int >= 1, got {shards!r}")
            names = [f"s{k}" for k in range(shards)]
        return [check_shard_name(n) for n in names]

    def write_map(self, m: dict | None, which: str = "map") -> None:
        """Save the shard map's wire form (or the next map's) atomically (temporary file, fsync, rename);
        None removes it."""
        path = self.map_path(which)
        if m is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(m, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def open_storage(description: str) -> Storage:
    """The Storage a description names (a directory path: SharedPath)."""
    return SharedPath(description)


def retire(storage: "SharedPath", shard: str, version: int) -> str:
    """Rename a removed shard's directory out of the way (kept, never deleted): a shard added later under
    the same name must start empty, not from the streams this one held. Returns the new path."""
    old = storage.path_for(shard)
    new = f"{old}.removed-v{version}"
    os.rename(old, new)
    return new
