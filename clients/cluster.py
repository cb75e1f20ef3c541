"""ClusterClient: the Client's methods over the shards of a cluster, each request sent straight to the shard
that owns its stream (docs/cluster.md). No Ray here: the map comes from any shard's `info` (its `cluster`
field), so a client needs only the endpoint of one shard.

    with ClusterClient("tcp://10.0.0.5:40001", exactly_once=True) as c:   # any shard's endpoint (or a list)
        y = c.step("pump-7", x)                   # to the owner of "pump-7"
        ys = c.step_many({"a": xa, "b": xb})      # split per shard, sent to all at once, merged in order

Routing: the shard map (lstm_stream/shardmap.py) names each stream's owner by rendezvous hashing of its id.
A shard refuses a stream it does not own with `wrong_shard` (nothing applied, its map version attached): the
client then fetches the map again and resends to the new owner; without a newer map (the shard is behind, or
a rescale is moving the stream and its map is not out yet) it waits a little and resends, for up to
`move_wait` seconds. With exactly_once, steps carry their sequence numbers, so a
resend after a timeout, a shard's restart or a wrong_shard is applied at most once.

Ops without a stream go to every shard: ping (every shard must answer; returns the first's clock), info
({"cluster": map, "shards": {name: info}}), streams (the shards' ids concatenated in name order, one page of
it), snapshot and reload ({name: result}; a reload's path is on each shard's machine). copy between streams
of two shards is get_state then set_state (two requests, not atomic). Use a ClusterClient from one thread,
like a Client.
"""
from __future__ import annotations

import itertools
import time

import zmq

from lstm_stream import protocol as P
from lstm_stream.shardmap import ShardMap

from ._api import Api, Call
from .client import (DEFAULT_HWM, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MISSING, Client, NumberedSteps,
                     check_options, result_of, resendable)
from .errors import ClientClosed, ClientError, ServerError, Timeout, WrongShard

MOVE_WAIT = 30.0          # seconds a request keeps being resent after wrong_shard (a rescale moving its stream)
BEHIND_WAIT = 0.02        # seconds to wait when no newer map is out yet (doubles, up to MAX_WAIT)
MAX_WAIT = 0.25
OWNER_CACHE = 1 << 20     # stream ids whose owner is remembered (cleared when full or when the shards change)
_ALL_SHARDS = frozenset({"ping", "info", "streams", "snapshot", "reload"})


class ClusterError(ClientError):
    """The shard map could not be fetched from any shard that was asked."""


class Routing:
    """The map half of ClusterClient and AsyncClusterClient: the map, the seeds, the owners' cache."""

    def _init_routing(self, seeds) -> bool:
        """Take seeds (an endpoint, a list, or a map); whether the map must still be fetched."""
        self._owners: dict = {}     # stream id (ints as (i,)) -> owner name, for the current shard names
        self._clients: dict = {}    # shard name -> client of its current endpoint
        if isinstance(seeds, (ShardMap, dict)):
            self.map = seeds if isinstance(seeds, ShardMap) else ShardMap.from_map(seeds)
            self._seeds = list(self.map.endpoints.values())
            return False
        self._seeds = [seeds] if isinstance(seeds, str) else list(seeds)
        if not self._seeds:
            raise ValueError("seeds: expected the endpoint of at least one shard, e.g. tcp://10.0.0.5:40001")
        self.map = None
        return True

    def _to_ask(self) -> list:
        """Endpoints to fetch the map from: the current map's, then the seeds."""
        return [e for e in dict.fromkeys([*(self.map.endpoints.values() if self.map else ()), *self._seeds]) if e]

    def _better(self, best, found, endpoint, errors):
        """The newer of best and the map `found` in a shard's info (errors gets why, if it is none)."""
        if found is None:
            errors.append(f"{endpoint}: not a shard of a cluster (its info has no cluster map)")
            return best
        m = ShardMap.from_map(found)
        return m if best is None or m.version > best.version else best

    def _use(self, best, errors) -> list:
        """Take map `best` (ClusterError if none was found); the clients of shards whose endpoint changed,
        removed (the caller closes them)."""
        if best is None:
            raise ClusterError("could not fetch the shard map from " + "; ".join(errors))
        if self.map is not None and best.names != self.map.names:
            self._owners.clear()
        gone = [self._clients.pop(n) for n, c in list(self._clients.items()) if best.endpoints.get(n) != c.address]
        self.map = best
        return gone

    def owner(self, stream) -> str:
        """The name of the shard that owns `stream` under the current map."""
        key = stream if type(stream) is str else (stream,)  # "7" and 7 are different streams
        name = self._owners.get(key)
        if name is None:
            name = self.map.owner(stream)
            if len(self._owners) >= OWNER_CACHE:
                self._owners.clear()
            self._owners[key] = name
        return name

    def _owners_of(self, ids) -> list:
        """owner() of each id: from the cache, the others computed together (ShardMap.owners)."""
        cache = self._owners
        keys = [i if type(i) is str else (i,) for i in ids]
        names = list(map(cache.get, keys))
        if None in names:
            missing = [k for k, n in enumerate(names) if n is None]
            if len(cache) + len(missing) > OWNER_CACHE:
                cache.clear()
            for k, n in zip(missing, self.map.owners([ids[k] for k in missing])):
                names[k] = cache[keys[k]] = n
        return names

    def _parts(self, inputs, todo, ids) -> list:
        """[(shard name, step_many Call)] of the ids `todo` of `inputs`, one per owning shard; all of `ids` on
        one shard: the request as given."""
        parts: dict = {}
        for i, name in zip(todo, self._owners_of(todo)):
            parts.setdefault(name, []).append(i)
        if len(parts) == 1 and todo is ids:
            return [(next(iter(parts)), Api.step_many(_Capture(), inputs))]
        return [(name, Api.step_many(_Capture(), {i: inputs[i] for i in part})) for name, part in parts.items()]

    @staticmethod
    def _wait(e: WrongShard, attempt: int, deadline: float, newer: bool) -> float:
        """After wrong_shard and a refresh: seconds to wait before resending (0 with a newer map: the new
        owner is known); the WrongShard raised once `deadline` has passed."""
        if time.monotonic() > deadline:
            raise e
        return 0.0 if newer else min(BEHIND_WAIT * 2 ** attempt, MAX_WAIT)

    @staticmethod
    def _settle(jobs, results, done: dict):
        """Merge the parts' results into `done`; (the WrongShard of each refused part, its .ids set; the first
        other error)."""
        wrong, failed = [], None
        for (_, call), r in zip(jobs, results):
            if isinstance(r, WrongShard):
                r.ids = call.fields["streams"]
                wrong.append(r)
            elif isinstance(r, Exception):
                failed = failed or r
            else:
                done.update(r)
        return wrong, failed


