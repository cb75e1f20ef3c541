"""The typed requests and replies of the wire protocol: one class per op, each field with its wire kind.

    req = Step(id=7, lists=False, stream="pump-7", x=np.ones((1, 3), np.float32))
    reply = Reply.success(req, {"y": y}) or Reply.failure(req.id, "bad_input", "x has shape ...")

protocol.py decodes a msgpack map into one of these (checking each field against its kind, arrays already
numpy arrays, which may be read-only views of the message's bytes) and encodes a Reply; engine/ works on them only, and an in-process client builds them
directly. The table REQUEST_FIELDS (op -> {field: (kind, default)}), which the decoder and docs/protocol.md's
test use, is derived from the classes, so an op's fields are written once. Numpy only: no numba here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

PROTOCOL_VERSION = 1
MAX_STREAMS_PAGE = 100_000      # default and largest `limit` of the streams op
REQUIRED = object()             # the default of a field that a request must carry

StreamId = int | str  # a stream id on the wire: a str (UTF-8) or an int


def _kind(kind: str, default=REQUIRED):
    """A request field of wire kind `kind` (id, ids, int, bool, array, arrays), required unless defaulted."""
    if default is REQUIRED:
        return field(metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


@dataclass(slots=True, eq=False)
class Request:
    """What every request carries: its id (echoed in the reply; int, str or None) and whether the reply's
    arrays go as nested lists."""

    op: ClassVar[str] = ""
    id: int | str | None
    lists: bool
    # The model the request is for, by its name in a daemon serving several (engine/multimodel.py); None: the
    # daemon's default model. Keyword-only, so that every op's own fields keep their positions.
    model: str | None = field(default=None, kw_only=True)

    @property
    def fields(self) -> dict:
        """The op's own fields by name (what REQUEST_FIELDS lists for it)."""
        return {name: getattr(self, name) for name in REQUEST_FIELDS[self.op]}


@dataclass(slots=True, eq=False)
class Ping(Request):
    """Is the daemon there? Touches no stream."""
    op: ClassVar[str] = "ping"


@dataclass(slots=True, eq=False)
class Info(Request):
    """Model, limits, counters and snapshot status."""
    op: ClassVar[str] = "info"


@dataclass(slots=True, eq=False)
class ListStreams(Request):
    """One page of the stream ids: `limit` ids from `offset`."""
    op: ClassVar[str] = "streams"
    offset: int = _kind("int", 0)
    limit: int = _kind("int", MAX_STREAMS_PAGE)


@dataclass(slots=True, eq=False)
class Step(Request):
    """Advance one stream: x (I,) for one sample or (T, I) for T in order. seq: the stream's step count the
    client expects after it (exactly-once: see lstm_stream/receipts.py), or None."""
    op: ClassVar[str] = "step"
    stream: StreamId = _kind("id")
    x: np.ndarray = _kind("array")
    seq: int | None = _kind("int", None)

    @property
    def samples(self) -> int:
        """Stream-steps this request asks for (before validation: a guide for the turn's size)."""
        return self.x.shape[0] if self.x.ndim == 2 else 1


@dataclass(slots=True, eq=False)
class StepMany(Request):
    """Advance many streams: x (N, I), one row per stream, or xs, one (T_k, I) or (I,) array per stream."""
    op: ClassVar[str] = "step_many"
    streams: list = _kind("ids")
    x: np.ndarray | None = _kind("array", None)
    xs: list | None = _kind("arrays", None)

    @property
    def samples(self) -> int:
        """Stream-steps this request asks for (before validation)."""
        if self.x is not None:
            return len(self.streams)
        return sum(a.shape[0] if a.ndim == 2 else 1 for a in self.xs)


@dataclass(slots=True, eq=False)
class Forecast(Request):
    """Roll a stream forward `horizon` steps, outputs fed back as inputs; its state is not changed."""
    op: ClassVar[str] = "forecast"
    stream: StreamId = _kind("id")
    horizon: int = _kind("int")


@dataclass(slots=True, eq=False)
class GetState(Request):
    """A copy of one stream's state."""
    op: ClassVar[str] = "get_state"
    stream: StreamId = _kind("id")


@dataclass(slots=True, eq=False)
class SetState(Request):
    """Overwrite (or create) a stream's state: h (L, P or H), c (L, H), its step count."""
    op: ClassVar[str] = "set_state"
    stream: StreamId = _kind("id")
    h: np.ndarray = _kind("array")
    c: np.ndarray = _kind("array")
    steps: int = _kind("int", 0)


@dataclass(slots=True, eq=False)
class Copy(Request):
    """Give stream dst (created if new) a copy of src's state."""
    op: ClassVar[str] = "copy"
    src: StreamId = _kind("id")
    dst: StreamId = _kind("id")


@dataclass(slots=True, eq=False)
class Reset(Request):
    """Zero a stream's state."""
    op: ClassVar[str] = "reset"
    stream: StreamId = _kind("id")


@dataclass(slots=True, eq=False)
class Drop(Request):
    """Remove a stream."""
    op: ClassVar[str] = "drop"
    stream: StreamId = _kind("id")


@dataclass(slots=True, eq=False)
class Snapshot(Request):
    """Write a snapshot now."""
    op: ClassVar[str] = "snapshot"


@dataclass(slots=True, eq=False)
class Reload(Request):
    """Serve new weights (admin): the model file at `path` on the daemon's machine (default: the file it was
    started with); every stream keeps its state unless reset, which drops them all (needed for other sizes)."""
    op: ClassVar[str] = "reload"
    path: str | None = _kind("id", None)  # a str (the "id" kind admits str or int; an int is refused by the op)
    reset: bool = _kind("bool", False)


REQUESTS = {cls.op: cls for cls in (Ping, Info, ListStreams, Step, StepMany, Forecast, GetState, SetState, Copy,
                                    Reset, Drop, Snapshot, Reload)}
REQUEST_FIELDS = {
    op: {f.name: (f.metadata["kind"], REQUIRED if f.default is dataclasses.MISSING else f.default)
         for f in dataclasses.fields(cls) if "kind" in f.metadata}
    for op, cls in REQUESTS.items()}
OPS = tuple(REQUESTS)


@dataclass(slots=True, eq=False)
class Reply:
    """The answer to one request: a result map (ok), or an error code and message (nothing was applied)."""

    id: int | str | None
    result: dict | None = None   # the op's result fields; arrays as numpy arrays
    code: str | None = None      # protocol error code when not ok
    message: str = ""
    lists: bool = False          # send result arrays as nested lists
    detail: dict | None = None   # extra fields of the error map (seq_stale/seq_gap: the stream's "seq")

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.code is None

    @classmethod
    def success(cls, req: Request, result: dict) -> "Reply":
        """A success reply to req."""
        return cls(req.id, result, None, "", req.lists)

    @classmethod
    def failure(cls, request_id, code: str, message: str, detail: dict | None = None) -> "Reply":
        """An error reply."""
        return cls(request_id, None, code, message, False, detail)

    def as_map(self) -> dict:
        """The reply as the decoded wire map, arrays left as numpy arrays unless `lists` (in-process clients)."""
        if self.code is not None:
            return {"v": PROTOCOL_VERSION, "id": self.id, "ok": False,
                    "error": {"code": self.code, "message": self.message, **(self.detail or {})}}
        result = listified(self.result) if self.lists else self.result
        return {"v": PROTOCOL_VERSION, "id": self.id, "ok": True, **result}


def listified(result: dict) -> dict:
    """result with every numpy array (also inside lists) as nested lists."""
    return {k: _listify(v) for k, v in result.items()}


def _listify(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [_listify(a) for a in v]
    return v
