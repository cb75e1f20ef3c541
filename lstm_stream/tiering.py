"""ColdTier: the part of Streams that moves idle streams to a ColdStore (lstm_stream/coldstore.py) and back.

A stream is in memory (the slabs, counted by len() and max_streams) or cold (rows in the cold store only). Its
next request of any kind brings it back first, exactly as it left (state, step count, last_seen), through
export_slots/import_slots: the only pair that saves a stream, here and in snapshots. Only a request naming an
id that is not in memory asks the cold store (one primary-key lookup, none while the store is empty), so a
known stream's step costs nothing more. A stream that comes back keeps its row until a snapshot holds it
(prune); a crash before that brings it back from the row, as a crash loses every step since the snapshot.

A mixin: its methods use Streams' store (_store), backend and generation.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .state import check_id
from .store import _plain as plain_id


class _Everyone(set):
    """_replay_gone after a replayed reset: every id was dropped (no thaw may bring an old version back)."""

    def __contains__(self, item):
        return True

    def __bool__(self):
        return True

    def add(self, item):
        pass


class ColdTier:
    """Eviction to a cold store, thawing, and the snapshot bookkeeping that keeps both replay-correct."""

    cold = None          # a ColdStore, or None: idle streams are then dropped
    replay_before = None  # an lsn while a log replay runs: a thaw reads the version current there, not the newest
    _replay_gone: set = frozenset()  # ids dropped during the replay: they come back from no version

    def replaying(self, before):
        """Set replay_before (the cold lsn the restored snapshot covers; None when the replay ends). While it
        is set nothing is evicted (the replay keeps every stream it touches in memory), a thaw reads the
        version current at that lsn, and a stream dropped by the replay comes back from no version."""
        self.replay_before = before
        self._replay_gone = set()

    def _init_cold(self, cold, idle_action) -> str:
        """Check idle_action against cold; tie the cold store to the model. Returns the action in force."""
        if idle_action not in (None, "evict", "drop") or (idle_action == "evict" and cold is None):
            raise InputError(f"idle_action must be 'evict' (needs a cold store), 'drop' or None (evict with a "
                             f"cold store, else drop), got {idle_action!r}")
        if cold is not None:
            cold.bind(self.model.fingerprint)
        self.cold = cold
        return idle_action or ("drop" if cold is None else "evict")

    # ---- coming back ---------------------------------------------------------------------------------
    def _slot(self, stream_id) -> int:
        """Slot of a stream in memory, or of a cold one brought back (StoreFullError, nothing changed, if it
        does not fit); UnknownStreamError if it is neither."""
        if self.cold is not None and self._store.get_slot(stream_id) is None:
            plain = plain_id(stream_id)
            if plain is not None:
                self._thaw((plain,))
        return self._store.slot(stream_id)

    def _thaw(self, ids) -> None:
        """Bring the cold ones among ids (plain, not in memory) back, exactly as evicted (the version current
        at replay_before while a replay runs); StoreFullError before any change if they do not fit (add_many
        checks the room first). Their rows stay: prune removes them once a snapshot holds the streams."""
        if self.replay_before is not None and self._replay_gone:
            ids = [i for i in ids if i not in self._replay_gone]
        found, arrays = self.cold.get_many(ids, self.replay_before)
        if found:  # one id (the usual thaw): add() costs a third of add_many()
            store = self._store
            slots = np.array([store.add(found[0], 0.0)]) if len(found) == 1 else store.add_many(found, 0.0)
            self._generation += 1
            self.import_slots(slots, arrays)
            self.cold.warm.update(found)
            self.thawed += len(found)

    def is_cold(self, stream_id) -> bool:
        """Whether a stream is in the cold store and not in memory (its next request brings it back)."""
        plain = plain_id(stream_id)
        return self.cold is not None and plain is not None and self._store.get_slot(plain) is None \
            and self.cold.has(plain)

    # ---- leaving ----------------------------------------------------------------------------------------
    def evict(self, ids, lsn: int | None = None) -> list:
        """Move streams from memory to the cold store, as versions at log position `lsn` (default:
        cold.next_lsn): the rows are written (durably) first, then the streams leave memory, so a crash in
        between leaves them in both, and memory wins. Returns the ids moved."""
        if self.cold is None:
            raise InputError("evict needs a cold store: Streams(model, cold=ColdStore(path))")
        ids = list(dict.fromkeys(check_id(i) for i in ids))
        slots = np.array([self._store.slot(i) for i in ids], np.int64)  # UnknownStreamError before any change
        if ids:
            self.cold.put(ids, self.export_slots(slots), self.cold.next_lsn if lsn is None else lsn)
        for i in ids:
            self._forget(i)
        self.evicted += len(ids)
        return ids

    def evict_idle(self, now: float | None = None, lsn: int | None = None) -> list:
        """Streams idle for longer than idle_ttl leave memory: evicted to the cold store at `lsn` (as evict()),
        or dropped when idle_action is 'drop' (always without a cold store). Returns their ids (none when
        idle_ttl is None)."""
        if self.idle_ttl is None:
            return []
        stale = self._store.idle(self.clock() if now is None else now, self.idle_ttl)
        if self.idle_action == "evict":
            return self.evict(stale, lsn)
        for i in stale:
            self.drop(i)
        return stale

    def _drop_cold(self, stream_id) -> bool:
        """drop()'s part in the cold store: a tombstone version (durably), so that no later read brings the id
        back, while a replay from an older snapshot still reads the versions before it. True if that was all
        there was to drop (the stream was cold, not in memory)."""
        plain = plain_id(stream_id)
        if plain is None or plain not in self.cold.warm and not self.is_cold(plain):
            if plain is not None and self.replay_before is not None:
                self._replay_gone.add(plain)
            return False
        self.cold.delete(plain, self.cold.next_lsn)
        if self.replay_before is not None:  # the replay reads versions before a fixed lsn: remember the drop
            self._replay_gone.add(plain)
        return self._store.get_slot(plain) is None

    def _forget(self, stream_id) -> None:
        """Remove a stream from memory (drop, eviction, restore), nothing else."""
        slot = self._store.remove(stream_id)
        self._generation += 1
        self._backend.zero(slot)
        self._receipts.clear(slot)

    # ---- snapshots ------------------------------------------------------------------------------------
    def snapshot_meta(self) -> dict:
        """What a snapshot captured now records of the cold store: {'cold_lsn': the lsn it covers} ({} without
        one). Taken at the capture, in this process (a forked writer must not use the cold store); the ids
        thawed by then are kept for snapshot_durable's prune."""
        if self.cold is None:
            return {}
        covered = self.cold.next_lsn
        self._captured = {**getattr(self, "_captured", {}), covered: set(self.cold.warm)}
        return {"cold_lsn": covered}

    def snapshot_durable(self, meta: dict) -> None:
        """After the snapshot captured with `meta` is durable: prune the cold rows no replay from it can need.
        In memory "in that snapshot" are the ids thawed before its capture (not the ones thawed since, which
        a replay from it reads from their versions)."""
        captured = getattr(self, "_captured", {})
        if self.cold is None or "cold_lsn" not in meta:
            return
        covered = meta["cold_lsn"]
        self.cold.prune(covered, captured.pop(covered, set()), full=False)
        for old in [k for k in captured if k < covered]:
            del captured[old]

    def _settle(self, covered: int, cold_wins: bool = True) -> None:
        """After a restore of a snapshot covering the cold store below `covered`: with cold_wins, a stream
        both in memory and cold with a version at `covered` or later was evicted (or dropped) after the
        snapshot was taken, so the cold version wins (it leaves memory); otherwise memory wins (a step log
        replay follows, which evicts nothing and reads versions below `covered`). Then a full prune removes
        what a crash left behind."""
        if self.cold is None:
            return
        if cold_wins:
            for i in self.cold.newest_from(covered):
                if self._store.get_slot(i) is not None:
                    self._forget(i)
        self.cold.prune(covered, self)