class ClusterClient(Routing, NumberedSteps, Api):
    """Blocking client of a cluster of shards; the same methods as Client."""

    def __init__(self, seeds, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 hwm: int = DEFAULT_HWM, max_message_bytes: int = P.MAX_MESSAGE_BYTES, server_key=None,
                 client_keys=None, context: zmq.Context | None = None, exactly_once: bool = False,
                 move_wait: float = MOVE_WAIT):
        """seeds: the endpoint of any shard, a list of them, or a shard map (ShardMap or its wire form).
        move_wait: seconds a request refused with wrong_shard keeps being resent (a rescale moving its stream
        refuses it until the new map is out); the other options are Client's, for each shard (server_key:
        the cluster's one public key; every shard has the same)."""
        check_options(timeout, retries, hwm)
        self._options = dict(timeout=timeout, retries=retries, hwm=hwm, max_message_bytes=max_message_bytes,
                             context=context, server_key=server_key, client_keys=client_keys)
        self.timeout, self.exactly_once, self.move_wait = float(timeout), bool(exactly_once), float(move_wait)
        self._seqs: dict = {}       # stream -> its number after the last step acknowledged (exactly_once)
        self._closed = False
        if self._init_routing(seeds):
            self.refresh()

    # ---- the map ----------------------------------------------------------------------------------------
    def refresh(self) -> ShardMap:
        """Fetch the shard map from the shards (the current map's, then the seeds) and keep the newest."""
        best, errors = self.map, []
        for endpoint in self._to_ask():
            try:
                with Client(endpoint, **{**self._options, "retries": 0}) as c:
                    found = c.info().get("cluster")
            except ClientError as e:
                errors.append(f"{endpoint}: {e}")
                continue
            best = self._better(best, found, endpoint, errors)
            if self.map is not None and best.version > self.map.version:
                break  # a newer map than ours: enough
        for c in self._use(best, errors):
            c.close()
        return best

    def _client(self, name: str) -> Client:
        if self._closed:
            raise ClientClosed(f"{self!r} is closed")
        c = self._clients.get(name)
        if c is None:
            endpoint = self.map.endpoints[name]
            if not endpoint:
                raise ClusterError(f"shard {name!r} has no endpoint in shard map version {self.map.version} "
                                   "(it has not started yet)")
            c = self._clients[name] = Client(endpoint, **self._options)
        return c

    def _after_wrong_shard(self, e: WrongShard, attempt: int, deadline: float) -> None:
        """Fetch the map again: a newer one is all it takes. Without one, either the shard is behind us (the
        keeper's push has not reached it) or its stream is moving (a rescale: e.version is the map being made,
        not published yet): wait a little, then resend. WrongShard once `deadline` has passed."""
        if time.monotonic() > deadline:
            raise e
        before = self.map.version
        self.refresh()
        wait = self._wait(e, attempt, deadline, self.map.version > before)
        if wait:
            time.sleep(wait)

    # ---- routing ----------------------------------------------------------------------------------------
    def _run(self, call: Call):
        if call.op in _ALL_SHARDS:
            return self._everywhere(call)
        if call.op == "copy":
            return self._copy(call)
        return self._routed(call, call.fields["stream"])

    def _routed(self, call: Call, stream):
        """Send call to the owner of `stream`; after wrong_shard (or a timeout of a resendable call to a shard
        that has moved since), to the owner under the refreshed map."""
        deadline = time.monotonic() + self.move_wait
        for attempt in itertools.count():
            name = self.owner(stream)
            try:
                return self._client(name)._run(call)
            except WrongShard as e:
                self._after_wrong_shard(e, attempt, deadline)
            except Timeout:  # the shard may have come back elsewhere: a resendable call goes there
                endpoint = self.map.endpoints[name]
                self.refresh()
                if not resendable(call) or self.map.endpoints.get(name) == endpoint \
                        or time.monotonic() > deadline:
                    raise

    def step_many(self, inputs):
        """Advance many streams: {id: x (I,) or (T, I)} -> {id: y}, in the order given. The ids are split per
        owning shard and the parts sent to all shards at once; a part refused with wrong_shard is split again
        under the refreshed map and resent. If a part fails otherwise, the other parts were applied: the
        error is raised with `.applied`, the {id: y} of those parts."""
        ids = list(inputs)
        done: dict = {}
        todo = ids
        deadline = time.monotonic() + self.move_wait
        for attempt in itertools.count():
            jobs = self._parts(inputs, todo, ids)
            wrong, failed = self._settle(jobs, self._scatter(jobs), done)
            if failed is not None:
                failed.applied = done
                raise failed
            if not wrong:
                return done if len(jobs) == 1 and todo is ids else {i: done[i] for i in ids}
            wrong[0].applied = done
            self._after_wrong_shard(wrong[0], attempt, deadline)
            todo = [i for e in wrong for i in e.ids]

    def _scatter(self, jobs) -> list:
        """Send each (shard name, Call) on its shard's socket, all before waiting; results (or the ClientError
        of each) in order. One deadline for all; a Timeout (with the parts that came) if it passes."""
        clients = [self._client(name) for name, _ in jobs]
        if len(jobs) == 1:
            try:
                return [clients[0]._run(jobs[0][1])]
            except ServerError as e:
                return [e]
        want, got = {}, {}
        poller = zmq.Poller()
        for k, (c, (_, call)) in enumerate(zip(clients, jobs)):
            rid = next(c._ids)
            want[(id(c), rid)] = k
            if c._sock is None:
                raise ClientClosed(f"{c!r} is closed")
            c._sock.send(c._codec.request(call.op, rid, call.fields))
            poller.register(c._sock, zmq.POLLIN)
        by_sock = {c._sock: c for c in clients}
        deadline = time.monotonic() + self.timeout
        while len(got) < len(want):
            left = deadline - time.monotonic()
            ready = dict(poller.poll(max(left, 0) * 1000)) if left > 0 else {}
            if not ready:
                missing = sorted({jobs[k][0] for k in want.values() if k not in got})
                for name in missing:
                    self._client(name)._reopen()
                e = Timeout(f"no reply within {self.timeout} s from shard(s) {', '.join(missing)} "
                            f"({jobs[0][1].op}); the parts sent to the others were applied")
                e.replies = [got.get(k, MISSING) for k in range(len(jobs))]
                raise e
            for sock in ready:
                c = by_sock[sock]
                while True:
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = c._read(data)  # (clients/replies.py: BadReply if unreadable)
                    k = want.get((id(c), reply["id"]))
                    if k is not None:
                        got[k] = result_of(jobs[k][1], reply)
        return [got[k] for k in range(len(jobs))]

    def _everywhere(self, call: Call):
        names = self.map.names
        if call.op == "streams":
            return self._streams(call.fields["offset"], call.fields["limit"])
        results = self._scatter([(n, call) for n in names])
        for r in results:
            if isinstance(r, Exception):
                raise r
        if call.op == "ping":
            return results[0]
        if call.op == "info":
            return {"cluster": self.map.as_map(), "shards": dict(zip(names, results))}
        return dict(zip(names, results))

    def _streams(self, offset: int, limit: int) -> list:
        """One page of the shards' ids, concatenated in shard name order."""
        out, seen = [], 0
        for name in self.map.names:
            want = limit - len(out)
            r = self._client(name)._run(Call("streams", {"offset": max(offset - seen, 0), "limit": max(want, 0)},
                                             lambda reply: reply))
            seen += r["total"]
            out.extend(r["streams"])
        return out

    def _copy(self, call: Call):
        src, dst = call.fields["src"], call.fields["dst"]
        if self.owner(src) == self.owner(dst):
            return self._routed(call, src)
        return self.set_state(dst, self.get_state(src))

    def pipeline(self, *, merge_steps: bool = True):
        """A ClusterPipeline (clients/cluster_pipeline.py): queue calls, send each shard its share at once,
        get the results in order. merge_steps: as in Client.pipeline, per shard (runs of steps sent as
        step_many, the same results; clients/coalesce.py); False sends one request per call."""
        from .cluster_pipeline import ClusterPipeline
        return ClusterPipeline(self, merge_steps=merge_steps)

    # ---- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every shard's socket."""
        self._closed = True
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"ClusterClient(map version {self.map.version if self.map else None})"


class _Capture(Api):
    """An Api whose methods return the Call they build (to split a step_many per shard)."""

    def _run(self, call):
        return call
