"""ColdStore: idle streams' state on disk, in one SQLite file, until their next request brings them back exactly.

Why SQLite, through the standard library's sqlite3: no dependency; transactional (a batch of evictions is all
in or all out, and durable when put() returns: WAL journal with synchronous=FULL, one append and one fsync per
batch; docs/operations.md has the figures); point lookups by primary key in microseconds (a thaw is one B-tree
seek); and an operator can look inside with the sqlite3 command-line tool.

    cold = ColdStore("state/cold.sqlite3")
    cold.put(ids, arrays, lsn)          # Streams.export_slots' arrays of `ids`, one new row version each
    cold.get_many(ids, before=None)     # the newest version of each (with lsn < before): ids found, arrays
    cold.prune(covered, in_memory)      # after a durable snapshot: what no replay from it can need

Tables:
    rows(id, lsn, state)   one row per eviction of a stream. id is an INTEGER or a TEXT: the column has no type
                           (no affinity), so SQLite keeps 7 and '7' apart, as Streams does. lsn is the log
                           position the caller gives (the step log's, later; until then next_lsn's counter).
                           state holds every array export_slots gave, by name: msgpack {name: [dtype, shape,
                           bytes]}, so an array added to export_slots later is stored with no change here.
                           Primary key (id, lsn): an eviction inserts a version and never overwrites one, so a
                           replay can read the version current at any log position (get_many(before=)).
    meta(key, value)       next_lsn (one more than the largest lsn put) and the model's fingerprint. Which lsn a
                           snapshot covers is in the snapshot's own meta (cold_lsn: Streams.snapshot_meta).
A drop puts a tombstone (a version with an empty state): the id is then absent for every read that sees
that version, while a replay from an older snapshot still reads the versions before it. Rows go away through
prune() only (after a durable snapshot), tombstones with them: a thaw leaves its row.
"""
from __future__ import annotations

import os
import sqlite3

import msgpack
import numpy as np

from .errors import SnapshotError
from .state import INT64_MAX

COLD_NAME = "cold.sqlite3"  # in the snapshot directory
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (id NOT NULL, lsn INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (id, lsn));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
_NEWEST = "SELECT lsn, state FROM rows WHERE id = ? AND lsn < ? ORDER BY lsn DESC LIMIT 1"
# the ids whose newest version is a state (not a drop's tombstone): format with the column(s) to select
_LIVE = ("SELECT {} FROM rows AS r WHERE lsn = (SELECT MAX(lsn) FROM rows WHERE id = r.id) AND "
         "length(state) > 0")


