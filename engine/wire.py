"""The wire face of EngineCore: encoded requests in, encoded replies out (the server's half without sockets).

    wire = WireCore(core)
    data = wire.submit(tag, payload)   # decode and queue; encoded error reply if refused at once
    for tag, data in wire.step(): ...  # core.step(), each Reply encoded

Decoding (bounds, field kinds, arrays) is lstm_stream.protocol's; a payload it refuses never reaches the core,
but is counted there and answered with the error's code and the request id when it was readable.
"""
from __future__ import annotations

import logging

from lstm_stream import protocol as P

from .logs import repeating

log = logging.getLogger("lstm_stream.engine")


class WireCore:
    """An EngineCore behind the msgpack wire format; one per socket owner (its Codec is not thread-safe)."""

    def __init__(self, core):
        self.core = core
        self.codec = P.Codec(max_message_bytes=core.config.max_message_bytes)
        core.decode_stats = self.codec.id_list_stats  # (info's decoded_id_lists)
        core.template_stats = self.codec.template_stats  # (info's decoded_templates)

    # The core's state, for the server loop and tests.
    streams = property(lambda self: self.core.streams, doc="The core's Streams.")
    config = property(lambda self: self.core.config, doc="The core's EngineConfig.")
    metrics = property(lambda self: self.core.metrics, doc="The core's counters.")
    pending = property(lambda self: self.core.pending, doc="Requests queued and not yet served.")

    def housekeep(self, now: float | None = None) -> float:
        """The core's housekeeping; returns the next deadline."""
        return self.core.housekeep(now)

    def submit(self, tag, data, user=None) -> bytes | None:
        """Decode one request and queue it; the encoded error reply when it is refused at once. `user`: the
        peer's CURVE user id (EngineCore.submit checks its role), None without CURVE."""
        try:
            req = self.codec.decode_request(data)
        except P.ProtocolError as e:  # a client's bug: logged once, then counted, per code (engine/logs.py)
            log.warning("refused a message that is not a valid request (%s): %s", e.code, e.message,
                        extra=repeating("bad_message", e.code, code=e.code))
            return self.encode(self.core.refuse(e.request_id, e.code, e.message))
        reply = self.core.submit(tag, req, len(data), user)
        return None if reply is None else self.encode(reply)

    def reject(self, code: str, message: str) -> bytes:
        """The encoded error reply to a message the transport could not hand over (counted by the core)."""
        return self.encode(self.core.refuse(None, code, message))

    def step(self) -> list:
        """[(tag, encoded reply)] of one core turn, in arrival order."""
        return [(tag, self.encode(reply)) for tag, reply in self.core.step()]

    def encode(self, reply) -> bytes:
        """A Reply as bytes; a result the wire cannot carry (a bug) becomes an internal error reply."""
        try:
            return self.codec.reply(reply)
        except Exception as e:
            log.error("cannot encode the reply to request %r", reply.id, exc_info=e, extra=repeating("encode_failed"))
            return self.codec.reply(self.core.refuse(reply.id, P.INTERNAL, f"internal error "
                                                     f"({type(e).__name__}); the daemon logged it", counted=True))

    def call(self, msg: dict) -> dict:
        """One request map through the wire and the core, its decoded reply map back (tests, tools)."""
        reply = self.submit(None, self.codec.encode(msg))
        if reply is None:
            replies = self.step()
            while not replies and self.core.snapshots_waiting:  # a `snapshot` request's background write
                self.core.settle_snapshots()
                replies = self.step()
            reply = replies[-1][1]
        return self.codec.decode(reply)
