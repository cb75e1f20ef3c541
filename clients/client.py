"""Synchronous client: one DEALER socket, replies matched by request id, pipelining, Lazy Pirate retries.

    with Client("tcp://127.0.0.1:5555") as c:
        y = c.step("pump-7", x)
        with c.pipeline() as p:                 # many requests in flight, one round trip
            for i, x in items: p.step(i, x)
        ys = p.results                          # PipelineError if any failed: its .results say what was applied

A pipeline sends each run of 16 or more one-sample steps as one step_many, each step getting the result or
error it would get alone, in the same order (clients/coalesce.py); pipeline(merge_steps=False) sends one
request per call.

Timeouts are on by default. After a timeout the socket is replaced (dropping queued requests and late
replies), and only idempotent ops (protocol.IDEMPOTENT_OPS) and steps that carry a sequence number are resent;
a plain step is never resent, because it may already have been applied. ZeroMQ reconnects by itself, so the
same Client keeps working across a daemon restart. A Client is for one thread at a time.

Exactly-once steps: Client(address, exactly_once=True) numbers each stream's steps itself (reading a stream's
number from the daemon the first time it steps it) and resends a step after a timeout or a daemon restart; the
daemon applies it once and answers a resend with the original outputs. A step that finds the daemon at another
number raises SequenceError (.seq: the daemon's number, .expected) and forgets the client's number for that
stream, so the next step continues from the daemon's.
"""
from __future__ import annotations

import itertools
import time

import zmq

from lstm_stream import protocol as P

from ._api import MISSING, Api, Call, _array, _y, result_of, sent_as_is, usual_y
from .coalesce import Rounds
from .errors import ClientClosed, ClientError, PipelineError, SequenceError, Timeout
from .keys import apply as apply_keys, curve_keys
from .replies import ReplyReader

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT = 5.0   # seconds per call (per round trip of a pipeline: one, or one per merged run of steps)
DEFAULT_RETRIES = 2     # extra attempts for idempotent ops after a timeout
DEFAULT_HWM = 10_000    # messages queued per direction before sends wait (then time out)
RECEIVE_EVERY = 64      # a long pipeline takes in the replies that came, every this many sends (a try costs ~2 µs)


def check_options(timeout, retries, hwm):
    """Validate the keyword options shared by Client and AsyncClient."""
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not (isinstance(retries, int) and retries >= 0):
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if not (isinstance(hwm, int) and hwm > 0):
        raise ValueError(f"hwm must be a positive int, got {hwm!r}")


def resendable(call: Call) -> bool:
    """Whether a call may be sent again after a timeout: an idempotent op, or a step carrying its seq."""
    return call.op in P.IDEMPOTENT_OPS or "seq" in call.fields



class NumberedSteps:
    """step() for a client made with exactly_once=True (Client, ClusterClient): each stream's steps numbered
    here (its number read from the daemon the first time), so that a resend is applied once; a SequenceError
    forgets the stream's number, so the next step continues from the daemon's. Needs self.exactly_once and
    self._seqs ({stream: its number after the last step acknowledged})."""

    def step(self, stream, x, *, seq: int | None = None):
        if not self.exactly_once or seq is not None:
            return super().step(stream, x, seq=seq)
        now = self._seqs.get(stream)
        if now is None:
            now = self.seq(stream)
        x = _array(x)
        after = now + (1 if x.ndim == 1 else len(x))
        try:
            y = super().step(stream, x, seq=after)
        except SequenceError:
            self._seqs.pop(stream, None)
            raise
        self._seqs[stream] = after
        return y

    step.__doc__ = Api.step.__doc__


