"""The fuzz properties, each one function of drawn values: the pytest files wrap them in @given with a small
budget (CI), `python -m tests.fuzz` with a large one (a long run). Each raises Failure (or AssertionError)
when the rule it names breaks.
"""
from __future__ import annotations

import itertools
import tracemalloc

import msgpack
import numpy as np
from hypothesis import strategies as st

from lstm_stream import protocol as P
from lstm_stream.idlists import IdList
from lstm_stream.messages import Reply

from . import strategies as S
from .harness import FUZZ_CONFIG, Tally, Witnesses, WireTarget
from .oracle import Failure, check_decode, lenient

_tags = itertools.count()


# ---- the decoder alone ------------------------------------------------------------------------------
def decode_only(case: S.Case, tally: Tally | None = None) -> None:
    """Decoding any payload gives a Request or a ProtocolError with a documented code, nothing else."""
    outcome = check_decode(P.Codec(max_message_bytes=FUZZ_CONFIG["max_message_bytes"]), case.data)
    if tally is not None:
        tally[outcome] += 1


@st.composite
def adversarial(draw) -> bytes:
    """A message built to cost the decoder memory: many small containers, numbers or short strs (up to
    ~64 KiB), in rows; or container headers nested in one another declaring elements that never come."""
    head = {"v": 1, "id": 1, "op": draw(st.sampled_from(["step", "step_many", "set_state"])), "stream": "a"}
    where = draw(st.sampled_from(["x", "xs", "streams", "h", "extra"]))
    if draw(st.integers(0, 3)) == 0:
        unit = draw(st.sampled_from([b"\x9f", b"\x8f\xa0", b"\xdc\x00\x10", b"\xdc\x01\x00", b"\xdc\x10\x00",
                                     b"\xdd\x00\x01\x00\x00"]))
        prefix = msgpack.packb({**head, where: None}, use_bin_type=True)[:-1]  # up to the value of `where`
        return prefix + unit * draw(st.integers(1, 1000)) + draw(st.binary(max_size=64))
    elem = draw(st.sampled_from([0, 0.5, [], {}, [0], {"": 0}, [[]], "ab", "\u0101", "abcdefgh", "x" * 50, None,
                                 [0] * 7, [{"": []}], {"\u0101": "\u0101"}]))
    n = draw(st.integers(1, 20_000))
    rows = draw(st.sampled_from([None, 1, 4, 16, 100]))
    x = [elem] * n if rows is None else [[elem] * rows] * max(1, n // rows)
    return msgpack.packb({**head, where: x}, use_bin_type=True)


def decode_memory(data: bytes) -> None:
    """The objects decoding builds stay within DECODE_FACTOR x the message + DECODE_SLACK (docs/protocol.md,
    "Memory of a request"), measured with tracemalloc as tests/clients/test_decode_bounds.py does."""
    codec = P.Codec()
    check_decode(P.Codec(), data)  # once untraced: what a first decode builds once (caches) is not the message's
    codec.decode(msgpack.packb({"warm": "w" * P.DECODE_SMALL}), lane=True)  # nor what a codec keeps (the
    # walk's Unpacker, the id-list lane's)
    tracemalloc.start()
    try:
        outcome = check_decode(codec, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = P.DECODE_FACTOR * len(data) + P.DECODE_SLACK + largest_container(lenient(data))
    if peak > bound:
        raise Failure(f"decoding {len(data)} bytes ({outcome}) peaked at {peak} bytes of objects, over the "
                      f"bound of {bound} (4x + 64 KiB + its largest container)")


def largest_container(value) -> int:
    """The most one container of `value` can take before it is charged (docs/protocol.md: the container being
    completed when the budget runs out): a list 56 B + 88 B per element, a map 232 B + 240 B per entry."""
    most, todo = 0, [value]
    while todo:
        v = todo.pop()
        if isinstance(v, list):
            most = max(most, 56 + 88 * len(v))
            todo.extend(v)
        elif isinstance(v, dict):
            most = max(most, 232 + 240 * len(v))
            todo.extend(v.values())
    return most


def round_trip(op, rid, fields) -> None:
    """A valid request encodes (Codec.request, templates included) to the bytes of its map and decodes to the
    same op, id and fields, arrays bit for bit in their dtype."""
    codec = P.Codec()
    data = codec.request(op, rid, fields)
    plain = msgpack.packb({"v": 1, "id": rid, "op": op, **{k: S._wire(v) for k, v in fields.items()}},
                          use_bin_type=True)
    if data != plain:
        raise Failure(f"Codec.request's bytes differ from the map's encoding: {data[:80]!r} vs {plain[:80]!r}")
    req = codec.decode_request(data)
    if req.op != op or req.id != rid or type(req.id) is not type(rid) or req.lists is not False:
        raise Failure(f"decoded as op {req.op!r} id {req.id!r}, sent op {op!r} id {rid!r}")
    for name, want in fields.items():
        _same(getattr(req, name), want, name)


def _same(got, want, name) -> None:
    if isinstance(want, np.ndarray):
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            raise Failure(f"{name}: decoded {got.dtype}{got.shape}, sent {want.dtype}{want.shape} (or other bits)")
    elif isinstance(want, list) and want and isinstance(want[0], np.ndarray):
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{name}[{k}]")
    elif type(want) is list and type(got) is IdList:  # a list of ids the decoder kept (lstm_stream/idlists.py)
        if got != want or list(map(type, got)) != list(map(type, want)):
            raise Failure(f"{name}: decoded {got!r}, sent {want!r}")
    elif got != want or type(got) is not type(want):
        raise Failure(f"{name}: decoded {got!r}, sent {want!r}")


def reply_template(rid, y: np.ndarray) -> None:
    """A step's reply packed from its template is byte-equal to the map's encoding, and decodes to y."""
    codec = P.Codec()
    data = codec.reply(Reply(rid, {"y": y}))
    if data != codec.ok(rid, {"y": y}):
        raise Failure(f"the templated reply of y {y.dtype}{y.shape} differs from the map's encoding")
    back = P.to_array(codec.decode_reply(data)["y"])
    if back.dtype != y.dtype or back.tobytes() != y.tobytes():
        raise Failure("a reply's y did not decode to its own bits")


# ---- the engine in-process, and a live daemon ----------------------------------------------------------
def engine_in_process(model, cases, batched: bool, seed: int, tally: Tally | None = None, keys=None) -> WireTarget:
    """A fresh engine gets the pool's streams, then the cases (one turn, or one at a time with nothing changed
    by an error reply), with witness steps; every reply passes the oracle and the witnesses stay bit-exact.
    keys: a directory for CURVE keys: the cases then come from a step key under namespaces."""
    target = WireTarget(model, keys=keys)
    tally = Tally() if tally is None else tally
    for reply in target.exchange([(m,) for m in S.pool_steps()]):
        assert msgpack.unpackb(reply)["ok"], reply
    witnesses = Witnesses(model, tag=f"wire{next(_tags)}", seed=seed)
    target.run(cases, witnesses, tally, batched=batched)
    target.run(cases[::-1], witnesses, tally, batched=not batched)
    target.check_witnesses(witnesses)
    return target


def live_daemon(target, model, cases, batched: bool, seed: int, tally: Tally | None = None) -> None:
    """The cases on a live daemon with new witness streams alongside; every reply passes the oracle, the
    witnesses' replies and states are bit-exact, and the daemon still answers ping."""
    witnesses = Witnesses(model, tag=f"live{next(_tags)}", seed=seed)
    target.run(cases, witnesses, Tally() if tally is None else tally, batched=batched)
    target.check_witnesses(witnesses)
    target.alive()
