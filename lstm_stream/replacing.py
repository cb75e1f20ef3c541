"""ModelSwap: the part of Streams that replaces the model it serves (a mixin of Streams, as tiering.py's ColdTier).

A stream's state (h (L, P), c (L, H)), its receipts (outputs (O,)) and its inputs (I,) are shaped by the sizes and
dtype below; a model that agrees on all of them can take over every stream as it is (new weights, biases,
peepholes or head activation: the backend takes the new packed layout, the slabs stay). Any other model needs
every stream dropped first (reset), and new slabs.
"""
from __future__ import annotations

import numpy as np

from .backends import make_backend
from .errors import ModelError
from .model import LSTMModel
from .receipts import Receipts
from .tiering import _Everyone

# What a stream's state and outputs are shaped by: a replacement model must agree on all of them for the
# streams to continue (replace_model); peepholes, the head's activation and every weight value may change.
SHAPE_FIELDS = ("input_size", "hidden_size", "state_size", "num_layers", "output_size", "dtype")


def shape_changes(old: LSTMModel, new: LSTMModel) -> list:
    """['hidden_size 16 -> 32', ...]: the SHAPE_FIELDS in which `new` differs from `old` (empty: none)."""
    return [f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}" for name in SHAPE_FIELDS
            if getattr(old, name) != getattr(new, name)]


class ModelSwap:
    """replace_model / check_replacement / adopt_model over Streams' store, backend, receipts and cold tier."""

    def check_replacement(self, model, *, reset: bool = False) -> list:
        """What replace_model(model, reset=reset) would check, changing nothing: ModelError unless `model` is
        an LSTMModel with the served sizes and dtype (SHAPE_FIELDS; each difference named, old -> new) or
        reset is set. Returns the differences (empty when the streams can continue)."""
        if not isinstance(model, LSTMModel):
            raise ModelError(f"replace_model needs an LSTMModel, got {type(model).__name__}")
        changes = shape_changes(self.model, model)
        if changes and not reset:
            raise ModelError(f"the new model {model.fingerprint} cannot take over the streams of model "
                             f"{self.model.fingerprint}: {', '.join(changes)}. Their state only continues under "
                             "a model with the same input_size, hidden_size, state_size (projection), num_layers, "
                             "output_size and dtype; give such a model, or reset every stream (reset=True)")
        return changes

    def replace_model(self, model: LSTMModel, *, reset: bool = False) -> int:
        """Serve `model` from the next step on. Without reset (sizes and dtype must match: check_replacement),
        every stream, in memory or cold, keeps its h, c, step count and receipt, and its next step uses the new
        weights. With reset=True (needed when the sizes differ), every stream is dropped first, in memory and
        in the cold store (tombstones: a log replay from an older snapshot still finds the old rows), and the
        state slabs are made for the new sizes. Returns the number of streams in memory kept (or dropped)."""
        changes = self.check_replacement(model, reset=reset)
        n = len(self._store)
        if reset:
            self._drop_all()
        self._take(model, bool(changes))
        return n

    def adopt_model(self, model: LSTMModel) -> None:
        """For recovery, before anything is restored: serve `model` (any sizes), with no stream in memory; the
        cold store's rows are left as they are (a replay reads them under the model in force where it does)."""
        if len(self._store):
            raise ModelError(f"adopt_model is for an empty Streams (recovery); this one holds {len(self._store)} "
                             "streams: use replace_model")
        self._take(model, bool(shape_changes(self.model, model)))

    def _take(self, model, other_sizes: bool) -> None:
        """Serve `model`: the backend takes its weights (or, for other sizes, new slabs are made: the store
        must hold no stream then), and the cold store is bound to it (first: it writes a file, and may fail
        with nothing else changed)."""
        if self.cold is not None:
            self.cold.rebind(model.fingerprint)
        if other_sizes:
            self._rebuild(model)
        else:
            self._backend.replace_model(model)
        self.model = model

    def _drop_all(self) -> None:
        """Drop every stream, in memory and cold (drop(): a cold one gets a tombstone)."""
        for i in list(self._store.ids()):
            self.drop(i)
        if self.cold is not None:
            for i in self.cold.ids():
                self.drop(i)
            if self.replay_before is not None:  # a replay reads versions before a fixed lsn: none may come back
                self._replay_gone = _Everyone()

    def _rebuild(self, model) -> None:
        """New slabs, receipts and backend for another model's sizes (the store must hold no stream)."""
        cap = self._store.capacity
        self._backend = make_backend(self._backend.name, model, cap, threads=self._threads)
        self._receipts = Receipts(cap, model.output_size, np.dtype(model.dtype))
        self._dtype, self._I = np.dtype(model.dtype), model.input_size
        self._generation += 1
