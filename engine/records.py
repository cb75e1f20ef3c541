"""What the step log's records say, and how a start replays them (the format of a record's bytes is
lstm_stream/steplog.py's; when they reach the disk, engine/journal.py's).

A record's payload is a msgpack array [kind, wall time, ...]:

    [STEPS, t, form, ids, lengths, X, after, seqs]
                                               one turn's step plan: ids (segment k is the next lengths[k]
                                               rows of X, for ids[k]) in `form` (packed_ids); lengths int64
                                               bytes or nil (one row each); X the rows, the model's dtype;
                                               after int64 bytes: each segment's stream's step count after it;
                                               seqs: per segment the request's seq or -1, nil when none had one
    [OP, t, op, fields]                        set_state, copy, reset or drop, with the request's fields
    [RELOAD, t, fingerprint, reset]            a weights update (EngineCore.reload): every record after it
                                               runs under weights version `fingerprint`, found in the state
                                               directory's weights store (engine/weights.py); reset: every
                                               stream was dropped (Streams.replace_model)

A record is written before what it says is applied, and only for requests that passed the checks the
engine makes before a kernel runs (shapes, ids, room, NaN). An op record may still fail when applied (an
unknown stream, say); replay fails it the same way, since the kernels and the checks are deterministic.
Replay runs each record through the same Streams calls at the record's wall time (the streams' clock), so
every stream's state, step count, last-seen time and receipt come out as if the daemon had never stopped.
Evictions to the cold store are not logged: where a stream's state lives does not change it. A replay evicts
nothing, and a stream it finds cold comes back from the version the restored snapshot knew
(Streams.replaying), so the result is the same wherever the streams were.
"""
from __future__ import annotations

import logging
import time
from operator import countOf

import msgpack
import numpy as np

from lstm_stream import protocol as P
from lstm_stream import steplog
from lstm_stream.errors import LSTMStreamError
from lstm_stream.store import distinct

log = logging.getLogger("lstm_stream.engine")

STEPS, OP, RELOAD = 0, 1, 2
LOGGED_OPS = ("set_state", "copy", "reset", "drop")  # the ops besides steps that change state
_packer = msgpack.Packer(use_bin_type=True, autoreset=True, default=P._default)


def steps_record(p, t: float, streams) -> bytes:
    """The record of BatchPlan p, run at wall time t on `streams` (not yet applied)."""
    form, ids = packed_ids(p.ids)
    return _packer.pack([STEPS, t, form, ids, None if p.lengths is None else p.lengths.tobytes(), p.X.tobytes(),
                         counts_after(p, streams).tobytes(), p.seqs])


def one_record(stream, xs: np.ndarray, t: float, streams) -> bytes:
    """The record of one known stream's step of rows xs (T, I) (the one-request turn)."""
    T = xs.shape[0]
    after = streams.sequence(stream)[0] + T
    return _packer.pack([STEPS, t, IDS_LIST, [stream], None if T == 1 else np.array([T], np.int64).tobytes(),
                         xs.tobytes(), np.array([after], np.int64).tobytes(), None])


IDS_LIST, IDS_STR, IDS_INT = 0, 1, 2  # how a record holds its ids (packed_ids)


def packed_ids(ids) -> tuple:
    """(form, data) of a record's ids: str ids joined by NUL as one UTF-8 bin (IDS_STR), int ids as one int64
    bin (IDS_INT), or the list itself (IDS_LIST: mixed kinds, an id holding NUL or a lone surrogate). Packing
    1,000 str ids one by one took ~30 µs of a turn's ~100 µs of logging; one bin takes ~5."""
    first = ids[0] if ids else None
    if type(first) is str:
        try:
            joined = "\0".join(ids)  # TypeError if one is not a str
            if joined.count("\0") == len(ids) - 1:
                return IDS_STR, joined.encode()
        except (TypeError, UnicodeEncodeError):
            pass
    elif type(first) is int and countOf(map(type, ids), int) == len(ids):
        return IDS_INT, np.array(ids, np.int64).tobytes()  # (ids are int64: check_id)
    return IDS_LIST, ids


