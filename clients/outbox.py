"""AsyncClient's sends with merge_steps=True: plain steps made in one turn of the event loop go out as one
`step_many`, with the results they would get one by one.

A call made when nothing waits goes out at once, so a lone `await c.step(...)` costs what it did. The calls
made after it in the same turn of the event loop (the tasks of a gather, tasks woken by one reply) wait in
a queue until the turn ends; then the queue goes out in call order, each run of at least MIN_RUN plain steps
(no `seq`) as one `step_many` (clients/coalesce.py), each step given its row of the reply. Anything queued
after a run waits for the run's reply: a run the daemon refuses (all or nothing: nothing applied) is sent
again step by step before it, so each step gets its own result and calls keep their order. An `internal`
error is not resent (something may have been applied): every step of the run gets it.

Every call's deadline starts when it is made (waiting in the queue counts). A run has its own deadline; when
it passes, the run's steps not yet answered fail with Timeout (they may or may not have been applied) and the
queue moves on.
"""
from __future__ import annotations

import collections
import itertools

import zmq

from ._api import result_of
from .coalesce import MAX_RUN, MIN_RUN, refused_whole, row_reply, rows_or_error, run_end, take_run
from .errors import ClientError, ServerError

_NOBLOCK = int(zmq.NOBLOCK)


