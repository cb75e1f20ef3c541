"""EngineCore: the daemon without sockets or wire format. Typed requests in, typed replies out.

    core = EngineCore(streams, EngineConfig(...), snapshots=None)
    reply = core.submit(tag, request)     # queue a messages.Request; a Reply at once for ping/info and refusals
    for tag, reply in core.step(): ...    # serve up to max_batch queued requests: one kernel call for the steps
    core.housekeep()                      # timed snapshot, idle eviction, metrics line, background task;
                                          # returns the next deadline
    core.call({"v": 1, "op": "ping"})     # one request map in, its reply map out (tests, tools)

`tag` is opaque (the server's ZeroMQ envelope). step() walks the queue in arrival order: consecutive step
requests become one BatchPlan (planner.py: one kernel call); any other op first runs the plan so far, then
itself, so every stream sees its requests in the order they arrived. The queue is one queue per client
connection (the tag's first frame), served round robin: a client's requests keep their order, and a flooding
client cannot starve the others. ping and info touch no stream: submit() answers them at once, unqueued. The wire (bytes <-> typed messages) is wire.py's; the socket loop is server.py's.
"""
from __future__ import annotations

import collections
import logging
import time

from lstm_stream import protocol as P
from lstm_stream.errors import InputError, LSTMStreamError, SequenceError, StoreFullError
from lstm_stream.messages import Reply

from . import records
from .access import Access, Owned
from .admission import Admission
from .config import EngineConfig
from .journal import LogWriteError
from .logs import repeating
from .housekeeping import Housekeeping
from .ops import Ops
from .planner import plan
from .reloading import Reloads
from .weights import WeightsStore

log = logging.getLogger("lstm_stream.engine")

# Codes of the core's exceptions -> wire codes (the rest are identical).
_CORE_CODES = {"bad_model": P.UNSUPPORTED, "bad_snapshot": P.SNAPSHOT_FAILED, "bad_backend": P.INTERNAL}


