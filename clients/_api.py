"""The operations every client offers, written once: each method builds a Call and hands it to `self._run`.

Client._run sends it and returns the result, AsyncClient._run returns a coroutine of it, and Pipeline._run
queues it: so the three mirror each other method for method, with one docstring per method.
"""
from __future__ import annotations

import numbers
from itertools import chain
from typing import Mapping

import numpy as np

from lstm_stream import protocol as P

from lstm_stream.state import StreamState

from .errors import BadReply, ClientError, InputError, UnknownStream, server_error


# The core's own state record (lstm_stream.state imports numpy only, never numba), so a State read from the
# daemon and one from an in-process Streams are the same type and go to either one's set_state.
State = StreamState


class Call:
    """One request to make: op, fields, how to turn the reply into the method's result, and (unknown_is) the
    result when the daemon answers unknown_stream, for a call that reads a missing stream as a value."""

    __slots__ = ("op", "fields", "parse", "unknown_is")

    def __init__(self, op, fields, parse, unknown_is=None):
        self.op, self.fields, self.parse, self.unknown_is = op, fields, parse, unknown_is

    def finish(self, reply: dict):
        """The call's result from its reply map; the ServerError it means raised."""
        if self.parse is _y:  # the most common reply, as its result at once
            y = usual_y(reply)
            if y is not None:
                return y
        try:
            return self.parse(check_reply(reply))
        except UnknownStream:
            if self.unknown_is is None:
                raise
            return self.unknown_is


def usual_y(reply: dict):
    """y of a step's success reply as the reply reader gives it (y read from its template: a writable array;
    ok; this protocol version), which is the step's result as it is (_y(check_reply(reply)) in short); None
    for any other reply."""
    y = reply.get("y")
    if type(y) is np.ndarray and y.flags.writeable and reply.get("ok") is True \
            and reply.get("v") == P.PROTOCOL_VERSION:
        return y
    return None


def result_of(call: Call, reply: dict):
    """The call's result, or the ClientError (a ServerError, BadReply) its reply means."""
    try:
        return call.finish(reply)
    except ClientError as e:
        return e


def check_reply(reply: dict) -> dict:
    """The reply if it is a success; the matching ServerError raised if it is an error."""
    if reply.get("v") != P.PROTOCOL_VERSION:
        raise BadReply(f"reply speaks protocol version {reply.get('v')!r}; this client speaks "
                       f"{P.PROTOCOL_VERSION}")
    if reply.get("ok") is not True:
        raise server_error(reply)
    return reply


_NO_KEY = object()
MISSING = object()  # in a Timeout's `replies` and a pipeline's results so far: no reply came
_SENT_AS_IS = frozenset(np.dtype(n) for n in ("float32", "float64", "int32", "int64"))  # native wire dtypes
_PLAIN = frozenset({float, int})
_KIND_NAMES = {"b": "a bool", "U": "a str", "S": "bytes", "c": "a complex number", "M": "a datetime64",
               "m": "a timedelta64"}


def sent_as_is(x) -> bool:
    """Whether x goes on the wire as it is: a C-contiguous numpy array of a wire dtype (the usual case)."""
    return type(x) is np.ndarray and x.dtype in _SENT_AS_IS and x.flags.c_contiguous


def _array(x, what: str = "x", key=_NO_KEY) -> np.ndarray:
    """x as a C-contiguous array to send; InputError naming it (`what`, or what[key]) unless it holds real
    numbers only: a str, None or a bool among them (numpy would send True as 1.0) is refused here."""
    if sent_as_is(x):
        return x  # the usual case: nothing to check or convert
    try:
        a = x if type(x) is np.ndarray else _from_python(x)
        # e.g. float16, uint8: send as float64, the daemon casts. (dtype.name costs ~2 µs: checked second.)
        if P.wire_dtype_name(a.dtype) is None and a.dtype.name not in P.WIRE_DTYPES:
            a = _as_float64(a)
    except InputError as e:
        raise InputError(f"{what if key is _NO_KEY else f'{what}[{key!r}]'} {e}") from None
    return np.ascontiguousarray(a)


def _from_python(x) -> np.ndarray:
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists and the like
        raise InputError(f"is not an array of numbers ({e})") from None
    if a.dtype.kind in "fiu" and isinstance(x, (list, tuple)) and _holds_bool(x):
        raise InputError("contains a bool; expected real numbers (float or int)")
    return a


def _holds_bool(seq) -> bool:
    """Whether nested lists/tuples hold a bool anywhere (numpy turns [True, 0.5] into [1.0, 0.5] silently).
    One C-level type scan per nesting level."""
    while True:
        types = set(map(type, seq))
        if types <= _PLAIN:  # the usual case: floats and ints, no deeper level
            return False
        if bool in types or np.bool_ in types or (
                np.ndarray in types and any(type(v) is np.ndarray and v.dtype.kind == "b" for v in seq)):
            return True
        seq = list(chain.from_iterable(v for v in seq if type(v) is list or type(v) is tuple))


def _as_float64(a: np.ndarray) -> np.ndarray:
    """a (not of a wire dtype) as float64; InputError if its values are not all real numbers."""
    if a.dtype.kind in "fiu":
        return a.astype(np.float64)
    if a.dtype.kind == "O":  # None or a str among numbers, or ints too large for int64
        odd = next((v for v in a.flat if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)),
                   _NO_KEY)
        if odd is _NO_KEY:
            return a.astype(np.float64)
        found = "None" if odd is None else f"a {type(odd).__name__}"
    else:
        found = _KIND_NAMES.get(a.dtype.kind, f"values of dtype {a.dtype}")
    raise InputError(f"{'is' if a.ndim == 0 else 'contains'} {found}; expected real numbers (float or int)")