class Client(NumberedSteps, Api):
    """Blocking client of one lstm-stream daemon (tcp:// or ipc:// address)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, hwm: int = DEFAULT_HWM,
                 max_message_bytes: int = P.MAX_MESSAGE_BYTES, server_key=None, client_keys=None,
                 context: zmq.Context | None = None,
                 exactly_once: bool = False, model: str | None = None):
        check_options(timeout, retries, hwm)
        self._curve = curve_keys(server_key, client_keys)  # CURVE (clients/keys.py): both, or neither
        self.address, self.timeout, self.retries, self.hwm = address, float(timeout), retries, hwm
        self.exactly_once = bool(exactly_once)
        self._seqs: dict = {}  # stream -> its number after the last step acknowledged (exactly_once)
        self._ctx = context or zmq.Context.instance()
        self.model = model  # the model every request names (a daemon of several); None: the daemon's default
        self._codec = P.Codec(max_message_bytes=max_message_bytes, model=model)
        self._read = ReplyReader(self._codec)
        self._ids = itertools.count(1)
        self._sock = None
        self._open()

    def _open(self):
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))  # bounds the blocking recv of one call
        apply_keys(sock, self._curve)
        sock.connect(self.address)
        self._sock = sock
        self._poller = zmq.Poller()  # made once: Socket.poll() builds a Poller per call (~5 µs)
        self._poller.register(sock, zmq.POLLIN)

    def _reopen(self):
        self._sock.close(0)
        self._open()

    def close(self) -> None:
        """Close the socket (pending requests are abandoned)."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Client({self.address!r}, timeout={self.timeout})"

    def pipeline(self, *, merge_steps: bool = True) -> "Pipeline":
        """A Pipeline: queue calls, send them all at once, get results in order. merge_steps: send each run of
        16 or more consecutive steps without seq as one step_many, with the same results (clients/coalesce.py);
        False sends one request per call."""
        return Pipeline(self, merge_steps=merge_steps)

    # ---- the round trip ----------------------------------------------------------------------------
    def step(self, stream, x, *, seq: int | None = None):
        if seq is None and not self.exactly_once and sent_as_is(x):  # the usual call: the short path
            return self._step_plain(stream, x)
        return super().step(stream, x, seq=seq)

    step.__doc__ = Api.step.__doc__

    def _step_plain(self, stream, x):
        """step(stream, x) of an array sent as it is, without a seq: what Api.step and _run do for it, their
        general cases left out: the request from its template, one round trip (a plain step is never resent;
        a timeout replaces the socket, as in _run), y read straight from the reply's bytes when it is the usual
        reply (ReplyReader.step_y). Beside a busy daemon the layers it skips cost ~10 µs of a ~200 µs round
        trip, and the reply map it does not build ~5 µs more of a ~110 µs one: work done just after a blocking
        recv wakes up runs on cold caches, several times slower than in a loop (docs/benchmarks.md)."""
        rid = next(self._ids)
        data = self._codec.step_request(rid, stream, x)
        if data is None:
            data = self._codec.request("step", rid, {"stream": stream, "x": x})
        deadline = time.monotonic() + self.timeout
        try:
            got = self._send_recv(rid, data, "step")
            y = self._read.step_y(got, rid)
            if y is not None:
                return y
            reply = self._reply(rid, got, "step", None, deadline)
        except Timeout:
            self._reopen()
            raise
        y = usual_y(reply)
        return y if y is not None else Call("step", {"stream": stream, "x": x}, _y).finish(reply)

    def _run(self, call: Call):
        attempts = 1 + (self.retries if resendable(call) else 0)
        for attempt in range(attempts):
            try:
                reply = self._roundtrip_one(call)
            except Timeout:
                self._reopen()
                if attempt == attempts - 1:
                    raise
                continue
            return call.finish(reply)

    def _roundtrip_one(self, call: Call) -> dict:
        """_roundtrip([call])[0], shorter (see _exchange)."""
        rid = next(self._ids)
        return self._exchange(rid, self._codec.request(call.op, rid, call.fields), call.op, call)

    def _exchange(self, rid, data: bytes, op: str, call: Call | None = None) -> dict:
        """Send one request (request id rid) and return its reply: one blocking recv (bounded by RCVTIMEO) that
        is, but for a late reply to an earlier call, the reply; Timeout otherwise."""
        deadline = time.monotonic() + self.timeout
        return self._reply(rid, self._send_recv(rid, data, op, call), op, call, deadline)

    def _send_recv(self, rid, data: bytes, op: str, call: Call | None = None) -> bytes:
        """Send one request and return the first message that comes back (one blocking recv, bounded by
        RCVTIMEO); Timeout if none comes."""
        sock = self._sock
        if sock is None:
            raise ClientClosed(f"{self!r} is closed")
        try:
            sock.send(data)
            return sock.recv()
        except zmq.Again:
            raise _timeout(f"no reply from {self.address} within {self.timeout} s for 1 request(s) ({op})",
                           [call], {rid: call}, {}) from None

    def _reply(self, rid, data: bytes, op: str, call: Call | None, deadline: float) -> dict:
        """The reply to request rid, given the first message that came back after sending it: that one, or if
        it is a late reply to an earlier call, the next ones until ours (until `deadline`: Timeout then)."""
        reply = self._read(data)
        if reply["id"] == rid:
            return reply
        want, got = {rid: call}, {}  # a late reply to an earlier call: wait for ours, within the same time
        while not got:
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(want, got, left):
                raise _timeout(f"no reply from {self.address} within {self.timeout} s for 1 request(s) "
                               f"({op})", [call], want, got)
        return got[rid]

    def _roundtrip(self, calls, parse=None) -> list:
        """Send every call, then wait (one deadline for all) for their replies; replies in call order, or
        parse(call, reply) of each, taken as each reply comes (while the daemon still works on later ones)."""
        if self._sock is None:
            raise ClientClosed(f"{self!r} is closed")
        deadline = time.monotonic() + self.timeout
        want, got = {}, {}
        for call in calls:
            rid = next(self._ids)
            want[rid] = call
            try:
                self._sock.send(self._codec.request(call.op, rid, call.fields))
            except zmq.Again:
                raise _timeout(f"could not send {call.op!r} to {self.address} within {self.timeout} s: the "
                               "daemon is unreachable or not keeping up (both send queues are full)",
                               calls, want, got) from None
            if len(want) % RECEIVE_EVERY == 0:  # keep our receive queue short while sending a long pipeline
                self._receive(want, got, 0.0, parse)
        while len(got) < len(want):
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(want, got, left, parse):
                ops = sorted({c.op for r, c in want.items() if r not in got})
                raise _timeout(f"no reply from {self.address} within {self.timeout} s for {len(want) - len(got)} "
                               f"request(s) ({', '.join(ops)})", calls, want, got)
        return [got[r] for r in want]

    def _receive(self, want, got, wait, parse=None) -> bool:
        """Receive ready replies (waiting up to `wait` s for the first) into got (parse(call, reply) of each
        if parse is given); stale ids are dropped."""
        if wait > 0 and not self._poller.poll(wait * 1000):
            return False
        sock, received = self._sock, False
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return received or wait > 0  # (after a poll that saw a message, True as before)
            received = True
            reply = self._read(data)
            rid = reply["id"]
            if rid in want:
                got[rid] = reply if parse is None else parse(want[rid], reply)
                if len(got) == len(want):  # all in: no further recv (its zmq.Again costs microseconds)
                    return True