def unpacked_ids(form, data) -> list:
    """packed_ids' ids back, as a list."""
    if form == IDS_STR:
        return data.decode().split("\0")
    if form == IDS_INT:
        return np.frombuffer(data, np.int64).tolist()
    return data


def op_record(req, t: float) -> bytes:
    """The record of a set_state, copy, reset or drop request."""
    return _packer.pack([OP, t, req.op, req.fields])


def reload_record(fingerprint: str, t: float, reset: bool) -> bytes:
    """The record of a weights update to version `fingerprint` (written before it takes effect)."""
    return _packer.pack([RELOAD, t, fingerprint, bool(reset)])


def counts_after(p, streams) -> np.ndarray:
    """Each segment's stream's step count after the segment runs (int64), before the plan is applied."""
    lengths = np.ones(len(p.ids), np.int64) if p.lengths is None else p.lengths
    if p.slots is not None and p.generation == streams.generation and distinct(p.slots):
        return streams.counts(p.slots) + lengths
    seen, out = {}, np.empty(len(p.ids), np.int64)
    for k, (i, n) in enumerate(zip(p.ids, lengths.tolist())):
        now = seen[i] if i in seen else streams.sequence(i)[0]
        seen[i] = out[k] = now + n
    return out


class ReplayError(LSTMStreamError):
    """Replaying the log does not reproduce what the daemon recorded: the log and the snapshot disagree."""

    code = "bad_log"


def replay(streams, records, weights=None) -> dict:
    """Apply [(lsn, payload)] in order; {records, steps, seconds, versions}: versions [(lsn, fingerprint)] of
    the weights updates replayed. ReplayError if a record's step counts do
    not come out as recorded, or a weights update's version is not in `weights` (a WeightsStore). The
    streams' clock is left as it was."""
    clock, t0, steps, versions = streams.clock, time.perf_counter(), 0, []
    try:
        for lsn, payload in records:
            rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            t = rec[1]
            streams.clock = lambda t=t: t
            if rec[0] == STEPS:
                steps += _replay_steps(streams, lsn, rec)
            elif rec[0] == OP:
                _replay_op(streams, rec)
            elif rec[0] == RELOAD:
                _replay_reload(streams, lsn, rec, weights)
                versions.append((lsn, rec[2]))
            else:
                raise ReplayError(f"record {lsn} has unknown kind {rec[0]!r}")
    finally:
        streams.clock = clock
    return {"records": len(records), "steps": steps, "seconds": time.perf_counter() - t0, "versions": versions}


def _replay_steps(streams, lsn, rec) -> int:
    _, _, form, ids, lengths, X, after, seqs = rec
    ids = unpacked_ids(form, ids)
    dtype, I = np.dtype(streams.model.dtype), streams.model.input_size
    X = np.frombuffer(X, dtype).reshape(-1, I).copy()
    lengths = None if lengths is None else np.frombuffer(lengths, np.int64)
    after = np.frombuffer(after, np.int64)
    Y = streams.step_planned(ids, lengths, X)
    _check_counts(streams, lsn, ids, after)
    if seqs is not None:
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(np.ones(len(ids), np.int64) if lengths is None else lengths, out=offsets[1:])
        for k, seq in enumerate(seqs):
            if seq >= 0:
                streams.remember(ids[k], seq, Y[offsets[k]:offsets[k + 1]])
    return X.shape[0]


def _check_counts(streams, lsn, ids, after):
    """ReplayError unless each stream's step count after the record is what the record says."""
    slots = streams.known_slots(ids)
    if slots is None:  # a record that ends with a stream dropped cannot be: every id was stepped last
        raise ReplayError(f"replaying record {lsn} left a stream of the record missing")
    got = streams.counts(slots)
    if not distinct(slots):  # a stream's last segment holds its count after the record
        _, first_from_end = np.unique(slots[::-1], return_index=True)
        last = len(slots) - 1 - first_from_end
        got, after, ids = got[last], after[last], [ids[k] for k in last.tolist()]
    bad = np.flatnonzero(got != after)
    if len(bad):
        k = int(bad[0])
        raise ReplayError(f"replaying record {lsn} left stream {ids[k]!r} at step {got[k]}, but the log recorded "
                          f"{after[k]}: the log does not continue the snapshot it is replayed onto")


