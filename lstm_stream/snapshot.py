"""Snapshot file format: every stream's state in one versioned, checksummed file, written atomically.

Layout (all integers little-endian):
    magic      8 bytes   b"LSTMSNAP"
    version    u32       FORMAT_VERSION (2; version 1 files are still read)
    hdr_len    u64       length of the header
    header     msgpack map: fingerprint, dtype, num_layers, hidden_size, state_size, count, created,
               ids (list of str|int), arrays: [[name, dtype, shape], ...], and from version 2:
               meta (a map the caller chose, e.g. the step log's position), block (rows per block)
    arrays     raw C-order bytes of the per-stream arrays: h (n, L, P), c (n, L, H), steps (n,) int64,
               last_seen (n,) float64 (ARRAYS, required), then any others the writer had (Streams.export_slots)
    digest     32 bytes  sha256 of everything above
Version 1 stores each array whole, one after the other. Version 2 stores them in blocks of `block` streams:
rows 0..block of every array in header order, then the next block's, so that a writer can export, hash and
write a block of streams at a time and never hold a second copy of the state (write_snapshot_blocks; with
block >= count it is version 1's layout). Written to '<path>.tmp-<pid>', fsynced, renamed over <path>,
then the directory is fsynced.
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
FORMAT_VERSION = 2
READS = (1, 2)  # the versions read_snapshot reads
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
ARRAYS = ("h", "c", "steps", "last_seen")


def write_snapshot(path, *, fingerprint: str, ids: list, arrays: dict, meta: dict | None = None) -> int:
    """Atomically write a snapshot of whole arrays (ARRAYS, and any other per-stream arrays, each with one
    row per id); meta: a msgpack-able map returned by read_snapshot as out['meta']. Returns the size."""
    arrays = {k: np.ascontiguousarray(v) for k, v in _ordered(arrays).items()}
    n = len(ids)
    ids = list(ids)
    return write_snapshot_blocks(path, fingerprint=fingerprint, count=n, ids=lambda: [ids],
                                 export=lambda a, b: arrays if (a, b) == (0, n) else
                                 {k: v[a:b] for k, v in arrays.items()}, block=max(n, 1), meta=meta)


def write_snapshot_blocks(path, *, fingerprint: str, count: int, ids, export, block: int,
                          meta: dict | None = None) -> int:
    """Atomically write a snapshot of `count` streams a block at a time: ids, a callable returning an
    iterable of lists that together hold the `count` ids in order (called twice: once to size the header,
    once to write it, so that no list or packed copy of every id is ever held); export(start, stop), the
    per-stream arrays of rows start:stop (called once per block, in order, so at most one block's copy
    exists at a time). Returns the size."""
    path = os.fspath(path)
    first = _ordered(export(0, min(block, count)))
    head, packed_ids = _header(fingerprint, count, ids, first, meta, block)
    hdr_len = len(head) + sum(len(p) for p in packed_ids())
    tmp = f"{path}.tmp-{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            def put(chunk):
                digest.update(chunk)
                f.write(chunk)
            put(_PREFIX.pack(MAGIC, FORMAT_VERSION, hdr_len))
            put(head)
            written = 0
            for packed in packed_ids():
                put(packed)
                written += len(packed)
            if len(head) + written != hdr_len:
                raise ValueError("the ids changed between the two passes of a snapshot's header")
            arrays, first = first, None  # one block's copy at a time: each is let go before the next export
            for start in range(0, count, block):
                if arrays is None:
                    arrays = _ordered(export(start, min(start + block, count)))
                for name, a in arrays.items():
                    put(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
                arrays = None
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


def _ordered(arrays: dict) -> dict:
    """The arrays with ARRAYS first, in that order, then the others in the order given."""
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"a snapshot needs the per-stream arrays {list(ARRAYS)}; {missing} missing")
    return {**{k: arrays[k] for k in ARRAYS}, **{k: v for k, v in arrays.items() if k not in ARRAYS}}


def _header(fingerprint, count, ids, first, meta, block) -> tuple:
    """(the msgpack header up to its ids, a callable giving the ids packed a chunk at a time): the ids list is
    the header's last field, so its bytes can be streamed after the rest and no list of every id is built."""
    h = first["h"]
    fields = {"fingerprint": fingerprint, "dtype": str(h.dtype), "num_layers": h.shape[1],
              "state_size": h.shape[2], "hidden_size": first["c"].shape[2], "count": count,
              "created": time.time(), "meta": dict(meta or {}), "block": block,
              "arrays": [[k, str(a.dtype), [count, *a.shape[1:]]] for k, a in first.items()]}
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(fields) + 1)]
    parts += [packer.pack(k) + packer.pack(v) for k, v in fields.items()]
    parts += [packer.pack("ids"), packer.pack_array_header(count)]

    def packed_ids():
        n = 0
        for chunk in ids():
            packed = packer.pack(chunk)  # an array header, then the ids: keep the ids
            yield packed[len(packer.pack_array_header(len(chunk))):]
            n += len(chunk)
        if n != count:
            raise ValueError(f"{n} ids for a snapshot of {count} streams")
    return b"".join(parts), packed_ids


def read_snapshot(path, *, fingerprint: str | None = None) -> dict:
    """Read and verify a snapshot: {'header': {...}, 'ids': [...], 'meta': {...}, 'arrays': [names],
    and each per-stream array by name (h, c, steps, last_seen and any other the file holds)}; meta is {} for a
    version 1 file.

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
    if version not in READS:
        raise SnapshotError(f"snapshot {path!r} has format version {version}; this lstm-stream reads "
                            f"versions {', '.join(map(str, READS))}")
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
    out = {"header": header, "ids": header["ids"], "meta": header.get("meta") or {},
           "arrays": [name for name, _, _ in header["arrays"]]}
    out.update(_arrays(path, header, body, _PREFIX.size + hdr_len))
    if any(k not in out for k in ARRAYS):
        raise SnapshotError(f"snapshot {path!r} is malformed: it lacks one of the arrays {list(ARRAYS)}")
    return out


def _arrays(path, header, body, pos) -> dict:
    """The per-stream arrays of the body from `pos`, block by block (version 1: one block of every row)."""
    specs = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in header["arrays"]]
    count = specs[0][2][0] if specs else 0
    if any(shape[0] != count for _, _, shape in specs):
        raise SnapshotError(f"snapshot {path!r} is malformed: its arrays have different numbers of rows")
    block = max(1, int(header.get("block") or count or 1))
    out = {name: np.empty(shape, dtype) for name, dtype, shape in specs}
    for start in range(0, count, block):
        for name, dtype, shape in specs:
            rows = out[name][start:start + block]
            n = rows.nbytes
            if pos + n > len(body):
                raise SnapshotError(f"snapshot {path!r} is truncated inside array {name!r}")
            rows.reshape(-1).view(np.uint8)[:] = np.frombuffer(body[pos:pos + n], np.uint8)
            pos += n
    if pos != len(body):
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