class Outbox:
    """The queue of one AsyncClient (its sockets, ids, futures and deadlines are the client's)."""

    def __init__(self, client):
        self._c = client
        self._queue: collections.deque = collections.deque()  # [rid, call, fut, alone], not sent, call order
        self._due = False      # a flush is scheduled for the end of this turn of the event loop
        self._sending = None   # the future of a send the socket had no room for: the queue waits for it
        self._run = None       # the future of the merged run in flight: the queue waits for its reply
        self.run_rid = None    # that run's request id (its future is in the client's _pending)
        self._drained: list = []  # futures of callers waiting for the queue to empty (drained())

    def submit(self, call):
        """The future of the call's reply map: the call sent now, or queued (see the module's docstring)."""
        c = self._c
        c._ensure_open()
        rid = next(c._ids)
        fut = c._pending[rid] = c._loop.create_future()
        c._deadline(rid, repr(call.op))
        if self._queue or self._due or self._blocked:
            self._queue.append([rid, call, fut, False])
            if not self._due and not self._blocked:
                self._schedule()
        else:
            self._send(rid, call, fut)
            self._schedule()  # the calls after this one in this turn wait for the flush
        return fut

    @property
    def busy(self) -> bool:
        """Whether calls wait to be sent, or a merged run or a full socket holds the queue."""
        return bool(self._queue) or self._due or self._blocked

    async def drained(self) -> None:
        """Return once every call made so far has been sent and no merged run waits for its reply (a pipeline
        sends its calls after that, so they keep their place after the calls made before them)."""
        while self.busy:
            fut = self._c._loop.create_future()
            self._drained.append(fut)
            await fut

    def _wake_drained(self):
        if self._drained and not (self._queue or self._blocked):
            waiters, self._drained = self._drained, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    def clear(self) -> None:
        """Forget the queue (the client failed or closed every pending call)."""
        self._queue.clear()
        self._sending = self._run = self.run_rid = None
        self._wake_drained()

    @property
    def _blocked(self) -> bool:
        return self._sending is not None or self._run is not None

    def _schedule(self):
        self._due = True
        self._c._loop.call_soon(self._flush)

    def _flush(self):
        """Send the queue in order, up to and including the first merged run (see the module's docstring)."""
        self._due = False
        queue, pending = self._queue, self._c._pending
        while queue and not self._blocked:
            rid, call, fut, _ = queue[0]
            if fut.done():  # cancelled or timed out while queued: never sent
                queue.popleft()
                pending.pop(rid, None)
            elif run_end(self._head(MIN_RUN), 0) < MIN_RUN:  # the head goes alone
                queue.popleft()
                self._send(rid, call, fut)
            else:
                self._take_run()
        self._c._look()
        self._wake_drained()

    def _take_run(self):
        """Send the run at the queue's head as one step_many (as much of it as one takes; the rest stays in
        front); its steps whose callers are gone are left out."""
        queue, pending = self._queue, self._c._pending
        head = self._head(MAX_RUN)
        members = []
        for _ in range(run_end(head, 0)):
            m = queue.popleft()
            if m[2].done():
                pending.pop(m[0], None)
            else:
                members.append(m)
        try:
            run = take_run([m[1] for m in members], 0, len(members)) if len(members) > 1 else None
        except Exception:  # a step that cannot be encoded (its stream id): each goes alone, to get its error
            run = None
        rest = members[len(run.steps):] if run is not None else members
        if run is None:
            for m in rest:
                m[3] = True
        queue.extendleft(reversed(rest))
        if run is not None:
            self._send_run(members[:len(run.steps)], run)

    def _head(self, n: int) -> list:
        """The first n queued calls; None for one that must go alone (a refused run's step)."""
        return [None if e[3] else e[1] for e in itertools.islice(self._queue, n)]

    def _send(self, rid, call, fut):
        c = self._c
        try:
            data = c._codec.request(call.op, rid, call.fields)
        except Exception as e:  # (a stream id msgpack cannot encode): this call's error, as Client raises it
            c._pending.pop(rid, None)
            if not fut.done():
                fut.set_exception(e)
            return
        try:
            c._raw.send(data, _NOBLOCK)
        except zmq.Again:  # the socket's queue is full: the rest waits until this one is sent
            sent = self._sending = c._sock.send(data)
            sent.add_done_callback(lambda f: self._sent(f, fut))
        except zmq.ZMQError as e:
            if not fut.done():
                fut.set_exception(ClientError(f"could not send {call.op!r}: {e}"))

    def _sent(self, sent, fut):
        self._sending = None
        if (sent.cancelled() or sent.exception() is not None) and not fut.done():
            why = "cancelled" if sent.cancelled() else sent.exception()
            fut.set_exception(ClientError(f"could not send: {why}"))
        self._resume()

    def _resume(self):
        """After what held the queue is done (a send, a run's reply): flush what waits at the end of this turn,
        and wake the callers of drained() if nothing does."""
        if self._queue and not self._due and not self._blocked:
            self._schedule()
        self._wake_drained()

    def _send_run(self, members: list, run):
        """Send run (the members' steps) as one step_many; its reply settles them (_settle)."""
        c = self._c
        rid = next(c._ids)
        fut = c._pending[rid] = c._loop.create_future()
        c._deadline(rid, f"{len(members)} merged step(s)")
        self.run_rid, self._run = rid, fut
        self._send(rid, run.call, fut)
        fut.add_done_callback(lambda f: self._settle(run, members, f))

    def _settle(self, run, members, fut):
        """A run's reply (or its Timeout): each step its row; a refusal (nothing applied): the steps queued again
        to go alone, ahead of everything; any other error (internal, a Timeout, a bad reply): each step gets it."""
        if self._run is fut:
            self._run = self.run_rid = None
        if fut.cancelled():
            outcome = ClientError("the merged steps were cancelled")
        elif fut.exception() is not None:
            outcome = fut.exception()
        else:
            outcome = rows_or_error(run, result_of(run.call, fut.result()))
        if refused_whole(outcome):
            for m in reversed(members):
                if not m[2].done():
                    self._queue.appendleft([m[0], m[1], m[2], True])
        else:
            pending = self._c._pending
            for k, (rid, _, f, _) in enumerate(members):
                pending.pop(rid, None)
                if f.done():
                    continue
                if isinstance(outcome, list):
                    f.set_result(row_reply(outcome[k], rid))
                elif isinstance(outcome, ServerError):  # the error reply: each call raises its own from it
                    f.set_result(fut.result())
                else:
                    f.set_exception(_copy(outcome))
        self._resume()


def _copy(e: BaseException) -> BaseException:
    """A fresh exception like e for each step that gets it (one raised in many tasks would share a traceback)."""
    try:
        return type(e)(*e.args)
    except TypeError:
        return e
