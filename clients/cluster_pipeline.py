"""ClusterPipeline: Client.pipeline() over a cluster (AsyncClusterPipeline: its asyncio twin). Calls queued by the Api methods are sent together, each
to its stream's shard (a step_many split per shard), every shard's share on its socket before any reply is
awaited; results come back in call order.

    with cc.pipeline() as p:                  # cc: a ClusterClient
        for i, x in items: p.step(i, x)
    ys = p.results

As Client's Pipeline: the calls are independent (one that fails does not stop the others); execute() returns
every result in order or raises PipelineError, `results` holding every result with each failed call's
exception in its place; a Timeout is raised with the replies that came. A call refused with wrong_shard
(nothing applied) is sent again to its owner under the refreshed map, after the others: calls of one stream
keep their order unless its owner changes in between. Ops without a stream (ping, info, streams, snapshot) and
a copy between two shards run one by one, as ClusterClient runs them.

With merge_steps (the default, as for Client.pipeline), each shard's runs of plain steps go out as one
step_many each (clients/coalesce.py: the same results, each step's own error), the shards' round trips
together: ClusterPipeline scatters round k of every shard at once (_merged_scatter), AsyncClusterPipeline
runs each shard's share as that shard's AsyncPipeline.
"""
from __future__ import annotations

import itertools
import time

from lstm_stream import protocol as P

from ._api import Call, _y
from .client import MISSING, Queued, settled
from .coalesce import Rounds
from .errors import ClientError, Timeout, WrongShard

_NOT_ROUTED = frozenset({"ping", "info", "streams", "snapshot", "copy"})


class ClusterPipeline(Queued):
    """Calls queued by the Api methods (which return the pipeline), sent together by execute()."""

    def execute(self, *, return_exceptions: bool = False) -> list:
        """Send all queued calls, wait for every reply, return their results in order (also in `results`)."""
        calls, self._calls = self._calls, []
        cc = self._client
        results, merged, items, alone = _start(calls)
        for k, call in alone:
            results[k] = _outcome(cc._run, call)
        deadline = time.monotonic() + cc.move_wait
        for attempt in itertools.count():
            if not items:
                break
            index, jobs = [], []
            for k, call in items:
                for name, part in _route(cc, call):
                    index.append(k)
                    jobs.append((name, part))
            try:
                got = _merged_scatter(cc, jobs) if self._merge else cc._scatter(jobs)
            except Timeout as e:
                for k, r in zip(index, getattr(e, "replies", [MISSING] * len(jobs))):
                    _put(results, merged, k, e if r is MISSING else r)
                self.results = _finish(calls, results, merged, e)
                raise
            items, wrong = [], None
            for k, (_, part), r in zip(index, jobs, got):
                if isinstance(r, WrongShard):
                    items.append((k, part))
                    wrong = r
                else:
                    _put(results, merged, k, r)
            if wrong is not None:
                try:
                    cc._after_wrong_shard(wrong, attempt, deadline)
                except WrongShard as e:  # still refused when move_wait has passed
                    for k, _ in items:
                        _put(results, merged, k, e)
                    items = []
        self.results = _finish(calls, results, merged, None)
        return settled(self.results, return_exceptions)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and self._calls:
            self.execute()


class AsyncClusterPipeline(Queued):
    """ClusterPipeline's asyncio twin (AsyncClusterClient.pipeline()): each shard's share goes out as one
    AsyncPipeline on that shard's connection, all shards at once; the same results, errors and resends."""

    async def execute(self, *, return_exceptions: bool = False) -> list:
        """Send all queued calls, await every reply, return their results in order (also in `results`)."""
        import asyncio

        calls, self._calls = self._calls, []
        cc = self._client
        if cc.map is None:
            await cc.refresh()
        results, merged, items, alone = _start(calls)
        for k, call in alone:
            try:
                results[k] = await cc._run(call)
            except ClientError as e:
                results[k] = e
        deadline = time.monotonic() + cc.move_wait
        for attempt in itertools.count():
            if not items:
                break
            shares: dict = {}
            for k, call in items:
                for name, part in _route(cc, call):
                    shares.setdefault(name, []).append((k, part))
            pipes = []
            for name, share in shares.items():
                p = cc._client(name).pipeline(merge_steps=self._merge)
                p._calls = [part for _, part in share]
                pipes.append(p)
            outcomes = await asyncio.gather(*(p.execute(return_exceptions=True) for p in pipes),
                                            return_exceptions=True)
            timeout = next((o for o in outcomes if isinstance(o, Timeout)), None)
            items, wrong = [], None
            for share, p, outcome in zip(shares.values(), pipes, outcomes):
                got = p.results if isinstance(outcome, BaseException) else outcome
                if got is None:  # the pipeline failed before it sent anything (a closed client)
                    got = [outcome] * len(share)
                for (k, part), r in zip(share, got):
                    if isinstance(r, WrongShard) and timeout is None:
                        items.append((k, part))
                        wrong = r
                    else:
                        _put(results, merged, k, r)
            if timeout is not None:
                self.results = _finish(calls, results, merged, timeout)
                raise timeout
            if wrong is not None:
                try:
                    await cc._after_wrong_shard(wrong, attempt, deadline)
                except WrongShard as e:  # still refused when move_wait has passed
                    for k, _ in items:
                        _put(results, merged, k, e)
                    items = []
        self.results = _finish(calls, results, merged, None)
        return settled(self.results, return_exceptions)

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, *exc):
        if exc_type is None and self._calls:
            await self.execute()


