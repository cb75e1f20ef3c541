"""Cellular batching planner: turns the step requests of one loop turn into one ragged step_batch call.

Idea: every step request that arrived since the last turn brings one or more (stream, samples) segments. The
plan lists them in arrival order; Streams.step_batch groups them per stream (keeping that order) and runs one
kernel call for all of them, so each stream advances exactly as if its requests had come alone. Every request
is validated here, before the call, so a bad one gets its own error and never fails the batch; store capacity
is reserved per request in arrival order, so a full store refuses exactly the requests that would overflow it.
The call is Streams.step for a lone one-stream request (lowest latency), Streams.step_many when every segment
is one sample (vectorised), Streams.step_batch otherwise; all three run the same kernel per stream, so a
stream's outputs are bit-identical whichever is used. The planner builds lists of ids and arrays only: it
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
        self.chunks: list = []     # validated inputs: (T, I) for one segment, or (N, I) for N one-row segments
        self.parts: list = []      # (request, first segment, segment count, reply form)
        self.samples = 0           # rows over all segments
        self._rows_only = True     # every segment is one row: the turn can run as one step_many
        self._new: set = set()     # ids this plan creates (not yet in the store)

    def __len__(self):
        return len(self.parts)

    def add(self, req) -> None:
        """Validate one step/step_many request and append its segments; raises without changing the plan."""
        f = req.fields
        if req.op == "step":
            a = to_array(f["x"], "x")
            ids, chunks, form = [f["stream"]], [self._check(a, "x")], "row" if a.ndim == 1 else "rows"
            rows_only = chunks[0].shape[0] == 1
        elif f["x"] is not None:
            ids = f["streams"]
            X = self._check(to_array(f["x"], "x"), "x")
            if X.shape[0] != len(ids):
                raise InputError(f"x has {X.shape[0]} rows but 'streams' lists {len(ids)} ids; expected one row "
                                 "per stream")
            chunks, form, rows_only = [X], "matrix", True
        else:
            ids, xs = f["streams"], f["xs"]
            if len(xs) != len(ids):
                raise InputError(f"'xs' has {len(xs)} arrays but 'streams' lists {len(ids)} ids; expected one "
                                 "array per stream")
            arrs = [to_array(a, f"xs[{k}]") for k, a in enumerate(xs)]
            chunks = [self._check(a, f"xs[{k}]") for k, a in enumerate(arrs)]
            form = ["row" if a.ndim == 1 else "rows" for a in arrs]
            rows_only = all(c.shape[0] == 1 for c in chunks)
        if not ids:
            raise ProtocolError(BAD_INPUT, "'streams' is empty; expected at least one stream id")
        self._reserve(ids)
        self.parts.append((req, len(self.ids), len(ids), form))
        self.ids.extend(ids)
        self.chunks.extend(chunks)
        self.samples += sum(c.shape[0] for c in chunks)
        self._rows_only &= rows_only

    def _check(self, a, what):
        return self.streams.check_input(a, what)

    def _reserve(self, ids):
        for i in ids:
            check_id(i)
        new = {i for i in ids if i not in self.streams and i not in self._new}
        limit = self.streams.stats()["max_streams"] if new else None
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
            Y = self.streams.step(self.ids[0], self.chunks[0])

            def seg(k, n=1):
                return Y
        elif self._rows_only:  # one sample per segment (the common case): one vectorised step_many
            X = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
            Y = self.streams.step_many(self.ids, X)

            def seg(k, n=1):  # outputs of segments k..k+n-1 as one (rows, O) array
                return Y[k:k + n]
        else:  # some segment has several timesteps: the ragged step_batch
            segs = self.chunks
            if any(part[3] == "matrix" for part in self.parts):
                segs = [c[k:k + 1] for c in self.chunks for k in range(c.shape[0])]
            outs = self.streams.step_batch(self.ids, segs)

            def seg(k, n=1):
                return outs[k] if n == 1 else np.concatenate(outs[k:k + n])
        results = []
        for req, first, n, form in self.parts:
            if form == "row":
                results.append((req, {"y": seg(first)[0]}))
            elif form in ("rows", "matrix"):
                results.append((req, {"y": seg(first, n)}))
            else:
                results.append((req, {"ys": [seg(first + j)[0] if f == "row" else seg(first + j)
                                             for j, f in enumerate(form)]}))
        return results
