"""Histograms the engine keeps for the Prometheus endpoint, as plain ints: no prometheus_client here.

    stats = LoopStats()          # core.stats = stats: the core and the server loop then fill it
    stats.kernel(seconds, samples, requests)   # one kernel call (EngineCore)
    stats.turn(start, end)       # one loop turn that sent replies (Server.run), with the queue waits
    counts, total = stats.kernel_seconds.read()   # on the scrape's thread: cumulative counts per bound, sum

The loop thread writes these; the scrape (engine/metrics.py) reads them on prometheus_client's HTTP thread.
Writing is one list-element increment and one float add (no lock: the loop never waits for a scrape); read()
copies the list in one C call, which the GIL (or, free-threaded, the list's own lock) makes a consistent
picture of the counts, so the exposition is always cumulative and its _count is its +Inf bucket. The sum is
read a moment apart from the counts and may lag them by an observation or two, as in any lock-free exporter.
Histograms with the same bounds as prometheus_client's: `le` is the inclusive upper bound.
"""
from __future__ import annotations

from bisect import bisect_left

# Seconds: a turn, a kernel call and a queue wait run from ~10 µs (one sample) to a second (a huge request on a
# loaded host); a snapshot from milliseconds to minutes; an fsync from 0.1 ms (NVMe) to seconds (a stalled disk).
SECONDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0, 10.0)
SNAPSHOT_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FSYNC_SECONDS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Samples or requests in one kernel call: 1 (a request alone) to max_request_samples (16,384 by default).
SIZES = tuple(float(2 ** k) for k in range(15))


class Buckets:
    """One histogram: counts per upper bound (the last for +Inf) and the sum of the observed values."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = tuple(float(b) for b in bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"bucket bounds must be increasing, got {bounds!r}")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Count `value` n times (n requests that waited the same time)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def read(self) -> tuple[list, float]:
        """(cumulative counts, one per bound then +Inf; the sum): a picture for one scrape."""
        counts = self.counts[:]  # one C-level copy (see the module docstring)
        total, out = 0, []
        for c in counts:
            total += c
            out.append(total)
        return out, self.sum


class LoopStats:
    """The serving loop's histograms, kept only when the Prometheus endpoint is on (core.stats is None
    otherwise, and the loop then takes no clock readings for them)."""

    def __init__(self):
        self.turn_seconds = Buckets(SECONDS)      # one loop turn: serve the queued requests, encode, send
        self.queue_wait_seconds = Buckets(SECONDS)  # per request: read off the socket -> its turn starts
        self.kernel_seconds = Buckets(SECONDS)    # one Streams step call: the kernel and its bookkeeping
        self.batch_samples = Buckets(SIZES)       # samples (stream-steps) per kernel call
        self.batch_requests = Buckets(SIZES)      # requests per kernel call
        self.arrivals: list = []  # the read time of each request served this turn (EngineCore._pop appends)

    def kernel(self, seconds: float, samples: int, requests: int) -> None:
        """One kernel call of `samples` stream-steps for `requests` requests, in `seconds`."""
        self.kernel_seconds.observe(seconds)
        self.batch_samples.observe(samples)
        self.batch_requests.observe(requests)

    def turn(self, start: float, end: float) -> None:
        """A turn that began serving at `start` and sent its last reply at `end` (perf_counter seconds): its
        time, and each served request's wait from its read time (in `arrivals`, then cleared) to `start`.
        Requests read in one drain share their read time (the same float object), so the waits are observed
        once per drain, weighted by its count, not once per request."""
        self.turn_seconds.observe(end - start)
        arrivals = self.arrivals
        if not arrivals:
            return
        observe = self.queue_wait_seconds.observe
        prev, n = arrivals[0], 0
        for a in arrivals:
            if a is not prev:
                observe(max(start - prev, 0.0), n)
                prev, n = a, 0
            n += 1
        observe(max(start - prev, 0.0), n)
        arrivals.clear()
