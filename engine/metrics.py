"""The Prometheus endpoint of `serve --metrics-port`: prometheus_client's HTTP server, in its own thread, and one
collector that reads the engine's own counters when it is scraped.

    exporter = start_metrics(core, "127.0.0.1", 9464)   # MetricsError: the extra is missing, the port is taken
    exporter.watch(server)                               # the server's bytes in and out, once it is bound
    exporter.url                                         # 'http://127.0.0.1:9464/metrics'

Why a collector and not Counter/Histogram objects updated on the hot path: prometheus_client's metric objects
take a lock per update (measured on this 2-core host: Counter.inc ~0.6 µs, Histogram.observe ~1.3 µs, against
~0.25 µs for loopstats.Buckets.observe), and the loop already keeps what is asked for as plain ints (the
core's counters, Streams' stream counts, the step log's and the snapshots' figures). So the loop keeps ints,
and the scrape turns them into metric families on the HTTP thread; with the endpoint on, the loop adds only
the histograms of engine/loopstats.py (a few clock readings and list increments per turn). Reading from
another thread: each dict or list is copied in one C call (dict(), a slice), which the GIL makes atomic, and
ints and floats are read whole; a scrape is a close picture of a moving loop, never a torn one.

Every metric, its labels, and the PromQL of the dashboard (docs/grafana-dashboard.json): docs/operations.md,
"Metrics". prometheus_client is imported here only, when the option is used (`pip install
'lstm-stream[metrics]'`); `import engine.cli` does not load it.
"""
from __future__ import annotations

import ipaddress
import logging

import lstm_stream

from .loopstats import LoopStats

log = logging.getLogger("lstm_stream.engine")

INSTALL = "pip install 'lstm-stream[metrics]'"
NOT_A_REQUEST = "none"  # the op label of a message that was no request (undecodable) and of an unencodable reply


class MetricsError(Exception):
    """The endpoint cannot start: prometheus_client is missing, or the address cannot be listened on."""


def start_metrics(core, addr: str, port: int) -> "Exporter":
    """Serve `core`'s metrics at http://addr:port/metrics from a thread of prometheus_client's; turns on the
    loop's histograms (core.stats). MetricsError saying what to do when it cannot."""
    try:
        import prometheus_client
    except ImportError:
        raise MetricsError(f"--metrics-port needs the Python package prometheus_client, which is not installed; "
                           f"install it with: {INSTALL}") from None
    registry = prometheus_client.CollectorRegistry()
    for extra in (prometheus_client.ProcessCollector, prometheus_client.PlatformCollector,
                  prometheus_client.GCCollector):
        extra(registry=registry)  # process_* (CPU, memory, open files), python_info, python_gc_*
    collector = EngineCollector(core)
    registry.register(collector)
    try:
        httpd, thread = prometheus_client.start_http_server(port, addr, registry=registry)
    except OSError as e:  # the port is taken, the address is not this host's or not an address
        raise MetricsError(f"--metrics-port {port} --metrics-bind {addr}: cannot listen there ({e}); expected a "
                           "free port on an address of this host, e.g. --metrics-bind 127.0.0.1") from None
    core.stats = LoopStats()
    exporter = Exporter(collector, httpd, thread)
    log.info("metrics at %s", exporter.url)
    if not _is_loopback(addr):
        log.warning("the metrics endpoint listens on %s, which is not a loopback address: anyone who can reach "
                    "it reads the daemon's load, errors and model fingerprint; bind 127.0.0.1 (the default) "
                    "behind a scraping proxy, or firewall the port", addr)
    return exporter


