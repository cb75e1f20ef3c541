"""Snapshots of the daemon's streams: restore at start, save on a timer, on request and at shutdown.

One file, <snapshot_dir>/streams.lstmsnap, written atomically by lstm_stream.snapshot (temp file, fsync,
rename). Its name does not depend on the model, so a daemon started with another model finds the old file
and refuses it (SnapshotError) instead of silently starting empty; the file is never deleted or overwritten
in that case, because the daemon does not start.

Before serving, prepare_dir() proves the directory writable (or the daemon refuses to start) and removes the
temporary files of snapshots that a killed daemon was writing. A failing timed snapshot (disk full, read-only
directory) is retried after one period, then 2, 4, 8 ... periods, at most BACKOFF_MAX_PERIODS periods and
BACKOFF_MAX_SECONDS apart (never less than one period), and on the period again after a success. A failure
episode logs one ERROR line, then its count at 2, 4, 8, ... failures and at least every REPORT_EVERY seconds,
then one line when a snapshot works again; `info` shows it (Snapshots.status).
"""
from __future__ import annotations

import logging
import os
import re
import time

log = logging.getLogger("lstm_stream.engine")

SNAPSHOT_NAME = "streams.lstmsnap"
# Back-off of a failing timed snapshot. Retrying every loop turn cost 60-70% CPU and 600-2,000 tracebacks a
# second; the cap bounds how long a fixed disk waits for the next attempt (a snapshot request tries at once).
BACKOFF_MAX_PERIODS = 10
BACKOFF_MAX_SECONDS = 600.0
REPORT_EVERY = 600.0  # seconds: a failure episode that goes on is logged at least this often (and at 2, 4, 8 ...)
# lstm_stream.snapshot writes '<path>.tmp-<pid>' and renames it; one left behind is a kill during a write.
_TMP_NAME = re.compile(re.escape(SNAPSHOT_NAME) + r"\.tmp-([1-9][0-9]*)")


