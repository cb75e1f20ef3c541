"""AsyncClusterClient: ClusterClient's methods, awaited; one AsyncClient per shard, any number of requests in
flight (docs/cluster.md).

    async with AsyncClusterClient("tcp://10.0.0.5:40001") as c:      # any shard's endpoint (or a list, or a map)
        ys = await asyncio.gather(*(c.step(i, x) for i, x in items))  # each to its owner, all in flight
        out = await c.step_many({"a": xa, "b": xb})                    # split per shard, the parts concurrent

Routing, wrong_shard handling and the ops sent to every shard are ClusterClient's (clients/cluster.py); the map
is fetched on first use (or `await c.refresh()`). With exactly_once, await one stream's steps in order: two
steps of one stream in flight at once would both claim the next number (one then fails with SequenceError).
"""
from __future__ import annotations

import asyncio
import itertools
import time

import zmq.asyncio

from lstm_stream import protocol as P
from lstm_stream.shardmap import ShardMap

from ._api import Api, Call, _array
from .aio import AsyncClient
from .client import DEFAULT_HWM, DEFAULT_RETRIES, DEFAULT_TIMEOUT, check_options, resendable
from .cluster import _ALL_SHARDS, MOVE_WAIT, ClusterError, Routing
from .errors import ClientClosed, ClientError, SequenceError, ServerError, Timeout, WrongShard


class AsyncClusterClient(Routing, Api):
    """asyncio client of a cluster of shards; mirrors ClusterClient method for method (each one awaited)."""

    def __init__(self, seeds, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 hwm: int = DEFAULT_HWM, max_message_bytes: int = P.MAX_MESSAGE_BYTES, server_key=None,
                 client_keys=None, exactly_once: bool = False, move_wait: float = MOVE_WAIT):
        """As ClusterClient (seeds: an endpoint, a list, or a shard map); nothing is sent until first use."""
        check_options(timeout, retries, hwm)
        self._ctx = zmq.asyncio.Context()
        self._options = dict(timeout=timeout, retries=retries, hwm=hwm, max_message_bytes=max_message_bytes,
                             context=self._ctx, server_key=server_key, client_keys=client_keys)
        self.timeout, self.exactly_once, self.move_wait = float(timeout), bool(exactly_once), float(move_wait)
        self._seqs: dict = {}
        self._closed = False
        self._init_routing(seeds)

    async def refresh(self) -> ShardMap:
        """Fetch the shard map from the shards (the current map's, then the seeds) and keep the newest."""
        best, errors = self.map, []
        for endpoint in self._to_ask():
            c = AsyncClient(endpoint, **{**self._options, "retries": 0})
            try:
                found = (await c.info()).get("cluster")
            except ClientError as e:
                errors.append(f"{endpoint}: {e}")
                continue
            finally:
                await c.close()
            best = self._better(best, found, endpoint, errors)
            if self.map is not None and best.version > self.map.version:
                break
        for c in self._use(best, errors):
            await c.close()
        return best

    def _client(self, name: str) -> AsyncClient:
        if self._closed:
            raise ClientClosed(f"{self!r} is closed")
        c = self._clients.get(name)
        if c is None:
            endpoint = self.map.endpoints[name]
            if not endpoint:
                raise ClusterError(f"shard {name!r} has no endpoint in shard map version {self.map.version} "
                                   "(it has not started yet)")
            c = self._clients[name] = AsyncClient(endpoint, **self._options)
        return c

    async def _after_wrong_shard(self, e: WrongShard, attempt: int, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise e
        before = self.map.version
        await self.refresh()
        wait = self._wait(e, attempt, deadline, self.map.version > before)
        if wait:
            await asyncio.sleep(wait)

    # ---- routing ----------------------------------------------------------------------------------------
    async def _run(self, call: Call):
        if self.map is None:
            await self.refresh()
        if call.op in _ALL_SHARDS:
            return await self._everywhere(call)
        if call.op == "copy":
            src, dst = call.fields["src"], call.fields["dst"]
            if self.owner(src) != self.owner(dst):  # two shards: get_state then set_state
                return await self.set_state(dst, await self.get_state(src))
            return await self._routed(call, src)
        return await self._routed(call, call.fields["stream"])

    async def _routed(self, call: Call, stream):
        deadline = time.monotonic() + self.move_wait
        for attempt in itertools.count():
            name = self.owner(stream)
            try:
                return await self._client(name)._run(call)
            except WrongShard as e:
                await self._after_wrong_shard(e, attempt, deadline)
            except Timeout:
                endpoint = self.map.endpoints[name]
                await self.refresh()
                if not resendable(call) or self.map.endpoints.get(name) == endpoint \
                        or time.monotonic() > deadline:
                    raise

    async def step(self, stream, x, *, seq: int | None = None):
        if not self.exactly_once or seq is not None:
            return await super().step(stream, x, seq=seq)
        now = self._seqs.get(stream)
        if now is None:
            now = await self.seq(stream)
        x = _array(x)
        after = now + (1 if x.ndim == 1 else len(x))
        try:
            y = await super().step(stream, x, seq=after)
        except SequenceError:
            self._seqs.pop(stream, None)
            raise
        self._seqs[stream] = after
        return y

    step.__doc__ = Api.step.__doc__

    async def step_many(self, inputs):
        """As ClusterClient.step_many, the parts sent to their shards concurrently."""
        if self.map is None:
            await self.refresh()
        ids = list(inputs)
        done: dict = {}
        todo = ids
        deadline = time.monotonic() + self.move_wait
        for attempt in itertools.count():
            jobs = self._parts(inputs, todo, ids)
            results = await asyncio.gather(*(self._client(n)._run(c) for n, c in jobs), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, ServerError):
                    raise r  # a Timeout, a closed client: the parts that came are not known to be applied
            wrong, failed = self._settle(jobs, results, done)
            if failed is not None:
                failed.applied = done
                raise failed
            if not wrong:
                return done if len(jobs) == 1 and todo is ids else {i: done[i] for i in ids}
            wrong[0].applied = done
            await self._after_wrong_shard(wrong[0], attempt, deadline)
            todo = [i for e in wrong for i in e.ids]

    async def _everywhere(self, call: Call):
        names = self.map.names
        if call.op == "streams":
            out, seen = [], 0
            for name in names:
                r = await self._client(name)._run(Call("streams", {"offset": max(call.fields["offset"] - seen, 0),
                                                                   "limit": max(call.fields["limit"] - len(out), 0)},
                                                       lambda reply: reply))
                seen += r["total"]
                out.extend(r["streams"])
            return out
        results = await asyncio.gather(*(self._client(n)._run(call) for n in names))
        if call.op == "ping":
            return results[0]
        if call.op == "info":
            return {"cluster": self.map.as_map(), "shards": dict(zip(names, results))}
        return dict(zip(names, results))

    # ---- lifetime ---------------------------------------------------------------------------------------
    def pipeline(self, *, merge_steps: bool = True):
        """An AsyncClusterPipeline (clients/cluster_pipeline.py): queue calls, send each shard its share at once
        (`await execute()` or the end of `async with`), get the results in order. merge_steps: as in
        ClusterClient.pipeline."""
        from .cluster_pipeline import AsyncClusterPipeline
        return AsyncClusterPipeline(self, merge_steps=merge_steps)

    async def close(self) -> None:
        """Close every shard's client."""
        self._closed = True
        for c in self._clients.values():
            await c.close()
        self._clients.clear()
        self._ctx.term()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        return f"AsyncClusterClient(map version {self.map.version if self.map else None})"