def _y(reply):
    return P.to_array(reply["y"], "y")


def _nothing(reply):
    return None


def _body(reply):
    return {k: v for k, v in reply.items() if k not in ("v", "id", "ok")}


class Api:
    """Methods shared by Client, AsyncClient and Pipeline."""

    def _run(self, call: Call):  # pragma: no cover - each client defines it
        raise NotImplementedError

    def ping(self):
        """Check the daemon answers; returns its clock (unix seconds)."""
        return self._run(Call("ping", {}, lambda r: r.get("time")))

    def info(self):
        """Model config and fingerprint, backend, stream counts, limits, counters, last snapshot."""
        return self._run(Call("info", {}, _body))

    def streams(self, *, offset: int = 0, limit: int = P.MAX_STREAMS_PAGE):
        """Ids of the daemon's streams (one page: `limit` ids from `offset`)."""
        return self._run(Call("streams", {"offset": offset, "limit": limit}, lambda r: r["streams"]))

    def step(self, stream, x, *, seq: int | None = None):
        """Advance one stream: x (I,) -> y (O,), or xs (T, I) -> ys (T, O) in order. New ids start at zero.
        seq: the stream's step count after this step, to make it exactly-once: the daemon applies it only
        if it is the next number, answers a resend of its last step with the original outputs, and raises
        SequenceError (.seq, .expected) otherwise (see Client(exactly_once=True), which numbers steps itself)."""
        if seq is None:
            return self._run(Call("step", {"stream": stream, "x": _array(x)}, _y))
        return self._run(Call("step", {"stream": stream, "x": _array(x), "seq": int(seq)}, _y))

    def seq(self, stream):
        """The stream's sequence number on the daemon (its step count; 0 for a stream it does not have)."""
        return self._run(Call("get_state", {"stream": stream}, lambda r: r["steps"], unknown_is=0))

    def step_many(self, inputs: Mapping):
        """Advance many streams in one message: {id: x (I,) or (T, I)} -> {id: y (O,) or (T, O)}."""
        ids = list(inputs)
        arrs = [_array(v, "inputs", k) for k, v in inputs.items()]
        if arrs and all(a.ndim == 1 for a in arrs) and len({a.shape for a in arrs}) == 1:
            fields = {"streams": ids, "x": np.stack(arrs)}  # one row per stream: one bin blob

            def parse(reply):
                return dict(zip(ids, _y(reply)))
        else:
            fields = {"streams": ids, "xs": arrs}

            def parse(reply):
                return dict(zip(ids, (P.to_array(y, "ys") for y in reply["ys"])))
        return self._run(Call("step_many", fields, parse))

    def forecast(self, stream, horizon: int):
        """Roll a stream forward `horizon` steps feeding outputs back as inputs -> (horizon, O); the stream's
        state is not changed. Autoregressive models only."""
        return self._run(Call("forecast", {"stream": stream, "horizon": int(horizon)}, _y))

    def get_state(self, stream):
        """A copy of one stream's state (State: h, c, steps, last_seen)."""
        def parse(r):
            return State(P.to_array(r["h"], "h"), P.to_array(r["c"], "c"), r["steps"], r["last_seen"])
        return self._run(Call("get_state", {"stream": stream}, parse))

    def set_state(self, stream, state):
        """Overwrite (or create) a stream's state from a State/StreamState, an (h, c) pair or {'h', 'c'}."""
        if isinstance(state, dict):
            h, c, steps = state["h"], state["c"], state.get("steps", 0)
        elif isinstance(state, (tuple, list)):
            (h, c), steps = state, 0
        else:
            h, c, steps = state.h, state.c, getattr(state, "steps", 0)
        fields = {"stream": stream, "h": _array(h, "h"), "c": _array(c, "c"), "steps": int(steps)}
        return self._run(Call("set_state", fields, _nothing))

    def copy(self, src, dst):
        """Give stream dst (created if new) a copy of src's state."""
        return self._run(Call("copy", {"src": src, "dst": dst}, _nothing))

    def reset(self, stream):
        """Zero a stream's state (it stays on the daemon)."""
        return self._run(Call("reset", {"stream": stream}, _nothing))

    def drop(self, stream):
        """Remove a stream from the daemon."""
        return self._run(Call("drop", {"stream": stream}, _nothing))

    def snapshot(self):
        """Write a snapshot now; returns {path, bytes, streams, seconds, reason, time} once the file is durable.
        The daemon writes it in the background and keeps serving; at millions of streams that takes seconds,
        so give the client a timeout to match."""
        return self._run(Call("snapshot", {}, _body))

    def reload(self, path=None, *, reset: bool = False):
        """Serve new weights (admin keys only): the model file at `path` on the daemon's machine, default the one
        it was started with. Every stream keeps its state and steps with the new weights from its next step;
        a model of other sizes is refused (BadRequest, code bad_model) unless reset=True, which drops every
        stream. Returns {fingerprint, previous, streams, changed, reset, cold}."""
        fields = {} if path is None else {"path": str(path)}
        if reset:
            fields["reset"] = True
        return self._run(Call("reload", fields, _body))
