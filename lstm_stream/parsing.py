"""A decoded request map -> its typed Request (messages.py): each field checked against its kind, arrays made
numpy arrays, unknown fields skipped. Part of lstm_stream.protocol's API (protocol.parse_request); split out
of it for size. Imports numpy and msgpack's world only, like protocol.py.
"""
from __future__ import annotations

from operator import countOf

import numpy as np

from .idlists import IdList
from .messages import OPS, PROTOCOL_VERSION, REQUEST_FIELDS, REQUESTS, REQUIRED, Request
from .protocol import (BAD_REQUEST, BAD_VERSION, MAX_MODEL_NAME_LENGTH, MAX_REQUEST_ID_LENGTH, UNKNOWN_OP,
                       ProtocolError, _from_map, to_array)


def parse_request(msg: dict) -> Request:
    """A decoded map as its typed Request (messages.py): every field checked against its kind, arrays made
    numpy arrays, unknown fields skipped; ProtocolError (carrying the request id once it is known) if not."""
    rid = msg.get("id")
    if not (rid is None or type(rid) is int or (isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID_LENGTH)):
        raise ProtocolError(BAD_REQUEST, f"'id' must be an int, a str of at most {MAX_REQUEST_ID_LENGTH} "
                                         f"characters, or nil; got {type(rid).__name__}")
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and true are not the int 1
        code = BAD_VERSION if type(version) is int else BAD_REQUEST
        raise ProtocolError(code, f"'v' is {version!r}; this daemon speaks protocol version {PROTOCOL_VERSION} "
                                  "(an int)", rid)
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, f"'op' must be a str, got {type(op).__name__}", rid)
    parser = _PARSERS.get(op)
    if parser is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op[:64]!r}; expected one of {', '.join(OPS)}", rid)
    cls, checks, arrays = parser
    values = []
    for name, kind, check, default in checks:  # _field, inlined for the common cases (this runs per request)
        value = msg.get(name)
        if value is not None:
            values.append(value if check(value) else _field(msg, name, kind, default, op, rid))
        else:
            values.append(default if default is not REQUIRED else _field(msg, name, kind, default, op, rid))
    lists = msg.get("lists")
    if lists is None:
        lists = False
    elif type(lists) is not bool:
        lists = _field(msg, "lists", "bool", False, op, rid)
    model = msg.get("model")
    if model is not None and (type(model) is not str or not 0 < len(model) <= MAX_MODEL_NAME_LENGTH):
        raise ProtocolError(BAD_REQUEST, f"'model' must be a model's name, a str of 1 to {MAX_MODEL_NAME_LENGTH} "
                                         f"characters (or absent for the daemon's default model); got "
                                         f"{_shown(model)}", rid)
    if op == "step_many" and (values[1] is None) == (values[2] is None):  # fields: streams, x, xs
        raise ProtocolError(BAD_REQUEST, "step_many needs exactly one of 'x' (one row per stream) or 'xs' "
                                         "(a list of arrays, one per stream)", rid)
    try:
        for k, name, kind in arrays:
            value = values[k]
            if value is None:
                continue
            if kind == "array":
                values[k] = _from_map(value, name, False) if type(value) is dict else to_array(value, name, copy=False)
            else:
                values[k] = [to_array(a, f"{name}[{j}]", copy=False) for j, a in enumerate(value)]
    except ProtocolError as e:
        e.request_id = rid
        raise
    req = cls(rid, lists, *values)
    if model is not None:
        req.model = model
    return req


def _shown(value) -> str:
    """A field's bad value for an error message: a str (shortened) as itself, anything else by its type."""
    return repr(value[:40]) if type(value) is str else type(value).__name__


def _field(msg, name, kind, default, op, rid):
    if name not in msg or msg[name] is None:
        if default is REQUIRED:
            raise ProtocolError(BAD_REQUEST, f"op {op!r} needs field {name!r} ({_KIND_TEXT[kind]})", rid)
        return default
    value = msg[name]
    if not _KIND_CHECK[kind](value):
        raise ProtocolError(BAD_REQUEST, f"field {name!r} of op {op!r} must be {_KIND_TEXT[kind]}, got "
                                         f"{type(value).__name__}", rid)
    return value


def _is_id(v):
    return isinstance(v, str) or (type(v) is int)


_ID_TYPES = frozenset((str, int))  # msgpack decodes to exactly these (no subclasses)


def _are_ids(v):
    if type(v) is IdList:  # (idlists.py keeps only lists of str and int ids)
        return True
    if not isinstance(v, list):
        return False
    if v and type(v[0]) is str:  # the usual list of str ids: a join checks every item in C (100 ids: 0.8 µs,
        try:                     # against 2.6 µs for the type scan below)
            "".join(v)
            return True
        except TypeError:        # not all str: the scan says whether the others are ints
            pass
    elif v and type(v[0]) is int and countOf(map(type, v), int) == len(v):  # int ids: one C-level count
        return True
    return _ID_TYPES.issuperset(map(type, v)) or all(_is_id(i) for i in v)


_KIND_CHECK = {
    "id": _is_id,
    "ids": _are_ids,
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "array": lambda v: isinstance(v, (dict, list, np.ndarray)),
    "arrays": lambda v: isinstance(v, list) and all(isinstance(a, (dict, list, np.ndarray)) for a in v),
}
# op -> (its Request class, (field, kind, check, default) in field order, (index, field, kind) of its arrays)
_PARSERS = {op: (REQUESTS[op],
                 tuple((name, kind, _KIND_CHECK[kind], default) for name, (kind, default) in spec.items()),
                 tuple((k, name, kind) for k, (name, (kind, _)) in enumerate(spec.items())
                       if kind in ("array", "arrays")))
            for op, spec in REQUEST_FIELDS.items()}
_KIND_TEXT = {
    "id": "a stream id (str or int)", "ids": "a list of stream ids (str or int)", "int": "an int",
    "bool": "a bool", "array": "an array (map {dtype, shape, data} or nested lists)",
    "arrays": "a list of arrays",
}
