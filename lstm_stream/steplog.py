"""The step log's files: append-only segments of length-prefixed, checksummed records, and their reader.

A directory holds segments named steps-<first lsn, 20 digits>.log. Each record has a log sequence number
(lsn) one greater than the record before it, across segments. Layout (integers little-endian):

    segment header   magic b"LSTMLOG1", u32 header length, msgpack {fingerprint, dtype, first_lsn, created},
                     u32 crc32 of the header bytes
    record           u32 payload length, u64 lsn, u32 crc32 (of length, lsn and payload), payload (msgpack)

What a payload means is engine/journal.py's; this module only frames, writes and verifies. A crash in the
middle of a write leaves a torn record at the end of the newest segment: scan() reports it as the tail to
drop (nothing after it is valid). A bad record followed by more data, or a bad record in an older segment,
is corruption: scan() raises LogCorruptError naming the file and offset, and the daemon refuses to start.
"""
from __future__ import annotations

import os
import re
import struct
import time
import zlib
from dataclasses import dataclass

import msgpack

from .errors import LSTMStreamError

MAGIC = b"LSTMLOG1"
_HEAD = struct.Struct("<I")          # segment header length (after the magic)
_REC = struct.Struct("<IQI")         # payload length, lsn, crc32
MAX_RECORD_BYTES = 1 << 30           # a length beyond this is garbage, not a record
SEGMENT_NAME = re.compile(r"steps-([0-9]{20})\.log")


class LogCorruptError(LSTMStreamError):
    """A record before the log's tail fails its checksum or framing: the log cannot be replayed past it."""

    code = "bad_log"


def segment_name(first_lsn: int) -> str:
    return f"steps-{first_lsn:020d}.log"


def segments(directory) -> list:
    """[(first lsn, path)] of the directory's segments, oldest first."""
    out = []
    with os.scandir(directory) as entries:
        for e in entries:
            m = SEGMENT_NAME.fullmatch(e.name)
            if m and e.is_file(follow_symlinks=False):
                out.append((int(m.group(1)), e.path))
    return sorted(out)


def segment_header(fingerprint: str, dtype: str, first_lsn: int) -> bytes:
    """The bytes a new segment starts with."""
    head = msgpack.packb({"fingerprint": fingerprint, "dtype": dtype, "first_lsn": first_lsn,
                          "created": time.time()}, use_bin_type=True)
    return MAGIC + _HEAD.pack(len(head)) + head + struct.pack("<I", zlib.crc32(head))


def frame(lsn: int, payload: bytes) -> bytes:
    """One record's bytes."""
    head = _REC.pack(len(payload), lsn, 0)[:12]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


@dataclass
class Scan:
    """What scan() found: every valid record, and where a torn tail starts (None if the log ends cleanly)."""
    records: list                 # [(lsn, payload bytes)] in order
    last_lsn: int                 # lsn of the last valid record (first_lsn - 1 of the first segment if none)
    tail: tuple | None = None     # (path, offset, size of the file): the newest segment is cut at offset
    header: dict | None = None    # the newest segment's header


def read_header(path, data: bytes) -> tuple[dict, int]:
    """A segment's header and the offset of its first record; LogCorruptError if it is not one."""
    if data[:8] != MAGIC or len(data) < 12:
        raise LogCorruptError(f"{path} is not an lstm-stream step log segment (bad magic or too short)")
    n, = _HEAD.unpack_from(data, 8)
    end = 12 + n + 4
    if end > len(data) or struct.unpack_from("<I", data, 12 + n)[0] != zlib.crc32(data[12:12 + n]):
        raise LogCorruptError(f"{path}: the segment header is torn or corrupted")
    return msgpack.unpackb(data[12:12 + n], raw=False), end


