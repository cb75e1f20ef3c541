"""The step log's policy: when records are written, when they are on disk, and what happens when they cannot be.

Every request that changes state is appended (write(2), in the loop thread) before it is applied and before
its reply is sent. When the record reaches the disk depends on --fsync, with Redis's appendfsync meaning:

    always     a reply leaves only once its record is fsynced. Group commit: one fsync in a background thread
               covers every record written since the last one, and the loop computes the next turns meanwhile;
               their replies wait in order (EngineCore holds them) until the fsync that covers them returns.
    everysec   a background thread fsyncs once a second; replies leave at once.
    no         never fsynced by lstm-stream; the kernel writes the pages back when it chooses (about 30 s).

What a crash costs: the process alone (kill -9, an OOM kill, a bug): nothing under any policy, since every
acknowledged record was handed to the kernel before its reply. The machine (power loss, a kernel panic):
nothing acknowledged under `always`; up to about 1-2 s of steps under `everysec`; up to the kernel's writeback
interval under `no`.

A failed write (disk full, I/O error): the turn's mutating requests are refused with `log_failed` and not
applied (the partial record is cut off), reads go on, and writing is tried again after RETRY_FIRST seconds,
doubling up to RETRY_MAX, while mutating requests are refused at once (`info` shows it). A failed fsync is
different: Linux may have dropped the dirty pages, so what is on disk is unknown. Under `always` the daemon
then stops (exit 3, as PostgreSQL does) without acknowledging what was not made durable; a restart replays
what is on disk and clients resend the rest (with sequence numbers, exactly once). Under `everysec`/`no` it
logs the error and keeps going.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from lstm_stream import steplog

from .logs import repeating
from .loopstats import FSYNC_SECONDS, Buckets

log = logging.getLogger("lstm_stream.engine")

POLICIES = ("always", "everysec", "no")
SEGMENT_BYTES = 64 * 2**20      # a segment is closed and a new one started past this size
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds between write attempts after a failure (doubling)


class LogWriteError(Exception):
    """The record could not be written; nothing of it is in the log."""


class LogFatalError(Exception):
    """An fsync failed under `always`: what is durable is unknown; the daemon must stop."""


class Journal:
    """The step log being written: one open segment, a background fsync thread, failure and retry state."""

    def __init__(self, directory, fingerprint: str, dtype: str, *, fsync: str = "everysec",
                 segment_bytes: int = SEGMENT_BYTES, clock=time.monotonic):
        if fsync not in POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(POLICIES)}, got {fsync!r}")
        self.directory = os.fspath(directory)
        self.policy = fsync
        self._fingerprint, self._dtype = fingerprint, dtype
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._seg: steplog.SegmentWriter | None = None
        self._versions = [(0, fingerprint)]  # [(lsn, fingerprint)]: the records after lsn step with that version
        self.lsn = 0                      # the last record written (0: none yet)
        self.durable = 0                  # the last record known to be on disk (fsynced)
        self.failures = 0                 # failed writes in a row
        self.last_error: str | None = None
        self.fatal: str | None = None     # an fsync failed under `always`
        self._retry_at = 0.0
        self._delay = RETRY_FIRST
        self._lock = threading.Condition()  # guards _seg's fd against rotation while fsyncing; wakes the thread
        self._fd_busy = threading.Lock()
        self._stop = False
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()  # the fsync thread tells the loop that `durable` moved
        # For the metrics endpoint: records and bytes written by this process, failures in all, fsync times,
        # and since when (time.monotonic) records have waited for an fsync (fsync_lag).
        self.opened_lsn = 0
        self.written_bytes = 0
        self.write_failures = self.fsync_failures = 0
        self.fsync_seconds = Buckets(FSYNC_SECONDS)
        self._unsynced_since = 0.0
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # ---- opening and closing ---------------------------------------------------------------------
    def open(self, last_lsn: int) -> None:
        """Start writing after `last_lsn` (what recovery found): always in a new segment."""
        os.makedirs(self.directory, exist_ok=True)
        self.lsn = self.durable = self.opened_lsn = last_lsn
        stale = os.path.join(self.directory, steplog.segment_name(last_lsn + 1))
        if os.path.exists(stale):  # a segment started (at a snapshot) that holds no record: recovery found none
            steplog.remove(stale)
        self._seg = self._new_segment()
        if self.policy != "no":
            self._thread = threading.Thread(target=self._sync_loop, name="lstm-stream-fsync", daemon=True)
            self._thread.start()
        log.info("step log at %s (fsync %s), next record %d", self.directory, self.policy, last_lsn + 1,
                 extra={"event": "log_opened", "path": self.directory, "fsync": self.policy, "lsn": last_lsn})

    @property
    def segment_first(self) -> int:
        """The lsn the open segment starts at (it holds records when lsn >= this)."""
        return self._seg.first_lsn

    def _new_segment(self):
        return steplog.SegmentWriter(self.directory, self.lsn + 1, self._fingerprint, self._dtype)

    def close(self) -> None:
        """Fsync what was written, stop the thread, close the segment."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._seg is not None:
            try:
                self._sync_now()
            except OSError as e:
                log.error("final fsync of the step log failed: %s", e,
                          extra={"event": "log_fsync_failed", "path": self.directory, "error": str(e)})
            self._seg.close()
            self._seg = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- writing ---------------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        """False while failing and before the next retry time: mutating requests are refused without trying."""
        return self.fatal is None and (not self.failures or self._clock() >= self._retry_at)

    def refusal(self) -> str:
        """Why a mutating request is refused now (for the `log_failed` reply)."""
        if self.fatal is not None:
            return f"the step log cannot be made durable ({self.fatal}); the daemon is stopping"
        wait = max(0.0, self._retry_at - self._clock())
        return (f"the step log cannot be written ({self.last_error}); nothing was applied. Reads still work; "
                f"writing is tried again in {wait:.1f} s")

    def append(self, payload: bytes) -> int:
        """Write one record; its lsn. LogWriteError (nothing written, counted, retried later) on failure."""
        if not self.writable:
            raise LogWriteError(self.refusal())
        lsn = self.lsn + 1
        try:
            if self._seg.size >= self._segment_bytes:
                self.rotate()
            record = steplog.frame(lsn, payload)
            self._seg.write(record)
        except OSError as e:
            self._failed(e)
            raise LogWriteError(self.refusal()) from None
        if self.lsn == self.durable:  # the first record since everything was durable
            self._unsynced_since = time.monotonic()
        self.lsn = lsn
        self.written_bytes += len(record)
        if self.failures:
            log.warning("the step log is written again after %d failed attempts", self.failures,
                        extra={"event": "log_write_recovered", "path": self.directory, "failures": self.failures})
            self.failures, self.last_error, self._delay = 0, None, RETRY_FIRST
        return lsn

    def _failed(self, e):
        self.failures += 1
        self.write_failures += 1
        self.last_error = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
        self._retry_at = self._clock() + self._delay
        if self.failures == 1 or self.failures & (self.failures - 1) == 0:
            log.error("step log write to %s failed (%d in a row): %s; mutating requests are refused until a "
                      "write works (next try in %g s); reads go on", self._seg.path, self.failures,
                      self.last_error, self._delay, extra={"event": "log_write_failed", "path": self._seg.path,
                                                           "failures": self.failures, "error": self.last_error})
        self._delay = min(2 * self._delay, RETRY_MAX)

    def commit(self) -> None:
        """The turn's records are written: under `always`, ask the fsync thread to cover them."""
        if self.policy == "always" and self.lsn > self.durable:
            with self._lock:
                self._lock.notify()

    def rotate(self) -> None:
        """Close the open segment (fsynced) and start a new one at the next lsn."""
        with self._fd_busy:
            old = self._seg
            self._fsync(old)
            self._seg = self._new_segment()
            old.close()
        self._mark_durable(self.lsn)

    def switch(self, fingerprint: str, dtype: str) -> None:
        """After a weights update's record: the segments from now on name version `fingerprint` (and `dtype`);
        the open one is closed (fsynced, so the update's record is durable) and a new one started."""
        self._fingerprint, self._dtype = fingerprint, dtype
        self.rotate()

    def weights_from(self, lsn: int, fingerprint: str) -> None:
        """The records after `lsn` step with weights version `fingerprint` (a weights update's record is lsn;
        at opening, the version the replay started from, at the snapshot's lsn)."""
        self._versions.append((lsn, fingerprint))
        self._versions.sort(key=lambda v: v[0])

    def versions_after(self, lsn: int) -> set:
        """The weights versions a recovery from a snapshot holding the records through `lsn` may need: the one
        in force at lsn and every later one. Forgets the changes before lsn."""
        before = [v for v in self._versions if v[0] <= lsn]
        start = before[-1][1] if before else self._fingerprint
        self._versions = [(lsn, start)] + [v for v in self._versions if v[0] > lsn]
        return {fp for _, fp in self._versions}

    def covered(self, lsn: int) -> list:
        """A durable snapshot holds every record through `lsn`: delete the segments that hold nothing after
        it (never the open one). Returns the paths deleted."""
        found = steplog.segments(self.directory)
        gone = []
        for (first, path), nxt in zip(found, found[1:]):
            if nxt[0] - 1 <= lsn and path != self._seg.path:
                try:
                    os.unlink(path)
                    gone.append(path)
                except OSError as e:
                    log.warning("cannot delete the old step log segment %s: %s", path, e,
                                extra=repeating("log_delete_failed", path=path, error=str(e)))
        return gone

    # ---- durability --------------------------------------------------------------------------------
    @property
    def wake_fd(self) -> int:
        """Readable when `durable` moved (drain it with woken())."""
        return self._wake_r

    def woken(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _mark_durable(self, lsn):
        if lsn > self.durable:
            self.durable = lsn
            try:
                os.write(self._wake_w, b"d")
            except BlockingIOError:
                pass  # a wake-up is pending already

    def _sync_now(self):
        with self._fd_busy:
            target = self.lsn
            self._fsync(self._seg)
        self._mark_durable(target)

    def _fsync(self, seg):
        """Fsync a segment (holding _fd_busy), timed for the metrics."""
        t0, start = time.monotonic(), time.perf_counter()
        seg.fsync()
        self.fsync_seconds.observe(time.perf_counter() - start)
        self._unsynced_since = t0  # the records not covered by this fsync were written after t0

    def fsync_lag(self) -> tuple[int, float]:
        """(records written and not yet fsynced, seconds the oldest of them has waited at most); (0, 0.0) when
        everything written is durable. Read on the scrape's thread while the others move: a close picture."""
        waiting = self.lsn - self.durable
        return (waiting, max(time.monotonic() - self._unsynced_since, 0.0)) if waiting > 0 else (0, 0.0)

    def sync(self) -> None:
        """Fsync now, in the caller's thread (shutdown, tests)."""
        self._sync_now()

    def _sync_loop(self):
        period = None if self.policy == "always" else 1.0
        while True:
            with self._lock:
                if not self._stop and (period is not None or self.lsn <= self.durable):
                    self._lock.wait(period)
                if self._stop:
                    return
            if self.lsn <= self.durable:
                continue
            try:
                self._sync_now()
            except OSError as e:
                self._sync_failed(e)
                if self.policy == "always":
                    return

    def fail(self, reason: str) -> None:
        """The records written can no longer be trusted to match what this process holds (a logged weights
        update that could not be applied): nothing more is written or acknowledged, and the daemon stops (as
        after a failed fsync under `always`), so that a restart replays the log."""
        self.fatal = reason
        log.critical("%s: the daemon stops; restart it to replay the step log", reason,
                     extra={"event": "log_failed", "path": self.directory, "error": reason})

    def _sync_failed(self, e):
        self.fsync_failures += 1
        if self.policy == "always":
            self.fatal = str(e)
            log.critical("fsync of the step log failed: %s. What reached the disk is unknown, so nothing more is "
                         "acknowledged: the daemon stops; restart it to replay what is durable", e,
                         extra={"event": "log_fsync_failed", "path": self.directory, "error": str(e)})
            try:
                os.write(self._wake_w, b"f")
            except BlockingIOError:
                pass
        else:
            log.error("fsync of the step log failed (%s); records written since the last fsync may be lost if "
                      "the machine crashes", e, extra=repeating("log_fsync_failed", path=self.directory,
                                                                 error=str(e)))

    def status(self) -> dict:
        """For `info`."""
        return {"path": self.directory, "fsync": self.policy, "lsn": self.lsn, "durable": self.durable,
                "failing": self.failures > 0 or self.fatal is not None, "failures": self.failures,
                "last_error": self.fatal or self.last_error,
                "segment": None if self._seg is None else os.path.basename(self._seg.path)}
