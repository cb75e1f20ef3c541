"""asyncio client: the same methods as Client, awaited; any number of requests in flight on one socket.

    async with AsyncClient("tcp://127.0.0.1:5555") as c:
        ys = await asyncio.gather(*(c.step(i, x) for i, x in items))   # pipelined, matched by id

One reader task receives every reply and resolves the waiting call by request id. Each call has its own
timeout; idempotent ops are resent after one (with a new id, so a late reply to the old one is ignored);
steps never are. Use an AsyncClient from one event loop.

With merge_steps=True (the default) the plain steps made in one turn of the event loop (a gather's tasks,
tasks woken by one reply) go out as one step_many, each step getting the result it would get alone
(clients/outbox.py); a pipeline's runs of steps likewise (clients/coalesce.py). merge_steps=False sends one
request per call.

Per call it costs a future and a dict entry: requests go out through the plain (non-future) socket when its
queue has room, and the calls' deadlines (all `timeout` after their send, so in send order) sit in one queue
that a single timer walks, instead of a timer per call: zmq.asyncio's send and a call_later per call took
more time than the rest of a call together. The calls sent in one turn of the event loop (the tasks of a
gather) share one look for replies that are already in; a pipeline's calls share one future and one deadline.
A step's reply is read from its template (clients/replies.py).
"""
from __future__ import annotations

import asyncio
import collections
import itertools

import zmq
import zmq.asyncio

from lstm_stream import protocol as P

from ._api import Api, Call
from .coalesce import Rounds
from .outbox import Outbox
from .client import (DEFAULT_ADDRESS, DEFAULT_HWM, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MISSING, Queued, resendable,
                     check_options, result_of, settled)
from .errors import BadReply, ClientClosed, ClientError, Timeout
from .keys import apply as apply_keys, curve_keys
from .replies import ReplyReader


_POLLIN = int(zmq.POLLIN)  # plain ints: `&` on the enum costs microseconds, a flag passed as one ~0.1 µs
_NOBLOCK = int(zmq.NOBLOCK)


