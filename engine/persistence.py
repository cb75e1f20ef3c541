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

Off the loop. Timed snapshots (tick) are written in the background: start() captures every stream at one
loop turn and returns, poll() (each housekeeping turn) finishes the write, and nothing else waits for it.
The capture is a fork() (engine/snapshot_jobs.py): the child is the process frozen at that turn and writes
the file from copy-on-write memory while the parent serves, like Redis's BGSAVE. Measured (bench/snapshot.py,
docs/benchmarks.md "Snapshots off the loop"), 2M streams of hidden 64 (1 GB of state), a 2-core machine:
the synchronous write stopped the loop ~5.6 s and took +1.27 GB; copying the slabs on the loop (option (a),
then a thread writes the copy) alone stops it 0.5-4 s and takes a full copy: hundreds of times the 50 ms
goal, and cutting it into chunks across turns is only consistent with copy-on-write tracking on every path
that writes a slot (option (c): a check in the hot path and in every op, for what the kernel does for
free). fork() stops the loop 4-12 ms (its page tables: huge pages split by the last write's copy-on-write
are merged back after it, engine/hugepages.py; without that, 49 ms at 2M streams), and the extra
memory is the pages the loop writes while the child lives (4 KiB each: random traffic copies about the
whole state, +1.0 GB; every page written +1.3 GB with the heap and the child's buffers, against +1.27 GB
for the old path) plus the child's block buffers (the file is written a block of streams at a time,
Streams.save_snapshot). The CUDA backend (its state is on
the device, and CUDA does not survive a fork) and systems without fork use a thread over a copy taken on
the loop instead (method "thread"). At most one background write is in flight: the timer does not start
another while one is (the changes since are the next one's); start() and save() wait for it first. save()
(shutdown, the `snapshot` request, tests) writes on the caller's thread, a block at a time: the loop stops
for the whole write, but needs no second copy and no fork.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import time

from lstm_stream.snapshot import read_snapshot

from .hugepages import Merger
from .loopstats import SNAPSHOT_SECONDS, Buckets
from .snapshot_jobs import ForkedWrite, SnapshotWriteError, ThreadedWrite, fork_available

from .logs import repeating

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
    """Snapshot policy for one Streams: where, how often, whether anything changed since the last one, and
    the background write in flight (at most one).

    position() (optional) is called on the loop thread at the capture instant; its map goes into the file's
    meta (read back by restore() as restored_meta). on_durable(meta) (optional) is called on the loop thread
    once that file is renamed and fsynced (the step log then drops the segments it covers)."""

    def __init__(self, streams, directory, *, every: float | None = None, clock=time.monotonic,
                 position=None, on_durable=None, method: str | None = None, merge_huge_pages: bool = True):
        self.streams = streams
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, SNAPSHOT_NAME)
        self.every = every
        self.position, self.on_durable = position, on_durable
        # "fork": a forked child writes (CPU backend on Linux); "thread": a thread writes a copy (the rest)
        self.method = method or ("fork" if streams.backend == "cpu" and fork_available() else "thread")
        self._clock = clock
        self._next = None if every is None else clock() + every
        self.last: dict | None = None  # {path, bytes, streams, seconds, reason, time} of the last save
        self.dirty = False             # set by the engine when state changed since the last capture
        self.restored_meta: dict = {}  # the meta of the file restore() loaded ({} without one)
        self.failures = 0              # failed saves in a row (any reason); 0 once one works
        self.last_error: str | None = None  # what the last failed save raised, while failing
        self._since = None             # clock time of the episode's first failure
        self._delay = every            # wait before the next timed attempt after a failure (doubles)
        self._logged = None            # the error last logged in this episode (None: nothing logged yet)
        self._reported = 0.0           # clock time of the episode's last log line
        self._job = None               # the background write in flight (engine/snapshot_jobs.py)
        # after a forked write, the huge pages its copy-on-write split are merged back (engine/hugepages.py)
        self.huge_pages = Merger() if merge_huge_pages and self.method == "fork" else None
        self._capture_info = None      # (reason, meta, streams, perf time, clock time, stall) of that write
        # `snapshot` requests (request()): those waiting for a capture after theirs, those the write in flight
        # answers, and (requester, record or None, exception or None) of those answered, for the engine to reply
        self._asked: list = []
        self._riding: list = []
        self.answered: list = []
        # For the metrics endpoint: saves by reason, failed saves in all, and each durable save's time and how
        # long the loop stopped for it (the fork or the copy; the whole write for save()).
        self.saves: collections.Counter = collections.Counter()
        self.failed_total = 0
        self.seconds = Buckets(SNAPSHOT_SECONDS)
        self.pauses = Buckets(SNAPSHOT_SECONDS)

    def restore(self, *, cold_wins: bool = True, weights=None) -> int | None:
        """Load the snapshot if there is one: number of streams restored, or None without a file; its meta
        goes to restored_meta. Raises SnapshotError (wrong model, corrupted) and leaves the file untouched.
        cold_wins: see Streams.restore_snapshot (False when a step log replay follows). weights: the state
        directory's WeightsStore: a snapshot written under a weights version found there (before or after a
        weights update) is restored with that version (Streams.adopt_model), whatever the loaded model."""
        os.makedirs(self.directory, exist_ok=True)
        self.restored_meta = {}
        if not os.path.exists(self.path):
            log.info("no snapshot at %s: starting with no streams", self.path)
            return None
        t0 = time.perf_counter()
        snap = read_snapshot(self.path)
        fingerprint = snap["header"]["fingerprint"]
        if fingerprint != self.streams.model.fingerprint and weights is not None and weights.has(fingerprint):
            self.streams.adopt_model(weights.get(fingerprint))
            log.info("the snapshot %s was written under weights version %s (from %s)", self.path, fingerprint,
                     weights.path(fingerprint), extra={"event": "snapshot_weights", "fingerprint": fingerprint})
        n = self.streams.import_snapshot(snap, self.path, cold_wins=cold_wins)
        self.restored_meta = snap["meta"]
        log.info("restored %d streams from %s in %.3f s", n, self.path, time.perf_counter() - t0,
                 extra={"event": "snapshot_restored", "streams": n, "path": self.path,
                        "duration_s": round(time.perf_counter() - t0, 6)})
        return n

    @property
    def busy(self) -> bool:
        """Whether a background write is in flight (until poll() or wait() sees it end)."""
        return self._job is not None

    def save(self, reason: str) -> dict:
        """Write a snapshot on this thread and return {path, bytes, streams, seconds, reason, time} once it
        is durable; raises if it fails. For callers that stop anyway (shutdown, a cluster move, tests):
        a background write in flight is finished first; then the file is written here, a block at a time
        (no fork, no copy of the state). Logs one line."""
        self.wait()
        asked, self._asked = self._asked, []  # requests waiting for a capture after theirs: this one answers them
        reason, meta, count, t0, _, _ = info = self._capture(reason)
        try:
            size = self.streams.save_snapshot(self.path, meta=meta)
        except Exception as e:
            self._failed(e)
            self.answered += [(who, None, e) for who in asked]
            raise
        record = self._durable(info, size)
        self.answered += [(who, record, None) for who in asked]
        return record

    def request(self, who) -> None:
        """A snapshot for `who` (the `snapshot` request): written in the background as a timed one is, captured
        at this turn or a later one, so the loop pauses only for the fork (or the copy). (who, record, None)
        goes to `answered` once its file is durable, (who, None, exception) if it failed. While a write is in
        flight (captured before the request), the next starts as soon as it ends (tick); requests made
        meanwhile share that one."""
        self._asked.append(who)
        if not self.busy:
            self._start_asked()

    @property
    def waiting(self) -> int:
        """`snapshot` requests not yet in `answered`."""
        return len(self._asked) + len(self._riding)

    def settle(self) -> None:
        """Answer every waiting request now, on this thread (in-process callers, shutdown): the write in flight
        ends, then one for the requests made after its capture is written here."""
        self.wait()
        if self._asked:
            try:
                self.save("request")
            except Exception:
                pass  # in `answered` with the error

    def _start_asked(self):
        self._riding, self._asked = self._asked, []  # (before start: the write answers them when it ends)
        try:
            self.start("request")
        except Exception as e:  # the fork or the copy failed (counted by start)
            riding, self._riding = self._riding, []
            self._log_failed(e)
            self.answered += [(who, None, e) for who in riding]

    def start(self, reason: str) -> None:
        """Begin a background snapshot: capture every stream now (the fork, or the copy) and return; poll()
        finishes it. A write already in flight is waited for first (so the next one captures a later turn);
        tick() never starts one while busy, so the timer never waits. Raises if the capture fails (fork:
        ENOMEM, EAGAIN), counted as a failed save."""
        self.wait()
        if self.huge_pages is not None:
            self.huge_pages.stop()  # (a merge still running yields after its chunk: the fork waits for that)
        info = self._capture(reason)
        try:
            self._job = (ForkedWrite if self.method == "fork" else ThreadedWrite)(self.streams, self.path, info[1])
        except Exception as e:
            self._failed(e)
            raise
        self._capture_info = info[:5] + (time.perf_counter() - info[3],)

    def poll(self) -> dict | None:
        """Finish the background write if it has ended: its record once the file is durable; None while it
        writes, without one, or if it failed (counted, logged and backed off as a failed timed save)."""
        return self._finish(block=False)

    def wait(self) -> dict | None:
        """poll(), waiting for the background write in flight to end."""
        return self._finish(block=True)

    def _finish(self, block):
        if self._job is None:
            return None
        done = self._job.poll(block)
        if done is None:
            return None
        (size, error), info, self._job = done, self._capture_info, None
        riding, self._riding = self._riding, []
        if self.huge_pages is not None:  # (a forked write: the only kind with a merger)
            self.huge_pages.start(self.streams.hot_arrays())
        if error is not None:
            self._failed(error)
            self.answered += [(who, None, error) for who in riding]
            if info[0] == "request":  # the requesters are told; a timed write is retried later
                self._log_failed(error)
            else:
                self._back_off(error, info[4])
            return None
        record = self._durable(info, size)
        self.answered += [(who, record, None) for who in riding]
        return record

    def _capture(self, reason):
        """(reason, meta, streams, perf time, clock time, 0.0) at the capture instant, on the loop thread:
        the changes after it are the next snapshot's."""
        meta = self.streams.snapshot_meta()  # the cold store's position ({} without one)
        if self.position is not None:
            meta.update(self.position())
        now = self._clock()
        self.dirty = False
        if self.every is not None:
            self._next = now + self.every
        return reason, meta, len(self.streams), time.perf_counter(), now, 0.0

    def _durable(self, info, size) -> dict:
        reason, meta, count, t0, _, stall = info
        seconds = time.perf_counter() - t0
        self.last = {"path": self.path, "bytes": size, "streams": count, "seconds": seconds, "reason": reason,
                     "time": time.time()}
        self.saves[reason] += 1
        self.seconds.observe(seconds)
        self.pauses.observe(stall or seconds)  # stall is 0.0 for save(): the loop waited for the whole write
        log.info("snapshot (%s): %d streams, %d bytes to %s in %.3f s%s", reason, count, size, self.path,
                 seconds, f" in the background (the loop paused {1e3 * stall:.1f} ms)" if stall else "",
                 extra={"event": "snapshot", "reason": reason, "streams": count, "bytes": size, "path": self.path,
                        "duration_s": round(seconds, 6), "stall_s": round(stall, 6)})
        if self.failures:
            self._recovered(reason)
        try:
            self.streams.snapshot_durable(meta)  # prune the cold store
        except Exception:
            log.exception("pruning the cold store after the snapshot to %s failed", self.path,
                          extra=repeating("cold_prune_failed", path=self.path))
        if self.on_durable is not None:
            try:
                self.on_durable(meta)
            except Exception:
                log.exception("on_durable(%r) failed after the snapshot to %s", meta, self.path)
        return self.last

    def _failed(self, e):
        """Count a failed save; what it had captured is unsaved, so the state is dirty again."""
        self.dirty = True
        self.failures += 1
        self.failed_total += 1
        self.last_error = str(e) or type(e).__name__
        if self._since is None:
            self._since = self._clock()

    def _recovered(self, reason):
        # WARNING, so that a log filtered to warnings shows the end of the episode it showed the start of
        log.warning("snapshots to %s work again (%s) after %d failed attempts over %.0f s", self.path, reason,
                    self.failures, self._clock() - self._since,
                    extra={"event": "snapshot_recovered", "path": self.path, "failures": self.failures})
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
        attempt while failing, else None), busy (a background write in flight), writer (its process id when
        a forked child writes it), method (fork or thread), requests (`snapshot` requests waiting), huge_pages
        (fork: the merging of huge pages after each write, engine/hugepages.py; None otherwise)."""
        failing = self.failures > 0
        wait = None if not failing or self._next is None else max(0.0, self._next - self._clock())
        return {"failing": failing, "failures": self.failures, "last_error": self.last_error,
                "next_attempt_in": wait, "busy": self.busy, "method": self.method, "requests": self.waiting,
                "writer": getattr(self._job, "pid", None),
                "huge_pages": None if self.huge_pages is None else self.huge_pages.status()}

    def deadline(self) -> float | None:
        """Monotonic time of the next timed snapshot, or None."""
        return self._next

    def tick(self, now: float) -> None:
        """Finish a background write that ended; then, if the timer is due and something changed, start the
        next one (never while one is in flight: the loop does not wait), else re-arm the timer. A failed write
        is retried after the back-off and logged as the module docstring says; it does not raise."""
        self.poll()
        if self._asked and not self.busy:  # `snapshot` requests made while the last write was in flight
            self._start_asked()
        if self.busy or self._next is None or now < self._next:
            return
        if not self.dirty:
            self._next = now + self.every
            return
        try:
            self.start("timer")
        except Exception as e:
            self._back_off(e, now)

    def _back_off(self, e, started):
        """After a failed background write captured at `started`: the next timed attempt after the back-off
        delay from then, and the log line."""
        now = self._clock()
        if self.every is None:
            self._log_failed(e)
            return
        self._next = started + self._delay
        self._delay = min(2 * self._delay, self.max_delay)
        self._report(e, now)

    def _log_failed(self, e):
        log.error("snapshot to %s failed: %s", self.path, self.last_error, exc_info=_traceback(e),
                  extra=repeating("snapshot_failed", path=self.path, error=self.last_error))

    def _report(self, e, now):
        """Log a failed timed save: the episode's first in full, then its count now and then."""
        wait = max(0.0, self._next - now)
        if self._logged is None:
            self._reported, self._logged = now, self.last_error
            log.error("timed snapshot to %s failed: %s. Retrying in %g s, then less and less often (at most "
                      "every %g s) until one works; `info` shows it", self.path, self.last_error, wait,
                      self.max_delay, exc_info=_traceback(e), extra={"event": "snapshot_failed", "reason": "timer",
                                                                     "path": self.path, "error": self.last_error})
        elif self.failures & (self.failures - 1) == 0 or now - self._reported >= REPORT_EVERY:
            self._reported = now
            log.warning("timed snapshot to %s still failing: %d failed attempts in %.0f s%s; next attempt in %g s",
                        self.path, self.failures, now - self._since,
                        "" if self.last_error == self._logged else f", the last: {self.last_error}", wait,
                        extra={"event": "snapshot_failing", "path": self.path, "failures": self.failures,
                               "error": self.last_error})
            self._logged = self.last_error


def _traceback(e) -> bool:
    """Whether a failure's log line needs the traceback: not for an OSError (it says it all), nor for a
    writer's failure (its message holds the writer's own traceback)."""
    return not isinstance(e, (OSError, SnapshotWriteError))