def _replay_reload(streams, lsn, rec, weights):
    """Switch to the record's weights version, as the daemon did there."""
    _, t, fingerprint, reset = rec
    if fingerprint == streams.model.fingerprint and not reset:
        return
    if weights is None or not weights.has(fingerprint):
        where = "there is no weights store" if weights is None else f"{weights.path(fingerprint)} is missing"
        raise ReplayError(f"record {lsn} switches to weights version {fingerprint}, but {where}: put that model "
                          "file back there (it is the .npz the daemon reloaded), or move the log away to start "
                          "from the snapshot alone")
    streams.replace_model(weights.get(fingerprint), reset=reset)
    log.info("replay: record %d switched the weights to %s%s", lsn, fingerprint,
             " and dropped every stream (reset)" if reset else "",
             extra={"event": "log_replayed_reload", "lsn": lsn, "fingerprint": fingerprint, "reset": reset})


def _replay_op(streams, rec):
    _, _, op, f = rec
    try:
        if op == "set_state":
            streams.set_state(f["stream"], {"h": P.to_array(f["h"]), "c": P.to_array(f["c"]), "steps": f["steps"]})
        elif op == "copy":
            streams.copy(f["src"], f["dst"])
        elif op == "reset":
            streams.reset(f["stream"])
        elif op == "drop":
            streams.drop(f["stream"])
        else:
            raise ReplayError(f"an op record names op {op!r}, which is not logged")
    except (LSTMStreamError, P.ProtocolError) as e:
        if isinstance(e, ReplayError):
            raise
        log.debug("replayed %s failed as it did when served: %s", op, e)


def recover(streams, directory, covered: int, weights=None) -> tuple[int, dict]:
    """Replay the log in `directory` after lsn `covered` (what the restored snapshot holds) onto `streams`,
    switching weights at each weights update record (versions from `weights`, a WeightsStore, or None).
    Drops a torn tail (logged), refuses a corrupt middle or a gap (LogCorruptError), deletes the segments the
    snapshot covers. Returns (last lsn, replay stats)."""
    known = [streams.model.fingerprint] + sorted(weights.fingerprints() if weights is not None else ())
    found = steplog.scan(directory, after=covered, fingerprint=known)
    if found.tail is not None:
        path, offset, size = found.tail
        log.warning("step log %s ends with a torn record at byte %d of %d (a crash in the middle of a write; "
                    "its request was never acknowledged): dropping the last %d bytes", path, offset, size,
                    size - offset, extra={"event": "log_torn_tail", "path": path, "offset": offset})
        steplog.cut_tail(found.tail)
    if found.records and found.records[0][0] != covered + 1:
        raise steplog.LogCorruptError(
            f"the step log in {directory} resumes at record {found.records[0][0]}, but the snapshot holds records "
            f"up to {covered} only: records {covered + 1}..{found.records[0][0] - 1} are missing. Restore the "
            f"segment that holds them, or move the log away to start from the snapshot alone (losing them)")
    stats = replay(streams, found.records, weights)
    last = max(found.last_lsn, covered)
    if found.records:
        log.info("replayed %d step log records (%d steps) after the snapshot in %.3f s (%.0f steps/s)",
                 stats["records"], stats["steps"], stats["seconds"],
                 stats["steps"] / stats["seconds"] if stats["seconds"] else 0.0,
                 extra={"event": "log_replayed", "records": stats["records"], "steps": stats["steps"],
                        "duration_s": round(stats["seconds"], 6)})
    segments = steplog.segments(directory)
    for (_, path), (nxt, _) in zip(segments, segments[1:]):
        if nxt - 1 <= covered:  # every record in it is in the snapshot (a crash came before its deletion)
            steplog.remove(path)
    return last, stats
