"""A snapshot written in the background while the loop serves: by a forked child (CPU backend, Linux), or by
a thread over a copy (other backends and systems). engine/persistence.py says why fork, with the figures.

    job = ForkedWrite(streams, path, meta)   # returns once the state is captured: fork() or the copy
    job.poll()                               # None while it writes; then (bytes, None) or (None, exception)
    job.poll(block=True)                     # waits for the end

The forked child is the parent's memory frozen at the fork instant (copy-on-write), so the file is every
stream at one loop turn however the parent steps them meanwhile. The parent has threads (kernel workers,
ZeroMQ's I/O threads) that do not exist in the child, and any lock one of them held stays held there: the
child therefore only reads numpy arrays and the id tables (compiled id gathers, no compilation), packs, hashes
and writes the file, reports through a pipe and leaves by os._exit (no atexit, no destructors, no ZeroMQ, no
logging). It dies with the parent (PR_SET_PDEATHSIG): a daemon killed by kill -9 cannot leave a writer that
renames an old picture over a newer daemon's snapshot; what it leaves is its '<path>.tmp-<child pid>', which
prepare_dir removes at the next start. SIGTERM and SIGINT kill it outright (default action): a terminal's
Ctrl-C or a service manager's group-wide SIGTERM ends it, and the parent's shutdown snapshot, written after,
is the one that counts.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import traceback

import msgpack

PR_SET_PDEATHSIG = 1
# The child yields the CPU to the serving loop: on a machine with few cores the writer (hashing, copying
# blocks) otherwise takes a core the loop's kernel threads wait for (docs/benchmarks.md, Snapshots off the loop).
CHILD_NICENESS = 10
_prctl = None


class SnapshotWriteError(Exception):
    """A background write failed other than with an OSError (the message holds the writer's traceback), or
    its process was killed."""


def fork_available() -> bool:
    """Whether ForkedWrite works here: Linux (fork and PR_SET_PDEATHSIG)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and _libc_prctl() is not None


def _libc_prctl():
    """libc's prctl, looked up in the parent: a dlopen in the child could wait on a loader lock forever."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None


class ForkedWrite:
    """A snapshot written by a forked child; the parent pays fork()'s page-table copy, then copy-on-write
    faults on the pages it writes while the child lives (each a 4 KiB copy: the memory cost)."""

    method = "fork"

    def __init__(self, streams, path, meta):
        prctl = _libc_prctl()
        parent = os.getpid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(streams, path, meta, r, w, parent, prctl)  # never returns
        os.close(w)
        self.pid, self._r, self._done = pid, r, None

    def poll(self, block: bool = False):
        """None while the child writes; then (bytes, None) once the file is renamed and fsynced, or
        (None, exception) if it failed. block=True waits for the end."""
        if self._done is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return None
            self._done = _outcome(self.pid, status, _read_all(self._r))
            os.close(self._r)
        return self._done


def _child(streams, path, meta, r, w, parent, prctl):
    """The forked child: write the snapshot, report {'bytes'} or the error on the pipe, os._exit."""
    code, report = 1, {"type": "BaseException", "message": "the writer stopped before it reported"}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.close(r)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: nobody wants this file any more
            os._exit(1)
        os.nice(CHILD_NICENESS)
        report = {"bytes": streams.save_snapshot(path, meta=meta)}
        code = 0
    except BaseException as e:
        report = {"type": type(e).__name__, "message": str(e), "errno": getattr(e, "errno", None),
                  "strerror": getattr(e, "strerror", None), "filename": getattr(e, "filename", None),
                  "traceback": traceback.format_exc()}
    finally:
        try:
            os.write(w, msgpack.packb(report, default=str))  # small: fits the pipe, never blocks
        finally:
            os._exit(code)


def _read_all(fd) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _outcome(pid, status, data):
    """(bytes, None) or (None, exception) from the child's exit status and report."""
    try:
        report = msgpack.unpackb(data, raw=False) if data else {}
    except Exception:
        report = {}
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and "bytes" in report:
        return report["bytes"], None
    if report.get("errno") is not None:  # OSError(errno, ...) is the subclass the child raised (ENOSPC...)
        return None, OSError(report["errno"], report["strerror"], report["filename"])
    if "type" in report:
        return None, SnapshotWriteError(f"the snapshot writer (process {pid}) failed: {report['type']}: "
                                        f"{report['message']}\n{report.get('traceback', '')}".rstrip())
    how = (f"was killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
           else f"exited with status {os.WEXITSTATUS(status)} without a report")
    return None, SnapshotWriteError(f"the snapshot writer (process {pid}) {how}")


class ThreadedWrite:
    """A snapshot written by a thread from a copy of every stream taken now, on the caller's thread (one copy
    of the state in memory, and a stall of a memcpy of it): where fork is not available, or not safe (the
    CUDA backend's state is on the device, and a CUDA context does not survive a fork)."""

    method = "thread"

    def __init__(self, streams, path, meta):
        from lstm_stream.snapshot import write_snapshot
        ids, arrays = streams.export_all()
        self.pid, self._done = None, None
        args = (path,)
        kwargs = {"fingerprint": streams.model.fingerprint, "ids": ids, "arrays": arrays, "meta": meta}
        self._thread = threading.Thread(target=self._run, args=(write_snapshot, args, kwargs), daemon=True,
                                        name="lstm-stream-snapshot")
        self._thread.start()

    def _run(self, write, args, kwargs):
        try:
            self._done = (write(*args, **kwargs), None)
        except BaseException as e:
            self._done = (None, e)

    def poll(self, block: bool = False):
        """As ForkedWrite.poll."""
        if block:
            self._thread.join()
        return None if self._thread.is_alive() else self._done
