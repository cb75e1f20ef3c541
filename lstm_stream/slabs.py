"""Per-slot arrays that grow in place: each one's rows in one reservation of address space.

    slab = Slab(64, (L, P), np.float32)     # slab.array: (64, L, P), zeros
    h = slab.grow(128)                      # (128, L, P): the first 64 rows are the same memory, untouched

A store's per-slot arrays (the state slabs, the step counts, the ids' offsets, the receipts) double as streams
arrive. Made anew and copied, growing them stalled the loop for the copy of every row: 0.32 s at a million
streams of the shipped model, 0.64 s at two million (most of it the first touch of each page of the copy),
while every client waited. A Slab reserves address space for many rows up front instead: an anonymous
private mapping, which the OS backs with zeroed pages only as they are first written (MAP_NORESERVE on Linux,
so the reservation is not charged against the overcommit limit), and grows by taking a longer view of the
same memory. Rows stay where they are, nothing is copied, and only rows written use memory (RSS); the
process's virtual size (VIRT) counts the reservations.

Where the mapping cannot be made (Windows, a strict overcommit policy or an address-space limit that refuses
it), and once a reservation is outgrown, a Slab grows as arrays did before: a new allocation (a new, larger
reservation when one can be made), the rows copied into it. Every array starts on a cache line (a mapping
starts on a page; a copy is aligned as layout.aligned_zeros aligns).
"""
from __future__ import annotations

import mmap
import sys

import numpy as np

from .kernels.layout import aligned_zeros  # (numpy only: no numba)

# Address space reserved per array: rows for this many bytes, at most MAX_RESERVED_ROWS rows. Virtual memory
# only; beyond it, a copy into a reservation twice as large (see the module docstring).
RESERVE_BYTES = 1 << 36  # 64 GiB
MAX_RESERVED_ROWS = 1 << 27  # 134M slots
# A Slab made with huge=True is advised to the OS as huge pages (where it has transparent huge pages) once it
# holds this many bytes: what numpy does for its own allocations from 4 MiB, which the state slabs had
# before. The kernel reads its streams' rows in no particular order, and huge pages keep a large slab's
# address translations in the TLB: 8% faster steps of 800 random streams among 2M (I=8 H=64). The other
# per-slot arrays stay on small pages: a huge page's first touch costs milliseconds on some hosts, which a
# growth that writes a fill (receipts, str ids) would pay at once.
HUGE_FROM_BYTES = 1 << 22
_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0  # (not in Python's mmap module)


class Slab:
    """Rows of one shape and dtype, `array` (rows, *row_shape), that grow(rows) keeps in place when it can.
    New rows hold `fill` (written by grow; zeros come from the mapping for free). huge: advise huge pages
    (see HUGE_FROM_BYTES). reserve: rows to reserve (None: RESERVE_BYTES' worth, at most MAX_RESERVED_ROWS)."""

    def __init__(self, rows: int, row_shape=(), dtype=np.float64, *, fill=0, huge=False, reserve=None):
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.fill = fill
        self._row_bytes = max(1, self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        self.huge = huge
        self._map = None  # the mmap the rows live in (None: plain memory)
        self._advised = False  # whether huge pages were advised for it
        if reserve is None:
            reserve = min(MAX_RESERVED_ROWS, RESERVE_BYTES // self._row_bytes)
        self._whole = self._allocate(rows, max(rows, reserve))
        self.array = self._whole[:rows]  # the first `rows` of the reserved rows
        if fill != 0:
            self.array[...] = fill
        self._advise()

    @property
    def reserved(self) -> int:
        """Rows the array can grow to without a copy."""
        return self._whole.shape[0]

    def grow(self, rows: int) -> np.ndarray:
        """The array with `rows` rows (at least as many as now): the old rows kept, the new ones `fill`."""
        old = self.array.shape[0]
        if rows > self._whole.shape[0]:  # outgrown (or no reservation): a new allocation, the rows copied
            whole = self._allocate(rows, max(rows, 2 * self._whole.shape[0]))
            whole[:old] = self.array
            self._whole = whole
        self.array = self._whole[:rows]
        if self.fill != 0:  # (rows never written read as zeros: from the mapping, or from np.zeros)
            self.array[old:] = self.fill
        self._advise()
        return self.array

    def _allocate(self, rows: int, reserve: int) -> np.ndarray:
        """Zeroed rows, aligned to a cache line: `reserve` rows of a mapping, or else exactly `rows` rows of
        plain memory."""
        self._map = _mapping(reserve * self._row_bytes) if reserve > 0 else None
        self._advised = False
        if self._map is not None:
            return np.frombuffer(self._map, self.dtype).reshape((reserve,) + self.row_shape)
        return aligned_zeros((rows,) + self.row_shape, self.dtype)

    def _advise(self) -> None:
        if self.huge and self._map is not None and not self._advised and self.array.nbytes >= HUGE_FROM_BYTES:
            self._advised = True
            try:
                self._map.madvise(mmap.MADV_HUGEPAGE)
            except (AttributeError, OSError):  # no such advice here (not Linux, or a kernel without THP)
                pass


def _mapping(nbytes: int):
    """An anonymous private mapping of nbytes (read and write), or None where one cannot be made."""
    if sys.platform == "win32":  # (mmap(-1, n) commits n bytes of the page file there: no reservation)
        return None
    try:
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, OverflowError, MemoryError):  # refused: ENOMEM (overcommit, RLIMIT_AS), ...
        return None


def small_pages(shape, dtype) -> np.ndarray:
    """An uninitialised array in a mapping of its own, on small pages (np.empty where no mapping can be made):
    for large arrays made and written whole at once on the loop (the id tables as they double). numpy advises
    huge pages for its arrays from 4 MiB, and on hosts that compact memory to fault a huge page in, the first
    touch of a fresh 32 MiB table took 55-116 ms against 14 ms on small pages (measured on this project's
    2-vCPU VM, THP `madvise` with defrag `madvise`)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mapped = _mapping(nbytes) if nbytes >= HUGE_FROM_BYTES else None
    if mapped is None:
        return np.empty(shape, dtype)
    return np.frombuffer(mapped, dtype).reshape(shape)
