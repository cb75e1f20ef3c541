"""EngineCore's housekeeping (a mixin, as ops.py's Ops): what the loop does between turns, each when due:
the client keys' reload, timed snapshots, idle eviction, the metrics line, tickers (systemd's watchdog, the
metrics exporter) and a background task; housekeep() returns the next deadline. Split out of core.py for size;
it uses the core's state (streams, config, snapshots, access, metrics, clocks) and nothing else.
"""
from __future__ import annotations

import logging
import time

from .logs import repeating

log = logging.getLogger("lstm_stream.engine")

BACKGROUND_POLL = 0.1  # seconds between looks at a background task (a kernel compiling) while one runs


class Housekeeping:
    """housekeep(), add_ticker() and what they run; mixed into EngineCore."""

    def housekeep(self, now: float | None = None) -> float:
        """Timed snapshot, idle eviction, metrics line, each when due; returns the next deadline (monotonic)."""
        now = self._clock() if now is None else now
        self._wall = time.time()  # the streams' clock with a step log (idle eviction reads it)
        if self.access is not None:
            self.access.tick()  # reload the client keys if SIGHUP asked for it (here: on the loop thread)
        if self.snapshots is not None:
            self.snapshots.tick(now)  # finishes or starts a background write; a failure is logged and
            # retried with back-off there; never raises
        if self.streams.idle_ttl is not None and now >= self._next_evict:
            self._next_evict = now + self.config.evict_every
            self._evict_idle(now)
        if now >= self._next_metrics:
            self._log_metrics(now)
        if now >= self._next_tick:
            self._next_tick = min(tick(now) for tick in self._tickers)
        deadlines = [self._next_metrics, self._next_tick]
        if self._background is not None:
            if self._background():
                self._background = None
            else:
                deadlines.append(now + BACKGROUND_POLL)
        if self.streams.idle_ttl is not None:
            deadlines.append(self._next_evict)
        if self.snapshots is not None:
            if self.snapshots.deadline() is not None:
                deadlines.append(self.snapshots.deadline())
            if self.snapshots.busy:  # a background write: look for its end (then the step log may trim)
                deadlines.append(now + BACKGROUND_POLL)
            if self.snapshots.answered:  # `snapshot` requests answered: the next turn replies (no sleep)
                deadlines.append(now)
        return min(deadlines)

    def add_ticker(self, tick) -> None:
        """Call tick(now) in housekeeping, on the loop, once due: first at the next housekeeping, then at the
        monotonic time it returns each time."""
        self._tickers.append(tick)
        self._next_tick = float("-inf")

    on_evict = None  # callable(ids, lsn): told after idle streams left memory (the step log records it there)

    def _evict_idle(self, now):
        """Idle streams leave memory at the next log position (the cold store's counter until a step log gives
        it). A failed write to the cold store (disk full) leaves them in memory: logged, tried again later."""
        cold = self.streams.cold
        lsn = None if cold is None else cold.next_lsn
        try:
            evicted = self.streams.evict_idle(lsn=lsn)
        except Exception as e:
            self._next_evict = now + 60 * self.config.evict_every
            log.error("evicting idle streams to %s failed: %s; they stay in memory", cold and cold.path, e,
                      extra=repeating("evict_failed", path=cold and cold.path, error=str(e)))
            return
        if evicted:
            self._mutated()
            if self.on_evict is not None:
                self.on_evict(evicted, lsn)
            log.info("evicted %d streams idle for more than %g s (%s)", len(evicted), self.streams.idle_ttl,
                     "dropped" if self.streams.idle_action == "drop" else f"to {cold.path}",
                     extra={"event": "evicted", "streams": len(evicted), "action": self.streams.idle_action})

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
                d["busy"], d["replies_dropped"], len(self.streams),
                extra={"event": "metrics", "period_s": round(period, 3), "requests": d["requests"],
                       "samples": d["batched_samples"], "batches": d["batches"], "errors": d["errors"],
                       "busy": d["busy"], "replies_dropped": d["replies_dropped"], "streams": len(self.streams)})
