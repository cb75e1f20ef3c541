"""A pipeline's runs of plain steps sent as one `step_many` each, with the results the separate steps would get.

A `step` request costs the client, ZeroMQ and the daemon ~20 µs of CPU whatever it carries, while a row of a
`step_many` costs the daemon under 1 µs (docs/benchmarks.md). So Pipeline and AsyncPipeline (merge_steps=True,
the default) send each run of at least MIN_RUN consecutive plain steps (no `seq`) as one `step_many` and hand
each step its row of the reply. What a caller sees is what the steps sent one by one would give:

- the outputs, bit for bit (a stream's outputs do not depend on what shares its batch) and of the same dtype
  and shape: row k of `y`, or `ys[k]` when the run's inputs differ in shape or dtype;
- each step's own error: `step_many` is all or nothing (docs/protocol.md), so a refused run was not applied,
  and its steps are sent again one by one, getting the errors and results they would have got. An `internal`
  error may come after something was applied, so it is not resent: every step of the run gets it;
- the order: a run is the last thing sent in its round trip, and the calls after it wait for its reply (one
  round trip per run, ~1% of a run's own time), so a run resent one by one is still applied before them.

A step that carries `seq` is sent as it is (`step_many` takes no sequence numbers). The daemon counts a run as
one request (`info`'s counters, `--max-peer-pending`); MAX_RUN and MAX_SAMPLES keep a run within the daemon's
default request limits, and one refused by a lower limit (`too_large`) is resent one by one like any refusal.
"""
from __future__ import annotations

import numpy as np

from lstm_stream import protocol as P

from ._api import MISSING, Call, _y
from .errors import ServerError

MIN_RUN = 16        # a shorter run is sent as separate steps: its wait for the reply would cost more than it saves
MAX_RUN = 1_024     # steps per step_many: the daemon's default --max-request-new-streams
MAX_SAMPLES = 16_384  # samples per step_many: the daemon's default --max-request-samples


def plain_step(call: Call) -> bool:
    """Whether the call is a step that may go in a step_many: no seq (its only fields are stream and x)."""
    return call.op == "step" and len(call.fields) == 2


class Run:
    """Consecutive plain steps (calls[start:start + len(steps)]) and the step_many Call that stands for them,
    whose result is the list of the steps' results."""

    __slots__ = ("start", "steps", "call")

    def __init__(self, start: int, steps: list):
        self.start, self.steps = start, steps
        ids = [s.fields["stream"] for s in steps]
        xs = [s.fields["x"] for s in steps]
        first = xs[0]
        if first.ndim == 1 and all(x.ndim == 1 and x.shape == first.shape and x.dtype == first.dtype for x in xs):
            self.call = Call("step_many", {"streams": ids, "x": np.stack(xs)}, _rows)  # one bin blob
        else:
            self.call = Call("step_many", {"streams": ids, "xs": xs}, _each)


def _rows(reply) -> list:
    return list(_y(reply))


def _each(reply) -> list:
    return [P.to_array(y, "ys") for y in reply["ys"]]


def _samples(call: Call) -> int:
    x = call.fields["x"]
    return 1 if x.ndim < 2 else len(x)


def split(calls: list) -> list:
    """calls in order as items: the index of a call sent alone, or a Run of plain steps (2 to MAX_RUN of them,
    from runs of at least MIN_RUN)."""
    items, k, n = [], 0, len(calls)
    while k < n:
        end = k
        while end < n and plain_step(calls[end]):
            end += 1
        if end - k < MIN_RUN:
            stop = max(end, k + 1)
            items.extend(range(k, stop))
            k = stop
            continue
        while k < end:  # the run, cut at MAX_RUN steps and MAX_SAMPLES samples
            stop, samples = k, 0
            while stop < end and stop - k < MAX_RUN and samples + _samples(calls[stop]) <= MAX_SAMPLES:
                samples += _samples(calls[stop])
                stop += 1
            stop = max(stop, k + 1)  # one step above MAX_SAMPLES: alone in its run (the daemon judges it)
            items.append(Run(k, calls[k:stop]) if stop - k > 1 else k)
            k = stop
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
        self._round = []       # what the round in flight stands for: calls' indices and a Run, or [indices]
        self.merged = len(self._items) < len(calls)  # otherwise: one round trip of every call, as unmerged

    def next(self):
        """The calls of the next round trip (a list), or None when every call has its result."""
        if self._round and isinstance(self._round[-1], list):  # a refused run, one by one
            return [self.calls[k] for k in self._round[-1]]
        round_, items = [], self._items
        while self._at < len(items):
            item = items[self._at]
            self._at += 1
            if isinstance(item, Run):
                round_.append(item)
                break
            round_.append(item)
        self._round = round_
        if not round_:
            return None
        return [r.call if isinstance(r, Run) else self.calls[r] for r in round_]

    def take(self, got: list) -> None:
        """The results of the round just sent (parse of each reply, in the order next() gave the calls)."""
        if self._round and isinstance(self._round[-1], list):  # the refused run's steps, one by one
            for k, r in zip(self._round[-1], got):
                self.results[k] = r
            self._round = []
            return
        for item, r in zip(self._round, got):
            if not isinstance(item, Run):
                self.results[item] = r
            elif isinstance(r, list) and len(r) == len(item.steps):
                self.results[item.start:item.start + len(r)] = r
            elif isinstance(r, ServerError) and r.code != P.INTERNAL:  # refused whole: nothing was applied
                self._round = [list(range(item.start, item.start + len(item.steps)))]
                return
            else:  # an internal error, an unreadable reply: every step of the run gets it
                self.results[item.start:item.start + len(item.steps)] = [r] * len(item.steps)
        self._round = []

    def partial(self, replies: list) -> list:
        """Every call's result after a round trip that failed with `replies` (this round's, MISSING where
        none came): the results so far, this round's that came, MISSING for the rest."""
        out = list(self.results)
        resent = self._round and isinstance(self._round[-1], list)
        for item, r in zip(self._round[-1] if resent else self._round, replies):
            if r is MISSING:
                continue
            if isinstance(item, Run):
                out[item.start:item.start + len(item.steps)] = r if isinstance(r, list) else [r] * len(item.steps)
            else:
                out[item] = r
        return out
