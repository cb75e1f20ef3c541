"""A pipeline's runs of plain steps sent as one `step_many` each, with the results the separate steps would get.

A `step` request costs the client, ZeroMQ and the daemon ~20 µs of CPU whatever it carries; a row of a
`step_many` costs the daemon ~1.5 µs (docs/benchmarks.md, the server table). So Pipeline and AsyncPipeline
(merge_steps=True, the default) send each run of at least MIN_RUN consecutive plain steps (one sample, no
`seq`) whose inputs have one shape and dtype as one `step_many` (x: the rows stacked) and hand each step its
row of the reply, through the step's own parse. What a caller sees is what the steps sent one by one give:

- the outputs, bit for bit (a stream's outputs do not depend on what shares its batch), of the same dtype and
  shape;
- each step's own error: `step_many` is all or nothing (docs/protocol.md), so a refused run was not applied,
  and its steps are sent again one by one, getting the errors and results they would have got. An `internal`
  error may come after something was applied, so it is not resent: every step of the run gets it;
- the order: a run is the last thing sent in its round trip, and the calls after it wait for its reply (one
  round trip per run), so a run resent one by one is still applied before them.

A step with `seq` or of several samples is sent as it is. The daemon counts a run as one request (`info`'s
counters, `--max-peer-pending`). A run stays within the daemon's default request limits (MAX_RUN new streams,
MAX_RUN_BYTES; see Run for its decode bounds), so a daemon started with `--max-request-new-streams` below
1,024 refuses large runs (`too_large`, resent one by one: the same results, more round trips), and one started
with `--max-message-bytes` below 64 KiB may refuse a run without naming it (its steps then time out): use
merge_steps=False with those.
"""
from __future__ import annotations

import numpy as np

from lstm_stream import protocol as P

from ._api import MISSING, Call, _y, result_of
from .errors import BadReply, ServerError

MIN_RUN = 16          # a shorter run is sent as separate steps: its wait for the reply would cost more than it saves
MAX_RUN = 1_024       # steps per step_many: the daemon's default --max-request-new-streams
MAX_RUN_BYTES = 64 * 1024  # one step_many's message at most: far below the daemon's --max-message-bytes (16 MiB)
_CODEC = P.Codec()    # to measure a run's message


def plain_step(call) -> bool:
    """Whether the call is a step that may go in a step_many: one sample (x of rank 1), no seq."""
    return call is not None and call.op == "step" and len(call.fields) == 2 and call.fields["x"].ndim == 1


def run_end(calls, k: int) -> int:
    """The end of the run from calls[k]: the plain steps whose x has calls[k]'s shape and dtype (k if calls[k]
    is not a plain step). Calls may hold None (a call that must go alone)."""
    if not plain_step(calls[k]):
        return k
    x0 = calls[k].fields["x"]
    shape, dtype, end = x0.shape, x0.dtype, k + 1
    while end < len(calls) and plain_step(calls[end]):
        x = calls[end].fields["x"]
        if x.shape != shape or x.dtype != dtype:
            break
        end += 1
    return end