class ColdStore:
    """Versioned per-stream state rows in one SQLite file (see the module docstring). One thread at a time."""

    def __init__(self, path, *, synchronous: str = "FULL"):
        self.path = os.fspath(path)
        try:
            self._db = db = sqlite3.connect(self.path, isolation_level=None)  # transactions are ours: BEGIN
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise SnapshotError(f"cold store {self.path!r} cannot be opened: {e}") from e
        self.warm: set = set()  # ids with rows that are in memory again (thawed since the last prune)
        self._put: dict = {}    # id -> largest lsn put since the last prune: the ids prune(full=False) looks at
        self._empty = self._db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is None

    def close(self) -> None:
        self._db.close()

    # ---- meta --------------------------------------------------------------------------------------
    def _meta(self, key, default=None):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _set_meta(self, key, value) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bind(self, fingerprint: str) -> None:
        """Tie the file to a model: the first call records its fingerprint, a later one with another raises
        SnapshotError (another model's rows would be thawed into the wrong shapes)."""
        mine = self._meta("fingerprint")
        if mine is None:
            self._set_meta("fingerprint", fingerprint)
        elif mine != fingerprint:
            raise SnapshotError(f"cold store {self.path!r} belongs to model {mine}, not to the loaded model "
                                f"{fingerprint}; start with the model that wrote it, or move the file away")

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the model the file is bound to (None before the first bind)."""
        return self._meta("fingerprint")

    def rebind(self, fingerprint: str) -> None:
        """Tie the file to another model whose streams' state it can hold (a weights update: same sizes, or
        every stream dropped first; Streams.replace_model checks that)."""
        with self._transaction():
            self._set_meta("fingerprint", fingerprint)

    @property
    def next_lsn(self) -> int:
        """One more than the largest lsn put (0 at first): the log position of the next eviction while there is
        no step log to give one."""
        return self._meta("next_lsn", 0)

    # ---- rows --------------------------------------------------------------------------------------
    def put(self, ids, arrays: dict, lsn: int) -> int:
        """Insert one row version per id at log position `lsn`, in one transaction, durable when this returns.
        arrays: Streams.export_slots' dict, row k of each array belongs to ids[k]. Returns the bytes written.
        An (id, lsn) already there is an error (sqlite3.IntegrityError), and then nothing is written."""
        rows = [(i, lsn, _encode(arrays, k)) for k, i in enumerate(ids)]
        with self._transaction():
            self._db.executemany("INSERT INTO rows VALUES (?, ?, ?)", rows)
            self._set_meta("next_lsn", max(self.next_lsn, lsn + 1))
        self.warm.difference_update(ids)
        put = self._put
        for i in ids:
            put[i] = max(put.get(i, lsn), lsn)
        self._empty = self._empty and not rows
        return sum(len(r[2]) for r in rows)

    def get(self, stream_id, before: int | None = None):
        """(lsn, {name: array}) of the newest version of one id (only versions with lsn < before, if given), or
        None (also when that version is a drop's tombstone)."""
        if self._empty:
            return None
        row = self._db.execute(_NEWEST, (stream_id, INT64_MAX if before is None else before)).fetchone()
        return None if row is None or not row[1] else (row[0], _decode(row[1]))

    def get_many(self, ids, before: int | None = None):
        """(the ids that have a version, {name: array stacked in that order}) of the newest version of each id
        (lsn < before, if given): what Streams.import_slots takes. ([], None) when none has one."""
        if self._empty:
            return [], None
        found, states, cur = [], [], self._db.cursor()
        limit = INT64_MAX if before is None else before
        for i in ids:
            row = cur.execute(_NEWEST, (i, limit)).fetchone()
            if row is not None and row[1]:  # (an empty state: a tombstone)
                found.append(i)
                states.append(_decode(row[1]))
        if not found:
            return [], None
        if len(states) == 1:  # one id (the usual thaw): a view, not np.stack's copy
            return found, {k: a[None] for k, a in states[0].items()}
        return found, {k: np.stack([s[k] for s in states]) for k in states[0]}

    def has(self, stream_id) -> bool:
        """Whether the id's newest version is a state, not a tombstone (it may be in memory too: see warm)."""
        if self._empty:
            return False
        row = self._db.execute(_NEWEST, (stream_id, INT64_MAX)).fetchone()
        return row is not None and bool(row[1])

    def count(self) -> int:
        """Ids whose newest version is a state (one pass over the primary key's index)."""
        return 0 if self._empty else self._db.execute(_LIVE.format("COUNT(*)")).fetchone()[0]

    def stats(self) -> dict:
        """For `info`: path, streams (cold: not in memory), rows (versions), bytes (the file and its WAL)."""
        rows = self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        return {"path": self.path, "streams": self.count() - len(self.warm), "rows": rows, "bytes": size}

    def ids(self) -> list:
        """Ids whose newest version is a state, ints first, then strs, each in order."""
        return [r[0] for r in self._db.execute(_LIVE.format("id") + " ORDER BY id")]

    def versions(self, stream_id) -> list:
        """The lsns of an id's versions, oldest first (tests, tools)."""
        return [r[0] for r in self._db.execute("SELECT lsn FROM rows WHERE id = ? ORDER BY lsn", (stream_id,))]

    def newest_from(self, lsn: int) -> list:
        """Ids with a version at lsn or later: evicted after a snapshot that covers the log up to lsn."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT id FROM rows WHERE lsn >= ?", (lsn,))]

    def delete(self, stream_id, lsn: int) -> None:
        """A dropped stream: a tombstone version at `lsn`, durably (prune removes it with the versions before
        it once a snapshot no longer needs them)."""
        lsn = max(lsn, self.next_lsn)
        with self._transaction():
            self._db.execute("INSERT INTO rows VALUES (?, ?, ?)", (stream_id, lsn, b""))
            self._set_meta("next_lsn", lsn + 1)
        self.warm.discard(stream_id)
        self._put[stream_id] = lsn
        self._empty = False

    def prune(self, covered: int, in_memory, *, full: bool = True) -> int:
        """After a durable snapshot that covers the log below lsn `covered` and holds the streams `in_memory`
        (anything with `in`): remove what no replay from that snapshot can read. For each id that is every
        version older than its newest version below `covered` (a replay starts from that one), and all the
        versions of an id that is in the snapshot and has none at `covered` or later (it came back before the
        snapshot, which holds it). Versions at `covered` or later stay. Returns the rows removed.
        full=False looks only at the ids put or thawed since the last prune (the others have nothing to
        remove if the last prune was complete): the cost of a snapshot's prune follows the evictions since the
        one before, not the size of the store; a full one runs at start (Streams.restore_snapshot)."""
        if full:
            ids = [r[0] for r in self._db.execute("SELECT DISTINCT id FROM rows")]
        else:
            ids = list(self.warm.union(self._put))
        with self._transaction():
            db = self._db
            n = db.execute("SELECT total_changes()").fetchone()[0]
            db.executemany("DELETE FROM rows WHERE id = ?1 AND lsn < (SELECT MAX(lsn) FROM rows WHERE id = ?1 "
                           "AND lsn < ?2)", [(i, covered) for i in ids])
            db.executemany("DELETE FROM rows WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM rows WHERE id = ?1 AND "
                           "lsn >= ?2)", [(i, covered) for i in ids if i in in_memory])
            db.executemany("DELETE FROM rows WHERE id = ? AND lsn < ? AND state = X''", [(i, covered) for i in ids])
            n = db.execute("SELECT total_changes()").fetchone()[0] - n
        self.warm.clear()  # every thawed stream is in memory, so its rows below covered are gone
        self._put = {i: lsn for i, lsn in self._put.items() if lsn >= covered}
        self._recheck_empty()
        return n

    def _recheck_empty(self):
        self._empty = self._db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is None

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb):
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")


def _encode(arrays: dict, k: int) -> bytes:
    """Row k of every array, by name: msgpack {name: [dtype, shape, raw C-order bytes]}."""
    out = {}
    for name, a in arrays.items():
        row = np.asarray(a[k])  # 0-d for a per-stream scalar (ascontiguousarray would make it 1-d)
        out[name] = [row.dtype.str, list(row.shape), row.tobytes()]  # tobytes: C order
    return msgpack.packb(out, use_bin_type=True)


def _decode(blob: bytes) -> dict:
    try:
        rows = msgpack.unpackb(blob, raw=False)
        return {name: np.frombuffer(b, np.dtype(dt)).reshape(shape).copy() for name, (dt, shape, b) in rows.items()}
    except Exception as e:
        raise SnapshotError(f"a cold store row is unreadable: {e}") from e
