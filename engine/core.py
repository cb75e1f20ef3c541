"""EngineCore: the daemon without sockets. Encoded requests in, encoded replies out, in arrival order.

    core = EngineCore(streams, EngineConfig(...), snapshots=None)
    reply = core.submit(tag, data)     # queue one request; an immediate reply (bytes) if refused at once
    for tag, data in core.step(): ...  # serve up to max_batch queued requests: one kernel call for the steps
    core.housekeep()                   # timed snapshot, idle eviction, metrics line, background task; returns
                                       # the next deadline

`tag` is opaque (the server's ZeroMQ envelope). step() walks the queue in arrival order: step requests go into
one StepPlan (one step_batch call); any other op first runs the plan so far, then itself, so every stream sees
its requests in the order they arrived. ping touches no stream and never splits a batch.
"""
from __future__ import annotations

import collections
import logging
import time

import numpy as np

import lstm_stream
from lstm_stream import protocol as P
from lstm_stream.errors import LSTMStreamError

from .config import EngineConfig
from .planner import StepPlan

log = logging.getLogger("lstm_stream.engine")

# Codes of the core's exceptions -> wire codes (the rest are identical).
_CORE_CODES = {"bad_model": P.UNSUPPORTED, "bad_snapshot": P.SNAPSHOT_FAILED, "bad_backend": P.INTERNAL}


BACKGROUND_POLL = 0.1  # seconds between looks at a background task (a kernel compiling) while one runs


