"""Receipts of sequenced steps: per slot, the sequence number of the stream's last step that carried one, and
that step's outputs, so that a resent request is answered with the original outputs instead of applied again.

A stream's sequence number is its step count. A step may carry `seq`, the count the client expects after it;
the engine applies it only when seq == steps + rows, and remembers (seq, outputs) here. The same request
again (seq == steps, the receipt's seq, the same row count) is a duplicate and is answered from the receipt.

Outputs of one row (the usual request) live in a slab (capacity, O), saved by snapshots and the cold store
through Streams.export_slots; the outputs of a request of several rows are kept in a dict, which snapshots do
not save: after a restart from a snapshot taken since, such a duplicate is refused with the current number
(`seq_stale`) rather than answered (the step log replays receipts made after the snapshot exactly).
"""
from __future__ import annotations

import numpy as np

from .slabs import Slab

NONE = -1  # no receipt


class Receipts:
    """Per slot: seq (int64, NONE when there is none), rows (int32), y (capacity, O) of the last row."""

    def __init__(self, capacity: int, out_size: int, dtype):
        self._slabs = (Slab(capacity, (), np.int64, fill=NONE), Slab(capacity, (), np.int32),
                       Slab(capacity, (out_size,), dtype))  # grown in place (slabs.py)
        self.seq, self.rows, self.y = (slab.array for slab in self._slabs)
        self._many: dict = {}  # slot -> (rows, O) outputs of a receipt of several rows

    def grow(self, capacity: int) -> None:
        self.seq, self.rows, self.y = (slab.grow(capacity) for slab in self._slabs)

    def clear(self, slot) -> None:
        """Forget the receipt of a slot, or of an int64 array of slots (streams created, reset, overwritten or
        dropped)."""
        self.seq[slot] = NONE
        self.rows[slot] = 0
        if self._many:
            for one in (slot.tolist() if isinstance(slot, np.ndarray) else (slot,)):
                self._many.pop(one, None)

    def put(self, slot: int, seq: int, Y: np.ndarray) -> None:
        """The receipt of a sequenced step: its seq and its outputs Y (rows, O)."""
        self.seq[slot] = seq
        self.rows[slot] = len(Y)
        self.y[slot] = Y[-1]
        if len(Y) > 1:
            self._many[slot] = Y.copy()
        else:
            self._many.pop(slot, None)

    def get(self, slot: int, seq: int, rows: int):
        """The outputs (rows, O) of slot's receipt if it is for `seq` and `rows` rows, else None."""
        if self.seq[slot] != seq or self.rows[slot] != rows:
            return None
        if rows == 1:
            return self.y[slot:slot + 1].copy()
        return self._many.get(slot)

    def export(self, slots) -> dict:
        return {"last_seq": self.seq[slots], "last_rows": self.rows[slots], "last_y": self.y[slots]}

    def load(self, slots, arrays: dict) -> None:
        """Receipts from export() (a file without them: none)."""
        if "last_seq" not in arrays:
            self.seq[slots] = NONE
            self.rows[slots] = 0
            return
        self.seq[slots] = arrays["last_seq"]
        self.rows[slots] = arrays["last_rows"]
        self.y[slots] = arrays["last_y"]
        for s in np.asarray(slots).tolist():
            self._many.pop(s, None)