def prepare_dir(directory) -> None:
    """Make `directory` ready for the daemon's snapshots before it serves: create it if missing, prove that a
    file can be created, written, fsynced and removed there, then remove stale temporary snapshot files
    (remove_stale_temporaries). Raises OSError naming the directory and the OS error."""
    directory = os.fspath(directory)
    probe = os.path.join(directory, f"{SNAPSHOT_NAME}.probe-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"lstm-stream write probe\n")
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
    except OSError as e:
        try:
            os.unlink(probe)
        except OSError:
            pass
        raise OSError(f"snapshot directory {directory!r} cannot be written: {e}") from e
    remove_stale_temporaries(directory)


def remove_stale_temporaries(directory) -> list:
    """Remove the '<snapshot>.tmp-<pid>' files of other processes in `directory`: a snapshot being written
    when its daemon was killed, never renamed (as large as a snapshot). Each is logged with its size; other
    files, and this process's own, are left alone. Returns the names removed."""
    removed = []
    with os.scandir(directory) as entries:
        for e in entries:
            m = _TMP_NAME.fullmatch(e.name)
            if m is None or int(m.group(1)) == os.getpid() or not e.is_file(follow_symlinks=False):
                continue
            try:
                size = e.stat(follow_symlinks=False).st_size
                os.unlink(e.path)
            except OSError as err:
                log.warning("cannot remove the stale temporary snapshot file %s: %s", e.path, err)
                continue
            log.warning("removed %s (%d bytes): a snapshot that process %s was writing when it was killed",
                        e.path, size, m.group(1))
            removed.append(e.name)
    return removed


def open_cold(directory, streams_config):
    """The cold store of idle streams, <directory>/cold.sqlite3 (lstm_stream/coldstore.py), when streams are to
    be evicted there (--idle-ttl, and --idle-action not drop) or the file is there from an earlier run (its
    streams come back on request); else None. A snapshot restored later is settled against it
    (Streams.restore_snapshot)."""
    from lstm_stream.coldstore import COLD_NAME, ColdStore
    path = os.path.join(os.fspath(directory), COLD_NAME)
    evicting = streams_config.idle_ttl is not None and streams_config.idle_action != "drop"
    if not evicting and not os.path.exists(path):
        return None
    cold = ColdStore(path)
    log.info("cold store %s: %d evicted streams%s", path, cold.count(),
             "" if evicting else " (no new evictions: no --idle-ttl, or --idle-action drop)")
    return cold


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
        self.failures = 0              # failed saves in a row (any reason); 0 once one works
        self.last_error: str | None = None  # what the last failed save raised, while failing
        self._since = None             # clock time of the episode's first failure
        self._delay = every            # wait before the next timed attempt after a failure (doubles)
        self._logged = None            # the error last logged in this episode (None: nothing logged yet)
        self._reported = 0.0           # clock time of the episode's last log line

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
        try:
            size = self.streams.save_snapshot(self.path)
        except Exception as e:
            self.failures += 1
            self.last_error = str(e) or type(e).__name__
            if self._since is None:
                self._since = self._clock()
            raise
        seconds = time.perf_counter() - t0
        self.dirty = False
        if self.every is not None:
            self._next = self._clock() + self.every
        self.last = {"path": self.path, "bytes": size, "streams": len(self.streams), "seconds": seconds,
                     "reason": reason, "time": time.time()}
        log.info("snapshot (%s): %d streams, %d bytes to %s in %.3f s", reason, len(self.streams), size,
                 self.path, seconds)
        if self.failures:
            self._recovered(reason)
        return self.last

    def _recovered(self, reason):
        # WARNING, so that a log filtered to warnings shows the end of the episode it showed the start of
        log.warning("snapshots to %s work again (%s) after %d failed attempts over %.0f s", self.path, reason,
                    self.failures, self._clock() - self._since)
        self.failures, self.last_error, self._since, self._logged = 0, None, None, None
        self._delay = self.every

    @property
    def max_delay(self) -> float | None:
        """Longest wait between two timed attempts while they fail (see the module docstring)."""
        if self.every is None:
            return None
        return max(self.every, min(BACKOFF_MAX_PERIODS * self.every, BACKOFF_MAX_SECONDS))

    def status(self) -> dict:
        """For `info`: failing, failures (in a row), last_error, next_attempt_in (seconds to the next timed
        attempt while failing, else None)."""
        failing = self.failures > 0
        wait = None if not failing or self._next is None else max(0.0, self._next - self._clock())
        return {"failing": failing, "failures": self.failures, "last_error": self.last_error,
                "next_attempt_in": wait}

    def deadline(self) -> float | None:
        """Monotonic time of the next timed snapshot, or None."""
        return self._next

    def tick(self, now: float) -> None:
        """Save if the timer is due and something changed; otherwise just re-arm the timer. A failed save is
        retried after the back-off and logged as the module docstring says; it does not raise."""
        if self._next is None or now < self._next:
            return
        if not self.dirty:
            self._next = now + self.every
            return
        try:
            self.save("timer")
        except Exception as e:
            self._next = now + self._delay
            self._delay = min(2 * self._delay, self.max_delay)
            self._report(e, now)

    def _report(self, e, now):
        """Log a failed timed save: the episode's first in full, then its count now and then."""
        wait = self._next - now
        if self._logged is None:
            self._reported, self._logged = now, self.last_error
            log.error("timed snapshot to %s failed: %s. Retrying in %g s, then less and less often (at most "
                      "every %g s) until one works; `info` shows it", self.path, self.last_error, wait,
                      self.max_delay, exc_info=not isinstance(e, OSError))  # an OSError says it all
        elif self.failures & (self.failures - 1) == 0 or now - self._reported >= REPORT_EVERY:
            self._reported = now
            log.warning("timed snapshot to %s still failing: %d failed attempts in %.0f s%s; next attempt in %g s",
                        self.path, self.failures, now - self._since,
                        "" if self.last_error == self._logged else f", the last: {self.last_error}", wait)
            self._logged = self.last_error
