"""The interface every backend implements: backends/cpu.py (CPUBackend) and backends/cuda.py (CUDABackend).

A backend owns the state slabs of one model's streams and runs the kernels on them; it decides nothing about
ids or policy: Streams maps ids to slots and validates every argument before it calls a backend. Shapes, in
the model's dtype: x (N, I) inputs and y (N, O) outputs; per slot h (L, P) and c (L, H); slots are int64
slot numbers, offsets (S+1,) int64 row offsets into x.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """State slabs of one model's streams, and the kernels that step them."""

    name: str  # 'cpu' or 'cuda'

    def grow(self, capacity: int) -> None:
        """Enlarge the slabs to `capacity` slots, keeping every slot's state; the new slots are zero."""

    def host_arrays(self) -> tuple:
        """The state slabs where they are host memory (the CPU backend's h and c), else ()."""

    def run(self, slots, offsets, x):
        """Advance unique slots[s] over rows offsets[s]:offsets[s+1] of x (N, I); return y (N, O)."""

    def run_one(self, slot: int, x):
        """run() for one stream, x (T, I) C-contiguous -> y (T, O); None, with nothing changed, on NaN or Inf."""

    def read(self, slot):
        """Copies of one slot's state: h (L, P), c (L, H)."""

    def write(self, slot, h, c) -> None:
        """Overwrite one slot's state with h (L, P), c (L, H)."""

    def zero(self, slot) -> None:
        """Zero the state of a slot, or of an int64 array of slots (new or reset streams)."""

    def copy_slot(self, src, dst) -> None:
        """Copy slot src's state into slot dst."""

    def gather(self, slots):
        """States of many slots: h (n, L, P), c (n, L, H) host copies (for snapshots)."""

    def scatter(self, slots, h, c) -> None:
        """Write h (n, L, P), c (n, L, H) into `slots` (restoring a snapshot)."""

    def replace_model(self, model) -> None:
        """Step with `model`'s weights from the next call on: same sizes and dtype (Streams checks), possibly
        another packed layout (peepholes, head); every slot keeps its state."""

    def forecast(self, slot, horizon: int):
        """(horizon, O) outputs, each fed back as the next input, from a copy of the slot's state (untouched)."""

    def warm_up(self) -> None:
        """Compile (or load) what this backend runs beyond warm.warm_up's CPU kernels (which Streams.warm_up
        runs first), stepping nothing."""
