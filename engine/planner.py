"""Cellular batching planner: turns the step requests of one loop turn into one ragged kernel call.

Idea: every step request that arrived since the last turn brings one or more (stream, samples) segments. The
plan lists them in arrival order; Streams.step_segments groups them per stream (keeping that order) and runs one
kernel call for all of them, so each stream advances exactly as if its requests had come alone. Every request
is validated here, before the call, so a bad one gets its own error and never fails the batch; store capacity
is reserved per request in arrival order, so a full store refuses exactly the requests that would overflow it.
The call is Streams.step for a lone one-stream request (lowest latency), else one Streams.step_planned over
all rows of the turn; both run the same kernel per stream, so a stream's outputs are bit-identical whichever
is used. The planner builds lists of ids and byte strings only: it never touches weights or state.

Per request, the plan costs a few dict and list operations, not numpy calls: an input array that arrives as
a bin map in the model's own dtype (what the client library sends) is kept as its bytes, and the turn's rows
become one array with one join; the NaN/Inf check runs once over all of them (a request with a NaN is found
and answered on its own only when that check fails); the ids' slots, looked up once when each request is
checked against the store, go to the kernel call as they are when every stream was known (nothing can add or
drop a stream between a request's check and the turn's call); replies carry slices of the outputs' bytes.
"""
from __future__ import annotations

import sys

import numpy as np

from lstm_stream.errors import InputError, StoreFullError
from lstm_stream.kernels.cpu import all_finite
from lstm_stream.protocol import BAD_INPUT, ProtocolError, to_array, wire_dtype_name
from lstm_stream.state import check_id

_NATIVE_LE = sys.byteorder == "little"


