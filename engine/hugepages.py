"""Huge pages back after a forked snapshot, so that the next fork() stops the loop ~1 ms per GB, not ~20.

numpy asks the kernel for transparent huge pages (madvise) for every large array, so the state slabs start
in 2 MiB pages, and fork() copies one page-table entry per 2 MiB. While a snapshot child lives, each page the
loop writes is copied on write, and since Linux 5.8 that splits its huge page into 512 entries of 4 KiB
which stay split after the child is gone: under random traffic every huge page of the slabs, so the next fork
copies 512 times the entries. Measured on 1 GB (the slabs of 2M streams at hidden 64): fork() 1.2-2.6 ms
before, 18-28 ms after a snapshot's writes, 1.2-1.3 ms again once merged (docs/benchmarks.md, Snapshots off
the loop). khugepaged merges pages back at its own pace (by default 16 MB every 10 s: an hour per GB), so
after each forked write a thread asks the kernel to merge the in-use part of the hot arrays now
(madvise(MADV_COLLAPSE), Linux 6.1+): ~0.5 s per GB, one huge page per call with the GIL released (ctypes),
sleeping as long as each call took (so at most half a core), stopped when the next snapshot begins. The thread
keeps the loop's priority: the kernel holds the process's memory-map lock while it copies a huge page, and a
page fault of the loop waits for it, so a merging thread preempted in there (at nice 10, behind the loop's
kernel workers) stalled serving turns 49-89 ms in 4 of ~15 merges at 2M streams; at nice 0, 4-12 ms in 16.

Nothing here changes what memory holds: a merge only remaps it. Where it cannot run (not Linux, huge pages
"never", a kernel without MADV_COLLAPSE, no free huge page at the moment) the pages stay as they are and
fork() is as slow as without this; status() says which.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time

log = logging.getLogger("lstm_stream.engine")

HUGE_PAGE = 2 << 20        # bytes: x86-64's and arm64's (4 KiB base pages) PMD-sized transparent huge page
MADV_COLLAPSE = 25         # linux/mman-common.h, Linux 6.1
CHUNK = HUGE_PAGE          # bytes merged per call (the process's memory map is locked while one is copied)
PACE = 1.0                 # after each call, sleep this times its duration: the merge takes at most half a core
MIN_BYTES = 64 << 20       # hot arrays smaller than this in all are left to khugepaged: their fork is ~1 ms anyway
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

_madvise = None


def unavailable() -> str | None:
    """Why merging cannot run on this system (None: it can be tried)."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    try:
        with open(THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return "no transparent huge pages in this kernel"
    if "[never]" in setting:
        return "transparent huge pages are off ([never] in " + THP_SETTING + ")"
    if _libc_madvise() is None:
        return "libc's madvise was not found"
    return None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
    return _madvise or None


def huge_ranges(arrays) -> list:
    """[(address, length)] of the whole huge pages inside each array's buffer (contiguous arrays; the rest is
    left alone), sorted, overlaps merged."""
    spans = []
    for a in arrays:
        start = a.__array_interface__["data"][0]
        first, end = -(-start // HUGE_PAGE) * HUGE_PAGE, (start + a.nbytes) // HUGE_PAGE * HUGE_PAGE
        if end > first:
            spans.append((first, end))
    merged = []
    for first, end in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((first, end))
    return [(first, end - first) for first, end in merged]


class Merger:
    """One background merge at a time: start(arrays) after a forked write, stop() before the next fork."""

    def __init__(self):
        self.why_not = unavailable()  # None: merging runs; else why it does not
        self.runs = 0                 # merges finished
        self.merged_bytes = 0         # bytes of huge pages asked for by those merges
        self.failed_bytes = 0         # bytes whose merge the kernel refused (EAGAIN, ENOMEM: no free huge page)
        self.seconds = 0.0            # their time in all
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, arrays) -> bool:
        """Merge the huge pages of `arrays` (kept alive until done) in a thread; False if not started (not
        available, too little memory to matter, or a merge still running)."""
        if self.why_not is not None or self.running:
            return False
        ranges = huge_ranges(arrays)
        if sum(n for _, n in ranges) < MIN_BYTES:
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(ranges, list(arrays)), name="lstm-hugepages",
                                        daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask a running merge to stop after its current chunk (it does not wait)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict:
        """For `info`: available (or why not), runs, merged_bytes, failed_bytes, seconds, running."""
        return {"available": self.why_not is None, "why_not": self.why_not, "runs": self.runs,
                "merged_bytes": self.merged_bytes, "failed_bytes": self.failed_bytes,
                "seconds": round(self.seconds, 3), "running": self.running}

    def _run(self, ranges, keep_alive):
        madvise, t0, done, failed = _libc_madvise(), time.perf_counter(), 0, 0
        for start, length in ranges:
            for at in range(start, start + length, CHUNK):
                if self._stop.is_set():
                    break
                n = min(CHUNK, start + length - at)
                t = time.perf_counter()
                ok = madvise(at, n, MADV_COLLAPSE) == 0
                time.sleep(PACE * (time.perf_counter() - t))
                if ok:
                    done += n
                    continue
                err = ctypes.get_errno()
                if err == 22 and not done and not failed:  # EINVAL at once: a kernel without MADV_COLLAPSE
                    self.why_not = ("madvise(MADV_COLLAPSE) refused (EINVAL): a kernel before Linux 6.1, or "
                                    "memory not eligible for huge pages")
                    log.info("huge pages are not merged back after snapshots: %s; fork() then copies 4 KiB "
                             "page tables (docs/operations.md)", self.why_not, extra={"event": "hugepages_off"})
                    return
                failed += n
        seconds = time.perf_counter() - t0
        self.runs, self.merged_bytes, self.failed_bytes = self.runs + 1, self.merged_bytes + done, \
            self.failed_bytes + failed
        self.seconds += seconds
        log.debug("merged %d MiB of the hot arrays into huge pages in %.3f s (%d MiB refused)", done >> 20,
                  seconds, failed >> 20, extra={"event": "hugepages_merged", "bytes": done, "failed_bytes": failed,
                                                "duration_s": round(seconds, 6)})
        del keep_alive