class Exporter:
    """The running endpoint: its URL, watch(server) for the transport's figures, close()."""

    def __init__(self, collector, httpd, thread):
        self.collector, self._httpd, self._thread = collector, httpd, thread
        host, port = httpd.server_address[:2]
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def watch(self, server) -> None:
        """Export the server's bytes received and sent (engine/server.py counts them)."""
        self.collector.server = server

    def close(self) -> None:
        """Stop serving the endpoint and release its port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _is_loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr.strip("[]")).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


class EngineCollector:
    """A prometheus_client collector over one EngineCore (and, once watched, its Server): every metric is read
    from the engine's own state when scraped, on the scrape's thread."""

    def __init__(self, core):
        self.core = core
        self.server = None
        self._build = {"version": lstm_stream.__version__}

    def collect(self):
        """The metric families of one scrape. A daemon of several models (engine/multimodel.py): each model's
        families once, every sample labelled with its `model`; the loop's and the socket's figures once."""
        core = self.core
        cores = getattr(core, "cores", None)
        if cores is None:
            yield from self._model(core)
        else:
            from prometheus_client.metrics_core import Metric
            merged = {}
            for name, one in cores.items():
                for family in self._model(one):
                    into = merged.get(family.name)
                    if into is None:
                        into = merged[family.name] = Metric(family.name, family.documentation, family.type)
                    into.samples.extend(s._replace(labels={**s.labels, "model": name}) for s in family.samples)
            yield from merged.values()
        yield from self._loop_stats(core.stats)
        yield from self._server()

    def _model(self, core):
        """The families of one model's EngineCore."""
        from prometheus_client.core import InfoMetricFamily
        m = core.streams.model
        build = {**self._build, "model_fingerprint": m.fingerprint, "dtype": str(m.dtype),
                 "backend": core.streams.backend}
        yield InfoMetricFamily("lstm_stream_build", "The daemon's version, model and backend.", value=build)
        yield from self._requests(core)
        yield from self._loop(core)
        yield from self._streams(core.streams)
        if core.snapshots is not None:
            yield from self._snapshots(core.snapshots)
        if core.journal is not None:
            yield from self._step_log(core.journal)

    def _requests(self, core):
        from prometheus_client.core import CounterMetricFamily as Counter
        counters = dict(core.metrics)  # one C-level copy each (see the module docstring)
        requests, ok, errors = dict(core.requests_by_op), dict(core.ok_by_op), dict(core.errors_by_op)
        replies = {**{(op, "ok"): n for op, n in ok.items()}, **errors}
        c = Counter("lstm_stream_requests", "Requests received, by op (`none`: a message that was no request).",
                    labels=["op"])
        for op, n in sorted(requests.items(), key=_by_label):
            c.add_metric([op or NOT_A_REQUEST], n)
        yield c
        c = Counter("lstm_stream_replies", "Replies, by op and code (`ok`, or the error code: docs/protocol.md).",
                    labels=["op", "code"])
        for (op, code), n in sorted(replies.items(), key=_by_label):
            c.add_metric([op or NOT_A_REQUEST, code], n)
        yield c
        yield Counter("lstm_stream_samples", "Samples (stream-steps) stepped.",
                      value=counters.get("batched_samples", 0))
        yield Counter("lstm_stream_busy_refusals", "Requests refused as busy (a full queue or a client's quota; "
                      "not applied).", value=counters.get("busy", 0))
        yield Counter("lstm_stream_replies_dropped", "Replies that could not be sent (the client was gone or not "
                      "reading).", value=counters.get("replies_dropped", 0))
        c = Counter("lstm_stream_model_reloads", "Weights updates applied (the reload op, SIGHUP, a changed file "
                    "in --model-dir), by whether they reset the streams.", labels=["reset"])
        resets = counters.get("reloads_reset", 0)
        c.add_metric(["false"], counters.get("reloads", 0) - resets)
        c.add_metric(["true"], resets)
        yield c

    def _server(self):
        from prometheus_client.core import CounterMetricFamily as Counter
        server = self.server
        if server is not None:
            yield Counter("lstm_stream_received_bytes", "Bytes of request payloads read off the socket.",
                          value=server.received_bytes)
            yield Counter("lstm_stream_sent_bytes", "Bytes of reply payloads sent.", value=server.sent_bytes)

    def _loop(self, core):
        from prometheus_client.core import GaugeMetricFamily as Gauge
        yield Gauge("lstm_stream_queued_requests", "Requests read and not yet served.", value=core.pending)
        yield Gauge("lstm_stream_queued_bytes", "Wire bytes of the queued requests.", value=core.pending_bytes)

    def _loop_stats(self, stats):
        if stats is None:
            return
        yield _histogram("lstm_stream_turn_seconds", "Time of one loop turn that served requests: serve the "
                         "queued ones (at most --max-batch), encode and send the replies.", stats.turn_seconds)
        yield _histogram("lstm_stream_queue_wait_seconds", "Per request, from being read off the socket to the "
                         "start of the turn that served it.", stats.queue_wait_seconds)
        yield _histogram("lstm_stream_kernel_seconds", "Time of one step call of the backend (the kernel and "
                         "its bookkeeping), per batch.", stats.kernel_seconds)
        yield _histogram("lstm_stream_batch_samples", "Samples (stream-steps) per kernel call.", stats.batch_samples)
        yield _histogram("lstm_stream_batch_requests", "Requests per kernel call.", stats.batch_requests)

    def _streams(self, streams):
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge
        yield Gauge("lstm_stream_streams", "Streams in memory.", value=len(streams))
        for what, doc in (("created", "Streams created (a new id's first step, set_state or copy)."),
                          ("dropped", "Streams dropped (the drop op, or idle with --idle-action drop)."),
                          ("evicted", "Idle streams moved to the cold store (--idle-ttl)."),
                          ("thawed", "Streams brought back from the cold store by a request.")):
            yield Counter(f"lstm_stream_streams_{what}", doc, value=getattr(streams, what))

    def _snapshots(self, snapshots):
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge
        c = Counter("lstm_stream_snapshots", "Snapshots written and durable, by reason (timer, request, "
                    "shutdown).", labels=["reason"])
        for reason, n in sorted(dict(snapshots.saves).items()):
            c.add_metric([reason], n)
        yield c
        yield Counter("lstm_stream_snapshot_failures", "Snapshots that failed (timed ones are retried with "
                      "back-off).", value=snapshots.failed_total)
        yield _histogram("lstm_stream_snapshot_duration_seconds", "Time from a snapshot's capture to its file "
                         "being durable.", snapshots.seconds)
        yield _histogram("lstm_stream_snapshot_pause_seconds", "How long the loop stopped for a snapshot: the "
                         "fork (or copy) of a background one, the whole write of a requested one.", snapshots.pauses)
        merger = snapshots.huge_pages  # (fork writes with --huge-pages merge only)
        if merger is not None:
            yield Counter("lstm_stream_snapshot_huge_page_merges", "Merges of the state's huge pages after a "
                          "forked snapshot (engine/hugepages.py).", value=merger.runs)
            yield Counter("lstm_stream_snapshot_huge_page_merged_bytes", "Bytes of huge pages those merges "
                          "asked for and got.", value=merger.merged_bytes)
        last = snapshots.last
        if last is not None:
            yield Gauge("lstm_stream_snapshot_size_bytes", "Size of the last durable snapshot file.",
                        value=last["bytes"])
            yield Gauge("lstm_stream_snapshot_last_success_timestamp_seconds", "Unix time of the last durable "
                        "snapshot.", value=last["time"])

    def _step_log(self, journal):
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge
        yield Counter("lstm_stream_steplog_records", "Step log records written by this process.",
                      value=journal.lsn - journal.opened_lsn)
        yield Counter("lstm_stream_steplog_written_bytes", "Bytes written to the step log by this process.",
                      value=journal.written_bytes)
        yield Counter("lstm_stream_steplog_write_failures", "Failed step log writes (their requests were "
                      "refused with log_failed).", value=journal.write_failures)
        yield Counter("lstm_stream_steplog_fsync_failures", "Failed fsyncs of the step log.",
                      value=journal.fsync_failures)
        yield _histogram("lstm_stream_steplog_fsync_duration_seconds", "Time of one fsync of the step log.",
                         journal.fsync_seconds)
        if journal.policy != "no":  # under `no` lstm-stream never fsyncs: no lag to speak of
            waiting, lag = journal.fsync_lag()
            yield Gauge("lstm_stream_steplog_fsync_lag_seconds", "How long the oldest record not yet fsynced "
                        "has waited (0 when all are durable): what a machine crash would lose now.", value=lag)
            yield Gauge("lstm_stream_steplog_unsynced_records", "Records written and not yet fsynced.",
                        value=waiting)


def _by_label(item):
    """Sort key of (label or label tuple, value) with None labels first."""
    key = item[0] if type(item[0]) is tuple else (item[0],)
    return tuple("" if k is None else k for k in key)


def _histogram(name, doc, buckets):
    """A HistogramMetricFamily from a loopstats.Buckets."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString
    counts, total = buckets.read()
    bounds = [floatToGoString(b) for b in buckets.bounds] + ["+Inf"]
    return HistogramMetricFamily(name, doc, buckets=list(zip(bounds, counts)), sum_value=total)