class AsyncClient(Api):
    """asyncio client of one lstm-stream daemon; mirrors Client method for method (each one awaited)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, hwm: int = DEFAULT_HWM,
                 max_message_bytes: int = P.MAX_MESSAGE_BYTES, server_key=None, client_keys=None,
                 context: zmq.asyncio.Context | None = None, model: str | None = None,
                 merge_steps: bool = True):
        check_options(timeout, retries, hwm)
        self._curve = curve_keys(server_key, client_keys)  # CURVE (clients/keys.py): both, or neither
        self.address, self.timeout, self.retries, self.hwm = address, float(timeout), retries, hwm
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self.model = model  # the model every request names (a daemon of several); None: the daemon's default
        self._codec = P.Codec(max_message_bytes=max_message_bytes, model=model)
        self._read = ReplyReader(self._codec)
        self._ids = itertools.count(1)
        self._pending: dict = {}     # request id -> Future of its reply
        self._batched: dict = {}     # request id -> (_Batch, index) of a pipelined call
        self._deadlines: collections.deque = collections.deque()  # (loop time, request id, op), send order
        self._sweeper = None         # the timer that fails expired calls (see _sweep)
        self._sock = self._raw = None
        self._reader = None
        self._loop = None            # the event loop the socket was opened on
        self._look_due = False       # a _look is scheduled (see _look_soon)
        self._closed = False
        self._outbox = Outbox(self) if merge_steps else None  # steps of one loop turn as step_many (outbox.py)

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
            apply_keys(sock, self._curve)
            sock.connect(self.address)
            self._sock = sock
            self._raw = zmq.Socket.shadow(sock.underlying)  # the same socket, plain (non-future) calls
            self._loop = asyncio.get_running_loop()
            self._reader = self._loop.create_task(self._read_loop())

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
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
        """Calls made and not yet answered (sent, or queued to be sent at the end of this loop turn)."""
        outbox = self._outbox
        return len(self._pending) - (outbox is not None and outbox.run_rid in self._pending)

    # ---- the round trip ----------------------------------------------------------------------------
    async def _run(self, call: Call):
        attempts = 1 + (self.retries if resendable(call) else 0)
        exchange = self._exchange if self._outbox is None else self._outbox.submit
        for attempt in range(attempts):
            try:
                reply = await exchange(call)
            except Timeout:
                if attempt == attempts - 1:
                    raise
                continue
            return call.finish(reply)

    async def _exchange(self, call: Call) -> dict:
        """The call's reply map, the call sent at once (merge_steps=False; with it, Outbox.submit)."""
        rid, fut, data = self._register(call)
        try:
            try:
                self._raw.send(data, _NOBLOCK)
            except zmq.Again:
                await self._send_when_room(data, fut)
            self._look_soon()
            return await fut
        finally:
            self._pending.pop(rid, None)

    def pipeline(self, *, merge_steps: bool = True) -> "AsyncPipeline":
        """An AsyncPipeline: queue calls, send them together, await every result in order. merge_steps: as in
        Client.pipeline (runs of steps sent as step_many, the same results; clients/coalesce.py)."""
        return AsyncPipeline(self, merge_steps=merge_steps)

    async def _roundtrip_many(self, calls, parse) -> list:
        """Send every call, then await their results: parse(call, reply) of each (taken by the reader as each
        reply comes) in call order. One future and one deadline for them all (see _Batch): a Timeout if not
        every reply came in time, its `replies` holding the results that came (MISSING for the others)."""
        if not calls:
            return []
        if self._outbox is not None and self._outbox.busy:  # after the calls made before (a run's resends too)
            try:
                await asyncio.wait_for(self._outbox.drained(), self.timeout)
            except asyncio.TimeoutError:
                raise Timeout(f"the calls made before {len(calls)} pipelined call(s) were not all sent to "
                              f"{self.address} within {self.timeout} s; the pipeline was not sent") from None
        batch = _Batch(calls, parse)
        key, fut = self._register_batch(batch)
        batched, codec, raw = self._batched, self._codec, self._raw
        rids = []
        try:
            for i, call in enumerate(calls):
                rid = next(self._ids)
                rids.append(rid)
                batched[rid] = (batch, i)
                data = codec.request(call.op, rid, call.fields)
                try:
                    raw.send(data, _NOBLOCK)
                except zmq.Again:
                    await self._send_when_room(data, fut)
                if fut.done():  # timed out (or the client closed) while waiting for room to send
                    break
            self._look()
            await fut
        except ClientError as e:
            e.replies = list(batch.results)
            raise
        finally:
            self._pending.pop(key, None)
            for rid in rids:
                batched.pop(rid, None)
        return batch.results

    def _register(self, call: Call):
        """(request id, future of its reply, encoded request) of a call about to be sent; its deadline joins
        the sweep queue."""
        self._ensure_open()
        rid = next(self._ids)
        fut = self._pending[rid] = self._loop.create_future()
        self._deadline(rid, repr(call.op))
        return rid, fut, self._codec.request(call.op, rid, call.fields)

    def _register_batch(self, batch: "_Batch"):
        """(key, future) of a pipeline's calls: one entry in _pending, one deadline."""
        self._ensure_open()
        key = ("pipeline", next(self._ids))
        fut = self._pending[key] = batch.fut = self._loop.create_future()
        self._deadline(key, f"{len(batch.calls)} pipelined call(s)")
        return key, fut

    def _deadline(self, key, what: str) -> None:
        """Fail key's future with Timeout `timeout` s from now unless answered (one timer for all: _sweep)."""
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][1] not in pending:  # answered calls at the head: forget them
            deadlines.popleft()
        deadlines.append((self._loop.time() + self.timeout, key, what))
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(deadlines[0][0], self._sweep)

    def _look_soon(self):
        """Look for ready replies once this loop iteration's calls have been sent (see _look): one look
        for a burst of calls (asyncio.gather's tasks all send in one iteration) instead of one per call."""
        if not self._look_due:
            self._look_due = True
            self._loop.call_soon(self._look)

    def _look(self):
        """After plain sends: hand over the replies that are ready (a plain send may take the socket's
        edge-triggered wake-up from the reader, which would then sleep on them)."""
        self._look_due = False
        if self._raw is not None and self._raw.getsockopt(zmq.EVENTS) & _POLLIN:
            self._drain()

    async def _send_when_room(self, data, fut):
        """Send through the future socket, waiting for room in its queue until the call's deadline fails fut."""
        sent = self._sock.send(data)
        if not sent.done():
            await asyncio.wait([sent, fut], return_when=asyncio.FIRST_COMPLETED)
            if not sent.done():
                sent.cancel()
        if sent.done() and not sent.cancelled():
            sent.result()  # raises a socket error, if any

    def _sweep(self):
        """The one timer: fail every call whose deadline has passed with Timeout, then wait for the next."""
        loop, deadlines, pending = self._loop, self._deadlines, self._pending
        now = loop.time()
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in pending):
            _, rid, op = deadlines.popleft()
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(Timeout(f"no reply from {self.address} within {self.timeout} s for {op}"))
        self._sweeper = loop.call_at(deadlines[0][0], self._sweep) if deadlines else None

    async def _read_loop(self):
        """Receive replies for as long as the client is open and hand each to the call that waits for it."""
        try:
            while True:
                self._dispatch(await self._sock.recv())
                self._drain()  # then everything ready, without a future per message
        except asyncio.CancelledError:
            raise
        except Exception as e:  # socket closed under us, or a bug: no one must wait forever
            self._fail_pending(ClientError(f"the reply reader stopped: {e!r}"))

    def _drain(self):
        """Hand every reply that is ready to its call (plain non-blocking receives)."""
        raw = self._raw
        while True:
            try:
                data = raw.recv(_NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(data)

    def _dispatch(self, data):
        try:
            reply = self._read(data)
        except BadReply:
            return  # cannot tell whose it is; that call will time out
        rid = reply["id"]
        fut = self._pending.pop(rid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(reply)
            return
        entry = self._batched.pop(rid, None)
        if entry is not None:
            entry[0].take(entry[1], reply)

    def _fail_pending(self, exc):
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._batched.clear()
        if self._outbox is not None:
            self._outbox.clear()


class _Batch:
    """A pipeline's calls in flight: the reader puts each one's parse(call, reply) in its place in `results`
    and resolves the one future when the last comes (a future per call cost more than its parse)."""

    __slots__ = ("calls", "parse", "results", "left", "fut")

    def __init__(self, calls, parse):
        self.calls, self.parse = calls, parse
        self.results = [MISSING] * len(calls)
        self.left = len(calls)
        self.fut = None

    def take(self, i: int, reply: dict) -> None:
        if self.results[i] is MISSING and not self.fut.done():
            self.results[i] = self.parse(self.calls[i], reply)
            self.left -= 1
            if not self.left:
                self.fut.set_result(None)


class AsyncPipeline(Queued):
    """Client.pipeline's twin: calls queued by the Api methods (which return the pipeline), sent together by
    `await execute()` (or at the end of `async with`), without a task per call.

    The calls are independent: one that fails does not stop the others. execute() returns every result in
    order, or raises PipelineError if any call failed; either way `results` then holds every call's result,
    the exception of each failed call in its place. Never retried: a call with no reply in time has a
    Timeout in its place, and that Timeout is raised (it may or may not have been applied)."""

    async def execute(self, *, return_exceptions: bool = False) -> list:
        """Send all queued calls, await every reply, return their results in order (also in `results`)."""
        calls, self._calls = self._calls, []
        rounds = Rounds(calls) if self._merge else None
        try:
            if rounds is not None and rounds.merged:
                results = await self._merged(rounds)
            else:
                results = await self._client._roundtrip_many(calls, result_of)
        except ClientError as e:  # a Timeout, the client closed, the reader failed
            done = getattr(e, "replies", None) or [MISSING] * len(calls)
            self.results = [e if r is MISSING else r for r in done]
            raise
        self.results = results
        return settled(results, return_exceptions)

    async def _merged(self, rounds: Rounds) -> list:
        """Pipeline._merged's twin."""
        while (sent := rounds.next()) is not None:
            try:
                got = await self._client._roundtrip_many(sent, result_of)
            except ClientError as e:
                e.replies = rounds.partial(getattr(e, "replies", None) or [MISSING] * len(sent))
                raise
            rounds.take(got)
        return rounds.results

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, *exc):
        if exc_type is None and self._calls:
            await self.execute()
