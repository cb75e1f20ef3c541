"""Cellular batching planner: the step requests of one loop turn -> one BatchPlan (one ragged kernel call).

Idea: every step request brings one or more (stream, rows) segments. plan() checks each request on its own, in
arrival order (shapes and dtype, ids, room in the store for the streams it would create) and lists the
accepted ones' segments in that order; a refused request gets its own error and never fails the others. The
engine runs the plan as one Streams call, which groups a stream's segments keeping their order, so every
stream advances exactly as if its requests had come alone; each Span says which output rows answer which
request. Pure: no kernel, no socket, no clock; the store is only asked which ids it knows and how many new
streams fit. NaN/Inf is left to the one call (Streams checks all rows at once); when it refuses, non_finite()
names the requests that hold one, and the engine plans the others again.

    p = plan(requests, streams)    # p.ids, p.lengths, p.X, p.slots, p.spans; p.refused: [(request, error)]
    Y = streams.step_planned(p.ids, p.lengths, p.X, p.slots, p.generation)    # (N, O)
    for request, result in p.results(Y): ...
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstm_stream.errors import InputError, SequenceError, StoreFullError
from lstm_stream.protocol import BAD_INPUT, SEQ_GAP, SEQ_STALE, ProtocolError
from lstm_stream.state import check_id


@dataclass(slots=True)
class Span:
    """One accepted request's share of the plan: its rows of X (and of Y) and the shape of its reply."""
    request: object
    row: int             # its first row
    rows: int            # its row count
    form: object         # "one": y (O,); "rows": y (rows, O); or for `xs`, [(rows, one sample?)] per stream
    seq: int | None = None   # a sequenced step's seq (its reply carries it)
    duplicate: bool = False  # a resend of an earlier request in the plan: its rows are that request's


@dataclass(slots=True)
class BatchPlan:
    """What one kernel call does: segment k is the next lengths[k] rows of X, for stream ids[k]."""
    ids: list                             # one stream id per segment, in arrival order (ids may repeat)
    lengths: np.ndarray | None            # int64 rows per segment; None when every segment is one row
    X: np.ndarray | None                  # (N, I) all rows, the model's dtype, C order; None if nothing runs
    slots: np.ndarray | None              # int64 slot per segment when every id is a known stream, else None
    generation: int                       # the store's generation the slots belong to
    spans: list = field(default_factory=list)     # Span per accepted request, arrival order
    refused: list = field(default_factory=list)   # (request, exception) per refused request
    samples: int = 0                      # N
    seqs: list | None = None              # per segment: its request's seq, or -1; None when no request has one
    answered: list = field(default_factory=list)  # (request, result) of resends answered from a receipt

    def results(self, Y: np.ndarray) -> list:
        """[(request, result map)] from Y (N, O): views of Y's rows, shaped as each request sent its input."""
        out = []
        for s in self.spans:
            r, form = s.row, s.form
            if s.seq is not None:
                y = Y[r] if form == "one" else Y[r:r + s.rows]
                out.append((s.request, {"y": y, "seq": s.seq, **({"duplicate": True} if s.duplicate else {})}))
            elif form == "one":
                out.append((s.request, {"y": Y[r]}))
            elif form == "rows":
                out.append((s.request, {"y": Y[r:r + s.rows]}))
            else:
                ys = []
                for n, one in form:
                    ys.append(Y[r] if one else Y[r:r + n])
                    r += n
                out.append((s.request, {"ys": ys}))
        return out

    def receipts(self, Y: np.ndarray) -> list:
        """[(stream, seq, its rows of Y)] of the sequenced steps that ran, in order (Streams.remember)."""
        return [(s.request.stream, s.seq, Y[s.row:s.row + s.rows]) for s in self.spans
                if s.seq is not None and not s.duplicate]

    def non_finite(self) -> list:
        """[(request, InputError)] for the accepted requests whose rows hold a NaN or Inf."""
        bad = []
        for s in self.spans:
            if s.duplicate:
                continue
            rows = self.X[s.row:s.row + s.rows]
            if np.isfinite(rows).all():
                continue
            blocks = [rows] if type(s.form) is str else np.split(rows, np.cumsum([n for n, _ in s.form])[:-1])
            what = _first_non_finite(s.request, blocks)
            if what is not None:
                bad.append((s.request, InputError(f"{what} contains NaN or Inf; expected finite values")))
        return bad


def plan(requests, streams) -> BatchPlan:
    """The BatchPlan of a turn's step/step_many requests (arrival order) on `streams` (a Streams)."""
    builder = _Builder(streams)
    for req in requests:
        try:
            builder.add(req)
        except Exception as e:  # checked before anything was added: the plan is as it was
            builder.refused.append((req, e))
    return builder.finish()