def scan(directory, *, after: int = -1, fingerprint: str | None = None) -> Scan:
    """Read and verify every segment: records with lsn > `after` in order. Checks the lsn sequence, the
    checksums and (when given) the model fingerprint: a str, or a list of the fingerprints a segment may name
    (the loaded model's first: the weights versions a state directory has served, engine/weights.py).
    LogCorruptError for anything but a torn tail."""
    allowed = (fingerprint,) if isinstance(fingerprint, str) else tuple(fingerprint or ())
    first_fp = allowed[0] if allowed else None
    found = segments(directory)
    records, last, tail, header = [], None, None, None
    for k, (first, path) in enumerate(found):
        newest = k == len(found) - 1
        with open(path, "rb") as f:
            data = f.read()
        if newest and len(data) < 12:  # killed while creating the segment: nothing was acknowledged in it
            tail = (path, 0, len(data))
            break
        try:
            header, pos = read_header(path, data)
        except LogCorruptError:
            if newest:
                tail = (path, 0, len(data))
                break
            raise
        if fingerprint is not None and header.get("fingerprint") not in allowed:
            raise LogCorruptError(f"{path} was written for model {header.get('fingerprint')}, not the loaded model "
                                  f"{first_fp}; start with the model that wrote it, or move the log away")
        if header.get("first_lsn") != first or (last is not None and first != last + 1):
            raise LogCorruptError(f"{path}: starts at lsn {header.get('first_lsn')} but the log before it ends at "
                                  f"{last}; a segment is missing or misnamed")
        lsn = first - 1
        while pos < len(data):
            rec = _record(data, pos)
            if rec is None or rec[0] != lsn + 1:
                if newest and _is_tail(data, pos, lsn):
                    tail = (path, pos, len(data))
                    break
                raise LogCorruptError(
                    f"{path}: the record at byte offset {pos} (after lsn {lsn}) is corrupted and valid data "
                    f"follows it, so the log cannot be replayed past it. To start anyway, losing every step "
                    f"logged after lsn {lsn}: keep a copy of the directory, then cut the file at that offset "
                    f"(truncate -s {pos} {path}) and delete any later segment")
            lsn, payload, pos = rec
            if lsn > after:
                records.append((lsn, payload))
        last = lsn
        if tail is not None:
            break
    if last is None:
        last = after if not found else found[0][0] - 1
    return Scan(records, last, tail, header)


def oldest_fingerprint(directory) -> str | None:
    """The fingerprint in the header of the oldest segment (the weights a replay from its start begins with),
    or None without a readable one."""
    found = segments(directory) if os.path.isdir(directory) else []
    if not found:
        return None
    with open(found[0][1], "rb") as f:
        data = f.read(1 << 16)
    try:
        return read_header(found[0][1], data)[0].get("fingerprint")
    except LogCorruptError:
        return None


def _record(data, pos):
    """(lsn, payload, next offset) of a valid record at pos, else None."""
    if pos + _REC.size > len(data):
        return None
    n, lsn, crc = _REC.unpack_from(data, pos)
    end = pos + _REC.size + n
    if n > MAX_RECORD_BYTES or end > len(data):
        return None
    payload = data[pos + _REC.size:end]
    if zlib.crc32(payload, zlib.crc32(data[pos:pos + 12])) != crc:
        return None
    return lsn, payload, end


def _is_tail(data, pos, lsn) -> bool:
    """Whether a bad record at pos (after record lsn) is a torn write: nothing valid follows it. A crash
    leaves a prefix of the last record (or zeros, where the file was extended but never written); a record
    whose length, lsn or bytes were damaged is followed by valid records with later lsns, which a byte-by-byte
    search finds (only after a crash, and only over what follows the bad record)."""
    if not data[pos:].strip(b"\0"):
        return True
    for q in range(pos + 1, len(data) - _REC.size + 1):
        rec = _record(data, q)
        if rec is not None and lsn < rec[0] <= lsn + MAX_RECORD_BYTES:
            return False
    return True


def cut_tail(tail) -> None:
    """Truncate the newest segment at a torn tail's offset (a segment with no valid header is removed)."""
    path, offset, _ = tail
    if offset == 0:
        os.unlink(path)
    else:
        os.truncate(path, offset)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class SegmentWriter:
    """Appends framed records to one segment file; never leaves a partial record behind a failed write.

    append() writes the whole record or, on an OSError (disk full, I/O error), cuts the file back to where
    the record started and raises: the log then ends at the last complete record, as if it was never tried."""

    def __init__(self, directory, first_lsn: int, fingerprint: str, dtype: str):
        self.path = os.path.join(os.fspath(directory), segment_name(first_lsn))
        self.first_lsn = first_lsn
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        try:
            self.write(segment_header(fingerprint, dtype, first_lsn))
            os.fsync(self._fd)
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            self.close()
            os.unlink(self.path)
            raise

    def write(self, data: bytes) -> None:
        """Write all of data at the end, or cut back to the old end and raise OSError."""
        start, view = self.size, memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            except OSError:
                pass  # the next write's cut-back (or the scan at start) drops the partial record
            raise
        self.size = start + len(data)

    def fsync(self) -> None:
        os.fsync(self._fd)

    @property
    def fd(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove(path) -> None:
    """Delete a segment (every record in it is covered by a durable snapshot)."""
    os.unlink(path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(dirname: str) -> None:
    fd = os.open(dirname, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
