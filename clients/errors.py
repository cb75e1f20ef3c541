"""The client library's exception tree, in one place.

    ClientError                        base of everything the client raises on purpose
    ├── Timeout (also TimeoutError)    no reply within `timeout` (the request may or may not have been applied)
    ├── ClientClosed                   the client was closed
    ├── InputError (ValueError)        an input refused before sending (not real numbers: a str, a bool, ...)
    ├── BadReply                       the daemon's reply could not be understood (version or format)
    ├── PipelineError                  some calls of a Pipeline failed: .results holds every result in order,
    │                                  the failed calls' exceptions in their place (the others were applied)
    └── ServerError                    the daemon answered with an error: .code, .message, .request_id
        ├── BadRequest                 bad_message, bad_request, bad_version, unknown_op, too_large, bad_input,
        │                              bad_model (a reload's model file: unreadable, not a model, other sizes)
        ├── UnknownStream (KeyError)   unknown_stream
        ├── StoreFull                  store_full: nothing was applied
        ├── Busy                       busy: the engine's queue is full; nothing was applied, resend later
        ├── Unsupported                unsupported (forecast on a non-autoregressive model, no snapshot dir)
        ├── SequenceError              seq_stale, seq_gap: .seq (the stream's number), .expected
        ├── LogFailed                  log_failed: the daemon's step log cannot be written; nothing applied
        ├── Forbidden (PermissionError) forbidden: this client's key may not do this op; nothing applied
        ├── WrongShard                 wrong_shard: a cluster shard does not own the stream: .version (its map's)
        └── InternalError              internal, snapshot_failed
"""
from __future__ import annotations

from lstm_stream import protocol as P


class ClientError(Exception):
    """Base class of every error the client raises on purpose."""


class Timeout(ClientError, TimeoutError):
    """No reply arrived within the timeout; for steps, the request may or may not have been applied."""


class ClientClosed(ClientError):
    """The client was used after close()."""


class InputError(ClientError, ValueError):
    """An input the client refuses before sending it (nothing was sent): not an array of real numbers."""


class PipelineError(ClientError):
    """Some calls of a Pipeline failed; the others were applied. `results`: every call's result in order, the
    exception of each failed call in its place; `errors`: those exceptions."""

    def __init__(self, results: list):
        self.results = results
        self.errors = [r for r in results if isinstance(r, Exception)]
        first = next(k for k, r in enumerate(results) if isinstance(r, Exception))
        super().__init__(f"{len(self.errors)} of {len(results)} pipelined calls failed (the others were applied; "
                         f"see .results); the first, call {first}: {type(results[first]).__name__}: "
                         f"{results[first]}")


class BadReply(ClientError):
    """A reply that is not a valid message of this protocol version."""


class ServerError(ClientError):
    """The daemon replied with an error; `code` is one of lstm_stream.protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str, request_id=None):
        super().__init__(f"[{code}] {message}")
        self.code, self.message, self.request_id = code, message, request_id


class BadRequest(ServerError, ValueError):
    """The request was malformed or its input invalid (shape, dtype, NaN/Inf, size, op, version)."""


class UnknownStream(ServerError, KeyError):
    """No stream with that id on the daemon."""

    def __str__(self):  # KeyError would repr() the message
        return self.args[0]


class StoreFull(ServerError):
    """The daemon holds max_streams streams; the request was not applied."""


class Busy(ServerError):
    """The engine's queue is full; the request was not applied and can be resent later."""


class Unsupported(ServerError):
    """The daemon cannot do this op (e.g. forecast on a non-autoregressive model)."""


class SequenceError(ServerError):
    """A step's seq is not the stream's next number: applied before (code seq_stale) or skipping steps
    (seq_gap); nothing was applied. `seq`: the stream's number on the daemon; `expected`: the seq to send."""

    def __init__(self, code: str, message: str, request_id=None, seq=None, expected=None):
        super().__init__(code, message, request_id)
        self.seq, self.expected = seq, expected


class LogFailed(ServerError):
    """The daemon cannot write its step log (disk full, I/O error): nothing was applied; resend later."""


class Forbidden(ServerError, PermissionError):
    """The daemon runs with CURVE keys and this client's key may not do this op (an admin key may): nothing
    was applied."""


class WrongShard(ServerError):
    """A shard of a cluster does not own a stream the request names (its shard map is at `version`); nothing
    was applied. ClusterClient refreshes its map and resends; a plain Client sees it when sent to a shard."""

    def __init__(self, code: str, message: str, request_id=None, version=None):
        super().__init__(code, message, request_id)
        self.version = version


class UnknownModel(ServerError, LookupError):
    """The request named a model the daemon does not serve, or named none where the daemon serves several and
    has no default; `models`: the names it serves."""

    def __init__(self, code: str, message: str, request_id=None, models=None):
        super().__init__(code, message, request_id)
        self.models = models


class InternalError(ServerError):
    """The daemon failed internally (logged on its side) or could not write a snapshot."""


_BY_CODE = {
    P.BAD_MESSAGE: BadRequest, P.BAD_REQUEST: BadRequest, P.BAD_VERSION: BadRequest, P.UNKNOWN_OP: BadRequest,
    P.TOO_LARGE: BadRequest, P.BAD_INPUT: BadRequest, P.UNKNOWN_STREAM: UnknownStream,
    P.STORE_FULL: StoreFull, P.BUSY: Busy, P.UNSUPPORTED: Unsupported, P.SNAPSHOT_FAILED: InternalError,
    P.INTERNAL: InternalError, P.SEQ_STALE: SequenceError, P.SEQ_GAP: SequenceError, P.LOG_FAILED: LogFailed,
    P.FORBIDDEN: Forbidden, P.WRONG_SHARD: WrongShard, P.UNKNOWN_MODEL: UnknownModel, P.BAD_MODEL: BadRequest,
}


def server_error(reply: dict) -> ServerError:
    """The exception for an error reply (unknown codes from newer daemons become a plain ServerError)."""
    err = reply.get("error")
    if not isinstance(err, dict):
        return ServerError("unknown", f"malformed error reply: {reply!r:.200}", reply.get("id"))
    code, message = str(err.get("code", "unknown")), str(err.get("message", ""))
    cls = _BY_CODE.get(code, ServerError)
    if cls is SequenceError:
        return cls(code, message, reply.get("id"), err.get("seq"), err.get("expected"))
    if cls is UnknownModel:
        return cls(code, message, reply.get("id"), err.get("models"))
    if cls is WrongShard:
        return cls(code, message, reply.get("id"), err.get("version"))
    return cls(code, message, reply.get("id"))
