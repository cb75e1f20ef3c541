"""Snapshots of the daemon's streams: restore at start, save on a timer, on request and at shutdown.

One file, <snapshot_dir>/streams.lstmsnap, written atomically by lstm_stream.snapshot (temp file, fsync,
rename). Its name does not depend on the model, so a daemon started with another model finds the old file
and refuses it (SnapshotError) instead of silently starting empty; the file is never deleted or overwritten
in that case, because the daemon does not start.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("lstm_stream.engine")

SNAPSHOT_NAME = "streams.lstmsnap"


class Snapshots:
    """Snapshot policy for one Streams: where, how often, and whether anything changed since the last one."""

    def __init__(self, streams, directory, *, every: float | None = None, clock=time.monotonic):
        self.streams = streams
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, SNAPSHOT_NAME)
        self.every = every
        self._clock = clock
        self._next = None if every is None else clock() + every
        self.last: dict | None = None  # {path, bytes, streams, seconds, reason, time} of the last save
        self.dirty = False             # set by the engine when state changed since the last save

    def restore(self) -> int | None:
        """Load the snapshot if there is one: number of streams restored, or None without a file.
        Raises SnapshotError (wrong model, corrupted) and leaves the file untouched."""
        os.makedirs(self.directory, exist_ok=True)
        if not os.path.exists(self.path):
            log.info("no snapshot at %s: starting with no streams", self.path)
            return None
        t0 = time.perf_counter()
        n = self.streams.restore_snapshot(self.path)
        log.info("restored %d streams from %s in %.3f s", n, self.path, time.perf_counter() - t0)
        return n

    def save(self, reason: str) -> dict:
        """Write a snapshot now; returns {path, bytes, streams, seconds, reason, time}. Logs one line."""
        t0 = time.perf_counter()
        size = self.streams.save_snapshot(self.path)
        seconds = time.perf_counter() - t0
        self.dirty = False
        if self.every is not None:
            self._next = self._clock() + self.every
        self.last = {"path": self.path, "bytes": size, "streams": len(self.streams), "seconds": seconds,
                     "reason": reason, "time": time.time()}
        log.info("snapshot (%s): %d streams, %d bytes to %s in %.3f s", reason, len(self.streams), size,
                 self.path, seconds)
        return self.last

    def deadline(self) -> float | None:
        """Monotonic time of the next timed snapshot, or None."""
        return self._next

    def tick(self, now: float) -> None:
        """Save if the timer is due and something changed; otherwise just re-arm the timer."""
        if self._next is None or now < self._next:
            return
        if self.dirty:
            self.save("timer")
        else:
            self._next = now + self.every
