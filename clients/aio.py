"""asyncio client: the same methods as Client, awaited; any number of requests in flight on one socket.

    async with AsyncClient("tcp://127.0.0.1:5555") as c:
        ys = await asyncio.gather(*(c.step(i, x) for i, x in items))   # pipelined, matched by id

One reader task receives every reply and resolves the waiting call by request id. Each call has its own
timeout; idempotent ops are resent after one (with a new id, so a late reply to the old one is ignored);
steps never are. Use an AsyncClient from one event loop.
"""
from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio

from lstm_stream import protocol as P

from ._api import Api, Call, check_reply
from .client import DEFAULT_ADDRESS, DEFAULT_HWM, DEFAULT_RETRIES, DEFAULT_TIMEOUT, check_options, decode_reply
from .errors import BadReply, ClientClosed, ClientError, Timeout


class AsyncClient(Api):
    """asyncio client of one lstm-stream daemon; mirrors Client method for method (each one awaited)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, hwm: int = DEFAULT_HWM,
                 max_message_bytes: int = P.MAX_MESSAGE_BYTES, context: zmq.asyncio.Context | None = None):
        check_options(timeout, retries, hwm)
        self.address, self.timeout, self.retries, self.hwm = address, float(timeout), retries, hwm
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._codec = P.Codec(max_message_bytes=max_message_bytes)
        self._ids = itertools.count(1)
        self._pending: dict = {}     # request id -> Future of its reply
        self._sock = self._raw = None
        self._reader = None
        self._closed = False

    def _ensure_open(self):
        if self._closed:
            raise ClientClosed(f"{self!r} is closed")
        if self._reader is not None and self._reader.done():  # the reader died: start over on a new socket
            self._sock.close(0)
            self._sock = self._raw = self._reader = None
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            sock.connect(self.address)
            self._sock = sock
            self._raw = zmq.Socket.shadow(sock.underlying)  # the same socket, plain (non-future) calls
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        """Stop the reader, fail calls still waiting with ClientClosed, close the socket."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        self._fail_pending(ClientClosed(f"{self!r} was closed while waiting"))
        if self._sock is not None:
            self._sock.close(0)
            self._sock = self._raw = None
        if self._own_ctx:
            self._ctx.term()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        return f"AsyncClient({self.address!r}, timeout={self.timeout})"

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    # ---- the round trip ----------------------------------------------------------------------------
    async def _run(self, call: Call):
        attempts = 1 + (self.retries if call.op in P.IDEMPOTENT_OPS else 0)
        for attempt in range(attempts):
            try:
                reply = await self._roundtrip(call)
            except Timeout:
                if attempt == attempts - 1:
                    raise
                continue
            return call.parse(check_reply(reply))

    async def _roundtrip(self, call: Call) -> dict:
        self._ensure_open()
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[rid] = fut
        timer = loop.call_later(self.timeout, _expire, fut, call.op, self)
        try:
            data = self._codec.request(call.op, rid, call.fields)
            sent = self._sock.send(data)  # done at once unless our send queue is full
            if not sent.done():  # wait for room, bounded by the call's timer
                await asyncio.wait([sent, fut], return_when=asyncio.FIRST_COMPLETED)
                if not sent.done():
                    sent.cancel()
            if sent.done() and not sent.cancelled():
                sent.result()  # raises a socket error, if any
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)

    async def _read_loop(self):
        """Receive replies for as long as the client is open and hand each to the call that waits for it."""
        raw, pending = self._raw, self._pending
        try:
            while True:
                data = await self._sock.recv()
                while data is not None:  # then drain everything ready without a future per message
                    try:
                        reply = decode_reply(self._codec, data)
                    except BadReply:
                        reply = {"id": None}  # cannot tell whose it is; that call will time out
                    fut = pending.get(reply["id"])
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
                    try:
                        data = raw.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        data = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # socket closed under us, or a bug: no one must wait forever
            self._fail_pending(ClientError(f"the reply reader stopped: {e!r}"))

    def _fail_pending(self, exc):
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()


def _expire(fut, op, client):
    """The call's timer: fail its future with Timeout unless the reply came first."""
    if not fut.done():
        fut.set_exception(Timeout(f"no reply from {client.address} within {client.timeout} s for {op!r}"))
