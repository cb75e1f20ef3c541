"""A stream's state as a record (StreamState) and what a stream id may be (check_id). numpy only: the client
library imports this module, and must not load numba (the store that maps ids to slots is store.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

MAX_ID_LENGTH = 256  # characters of a str id; longer ids are refused (protects memory and logs)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class StreamState:
    """A copy of one stream's state: h (L, P), c (L, H), steps taken, last-seen unix time."""

    h: np.ndarray
    c: np.ndarray
    steps: int = 0
    last_seen: float = 0.0


def check_id(stream_id):
    """Return the id normalised (numpy ints -> int, str subclasses -> str) if valid (str of 1-256 chars, or an int64); else raise."""
    if isinstance(stream_id, str):
        if not 0 < len(stream_id) <= MAX_ID_LENGTH:
            raise InputError(f"stream id must be a non-empty str of at most {MAX_ID_LENGTH} characters, "
                             f"got one of length {len(stream_id)}")
        return stream_id if type(stream_id) is str else str(stream_id)
    if isinstance(stream_id, (int, np.integer)) and not isinstance(stream_id, (bool, np.bool_)):
        value = int(stream_id)
        if not INT64_MIN <= value <= INT64_MAX:
            raise InputError(f"int stream id {value} is outside the int64 range")
        return value
    raise InputError(f"stream id must be a str or an int, got {type(stream_id).__name__}")


def check_ids(ids) -> list:
    """check_id for many ids: the list normalised, or InputError for the first bad one. Lists of only str or
    only int ids (a snapshot's) are checked with C-level passes."""
    ids = list(ids)
    types = set(map(type, ids))
    if types == {str} and MAX_ID_LENGTH >= max(map(len, ids)) and min(map(len, ids)) > 0:
        return ids
    if types == {int} and INT64_MIN <= min(ids) and max(ids) <= INT64_MAX:
        return ids
    return [check_id(i) for i in ids]


def parse_state(state, h_shape, c_shape, dtype):
    """(h, c, steps) of a state given as a StreamState, an (h, c) pair or a {'h', 'c'[, 'steps']} map: h and c
    C-contiguous arrays of `dtype` with the given shapes, finite; steps an int in 0..2**63-1. InputError naming
    the problem otherwise (Streams.set_state checks everything before it changes anything)."""
    if isinstance(state, StreamState):
        h, c, steps = state.h, state.c, state.steps
    elif isinstance(state, dict):
        missing = [k for k in ("h", "c") if k not in state]
        if missing:
            raise InputError(f"state is missing {missing}; expected a dict with 'h' and 'c' arrays")
        h, c, steps = state["h"], state["c"], state.get("steps", 0)
    elif isinstance(state, (tuple, list)) and len(state) == 2:
        (h, c), steps = state, 0
    else:
        raise InputError("state must be a StreamState, an (h, c) pair or a dict with 'h' and 'c'")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= INT64_MAX:
        raise InputError(f"state 'steps' must be an int from 0 to 2**63-1 ({INT64_MAX}), got {steps!r}")
    return _state_array("h", h, h_shape, dtype), _state_array("c", c, c_shape, dtype), int(steps)


def _state_array(name, a, shape, dtype):
    try:
        a = np.asarray(a)
    except Exception:
        raise InputError(f"state {name!r} is not an array") from None
    if a.dtype.kind not in "fiu":
        raise InputError(f"state {name!r} has dtype {a.dtype}; expected real numbers")
    if a.shape != shape:
        raise InputError(f"state {name!r} has shape {a.shape}; expected {shape} (num_layers, size)")
    src = a
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():  # after the cast: 1e300 is finite in float64, Inf in float32
        if np.isfinite(src).all():
            raise InputError(f"state {name!r} has values out of range for {dtype}; expected finite {dtype} "
                             "values")
        raise InputError(f"state {name!r} contains NaN or Inf (in {dtype}); expected finite values")
    return a