def _start(calls) -> tuple:
    """(results, merged, routed, alone) of a pipeline's calls: a slot per call, a dict per step_many for its
    parts' results, the (index, call) pairs routed to their shards, and those run one by one (_NOT_ROUTED)."""
    results = [MISSING] * len(calls)
    merged = {k: {} for k, c in enumerate(calls) if c.op == "step_many"}
    routed = [(k, c) for k, c in enumerate(calls) if c.op not in _NOT_ROUTED]
    alone = [(k, c) for k, c in enumerate(calls) if c.op in _NOT_ROUTED]
    return results, merged, routed, alone


def _outcome(fn, call):
    try:
        return fn(call)
    except ClientError as e:
        return e


def _route(cc, call) -> list:
    """[(shard, Call)] of one call: a step_many split per owning shard, the others to their stream's owner."""
    if call.op != "step_many":
        return [(cc.owner(call.fields["stream"]), call)]
    ids = call.fields["streams"]
    owners = cc._owners_of(ids)
    groups: dict = {}
    for j, name in enumerate(owners):
        groups.setdefault(name, []).append(j)
    if len(groups) == 1:
        return [(owners[0], call)]
    parts = []
    for name, js in groups.items():
        part = [ids[j] for j in js]
        if call.fields.get("x") is not None:
            fields = {"streams": part, "x": call.fields["x"][js]}
            parse = (lambda part: lambda r: dict(zip(part, _y(r))))(part)
        else:
            fields = {"streams": part, "xs": [call.fields["xs"][j] for j in js]}
            parse = (lambda part: lambda r: dict(zip(part, (P.to_array(y, "ys") for y in r["ys"]))))(part)
        parts.append((name, Call("step_many", fields, parse)))
    return parts


def _merged_scatter(cc, jobs) -> list:
    """cc._scatter(jobs), each shard's runs of plain steps sent as one step_many (a coalesce.Rounds per shard;
    round k of every shard scattered together): the results the calls sent one by one get, in order. A
    Timeout carries `replies` as _scatter's does (each step of a run that came, MISSING for the others)."""
    shares: dict = {}  # shard -> the indices of its jobs, in order
    for j, (name, _) in enumerate(jobs):
        shares.setdefault(name, []).append(j)
    rounds = {name: Rounds([jobs[j][1] for j in js]) for name, js in shares.items()}
    if not any(r.merged for r in rounds.values()):
        return cc._scatter(jobs)
    active = list(rounds)
    while active:
        sent, counts = [], []
        for name in active:
            calls = rounds[name].next()
            if calls is not None:
                sent += [(name, call) for call in calls]
                counts.append((name, len(calls)))
        active = [name for name, _ in counts]
        if not sent:
            break
        try:
            got = cc._scatter(sent)
        except Timeout as e:
            replies, at, partial = getattr(e, "replies", None) or [MISSING] * len(sent), 0, {}
            for name, n in counts:
                partial[name] = rounds[name].partial(replies[at:at + n])
                at += n
            e.replies = _by_job(len(jobs), shares, {name: partial.get(name, r.results) for name, r in rounds.items()})
            raise
        at = 0
        for name, n in counts:
            rounds[name].take(got[at:at + n])
            at += n
    return _by_job(len(jobs), shares, {name: r.results for name, r in rounds.items()})


def _by_job(n: int, shares: dict, per_shard: dict) -> list:
    """Each shard's results (in its jobs' order) put back in the order of all the jobs."""
    out = [MISSING] * n
    for name, js in shares.items():
        for j, r in zip(js, per_shard[name]):
            out[j] = r
    return out


def _put(results, merged, k, r) -> None:
    """Record result r of call k (a step_many's part is merged; its first error wins)."""
    if k not in merged:
        results[k] = r
    elif isinstance(r, Exception):
        if not isinstance(results[k], Exception):
            results[k] = r
    else:
        merged[k].update(r)


def _finish(calls, results, merged, timeout) -> list:
    """The results in call order: each step_many's merged parts in its ids' order (or its error, with
    .applied: the parts that were), the Timeout in place of calls that got no reply."""
    out = []
    for k, call in enumerate(calls):
        r = results[k]
        if k in merged:
            if isinstance(r, Exception):
                r.applied = merged[k]
            elif len(merged[k]) == len(set(call.fields["streams"])):
                r = {i: merged[k][i] for i in call.fields["streams"]}
            else:
                r = timeout if timeout is not None else MISSING
        out.append(timeout if r is MISSING and timeout is not None else r)
    return out