def _timeout(message, calls, want, got) -> Timeout:
    """A Timeout whose `replies` are the replies (or parsed results) that did arrive, in call order (MISSING
    for the others)."""
    e = Timeout(message)
    e.replies = [got.get(r, MISSING) for r in want] + [MISSING] * (len(calls) - len(want))
    return e


class Queued(Api):
    """The queue of Pipeline and AsyncPipeline: each Api method queues its call and returns the pipeline."""

    def __init__(self, client, *, merge_steps: bool = True):
        self._client = client
        self._merge = merge_steps  # runs of plain steps sent as step_many (clients/coalesce.py)
        self._calls: list = []
        self.results: list | None = None

    def _run(self, call: Call):
        self._calls.append(call)
        return self

    def __len__(self):
        return len(self._calls)


class Pipeline(Queued):
    """Calls queued by the Api methods (which return the pipeline), sent together by execute().

    The calls are independent: one that fails does not stop the others. execute() returns every result in
    order, or raises PipelineError if any call failed; either way `results` then holds every call's result,
    the exception of each failed call in its place."""

    def execute(self, *, return_exceptions: bool = False) -> list:
        """Send all queued calls, wait for every reply, return their results in order (also in `results`).
        If any call failed, the others were still applied: PipelineError is raised, whose `results` (like the
        pipeline's) hold every result with the failed calls' exceptions in their place; with
        return_exceptions=True that list is returned instead. Never retried: on Timeout the client's socket is
        replaced and the Timeout raised; `results` then has the replies that came, the Timeout in place of the
        others (those calls may or may not have been applied)."""
        calls, self._calls = self._calls, []
        rounds = Rounds(calls) if self._merge else None
        try:
            if rounds is not None and rounds.merged:
                results = self._merged(rounds)
            else:
                results = self._client._roundtrip(calls, result_of)
        except ClientError as e:  # Timeout, ClientClosed, an unreadable reply: the whole round trip failed
            if isinstance(e, Timeout):
                self._client._reopen()
            done = getattr(e, "replies", None) or [MISSING] * len(calls)
            self.results = [e if r is MISSING else r for r in done]
            raise
        self.results = results
        return settled(results, return_exceptions)

    def _merged(self, rounds: Rounds) -> list:
        """The calls' results, runs of plain steps sent as step_many (Rounds: a round trip per run)."""
        while (sent := rounds.next()) is not None:
            try:
                got = self._client._roundtrip(sent, result_of)
            except ClientError as e:
                e.replies = rounds.partial(getattr(e, "replies", None) or [MISSING] * len(sent))
                raise
            rounds.take(got)
        return rounds.results

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and self._calls:
            self.execute()


def settled(results: list, return_exceptions: bool) -> list:
    """A pipeline's results, or PipelineError if any is an exception (unless return_exceptions)."""
    if not return_exceptions and any(isinstance(r, Exception) for r in results):
        raise PipelineError(results) from next(r for r in results if isinstance(r, Exception))
    return results
