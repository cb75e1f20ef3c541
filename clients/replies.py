"""Reading the daemon's replies: the common one by slicing its bytes, any other through the bounded decoder.

A step's success reply is by far the most common message a client receives, and the daemon encodes it from a
template (protocol.Codec.reply): the map {"v": 1, "id": <int>, "ok": true, "y": {dtype, shape, data}} in that
key order. Once a client has decoded one such reply in full, it knows the bytes that come between the id and
y's data for that dtype and shape, and reads every later one as: check the head, read the id, check the
length, copy the data. Anything else (an error, a duplicate's receipt, another op, another shape, another
encoder's key order) does not match byte for byte and goes through Codec.decode_reply as before, so the
result is the same map either way (tests/clients/test_replies.py).
"""
from __future__ import annotations

import numpy as np

from lstm_stream import protocol as P

from .errors import BadReply

MAX_SHAPES = 8   # y heads remembered (a step of T rows answers (T, O): T varies, so keep few)


class ReplyReader:
    """Bytes -> reply map (as Codec.decode_reply gives it, y already a numpy array when read from a template);
    BadReply if the bytes are not a reply. One per client, like its Codec."""

    def __init__(self, codec: P.Codec):
        self._codec = codec
        self._head = codec._ok_head  # map of 4, "v", 1, "id"
        self._ys: dict = {}  # bytes from after the id to y's data -> (dtype, shape, nbytes)
        self._pack = codec._packer.pack  # (an id as the daemon packs it: msgpack's shortest form)

    def __call__(self, data) -> dict:
        reply = self._from_template(data) if self._ys else None
        if reply is not None:
            return reply
        try:
            reply = self._codec.decode_reply(data)
        except P.ProtocolError as e:
            raise BadReply(f"unreadable reply from the daemon: {e}") from None
        if len(reply) == 4 and reply["ok"] is True and type(reply.get("y")) is dict \
                and len(self._ys) < MAX_SHAPES:
            self._learn(reply["y"])
        return reply

    def _from_template(self, data):
        head, k = self._head, len(self._head)
        if not data.startswith(head):
            return None
        size = P.INT_SIZES.get(data[k])
        if size is None:  # a str or nil id: decode in full
            return None
        rid, k = P.int_at(data, k, size), k + size
        y = self._y_from(data, k)
        return None if y is None else {"v": P.PROTOCOL_VERSION, "id": rid, "ok": True, "y": y}

    def step_y(self, data, rid: int):
        """y of the usual reply to the step whose request id is rid (an int >= 0), read straight from its bytes,
        or None: what __call__ gives as the reply's y when the reply is {"v": 1, "id": rid, "ok": true, "y": ...}
        from a known template, without the map around it (Client.step's short path). Any other bytes (another
        id, an error, a shape not learned yet) give None: read them with __call__."""
        prefix = self._head + self._pack(rid)
        return self._y_from(data, len(prefix)) if data.startswith(prefix) else None

    def _y_from(self, data, k: int):
        """y of a reply whose bytes from k on are a learned y template and its data: an array of its own,
        writable (a view of the bytes would be read-only); None if they are not."""
        for y_head, (dtype, shape, nbytes) in self._ys.items():
            start = k + len(y_head)
            if len(data) == start + nbytes and data.startswith(y_head, k):
                # over a bytearray: one numpy array made, not two as frombuffer(...).copy() (0.38 vs 0.71 µs)
                y = np.frombuffer(bytearray(data[start:]), dtype)
                return y if len(shape) == 1 else y.reshape(shape)
        return None

    def _learn(self, y_map: dict) -> None:
        """Remember the template bytes of a reply's y (a wire array map) for its dtype and shape."""
        try:
            y = P.to_array(y_map, "y", copy=False)
        except P.ProtocolError:
            return  # a bad y: the call's parse reports it
        head = self._codec._array_head(P._OK_Y_KEYS, y)
        if head is not None:
            self._ys[head] = (y.dtype, y.shape, y.nbytes)