class EngineCore(Admission, Ops, Reloads, Housekeeping):
    """Queue, batch plans, op dispatch and housekeeping over one Streams; no sockets, no threads, no bytes."""

    def __init__(self, streams, config: EngineConfig | None = None, *, snapshots=None, journal=None,
                 background=None, clock=time.monotonic, access=None, name=None, model_path=None):
        self.streams = streams
        self.name = name               # the model's name: a request whose "model" names another is refused
        self.model_path = model_path   # the .npz the daemon was started with: what `reload` loads by default
        # every weights version served, next to the snapshots (engine/weights.py); None without a state directory
        self.weights = None if snapshots is None else WeightsStore(snapshots.directory)
        self.access = access           # CURVE roles and namespaces (engine/access.py), or None: every peer admin
        self.ownership = None          # a cluster shard's check (engine/cluster/ownership.py): request ->
                                       # None, or (message, detail) of its wrong_shard refusal
        self.config = config = config or EngineConfig()
        self.snapshots = snapshots
        self.journal = journal         # the step log (engine/journal.py), or None
        self._held: collections.deque = collections.deque()  # (lsn, [(tag, Reply)]): replies awaiting an fsync
        self._wall = time.time()       # the turn's wall time: stamps last_seen and the turn's log records
        if journal is not None:
            streams.clock = lambda: self._wall
        self._background = background  # called in housekeeping until it returns True (warm.finish_background)
        self._clock = clock
        # Queued requests, one queue per client connection (the tag's first frame: its ZeroMQ identity),
        # served round robin: one request from each connection in turn, so one flooding client cannot make the
        # others wait behind its backlog. A client's own requests keep their order.
        self._queues: dict = {}                           # peer -> deque of (tag, Request)
        self._ring: collections.deque = collections.deque()  # peers with queued requests, in serving order
        self._pending = 0
        self.pending_bytes = 0  # wire bytes of the queued requests (as submit() was told)
        self._started = clock()
        self.metrics = collections.Counter()
        self._last_metrics = collections.Counter()
        # For the Prometheus endpoint (engine/metrics.py reads them when scraped): requests by op, successful
        # replies by op, error replies by (op, code) (defaultdicts: a third of a Counter's cost per increment),
        # and with it on (stats a LoopStats) the loop's histograms; the server stamps `arrival` (perf_counter)
        # on the requests of each drain, for their queue waits.
        self.requests_by_op = collections.defaultdict(int)
        self.ok_by_op = collections.defaultdict(int)
        self.errors_by_op = collections.defaultdict(int)
        self.stats = None
        self.decode_stats = None  # () -> the wire's decode counters for info (WireCore sets it), or None
        self.template_stats = None  # () -> the wire's requests-from-templates counters for info (the same)
        self.arrival = 0.0
        self._next_evict = self._started + config.evict_every
        self._next_metrics = self._started + config.metrics_every
        self._dispatch = {op: getattr(self, f"_op_{op}") for op in P.OPS if op not in P.STEP_OPS}
        # Timers of the shell (add_ticker): systemd's watchdog (engine/sdnotify.py), the log's repeat counts
        # (engine/logs.py). Only looked at when the earliest is due: a housekeeping costs one comparison for them.
        self._tickers: list = []
        self._next_tick = float("inf")

    @property
    def journals(self) -> list:
        """The step logs the server waits on (one, or none)."""
        return [] if self.journal is None else [self.journal]

    def requests(self) -> int:
        """Requests received (systemd's status line, the stop log line)."""
        return self.metrics["requests"]

    @property
    def pending(self) -> int:
        """Requests queued and not yet served."""
        return self._pending

    # ---- requests in, replies out ----------------------------------------------------------------
    def submit(self, tag, req, nbytes: int = 0, user=None) -> Reply | None:
        """Queue one request; returns its Reply when it is answered at once: ping and info (they touch no
        stream, so they are never queued and never busy), a request over a per-request bound (too_large), one
        refused as busy (the client's quota, --max-peer-pending, or a full queue; the server stops reading
        before the queue is full, so that last one is for in-process callers), or, with access control, one
        its key may not run (forbidden). `user`: the peer's CURVE user id (its z85 public key), checked
        against the access roles here, the one place (no access control: every peer is admin)."""
        self.metrics["requests"] += 1
        self.requests_by_op[req.op] += 1
        peer = tag[0] if type(tag) in (list, tuple) and tag else tag  # the connection: its own queue
        if req.model is not None or self.ownership is not None or self.access is not None:
            tag, req, reply = self._admit(tag, req, user)
            if reply is not None:
                return reply
        op = req.op
        if op == "ping" or op == "info":
            return self._call(req)
        cfg = self.config
        if op in P.STEP_OPS or op == "forecast":
            refused = self._over_bounds(req, cfg)
            if refused is not None:
                return refused
        q = self._queues.get(peer)
        if self._pending >= cfg.max_pending or (q is not None and cfg.max_peer_pending is not None
                                                and len(q) >= cfg.max_peer_pending):
            self.metrics["busy"] += 1
            why = f"{self._pending} requests are queued" if self._pending >= cfg.max_pending else \
                f"this client has {len(q)} requests queued (--max-peer-pending {cfg.max_peer_pending})"
            return self.refuse(req.id, P.BUSY, f"the engine is busy: {why}; this one was not applied, resend it "
                                               "later", counted=True, op=op)
        if q is None:
            self._queues[peer] = q = collections.deque()
            self._ring.append(peer)
        q.append((tag, req, nbytes, self.arrival))
        self._pending += 1
        self.pending_bytes += nbytes
        return None

    def _pop(self):
        """The next queued (tag, Request), round robin over the client connections."""
        ring = self._ring
        peer = ring[0]
        q = self._queues[peer]
        tag, req, nbytes, arrived = q.popleft()
        if q:
            ring.rotate(-1)
        else:
            ring.popleft()
            del self._queues[peer]
        self._pending -= 1
        self.pending_bytes -= nbytes
        if self.stats is not None:
            self.stats.arrivals.append(arrived)
        return tag, req

    def _peek(self):
        """The (tag, Request, wire bytes) that _pop() returns next."""
        return self._queues[self._ring[0]][0]

    def refuse(self, request_id, code: str, message: str, *, counted: bool = False, op=None) -> Reply:
        """The error Reply to a request that is not served (one the wire could not decode, say), counted
        (under `op`, None for a message that is not a request)."""
        if not counted:
            self.metrics["requests"] += 1
            self.requests_by_op[op] += 1
        self.metrics["errors"] += 1
        self.metrics[f"error.{code}"] += 1
        self.errors_by_op[op, code] += 1
        return Reply.failure(request_id, code, message)

    def step(self) -> list:
        """Serve up to max_batch queued requests, taking no more step requests once the turn holds
        max_turn_samples samples; returns [(tag, Reply)] in arrival order: this turn's, or under
        `--fsync always` those whose log records are now durable (see released())."""
        if self.journal is not None:
            out = self._logged_turn()
        else:
            n = min(self._pending, self.config.max_batch)
            if n == 1 and self._peek()[1].op == "step" and self._peek()[1].seq is None:  # the one-stream path
                tag, req = self._pop()
                out = [(tag, self._step_alone(req))]
            else:
                out = self._turn(n)
        if self.snapshots is not None and self.snapshots.answered:
            out += self._snapshot_replies()
        if self.access is not None and self.access.namespaces:
            out = [(t.tag, Access.own_reply(r, t.prefix)) if type(t) is Owned else (t, r) for t, r in out]
        return out

    def _turn(self, n) -> list:
        """Serve the next n queued requests (fewer once max_turn_samples is reached), in arrival order."""
        out, steps, samples, cap = [], [], 0, self.config.max_turn_samples
        pop = self._pop
        for _ in range(n):
            tag, req = pop()
            if req.op in P.STEP_OPS:
                steps.append(len(out))  # answered when the plan runs
                out.append((tag, req))
                samples += req.samples
                if samples >= cap:
                    break
            elif req.op == "ping":
                out.append((tag, self._success(req, {"time": time.time()})))
            elif req.op == "snapshot" and self.snapshots is not None:  # captured after this turn's steps so far;
                self._run_steps(out, steps)  # answered once durable (step(), _snapshot_replies)
                steps = []
                self.snapshots.request((tag, req))
            else:
                self._run_steps(out, steps)
                steps = []
                out.append((tag, self._call(req)))
        self._run_steps(out, steps)
        return out

    # ---- with a step log -------------------------------------------------------------------------
    def _logged_turn(self) -> list:
        """A turn whose state changes are logged first; under `always` its replies wait for their fsync
        (and so do the replies of later turns: each client sees its replies in order)."""
        journal = self.journal
        self._wall = time.time()
        before = journal.lsn
        first = self._peek()[1] if self._pending == 1 else None
        if first is not None and first.op == "step" and first.seq is None \
                and self.streams.known_slot(first.stream) is not None:  # the one-stream path
            tag, req = self._pop()
            out = [(tag, self._step_alone(req))]
        else:
            out = self._turn(min(self._pending, self.config.max_batch)) if self._pending else []
        if journal.lsn > before:
            journal.commit()
        if journal.policy != "always" or (not self._held and journal.durable >= journal.lsn):
            return out
        if out:
            self._held.append((journal.lsn, out))
        return self.released()

    def released(self) -> list:
        """[(tag, Reply)] held for an fsync that has now returned, in order."""
        out, held, durable = [], self._held, self.journal.durable if self.journal is not None else 0
        while held and held[0][0] <= durable:
            out.extend(held.popleft()[1])
        return out

    @property
    def held(self) -> int:
        """Replies waiting for their log records to be durable."""
        return sum(len(r) for _, r in self._held)

    def _log(self, payload: bytes) -> None:
        """Append one record (LogWriteError: nothing written, refuse the requests)."""
        self.journal.append(payload)

    def call(self, msg: dict) -> dict:
        """Serve one request map in-process and return the reply map (arrays as numpy arrays)."""
        try:
            req = P.parse_request(msg)
        except P.ProtocolError as e:
            return self.refuse(e.request_id, e.code, e.message).as_map()
        reply = self.submit(None, req)
        if reply is None:
            replies = self.step()
            while not replies and (self._held or self.snapshots_waiting):
                if self._held:  # fsync always: wait for the record to be durable
                    self.journal.sync()
                    replies = self.released()
                else:  # a `snapshot` request: wait for its background write
                    self.settle_snapshots()
                    replies = self.step()
            reply = replies[-1][1]
        return reply.as_map()

    # ---- step requests: one plan, one kernel call -----------------------------------------------
    def _run_steps(self, out, positions):
        """Plan the step requests at `positions` of `out`, run the plan, put each Reply in its place."""
        if not positions:
            return
        requests = [out[k][1] for k in positions]
        p = plan(requests, self.streams)
        replies = {id(req): self._failure(req, e) for req, e in p.refused}
        replies.update((id(req), self._success(req, result)) for req, result in p.answered)
        if p.spans:
            replies.update(self._execute(p, requests))
        for k in positions:
            tag, req = out[k]
            out[k] = (tag, replies[id(req)])

    def _step_alone(self, req) -> Reply:
        """A turn of one `step` request: Streams.step checks and runs it (the planner's path gives the same
        bits and the same errors: tests/engine/test_core.py); counted as a plan of one. With a step log, for a
        known stream only (so that nothing after the record can refuse it), logged first."""
        self._mutated()
        x = req.x
        if self.journal is not None:
            try:
                xs = self.streams.check_input(x)  # (T, I), finite, of the model's dtype: what the record holds
                self._log(records.one_record(req.stream, xs, self._wall, self.streams))
            except LogWriteError as e:
                return self.refuse(req.id, P.LOG_FAILED, str(e), counted=True, op=req.op)
            except Exception as e:
                return self._failure(req, e)
            x = xs if x.ndim == 2 else xs[0]
        stats = self.stats
        t0 = time.perf_counter() if stats is not None else 0.0
        try:
            y = self.streams.step(req.stream, x)
        except Exception as e:
            return self._failure(req, e)
        n = len(y) if y.ndim == 2 else 1
        if stats is not None:
            stats.kernel(time.perf_counter() - t0, n, 1)
        self.metrics["batches"] += 1
        self.metrics["batched_requests"] += 1
        self.metrics["batched_samples"] += n
        return self._success(req, {"y": y})

    def _execute(self, p, requests=None) -> dict:
        """{id(request): Reply} for the plan's accepted requests, after one Streams call. requests: the planned
        ones in order, for the one retry after a NaN (None: no retry)."""
        if not p.ids:  # only resends within the plan (answered below from the rows they repeat: none ran)
            return {}
        self._mutated()
        try:
            if self.journal is not None:
                if not self.streams.finite(p.X):
                    raise InputError("X contains NaN or Inf; expected finite values")
                self._log(records.steps_record(p, self._wall, self.streams))
            stats = self.stats
            t0 = time.perf_counter() if stats is not None else 0.0
            if len(p.ids) == 1:  # a request alone (low load): the one-stream, lowest-latency path
                Y = self.streams.step(p.ids[0], p.X)  # (T, O), even for one row
            else:
                Y = self.streams.step_planned(p.ids, p.lengths, p.X, p.slots, p.generation)
        except LogWriteError as e:
            return {id(s.request): self.refuse(s.request.id, P.LOG_FAILED, str(e), counted=True, op=s.request.op)
                    for s in p.spans}
        except InputError as e:  # NaN/Inf somewhere: refuse the requests holding one, plan the others again
            bad = p.non_finite() if requests is not None else []
            if not bad:
                return {id(s.request): self._failure(s.request, e) for s in p.spans}
            # again: the others, and those refused as store_full (the room they lacked may have been the new
            # streams of a request refused now), in their order: what a plan without the bad ones would take
            held = {id(r) for r, _ in bad}
            again = {id(s.request) for s in p.spans if id(s.request) not in held}
            again.update(id(r) for r, err in p.refused if isinstance(err, StoreFullError))
            rest = plan([r for r in requests if id(r) in again], self.streams)
            replies = {id(req): self._failure(req, e) for req, e in bad + rest.refused}
            replies.update((id(req), self._success(req, result)) for req, result in rest.answered)
            if rest.spans:
                replies.update(self._execute(rest))
            return replies
        except Exception as e:  # planned requests were checked; anything left is a bug
            log.exception("step batch of %d requests failed", len(p.spans), extra=repeating("batch_failed"))
            return {id(s.request): self._failure(s.request, e) for s in p.spans}
        if stats is not None:
            stats.kernel(time.perf_counter() - t0, p.samples, len(p.spans))
        self.metrics["batches"] += 1
        self.metrics["batched_requests"] += len(p.spans)
        self.metrics["batched_samples"] += p.samples
        self.metrics["ok"] += len(p.spans)
        ok = self.ok_by_op
        for s in p.spans:
            ok[s.request.op] += 1
        if p.seqs is not None:
            for stream, seq, rows in p.receipts(Y):
                self.streams.remember(stream, seq, rows)
        return {id(req): Reply(req.id, result, None, "", req.lists) for req, result in p.results(Y)}

    # ---- one op at a time ------------------------------------------------------------------------
    def _call(self, req) -> Reply:
        if self.journal is not None and req.op in records.LOGGED_OPS:
            try:
                self._log(records.op_record(req, self._wall))
            except LogWriteError as e:
                return self.refuse(req.id, P.LOG_FAILED, str(e), counted=True, op=req.op)
        try:
            return self._success(req, self._dispatch[req.op](req))
        except Exception as e:
            return self._failure(req, e)

    # ---- replies ---------------------------------------------------------------------------------
    def _success(self, req, result) -> Reply:
        self.metrics["ok"] += 1
        self.ok_by_op[req.op] += 1
        return Reply.success(req, result)

    def _failure(self, req, e) -> Reply:
        """The error Reply for an exception: its own code, or internal (logged) for a bug."""
        detail = None
        if isinstance(e, P.ProtocolError):
            code, msg = e.code, e.message
        elif isinstance(e, SequenceError):
            code, msg, detail = e.code, str(e), {"seq": e.seq, "expected": e.expected}
        elif isinstance(e, LSTMStreamError):
            code, msg = _CORE_CODES.get(e.code, e.code), str(e)
        else:
            log.error("%s request failed", req.op, exc_info=e, extra=repeating("request_failed", req.op, op=req.op))
            code, msg = P.INTERNAL, f"internal error ({type(e).__name__}); the daemon logged it"
        reply = self.refuse(req.id, code, msg, counted=True, op=req.op)
        reply.detail = detail
        return reply

    def _mutated(self):
        if self.snapshots is not None:
            self.snapshots.dirty = True