class _Builder:
    """Accumulates the accepted requests' segments; add() raises, changing nothing, to refuse one."""

    def __init__(self, streams):
        self.streams = streams
        self._I, self._dt = streams.model.input_size, np.dtype(streams.model.dtype)
        self.ids, self.blocks, self.spans, self.refused = [], [], [], []
        self._lengths: list | None = None  # rows per segment; None while every segment is one row (the usual)
        self.slots: list | None = []   # per request: its ids' slots while every id is known, else None
        self.new: set = set()          # ids this plan creates
        self.samples = 0
        self.pending: dict | None = None  # stream -> [rows in the plan, its last Span]: once a seq is seen
        self.seqs: list | None = None     # per segment, once a seq is seen
        self.answered: list = []

    def add(self, req) -> None:
        if req.op == "step":
            if req.seq is not None:
                return self._add_sequenced(req)
            self._add_step(req)
            if self.pending is not None:
                self._track()
            return
        x = req.x
        if x is not None:  # step_many, one row per stream
            ids = req.streams
            # (N, I) even for N = 1, as the spec says: (I,) would pass as one row
            if (x.ndim if type(x) is np.ndarray else np.ndim(x)) != 2:
                raise InputError(f"x has shape {np.shape(x)}; expected (N, {self._I}), one row per stream "
                                 "(use 'xs' for one array per stream)")
            block, T, _ = self._rows(x, "x")
            if T != len(ids):
                raise InputError(f"x has {T} rows but 'streams' lists {len(ids)} ids; expected one row per "
                                 "stream")
            lengths, blocks, form, n = None, [block], "rows", T
        else:  # step_many, an array per stream
            ids, xs = req.streams, req.xs
            if len(xs) != len(ids):
                raise InputError(f"'xs' has {len(xs)} arrays but 'streams' lists {len(ids)} ids; expected one "
                                 "array per stream")
            rows = [self._rows(a, f"xs[{k}]") for k, a in enumerate(xs)]
            blocks, lengths = [b for b, _, _ in rows], [T for _, T, _ in rows]
            form, n = [(T, one) for _, T, one in rows], sum(lengths)
        if not ids:
            raise ProtocolError(BAD_INPUT, "'streams' is empty; expected at least one stream id")
        self._append(req, ids, lengths, n, blocks, form, self._reserve(ids, req, blocks))
        if self.pending is not None:
            self._track()

    # ---- sequence numbers (exactly-once steps) ----------------------------------------------------------
    def _add_sequenced(self, req):
        """add() for a step carrying seq: applied when seq is the stream's number after it; a resend of the
        last applied request answered from its receipt (or from this plan); otherwise SequenceError."""
        block, T, one = self._rows(req.x, "x")
        if self.pending is None:  # the first seq of the plan: count the rows already planned per stream
            self.pending, self.seqs = {}, [-1] * len(self.ids)
            for i, n, span in zip(self.ids, self._all_lengths(), self._segment_spans()):
                rows, _ = self.pending.get(i, (0, None))
                self.pending[i] = (rows + n, span)
        stream, seq = req.stream, req.seq
        steps, last = self.streams.sequence(stream)
        rows, span = self.pending.get(stream, (0, None))
        now = steps + rows
        if seq == now + T:
            self._add_step(req)
            self.spans[-1].seq = seq
            self._track()
            return
        if seq == now and span is not None and span.seq == seq and span.rows == T and not span.duplicate:
            self.spans.append(Span(req, span.row, T, "one" if one else "rows", seq, True))  # resent in one turn
            return
        if seq == now and rows == 0 and last == steps:
            y = self.streams.receipt(stream, seq, T)
            if y is not None:
                self.answered.append((req, {"y": y[0] if one else y, "seq": seq, "duplicate": True}))
                return
        if seq <= now:
            raise SequenceError(SEQ_STALE, f"stream {stream!r} is at seq {now}; a step with seq {seq} was applied "
                                f"before and is not its last step (resent too late?); nothing was applied",
                                now, now + T)
        raise SequenceError(SEQ_GAP, f"stream {stream!r} is at seq {now}, so a step of {T} sample(s) must carry "
                            f"seq {now + T}, got {seq}: the steps in between are missing; nothing was applied",
                            now, now + T)

    def _segment_spans(self):
        """The Span of each segment planned so far (a step_many's span once per stream)."""
        out = []
        for s in self.spans:
            if s.duplicate:
                continue
            n = 1 if s.request.op == "step" else len(s.request.streams)
            out.extend([s] * n)
        return out

    def _track(self):
        """After an add while sequencing: count the new request's rows per stream, extend seqs."""
        span = self.spans[-1]
        req = span.request
        if req.op == "step":
            self.seqs.append(span.seq if span.seq is not None else -1)
            rows, _ = self.pending.get(req.stream, (0, None))
            self.pending[req.stream] = (rows + span.rows, span)
            return
        n = len(req.streams)
        self.seqs.extend([-1] * n)
        lengths = self._all_lengths()
        for i, T in zip(req.streams, lengths[len(lengths) - n:]):
            rows, _ = self.pending.get(i, (0, None))
            self.pending[i] = (rows + T, span)

    def _add_step(self, req):
        """add() for `step` (one stream: the usual request, kept short)."""
        block, T, one = self._rows(req.x, "x")
        slot = self.streams.known_slot(req.stream)
        if slot is None:  # a new stream (or not a plain id): checked, and counted against the room
            self._reserve([req.stream], req, (block,))
        self.spans.append(Span(req, self.samples, T, "one" if one else "rows"))
        if self.slots is not None:
            if slot is None:
                self.slots = None
            else:
                self.slots.append(slot)
        if T != 1 and self._lengths is None:
            self._lengths = [1] * len(self.ids)
        self.ids.append(req.stream)
        if self._lengths is not None:
            self._lengths.append(T)
        self.blocks.append(block)
        self.samples += T

    def _all_lengths(self) -> list:
        """The rows of every segment so far, as a list (made now if all were one row)."""
        if self._lengths is None:
            self._lengths = [1] * len(self.ids)
        return self._lengths

    def _append(self, req, ids, lengths, n, blocks, form, slots):
        """A step_many's segments: ids[k] gets lengths[k] rows (n in all; lengths None: one each) of the
        blocks."""
        self.spans.append(Span(req, self.samples, n, form))
        if self.slots is not None:
            if slots is None:
                self.slots = None
            else:
                self.slots.append(slots)
        if lengths is not None:
            self._all_lengths().extend(lengths)
        elif self._lengths is not None:
            self._lengths.extend([1] * len(ids))
        self.ids.extend(ids)
        self.blocks.extend(blocks)
        self.samples += n

    def _rows(self, a, what):
        """(a's rows: (I,) or (T, I) of the model's dtype, C order; T; whether it was one sample (I,)), or
        InputError if it is not one or more samples. NaN/Inf is checked once for the whole plan, by the call
        that runs it."""
        if type(a) is np.ndarray and a.dtype is self._dt and a.flags.c_contiguous:  # as the client sends it
            if a.ndim == 1 and a.shape[0] == self._I:
                return a, 1, True
            if a.ndim == 2 and a.shape[1] == self._I and a.shape[0] > 0:
                return a, a.shape[0], False
        rows = self.streams.check_input(a, what, finite=False, writable=False)
        return rows, len(rows), a.ndim == 1

    def _reserve(self, ids, req, blocks):
        """The slots of ids if every one is a known stream; else None, once the new ones are counted against
        the room left in the store (StoreFullError, or InputError first if the request holds a NaN)."""
        streams = self.streams
        slots = streams.known_slot(ids[0]) if len(ids) == 1 else streams.known_slots(ids)
        if slots is not None:
            return slots
        new = {check_id(i) for i in streams.unknown(ids)} - self.new
        try:
            streams.check_room(len(new), pending=len(self.new))
        except StoreFullError:  # a bad input is the first thing to report, as for a request that fits
            what = _first_non_finite(req, blocks)
            if what is not None:
                raise InputError(f"{what} contains NaN or Inf; expected finite values") from None
            raise
        self.new |= new
        return None

    def finish(self) -> BatchPlan:
        streams = self.streams
        if not self.spans:
            return BatchPlan([], None, None, None, streams.generation, [], self.refused, 0, None, self.answered)
        blocks = self.blocks  # each (I,) or (T, I): one flat copy of all, as (N, I) rows
        X = (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=None)).reshape(self.samples, self._I)
        if not X.flags.writeable:  # a view of the message: the kernels take writable arrays only (one type)
            X = X.copy()
        lengths = None if self._lengths is None or self.samples == len(self.ids) else \
            np.array(self._lengths, np.int64)
        slots = None
        if self.slots is not None and not self.new:
            parts = self.slots
            slots = np.array(parts, np.int64) if all(type(p) is int for p in parts) else \
                np.concatenate([p if type(p) is np.ndarray else [p] for p in parts]).astype(np.int64, copy=False)
        return BatchPlan(self.ids, lengths, X, slots, streams.generation, self.spans, self.refused, self.samples,
                         self.seqs, self.answered)


def _first_non_finite(req, blocks):
    """The field ("x" or "xs[k]") of the first of a request's input blocks with a NaN or Inf, else None."""
    for k, block in enumerate(blocks):
        if not np.isfinite(block).all():
            return "x" if req.op == "step" or req.x is not None else f"xs[{k}]"
    return None
