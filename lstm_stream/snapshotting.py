"""SnapshotIO: the part of Streams that writes every stream to a snapshot file and reads one back (a mixin of
Streams; the file format is lstm_stream/snapshot.py's). Streams are saved and loaded through
Streams.export_slots/import_slots only, so every per-stream array (state, step counts, receipts) is in the file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SnapshotError
from .snapshot import read_snapshot, write_snapshot_blocks
from .state import check_ids

if TYPE_CHECKING:
    from .model import LSTMModel
    from .streams import Streams

SNAPSHOT_BLOCK = 4_096  # streams per block of a snapshot file (2.3 MB at hidden 64, receipts included): the
# writer's one copy of the state (a fork-worst snapshot's extra memory is every page of the state plus this)


class SnapshotIO:
    """save_snapshot / restore_snapshot / load_snapshot over Streams' store, backend and cold tier."""

    def export_all(self) -> tuple:
        """(ids, export_slots of every stream): a copy of the whole state, ids in slot order."""
        ids, slots = self._store.ids_and_slots()
        return ids, self.export_slots(slots)

    def hot_arrays(self) -> list:
        """The host arrays that stepping writes, cut to the slots handed out so far: the state slabs (CPU
        backend), step counts, last-seen times, the receipts' outputs. A forked snapshot writer's copy-on-write
        splits their huge pages; the daemon merges them back after it (engine/hugepages.py). Views: read only."""
        n = self._store.high
        arrays = (*self._backend.host_arrays(), self._store.steps, self._store.last_seen, self._receipts.y)
        return [a[:n] for a in arrays]

    def save_snapshot(self, path, *, meta: dict | None = None) -> int:
        """Write every stream in memory to `path` atomically, SNAPSHOT_BLOCK streams at a time (so the write
        holds one block's copy, not a copy of the state); meta goes into the file (read_snapshot's 'meta'),
        with a cold store its cold_lsn (snapshot_meta()). Returns the file size in bytes. Nothing may change
        the streams meanwhile: the daemon writes from a forked child, whose memory is frozen at the fork
        (engine/persistence.py), with the meta taken before the fork (a child must not use the cold store)."""
        own = self.cold is not None and (meta is None or "cold_lsn" not in meta)
        if own:  # a caller in this process (not the daemon's forked writer): take the cold store's meta now
            meta = {**(meta or {}), **self.snapshot_meta()}
        ids, slots = self._store.ids_of, self._store.slots()
        # the CUDA backend copies its whole slab to the host per gather: one block
        block = SNAPSHOT_BLOCK if self.backend == "cpu" else max(len(slots), 1)
        size = write_snapshot_blocks(path, fingerprint=self.model.fingerprint, count=len(slots),
                                     ids=lambda: (ids(slots[k:k + block]) for k in range(0, len(slots), block)),
                                     export=lambda a, b: self.export_slots(slots[a:b]), block=block, meta=meta)
        if own:
            self.snapshot_durable(meta)
        return size

    def restore_snapshot(self, path, *, cold_wins: bool = True) -> int:
        """Replace all streams in memory with those of a snapshot of this model; on any error nothing changes.
        Returns the number of streams restored. With a cold store, a stream both in the snapshot and cold is
        settled by the file's cold_lsn (ColdTier._settle; cold_wins=False when a step log replay follows)."""
        return self.import_snapshot(read_snapshot(path, fingerprint=self.model.fingerprint), path,
                                    cold_wins=cold_wins)

    def import_snapshot(self, snap: dict, path="snapshot", *, cold_wins: bool = True) -> int:
        """restore_snapshot of what read_snapshot returned (`path` names it in errors): every array the file
        holds goes to import_slots. Returns the number of streams restored."""
        if snap["header"]["fingerprint"] != self.model.fingerprint:
            raise SnapshotError(f"snapshot {path!r} belongs to model {snap['header']['fingerprint']}, not to "
                                f"the loaded model {self.model.fingerprint}; load it with the model that wrote it")
        ids, m = snap["ids"], self.model
        want = {"h": (len(ids), m.num_layers, m.state_size), "c": (len(ids), m.num_layers, m.hidden_size)}
        for k, shape in want.items():
            if snap[k].shape != shape or snap[k].dtype != self._dtype:
                raise SnapshotError(f"snapshot {path!r}: {k} is {snap[k].dtype}{snap[k].shape}, expected "
                                    f"{self._dtype}{shape}")
        if len(set(ids)) != len(ids):
            raise SnapshotError(f"snapshot {path!r} lists a stream id twice")
        if self._store.max_streams is not None and len(ids) > self._store.max_streams:
            raise SnapshotError(f"snapshot {path!r} holds {len(ids)} streams, more than max_streams="
                                f"{self._store.max_streams}")
        ids = check_ids(ids)
        if len(set(ids)) != len(ids):  # again: two ids may be equal once normalised
            raise SnapshotError(f"snapshot {path!r} lists a stream id twice")
        for i in list(self._store.ids()):
            self._forget(i)
        slots = self._store.add_many(ids, 0.0)
        self._generation += 1
        self.import_slots(slots, {name: snap[name] for name in snap["arrays"]})
        self._settle(snap.get("meta", {}).get("cold_lsn", 0), cold_wins)
        return len(ids)

    @classmethod
    def load_snapshot(cls, path, model: LSTMModel, **kwargs) -> Streams:
        """A new Streams for `model` holding the streams of snapshot `path` (kwargs as for Streams())."""
        streams = cls(model, **kwargs)
        streams.restore_snapshot(path)
        return streams