class EngineCore:
    """Queue, batch plan, op dispatch and housekeeping over one Streams; no sockets, no threads."""

    def __init__(self, streams, config: EngineConfig = EngineConfig(), *, snapshots=None, background=None,
                 clock=time.monotonic):
        self.streams = streams
        self.config = config
        self.snapshots = snapshots
        self._background = background  # called in housekeeping until it returns True (warm.finish_background)
        self.codec = P.Codec(max_message_bytes=config.max_message_bytes)
        self._clock = clock
        self._queue: collections.deque = collections.deque()  # (tag, Request)
        self._started = clock()
        self.metrics = collections.Counter()
        self._last_metrics = collections.Counter()
        self._next_evict = self._started + config.evict_every
        self._next_metrics = self._started + config.metrics_every
        self._dispatch = {op: getattr(self, f"_op_{op}") for op in P.OPS if op not in P.STEP_OPS}

    @property
    def pending(self) -> int:
        """Requests queued and not yet served."""
        return len(self._queue)

    # ---- requests in, replies out ----------------------------------------------------------------
    def submit(self, tag, data) -> bytes | None:
        """Queue one encoded request; returns an encoded reply when it is answered at once (error or busy)."""
        self.metrics["requests"] += 1
        try:
            req = self.codec.decode_request(data)
        except P.ProtocolError as e:
            return self._error_bytes(e.request_id, e.code, e.message)
        if len(self._queue) >= self.config.max_pending:
            self.metrics["busy"] += 1
            return self._error_bytes(req.id, P.BUSY, f"the engine is busy: {len(self._queue)} requests are "
                                                     "queued; this one was not applied, resend it later")
        self._queue.append((tag, req))
        return None

    def reject(self, code: str, message: str) -> bytes:
        """Count a request the transport could not even hand over, and return its encoded error reply."""
        self.metrics["requests"] += 1
        return self._error_bytes(None, code, message)

    def step(self) -> list:
        """Serve up to max_batch queued requests, stopping early once the turn's steps reach max_turn_samples
        samples; returns [(tag, encoded reply)] in arrival order."""
        n = min(len(self._queue), self.config.max_batch)
        if n == 0:
            return []
        out, plan, waiting = [], StepPlan(self.streams), []
        cap = self.config.max_turn_samples
        for _ in range(n):
            tag, req = self._queue.popleft()
            if req.op in P.STEP_OPS:
                err = self._guard(plan.add, req)
                if err is None:
                    waiting.append(len(out))  # answered when the plan runs
                out.append((tag, err))
                if plan.samples >= cap:
                    break
            elif req.op == "ping":
                out.append((tag, self._ok(req, self._op_ping(req))))
            else:
                self._run_plan(plan, out, waiting)
                plan, waiting = StepPlan(self.streams), []
                out.append((tag, self._call(req)))
        self._run_plan(plan, out, waiting)
        return out

    def call(self, msg: dict) -> dict:
        """Serve one request map in-process and return the decoded reply (tests, tools)."""
        data = self.codec.encode(msg)
        reply = self.submit(None, data)
        if reply is None:
            reply = self.step()[-1][1]
        return self.codec.decode(reply)

    def _run_plan(self, plan, out, waiting):
        """Run the plan (one kernel call) and put each planned request's reply at its place in `out`."""
        if not len(plan):
            return
        self.metrics["batches"] += 1
        self.metrics["batched_requests"] += len(plan)
        self.metrics["batched_samples"] += plan.samples
        self._mutated()
        try:
            results, err = plan.run(), None
        except Exception as e:  # planned requests were validated; anything left is unexpected
            log.exception("step batch of %d requests failed", len(plan))
            results, err = [(req, None) for req, *_ in plan.parts], e
        for k, (req, res) in zip(waiting, results):
            e = err if err is not None else res if isinstance(res, Exception) else None
            out[k] = (out[k][0], self._ok(req, res) if e is None else self._exc_bytes(req, e))

    # ---- one op at a time ------------------------------------------------------------------------
    def _call(self, req) -> bytes:
        result = self._guard(self._dispatch[req.op], req)
        if isinstance(result, bytes):
            return result
        return self._ok(req, result)

    def _guard(self, fn, req):
        """fn(req); an exception becomes an encoded error reply (returned), anything else passes through."""
        try:
            return fn(req)
        except (P.ProtocolError, LSTMStreamError) as e:
            return self._exc_bytes(req, e)
        except Exception as e:
            log.exception("op %s failed", req.op)
            return self._exc_bytes(req, e)

    def _op_ping(self, req):
        return {"time": time.time()}

    def _op_info(self, req):
        m = self.streams.model
        stats = self.streams.stats()
        return {"protocol": P.PROTOCOL_VERSION, "version": lstm_stream.__version__, "model": m.config(),
                "fingerprint": m.fingerprint, "autoregressive": m.autoregressive, "backend": stats["backend"],
                "streams": stats["streams"], "capacity": stats["capacity"], "max_streams": stats["max_streams"],
                "idle_ttl": self.streams.idle_ttl, "state_bytes_per_stream": stats["state_bytes_per_stream"],
                "slab_bytes": stats["slab_bytes"], "id_lists": stats["id_lists"],
                "uptime": self._clock() - self._started,
                "pending": len(self._queue), "max_batch": self.config.max_batch,
                "max_pending": self.config.max_pending, "max_message_bytes": self.config.max_message_bytes,
                "counters": dict(self.metrics),
                "snapshot": None if self.snapshots is None else {"path": self.snapshots.path,
                                                                  "every": self.snapshots.every,
                                                                  "last": self.snapshots.last,
                                                                  **self.snapshots.status()}}

    def _op_streams(self, req):
        offset, limit = req.fields["offset"], req.fields["limit"]
        if offset < 0 or not 0 <= limit <= P.MAX_STREAMS_PAGE:
            raise P.ProtocolError(P.BAD_REQUEST, f"offset must be >= 0 and limit in 0..{P.MAX_STREAMS_PAGE}, "
                                                 f"got offset={offset}, limit={limit}")
        ids = self.streams.ids()
        return {"streams": ids[offset:offset + limit], "total": len(ids)}

    def _op_forecast(self, req):
        m = self.streams.model
        if not m.autoregressive:
            raise P.ProtocolError(P.UNSUPPORTED, f"forecast needs an autoregressive model (output_size == "
                                                 f"input_size); this one maps {m.input_size} inputs to "
                                                 f"{m.output_size} outputs")
        return {"y": self.streams.forecast(req.fields["stream"], req.fields["horizon"])}

    def _op_get_state(self, req):
        st = self.streams.get_state(req.fields["stream"])
        return {"h": st.h, "c": st.c, "steps": st.steps, "last_seen": st.last_seen}

    def _op_set_state(self, req):
        f = req.fields  # Streams.set_state checks everything (steps in int64, shapes, NaN) before any change
        state = {"h": P.to_array(f["h"], "h"), "c": P.to_array(f["c"], "c"), "steps": f["steps"]}
        self.streams.set_state(f["stream"], state)
        self._mutated()
        return {}

    def _op_copy(self, req):
        self.streams.copy(req.fields["src"], req.fields["dst"])
        self._mutated()
        return {}

    def _op_reset(self, req):
        self.streams.reset(req.fields["stream"])
        self._mutated()
        return {}

    def _op_drop(self, req):
        self.streams.drop(req.fields["stream"])
        self._mutated()
        return {}

    def _op_snapshot(self, req):
        if self.snapshots is None:
            raise P.ProtocolError(P.UNSUPPORTED, "this daemon was started without --snapshot-dir")
        try:
            return self.snapshots.save("request")
        except OSError as e:
            raise P.ProtocolError(P.SNAPSHOT_FAILED, f"snapshot to {self.snapshots.path} failed: {e}") from None

    # ---- replies ---------------------------------------------------------------------------------
    def _ok(self, req, result) -> bytes:
        if req.lists:
            result = {k: _listify(v) for k, v in result.items()}
        try:
            data = self.codec.ok(req.id, result)
        except Exception as e:  # a result the wire cannot carry is a bug; the client still gets an answer
            log.exception("cannot encode the reply to %s", req.op)
            return self._exc_bytes(req, e)
        self.metrics["ok"] += 1
        return data

    def _exc_bytes(self, req, e) -> bytes:
        if isinstance(e, P.ProtocolError):
            code, msg = e.code, e.message
        elif isinstance(e, LSTMStreamError):
            code, msg = _CORE_CODES.get(e.code, e.code), str(e)
        else:
            code, msg = P.INTERNAL, f"internal error ({type(e).__name__}); the daemon logged it"
        return self._error_bytes(req.id, code, msg)

    def _error_bytes(self, request_id, code, message) -> bytes:
        self.metrics["errors"] += 1
        self.metrics[f"error.{code}"] += 1
        return self.codec.error(request_id, code, message)

    def _mutated(self):
        if self.snapshots is not None:
            self.snapshots.dirty = True

    # ---- housekeeping ----------------------------------------------------------------------------
    def housekeep(self, now: float | None = None) -> float:
        """Timed snapshot, idle eviction, metrics line, each when due; returns the next deadline (monotonic)."""
        now = self._clock() if now is None else now
        if self.snapshots is not None:
            self.snapshots.tick(now)  # a failed save is logged and retried with back-off there; never raises
        if self.streams.idle_ttl is not None and now >= self._next_evict:
            self._next_evict = now + self.config.evict_every
            evicted = self.streams.evict_idle()
            if evicted:
                self._mutated()
                log.info("evicted %d streams idle for more than %g s", len(evicted), self.streams.idle_ttl)
        if now >= self._next_metrics:
            self._log_metrics(now)
        deadlines = [self._next_metrics]
        if self._background is not None:
            if self._background():
                self._background = None
            else:
                deadlines.append(now + BACKGROUND_POLL)
        if self.streams.idle_ttl is not None:
            deadlines.append(self._next_evict)
        if self.snapshots is not None and self.snapshots.deadline() is not None:
            deadlines.append(self.snapshots.deadline())
        return min(deadlines)

    def _log_metrics(self, now):
        period = now - (self._next_metrics - self.config.metrics_every)
        self._next_metrics = now + self.config.metrics_every
        d = self.metrics - self._last_metrics
        self._last_metrics = self.metrics.copy()
        if not d["requests"]:
            return
        rate = d["errors"] / d["requests"]
        mean = d["batched_requests"] / d["batches"] if d["batches"] else 0.0
        log.log(logging.WARNING if rate > 0.01 else logging.INFO,
                "served %d requests in %.0f s (%.0f/s), %d samples, %d batches (mean %.1f requests), "
                "errors %d (%.2f%%), busy %d, replies dropped %d, streams %d", d["requests"], period,
                d["requests"] / period, d["batched_samples"], d["batches"], mean, d["errors"], 100 * rate,
                d["busy"], d["replies_dropped"], len(self.streams))


def _listify(v):
    if isinstance(v, np.ndarray):
        return P.lists_of(v)
    if isinstance(v, list):
        return [_listify(a) for a in v]
    return v
