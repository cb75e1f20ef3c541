"""The bounded decode of a message over DECODE_SMALL bytes (Codec.decode; the bounds are protocol.py's, where
DECODE_FACTOR says what each container is charged): msgpack's limits from the message's length, a walk that
builds nothing, then the decode with every container charged to the message's budget; and the errors a
refused message gets. Imports protocol's names (protocol imports this module last, as it does parsing)."""
from __future__ import annotations

import sys
from operator import countOf

import msgpack

from .protocol import (BAD_MESSAGE, DECODE_FACTOR, DECODE_SLACK, MAX_MAP_LEN, MAX_STR_BYTES, TOO_LARGE,
                       ProtocolError)


def walk(data) -> None:
    """Read the whole message once without building anything (msgpack's skip, in C): a truncated or malformed
    message is refused here, before msgpack builds its containers, whose element slots it allocates as their
    headers declare them (lists nested 1,000 deep, each declaring 5,000 elements that never come, made a
    64 KiB message allocate 44 MB). Raises what unpackb would (OutOfData: truncated; ExtraData: bytes after).
    No limit of msgpack's is passed: skip() builds nothing, so it checks none (the decode after applies them)."""
    u = msgpack.Unpacker(max_buffer_size=len(data))
    u.feed(data)  # (a copy of the message: ~0.1 ms per MB)
    u.skip()
    if u.tell() != len(data):
        raise msgpack.ExtraData(None, data[u.tell():u.tell() + 16])


class Walker:
    """walk() with one Unpacker kept from message to message, for messages of up to REUSE_BYTES: building an
    Unpacker costs ~1.3 µs, twice the rest of the walk of a 4 KB step_many. One serves messages of every
    length because skip() checks no limit (it builds nothing; the decode that follows applies them). It is
    dropped after a message it could not skip whole, which may have left a part of itself in its buffer. Its
    buffer is REUSE_BYTES from the start, so that no message makes it grow (larger messages get an Unpacker
    of their own, as walk() makes): ~105 KB per codec in all, with msgpack's own stack of 1,024 containers."""

    REUSE_BYTES = 64 * 1024

    __slots__ = ("_unpacker", "_at")

    def __init__(self):
        self._unpacker, self._at = None, 0  # the Unpacker, and its tell() after the last message

    def __call__(self, data) -> None:
        n = len(data)
        if n > self.REUSE_BYTES:
            return walk(data)
        u = self._unpacker
        if u is None:
            u = self._unpacker = msgpack.Unpacker(max_buffer_size=self.REUSE_BYTES, read_size=self.REUSE_BYTES)
            self._at = 0
        try:
            u.feed(data)
            u.skip()
        except BaseException:
            self._unpacker = None
            raise
        end = u.tell() - self._at  # where the message's one object ended
        if end != n:
            self._unpacker = None
            raise msgpack.ExtraData(None, data[end:end + 16])
        self._at += n


def limits(n: int, max_list: int) -> dict:
    """msgpack's limits for a message of n bytes: from its length (a list cannot have more elements than the
    message has bytes) and the protocol (maps and strs are small; no ext type is used)."""
    return dict(max_bin_len=n, max_str_len=min(n, MAX_STR_BYTES), max_array_len=min(n, max_list),
                max_map_len=min(n, MAX_MAP_LEN), max_ext_len=0)


def refusal(e: Exception, n: int) -> ProtocolError:
    """The ProtocolError of a message msgpack refused: too_large for a limit above, else bad_message."""
    if type(e) is ValueError and "exceeds max_" in str(e) and declared(e) <= n:  # a limit above
        # (a declared length beyond the message's bytes is a truncated or malformed message)
        return ProtocolError(TOO_LARGE, f"message of {n} bytes holds a list, map or str longer than this daemon "
                                        f"decodes ({e}); send arrays in the binary form {{dtype, shape, data}}")
    return ProtocolError(BAD_MESSAGE, undecodable(e))


def declared(e: Exception) -> int:
    """The length N of msgpack's "N exceeds max_..._len(M)" (0 if the text is not that)."""
    head = str(e).split(" exceeds", 1)[0].rsplit(" ", 1)[-1]
    return int(head) if head.isdigit() else 0


def undecodable(e: Exception) -> str:
    """The message of a payload msgpack refused. msgpack bounds a container's declared length by the
    payload's size, so a truncated map or array surfaces as "N exceeds max_map_len(M)": say what it means."""
    text = f"{type(e).__name__}: {e}"
    if "exceeds max_" in str(e) or "incomplete input" in str(e) or isinstance(e, msgpack.OutOfData):
        return f"not a valid msgpack message: truncated or malformed (a map, array, str or bin declares more " \
               f"items or bytes than the message holds; {text})"
    return f"not a valid msgpack message ({text})"


class OverBudget(Exception):
    pass


def charge_limit(n: int) -> int:
    """What the containers of a message of n bytes may be charged: the decode bound less the n bytes that its
    strs and bins may hold (see DECODE_FACTOR)."""
    return (DECODE_FACTOR - 1) * n + DECODE_SLACK


class Budget:
    """The decode charge of one message: msgpack calls list() and map() as it completes each container, so a
    message over its budget stops being decoded at the first container past it. A list of str ids (its first
    element a str) is charged as strs without looking at each; another list pays for the strs it holds by one
    C-level count (a str in a list of numbers is an error, but its object is built before that is known)."""

    __slots__ = ("left", "bound")

    def __init__(self, limit: int, bound: int):
        self.left, self.bound = limit, bound

    def list(self, v):
        n = len(v)
        strs = n if n and type(v[0]) is str else countOf(map(type, v), str) if n else 0
        charge = 56 + 48 * n + 40 * strs
        if charge > self.left and strs:  # near the bound: what the strs take (an ASCII id's header is 49 B, not 80)
            charge = 56 + 8 * n + sum(map(sys.getsizeof, v)) - sum(len(s) for s in v if type(s) is str)
        self.left -= charge
        if self.left < 0:
            raise OverBudget(self.bound)
        return v

    def map(self, v):
        self.left -= 232 + 200 * len(v) + 40 * countOf(map(type, v.values()), str)
        if self.left < 0:
            raise OverBudget(self.bound)
        return v
