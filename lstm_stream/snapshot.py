"""Snapshot file format: every stream's state in one versioned, checksummed file, written atomically.

Layout (all integers little-endian):
    magic      8 bytes   b"LSTMSNAP"
    version    u32       FORMAT_VERSION
    hdr_len    u64       length of the header
    header     msgpack map: fingerprint, dtype, num_layers, hidden_size, state_size, count, created,
               ids (list of str|int), arrays: [[name, dtype, shape], ...]
    arrays     raw C-order bytes of h (n, L, P), c (n, L, H), steps (n,) int64, last_seen (n,) float64
    digest     32 bytes  sha256 of everything above
Written to '<path>.tmp-<pid>', fsynced, renamed over <path>, then the directory is fsynced.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time

import msgpack
import numpy as np

from .errors import SnapshotError

MAGIC = b"LSTMSNAP"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
ARRAYS = ("h", "c", "steps", "last_seen")


def write_snapshot(path, *, fingerprint: str, ids: list, arrays: dict) -> int:
    """Atomically write a snapshot; returns its size in bytes. arrays: h, c, steps, last_seen."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(arrays[k]) for k in ARRAYS}
    h = arrays["h"]
    header = msgpack.packb({
        "fingerprint": fingerprint, "dtype": str(h.dtype), "num_layers": h.shape[1],
        "state_size": h.shape[2], "hidden_size": arrays["c"].shape[2], "count": len(ids),
        "created": time.time(), "ids": list(ids),
        "arrays": [[k, str(a.dtype), list(a.shape)] for k, a in arrays.items()],
    }, use_bin_type=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in (_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header,
                          *(a.reshape(-1).view(np.uint8) for a in arrays.values())):
                digest.update(chunk)
                f.write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return size


def read_snapshot(path, *, fingerprint: str | None = None) -> dict:
    """Read and verify a snapshot: {'header': {...}, 'ids': [...], 'h', 'c', 'steps', 'last_seen'}.

    Raises SnapshotError if the file is truncated, corrupted, of another version, or (when `fingerprint`
    is given) of another model."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {path!r} does not exist") from None
    except OSError as e:
        raise SnapshotError(f"snapshot {path!r} cannot be read: {e}") from e
    if len(data) < _PREFIX.size + _DIGEST:
        raise SnapshotError(f"snapshot {path!r} is truncated ({len(data)} bytes; a snapshot has at least "
                            f"{_PREFIX.size + _DIGEST})")
    magic, version, hdr_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{path!r} is not an lstm-stream snapshot (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot {path!r} has format version {version}; this lstm-stream reads "
                            f"version {FORMAT_VERSION}")
    body, digest = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"snapshot {path!r} is corrupted or truncated: its sha256 checksum does not match")
    try:
        header = msgpack.unpackb(body[_PREFIX.size:_PREFIX.size + hdr_len], raw=False, strict_map_key=False)
    except Exception as e:
        raise SnapshotError(f"snapshot {path!r} has an unreadable header: {e}") from e
    if fingerprint is not None and header["fingerprint"] != fingerprint:
        raise SnapshotError(f"snapshot {path!r} belongs to model {header['fingerprint']}, not to the loaded "
                            f"model {fingerprint}; load it with the model that wrote it")
    out = {"header": header, "ids": header["ids"]}
    pos = _PREFIX.size + hdr_len
    for name, dtype, shape in header["arrays"]:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if pos + n > len(body):
            raise SnapshotError(f"snapshot {path!r} is truncated inside array {name!r}")
        out[name] = np.frombuffer(body[pos:pos + n], dtype=dtype).reshape(shape).copy()
        pos += n
    if pos != len(body) or any(k not in out for k in ARRAYS):
        raise SnapshotError(f"snapshot {path!r} is malformed: arrays do not match the header")
    return out


def _fsync_dir(dirname: str) -> None:
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
