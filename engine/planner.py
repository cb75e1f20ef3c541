"""Cellular batching planner: turns the step requests of one loop turn into one ragged kernel call.

Idea: every step request that arrived since the last turn brings one or more (stream, samples) segments. The
plan lists them in arrival order; Streams.step_segments groups them per stream (keeping that order) and runs one
kernel call for all of them, so each stream advances exactly as if its requests had come alone. Every request
is validated here, before the call, so a bad one gets its own error and never fails the batch; store capacity
is reserved per request in arrival order, so a full store refuses exactly the requests that would overflow it.
The call is Streams.step for a lone one-stream request (lowest latency), else one Streams.step_segments over
all rows of the turn (no per-segment arrays); both run the same kernel per stream, so a stream's outputs are
bit-identical whichever is used. The planner builds lists of ids and arrays only: it
never touches weights or state.
"""
from __future__ import annotations

import numpy as np

from lstm_stream.errors import InputError, StoreFullError
from lstm_stream.protocol import BAD_INPUT, ProtocolError, to_array
from lstm_stream.state import check_id


class StepPlan:
    """The step segments of one turn: ids and inputs in arrival order, and which request asked for which."""

    def __init__(self, streams):
        self.streams = streams
        self.ids: list = []        # one stream id per segment
        self.lengths: list = []    # rows per segment
        self.chunks: list = []     # validated inputs, one array per request part (rows in segment order)
        self.parts: list = []      # (request, first row, first segment, segment count, reply form)
        self.samples = 0           # rows over all segments
        self._new: set = set()     # ids this plan creates (not yet in the store)

    def __len__(self):
        return len(self.parts)

    def add(self, req) -> None:
        """Validate one step/step_many request and append its segments; raises without changing the plan."""
        f = req.fields
        if req.op == "step":
            a = to_array(f["x"], "x")
            chunks = [self._check(a, "x")]
            ids, lengths, form = [f["stream"]], [chunks[0].shape[0]], "row" if a.ndim == 1 else "rows"
        elif f["x"] is not None:
            ids = f["streams"]
            X = self._check(to_array(f["x"], "x"), "x")
            if X.shape[0] != len(ids):
                raise InputError(f"x has {X.shape[0]} rows but 'streams' lists {len(ids)} ids; expected one row "
                                 "per stream")
            chunks, lengths, form = [X], [1] * len(ids), "matrix"
        else:
            ids, xs = f["streams"], f["xs"]
            if len(xs) != len(ids):
                raise InputError(f"'xs' has {len(xs)} arrays but 'streams' lists {len(ids)} ids; expected one "
                                 "array per stream")
            arrs = [to_array(a, f"xs[{k}]") for k, a in enumerate(xs)]
            chunks = [self._check(a, f"xs[{k}]") for k, a in enumerate(arrs)]
            lengths = [c.shape[0] for c in chunks]
            form = ["row" if a.ndim == 1 else "rows" for a in arrs]
        if not ids:
            raise ProtocolError(BAD_INPUT, "'streams' is empty; expected at least one stream id")
        self._reserve(ids)
        self.parts.append((req, self.samples, len(self.ids), len(ids), form))
        self.ids.extend(ids)
        self.lengths.extend(lengths)
        self.chunks.extend(chunks)
        self.samples += sum(lengths)

    def _check(self, a, what):
        return self.streams.check_input(a, what)

    def _reserve(self, ids):
        if len(ids) == 1 and ids[0] in self.streams:  # the one-stream request for a known stream
            return
        unknown = self.streams.unknown(ids)  # known plain ids are valid by construction
        if not unknown:
            return
        new = {check_id(i) for i in unknown} - self._new
        limit = self.streams.stats()["max_streams"]
        if limit is not None and len(self.streams) + len(self._new) + len(new) > limit:
            raise StoreFullError(f"the store is full: {len(self.streams) + len(self._new)} of max_streams={limit} "
                                 f"streams in use or being created, this request adds {len(new)}; drop streams "
                                 "or raise --max-streams")
        self._new |= new

    def run(self) -> list:
        """One kernel call for the whole plan; returns [(request, result map)] in arrival order."""
        if not self.parts:
            return []
        if len(self.ids) == 1:  # a request alone (low load): the single-stream, lowest-latency path
            Y = self.streams.step(self.ids[0], self.chunks[0])  # (T, O), even for one row
        else:
            X = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
            Y = self.streams.step_segments(self.ids, self.lengths, X)
        results = []
        for req, r0, k0, n, form in self.parts:
            if form == "row":
                results.append((req, {"y": Y[r0]}))
            elif form in ("rows", "matrix"):
                results.append((req, {"y": Y[r0:r0 + sum(self.lengths[k0:k0 + n])]}))
            else:
                ys, r = [], r0
                for k, f in zip(range(k0, k0 + n), form):
                    ys.append(Y[r] if f == "row" else Y[r:r + self.lengths[k]])
                    r += self.lengths[k]
                results.append((req, {"ys": ys}))
        return results
