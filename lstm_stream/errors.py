"""The exception tree of lstm-stream, in one place.

    LSTMStreamError                 base of everything raised on purpose
    ├── ModelError (ValueError)     weights or config invalid, or an op the model cannot do
    ├── InputError (ValueError)     a sample/state with the wrong shape, dtype, or a NaN/Inf
    ├── UnknownStreamError (KeyError)  no stream with that id
    ├── StoreFullError              the state store is at its max_streams limit
    ├── SnapshotError               snapshot missing, truncated, corrupted or of another model
    ├── SequenceError               a step's sequence number is stale or skips steps
    └── BackendError                the requested backend is not usable here (e.g. no GPU)

Every message names what was wrong and what was expected.
"""


class LSTMStreamError(Exception):
    """Base class of every error lstm-stream raises on purpose."""

    code = "error"


class ModelError(LSTMStreamError, ValueError):
    """Model weights or config are invalid, or the model cannot do what was asked."""

    code = "bad_model"


class InputError(LSTMStreamError, ValueError):
    """An input array or state has the wrong shape, dtype, or non-finite values."""

    code = "bad_input"


class UnknownStreamError(LSTMStreamError, KeyError):
    """The stream id is not in the store."""

    code = "unknown_stream"

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown stream"


class StoreFullError(LSTMStreamError):
    """The store already holds max_streams streams."""

    code = "store_full"


class SnapshotError(LSTMStreamError):
    """A snapshot file cannot be used: missing, truncated, corrupted, or of another model."""

    code = "bad_snapshot"


class SequenceError(LSTMStreamError):
    """A step's sequence number is not the next one for its stream: applied before (code seq_stale), or
    skipping steps (seq_gap). `seq` is the stream's number now; `expected` the seq the request should carry."""

    def __init__(self, code: str, message: str, seq: int, expected: int):
        super().__init__(message)
        self.code, self.seq, self.expected = code, seq, expected


class BackendError(LSTMStreamError):
    """The requested backend cannot run here."""

    code = "bad_backend"