def run_size(calls, k: int, end: int) -> int:
    """How many of calls[k:end] (a run) one step_many takes at most: MAX_RUN, ~MAX_RUN_BYTES of rows and ids."""
    row = calls[k].fields["x"].nbytes + 16  # a row, and an id of a few characters with its header
    return max(1, min(end - k, MAX_RUN, MAX_RUN_BYTES // row))


def take_run(calls, k: int, end: int):
    """The Run of calls[k:k + n] with n as large as run_size allows and its message within MAX_RUN_BYTES
    (halved while it is not: long ids); None if that leaves fewer than 2 steps."""
    n = run_size(calls, k, end)
    while n > 1:
        run = Run(calls[k:k + n], k)
        if len(_CODEC.request("step_many", 0, run.call.fields)) <= MAX_RUN_BYTES:
            return run
        n //= 2
    return None


class Run:
    """Consecutive plain steps of one input shape and dtype, and the step_many Call that stands for them (x: their
    rows stacked, one binary array), whose result is the list of their outputs' rows. The largest run the
    limits allow with the smallest wire size per row (1,024 one-character ids, rows of one float32) is within
    the daemon's decode bounds (protocol.DECODE_FACTOR; tested), so the daemon never refuses a run for its
    objects without naming it."""

    __slots__ = ("steps", "call", "start")

    def __init__(self, steps: list, start: int = 0):
        self.steps, self.start = steps, start  # (start: the first step's index in the pipeline's calls)
        fields = {"streams": [s.fields["stream"] for s in steps], "x": np.stack([s.fields["x"] for s in steps])}
        self.call = Call("step_many", fields, _rows)


def _rows(reply) -> list:
    return list(_y(reply))


def row_reply(y, rid=None) -> dict:
    """The reply a plain step gets, with y its row of a step_many's reply."""
    return {"v": P.PROTOCOL_VERSION, "id": rid, "ok": True, "y": y}


def step_result(step: Call, y):
    """A merged step's result: its own parse of the reply it would get (its row as y)."""
    return result_of(step, row_reply(y))


def split(calls: list) -> list:
    """calls in order as items: the index of a call sent alone, or a Run (runs of at least MIN_RUN plain steps
    of one kind, cut by take_run)."""
    items, k, n = [], 0, len(calls)
    while k < n:
        end = run_end(calls, k)
        if end - k < MIN_RUN:
            stop = max(end, k + 1)
            items.extend(range(k, stop))
            k = stop
            continue
        while k < end:
            run = take_run(calls, k, end)
            if run is None:
                items.append(k)
                k += 1
            else:
                items.append(run)
                k += len(run.steps)
    return items


class Rounds:
    """The round trips of a pipeline whose plain-step runs are merged, one after another:

        rounds = Rounds(calls)
        while (sent := rounds.next()) is not None:
            rounds.take(roundtrip(sent))       # parse(call, reply) of each sent call, in order

    Each round is the calls up to and including the next Run (as its step_many call), or a refused Run's steps
    again one by one. `results` ends with every call's result (parse of its reply) in call order; after a failed
    round trip, `partial(replies)` gives them with the replies that came (MISSING for the others)."""

    def __init__(self, calls: list):
        self.calls = calls
        self.results = [MISSING] * len(calls)
        self._items = split(calls)
        self._at = 0           # next item to send
        self._round = []       # what the round in flight stands for: calls' indices, then perhaps a Run
        self._resend = None    # the indices of a refused run's steps, to send one by one next
        self.merged = len(self._items) < len(calls)  # otherwise: one round trip of every call, as unmerged

    def next(self):
        """The calls of the next round trip (a list), or None when every call has its result."""
        if self._resend is not None:
            self._round, self._resend = self._resend, None
        else:
            self._round = []
            while self._at < len(self._items):
                item = self._items[self._at]
                self._at += 1
                self._round.append(item)
                if isinstance(item, Run):
                    break
        if not self._round:
            return None
        return [item.call if isinstance(item, Run) else self.calls[item] for item in self._round]

    def take(self, got: list) -> None:
        """The results of the round just sent (parse of each reply, in the order next() gave the calls)."""
        for item, r in zip(self._round, got):
            if _place(self.results, item, r):  # refused whole, nothing applied: its steps go again, one by one
                self._resend = list(range(item.start, item.start + len(item.steps)))

    def partial(self, replies: list) -> list:
        """Every call's result after a round trip that failed with `replies` (this round's, MISSING where
        none came): the results so far, this round's that came, MISSING for the rest (and for a run refused
        whole: nothing of it was applied)."""
        out = list(self.results)
        for item, r in zip(self._round, replies):
            if r is not MISSING:
                _place(out, item, r)
        return out


def _place(out: list, item, r) -> bool:
    """Put the result r of a round's item (a call's index, or a Run) in out: a run's rows through each step's
    parse, or its error for every step (an internal error, an unreadable reply). True, with nothing put, for a
    run the daemon refused whole."""
    if not isinstance(item, Run):
        out[item] = r
        return False
    r = rows_or_error(item, r)
    if isinstance(r, list):
        out[item.start:item.start + len(r)] = map(step_result, item.steps, r)
        return False
    if refused_whole(r):
        return True
    out[item.start:item.start + len(item.steps)] = [r] * len(item.steps)
    return False


def refused_whole(r) -> bool:
    """Whether a run's result says the daemon refused it whole, so that nothing was applied: any error reply
    but `internal` (a bug, after which something may have been applied)."""
    return isinstance(r, ServerError) and r.code != P.INTERNAL


def rows_or_error(run: Run, r):
    """A run's result: its list of rows, or the error it got (BadReply for rows that are not one per step)."""
    if isinstance(r, list) and len(r) != len(run.steps):
        return BadReply(f"a step_many of {len(run.steps)} streams was answered with {len(r)} rows")
    return r