class StepPlan:
    """The step segments of one turn: ids and inputs in arrival order, and which request asked for which."""

    def __init__(self, streams):
        self.streams = streams
        m = streams.model
        self._I, self._dt = m.input_size, np.dtype(m.dtype)
        self._row_bytes = self._I * self._dt.itemsize
        self._wire = wire_dtype_name(self._dt) if _NATIVE_LE else None  # bin maps we can take as they are
        self.ids: list = []        # one stream id per segment
        self.lengths: list = []    # rows per segment
        self.blobs: list = []      # the rows' bytes (model dtype, C order), in segment order
        self.parts: list = []      # (request, first row, first segment, segment count, reply form, first blob)
        self.samples = 0           # rows over all segments
        self._new: set = set()     # ids this plan creates (not yet in the store)
        self._slots: list = []     # per request, its ids' slots (an int for one id) while all are known, else None

    def __len__(self):
        return len(self.parts)

    def add(self, req) -> None:
        """Validate one step/step_many request and append its segments; raises without changing the plan."""
        f = req.fields
        if req.op == "step":
            blob, T, nd = self._rows(f["x"], "x")
            ids, lengths, blobs, form = [f["stream"]], [T], [blob], "row" if nd == 1 else "rows"
        elif f["x"] is not None:
            ids = f["streams"]
            blob, T, _ = self._rows(f["x"], "x")
            if T != len(ids):
                raise InputError(f"x has {T} rows but 'streams' lists {len(ids)} ids; expected one row "
                                 "per stream")
            lengths, blobs, form = [1] * len(ids), [blob], "matrix"
        else:
            ids, xs = f["streams"], f["xs"]
            if len(xs) != len(ids):
                raise InputError(f"'xs' has {len(xs)} arrays but 'streams' lists {len(ids)} ids; expected one "
                                 "array per stream")
            rows = [self._rows(a, f"xs[{k}]") for k, a in enumerate(xs)]
            blobs, lengths = [r[0] for r in rows], [r[1] for r in rows]
            form = ["row" if r[2] == 1 else "rows" for r in rows]
        if not ids:
            raise ProtocolError(BAD_INPUT, "'streams' is empty; expected at least one stream id")
        try:
            slots = self._reserve(ids)
        except StoreFullError:  # a bad input is the first thing to report, as for a request that fits
            what = self._non_finite(req, blobs)
            if what is not None:
                raise InputError(f"{what} contains NaN or Inf; expected finite values") from None
            raise
        self.parts.append((req, self.samples, len(self.ids), len(ids), form, len(self.blobs)))
        if self._slots is not None:
            if slots is None:
                self._slots = None
            else:
                self._slots.append(slots)
        self.ids.extend(ids)
        self.lengths.extend(lengths)
        self.blobs.extend(blobs)
        self.samples += T if type(form) is str else sum(lengths)  # ragged requests have a form per stream

    def _rows(self, value, what):
        """(bytes of the rows in the model's dtype, row count T, 1 for one sample (I,) or 2 for (T, I)).
        A bin map already in the model's dtype and shape is taken as it is; anything else goes through
        to_array and Streams.check_input, which convert it or say what is wrong. NaN/Inf is checked later,
        once for the whole turn."""
        if type(value) is dict and value.get("dtype") == self._wire:
            shape, data = value.get("shape"), value.get("data")
            if type(data) is bytes and type(shape) is list:
                if len(shape) == 1 and shape[0] == self._I and type(shape[0]) is int \
                        and len(data) == self._row_bytes:
                    return data, 1, 1
                if len(shape) == 2 and shape[1] == self._I and type(shape[0]) is int and shape[0] > 0 \
                        and type(shape[1]) is int and len(data) == shape[0] * self._row_bytes:
                    return data, shape[0], 2
        a = to_array(value, what)
        arr = self.streams.check_input(a, what, finite=False)
        return arr.tobytes(), arr.shape[0], 1 if a.ndim == 1 else 2

    def _reserve(self, ids):
        """The slots of ids when all are known streams (kept for the run, when nothing else has changed the
        store); else None, after checking that the new ones fit under max_streams (StoreFullError)."""
        streams = self.streams
        slots = streams.known_slot(ids[0]) if len(ids) == 1 else streams.known_slots(ids)
        if slots is not None:
            return slots
        new = {check_id(i) for i in streams.unknown(ids)} - self._new
        limit = self.streams.stats()["max_streams"]
        if limit is not None and len(self.streams) + len(self._new) + len(new) > limit:
            raise StoreFullError(f"the store is full: {len(self.streams) + len(self._new)} of max_streams={limit} "
                                 f"streams in use or being created, this request adds {len(new)}; drop streams "
                                 "or raise --max-streams")
        self._new |= new
        return None

    def run(self) -> list:
        """One kernel call for the whole plan; returns [(request, result map or exception)] in arrival order.
        A request whose input holds a NaN or Inf gets an InputError and the others run without it."""
        if not self.parts:
            return []
        X = np.frombuffer(bytearray().join(self.blobs), self._dt).reshape(self.samples, self._I)  # writable
        if not all_finite(X):
            return self._run_without_non_finite(X)
        if len(self.ids) == 1:  # a request alone (low load): the single-stream, lowest-latency path
            Y = self.streams.step(self.ids[0], X)  # (T, O), even for one row
        else:
            lengths = None if self.samples == len(self.ids) else np.array(self.lengths, np.int64)
            slots = None if self._slots is None or self._new else self._slot_array()
            Y = self.streams.step_planned(self.ids, lengths, X, slots)
        return self._results(Y)

    def _slot_array(self):
        """The requests' slots as one int64 array (an int per one-stream request, an array per other)."""
        parts = self._slots
        if all(type(p) is int for p in parts):
            return np.array(parts, np.int64)
        return np.concatenate([p if type(p) is np.ndarray else [p] for p in parts]).astype(np.int64, copy=False)

    def _results(self, Y):
        """Each request's share of Y (N, O): bin maps over slices of Y's bytes (no array per reply), or
        arrays for requests that asked for nested lists."""
        name, O = wire_dtype_name(Y.dtype) if _NATIVE_LE else None, Y.shape[1]
        data, rb, lengths = Y.tobytes(), O * Y.dtype.itemsize, self.lengths

        def rows(r, n, one, lists):
            if name is None or lists:
                return Y[r] if one else Y[r:r + n]
            return {"dtype": name, "shape": [O] if one else [n, O], "data": data[r * rb:(r + n) * rb]}

        results = []
        for req, r0, k0, n, form, _ in self.parts:
            if form == "row":
                results.append((req, {"y": rows(r0, 1, True, req.lists)}))
            elif form == "matrix":  # one row per stream
                results.append((req, {"y": rows(r0, n, False, req.lists)}))
            elif form == "rows":  # one stream, its T rows
                results.append((req, {"y": rows(r0, lengths[k0], False, req.lists)}))
            else:
                ys, r = [], r0
                for k, f in zip(range(k0, k0 + n), form):
                    ys.append(rows(r, lengths[k], f == "row", req.lists))
                    r += lengths[k]
                results.append((req, {"ys": ys}))
        return results

    def _non_finite(self, req, blobs):
        """The field ("x" or "xs[k]") of the first of a request's inputs with a NaN or Inf, else None."""
        for k, blob in enumerate(blobs):
            if not np.isfinite(np.frombuffer(blob, self._dt)).all():
                return "x" if req.op == "step" or req.fields["x"] is not None else f"xs[{k}]"
        return None

    def _run_without_non_finite(self, X):
        """The rare turn with a NaN/Inf somewhere: those requests get an InputError naming the field, and a
        new plan of the others runs (they were valid before, so they are valid again)."""
        bad, rest = {}, StepPlan(self.streams)
        for req, r0, k0, n, form, b0 in self.parts:
            what = self._non_finite(req, self.blobs[b0:b0 + (n if type(form) is list else 1)])
            if what is None:
                try:
                    rest.add(req)
                except Exception as e:  # cannot happen (fewer new streams than before), but answer anyway
                    bad[id(req)] = e
            else:
                bad[id(req)] = InputError(f"{what} contains NaN or Inf; expected finite values")
        done = {id(req): res for req, res in rest.run()}
        return [(req, bad.get(id(req)) or done[id(req)]) for req, *_ in self.parts]
