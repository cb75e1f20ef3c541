"""The Prometheus endpoint (serve --metrics-port): a real daemon, its real HTTP endpoint scraped with urllib and
parsed with prometheus_client's own parser; the values must move by what the requests did."""
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from daemons import ROOT

from clients import AsyncClient, BadRequest, Busy, Client
from engine.loopstats import Buckets, LoopStats
from engine.snapshot_jobs import fork_available

parser = pytest.importorskip("prometheus_client.parser", reason="the metrics extra: pip install "
                             "'lstm-stream[metrics]'")
I = 4  # the served models' inputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port) -> dict:
    """{(sample name, ((label, value), ...)): value} of one scrape of the daemon's endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def moved(before, after, name, **labels):
    """How much a sample moved between two scrapes (absent = 0)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_as_requests_are_served(daemon, served_models, tmp_path):
    port = free_port()
    d = daemon("--model", served_models["ar"][0], "--metrics-port", port, "--snapshot-dir", tmp_path / "state")
    assert f"metrics at http://127.0.0.1:{port}/metrics" in d.log()
    a = scrape(port)
    assert a["lstm_stream_build_info", (("backend", "cpu"), ("dtype", "float32"),
                                        ("model_fingerprint", served_models["ar"][1].fingerprint),
                                        ("version", "0.1.0"))] == 1
    assert ("process_resident_memory_bytes", ()) in a  # prometheus_client's process collector is there too
    with Client(d.endpoint) as c:
        for _ in range(5):
            c.step("a", np.full(I, 0.1))                                    # 5 turns, 5 kernel calls, 5 samples
        c.step_many({"b": np.zeros((3, I)), "c": np.ones(I)})                # 1 turn, 1 kernel call, 4 samples
        with pytest.raises(BadRequest):
            c.step("a", np.zeros(I + 1))                                     # refused before the kernel
        c.drop("c")
        snap = c.snapshot()
    b = scrape(port)
    assert moved(a, b, "lstm_stream_requests_total", op="step") == 6
    assert moved(a, b, "lstm_stream_requests_total", op="step_many") == 1
    assert moved(a, b, "lstm_stream_replies_total", op="step", code="ok") == 5
    assert moved(a, b, "lstm_stream_replies_total", op="step", code="bad_input") == 1
    assert moved(a, b, "lstm_stream_replies_total", op="step_many", code="ok") == 1
    assert moved(a, b, "lstm_stream_replies_total", op="drop", code="ok") == 1
    assert moved(a, b, "lstm_stream_replies_total", op="snapshot", code="ok") == 1
    assert moved(a, b, "lstm_stream_samples_total") == 9
    assert moved(a, b, "lstm_stream_streams_created_total") == 3
    assert moved(a, b, "lstm_stream_streams_dropped_total") == 1
    assert b["lstm_stream_streams", ()] == 2
    assert moved(a, b, "lstm_stream_kernel_seconds_count") == 6
    assert moved(a, b, "lstm_stream_batch_samples_sum") == 9
    assert moved(a, b, "lstm_stream_batch_samples_bucket", le="1.0") == 5  # the five one-sample steps
    assert moved(a, b, "lstm_stream_batch_requests_sum") == 6
    assert moved(a, b, "lstm_stream_turn_seconds_count") == 9  # one request per turn: the client waits for each
    assert moved(a, b, "lstm_stream_queue_wait_seconds_count") == 9
    for h in ("turn_seconds", "queue_wait_seconds", "kernel_seconds"):
        assert b[f"lstm_stream_{h}_bucket", (("le", "+Inf"),)] == b[f"lstm_stream_{h}_count", ()]
        assert moved(a, b, f"lstm_stream_{h}_sum") > 0
    assert moved(a, b, "lstm_stream_received_bytes_total") > 0 and moved(a, b, "lstm_stream_sent_bytes_total") > 0
    assert moved(a, b, "lstm_stream_snapshots_total", reason="request") == 1
    assert moved(a, b, "lstm_stream_snapshot_duration_seconds_count") == 1
    assert moved(a, b, "lstm_stream_snapshot_pause_seconds_count") == 1
    assert b["lstm_stream_snapshot_size_bytes", ()] == snap["bytes"]
    assert b["lstm_stream_snapshot_last_success_timestamp_seconds", ()] == pytest.approx(snap["time"])
    assert moved(a, b, "lstm_stream_snapshot_failures_total") == 0
    if fork_available():  # a requested snapshot is written on the loop: nothing forked, nothing to merge
        assert moved(a, b, "lstm_stream_snapshot_huge_page_merges_total") == 0
        assert ("lstm_stream_snapshot_huge_page_merged_bytes_total", ()) in b
    # the step log (on with --snapshot-dir): one record per turn that changed state (6 steps' turns + drop)
    assert moved(a, b, "lstm_stream_steplog_records_total") == 7
    assert moved(a, b, "lstm_stream_steplog_written_bytes_total") > 0
    deadline = time.monotonic() + 30  # everysec: the fsync thread makes them durable within about a second
    while b["lstm_stream_steplog_unsynced_records", ()] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        b = scrape(port)
    assert b["lstm_stream_steplog_unsynced_records", ()] == 0 and b["lstm_stream_steplog_fsync_lag_seconds", ()] == 0
    assert moved(a, b, "lstm_stream_steplog_fsync_duration_seconds_count") >= 1
    assert b["lstm_stream_steplog_fsync_failures_total", ()] == b["lstm_stream_steplog_write_failures_total", ()] == 0
    check_dashboard_and_docs({name for name, _ in b})


def check_dashboard_and_docs(exported):
    """Every lstm_stream_ series the dashboard queries is one the daemon exports (this one has every kind:
    snapshots and the step log), and docs/operations.md names every family it exports."""
    import json
    import re
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {m for e in exprs for m in re.findall(r"lstm_stream_\w+", e)}
    assert queried and queried <= exported, sorted(queried - exported)
    families = {re.sub(r"_(bucket|sum|count|total|info)$", "", n) for n in exported if n.startswith("lstm_stream_")}
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert [f for f in sorted(families) if f not in doc] == []


def test_undecodable_messages_and_busy_refusals_are_counted(daemon, served_models):
    import zmq
    port = free_port()
    d = daemon("--model", served_models["ar"][0], "--metrics-port", port, "--max-batch", "2",
               "--max-peer-pending", "8")
    a = scrape(port)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.endpoint)
        s.send(b"\xc1 not msgpack")
        assert s.poll(30_000) and s.recv()
        s.close()
    finally:
        ctx.term()

    async def flood():
        async with AsyncClient(d.endpoint, timeout=60, merge_steps=False) as c:  # 300 requests
            return await asyncio.gather(*(c.step("b", np.full(I, 0.1)) for _ in range(300)), return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(flood(), 120))
    busy = sum(isinstance(r, Busy) for r in results)
    ok = sum(isinstance(r, np.ndarray) for r in results)
    assert busy and busy + ok == 300
    b = scrape(port)
    assert moved(a, b, "lstm_stream_requests_total", op="none") == 1
    assert moved(a, b, "lstm_stream_replies_total", op="none", code="bad_message") == 1
    assert moved(a, b, "lstm_stream_busy_refusals_total") == busy
    assert moved(a, b, "lstm_stream_replies_total", op="step", code="busy") == busy
    assert moved(a, b, "lstm_stream_replies_total", op="step", code="ok") == ok
    assert moved(a, b, "lstm_stream_samples_total") == ok
    assert "lstm_stream_snapshots_total" not in {k[0] for k in b}  # no --snapshot-dir: no snapshot metrics


def _tcp_listeners(pid) -> int:
    """How many TCP sockets process `pid` has in the LISTEN state (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                lines = f.read().splitlines()[1:]
            for line in lines:
                f = line.split()
                n += f[3] == "0A" and f[9] in inodes  # state 0A: LISTEN
    return n


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the listening sockets from Linux's /proc")
def test_the_endpoint_is_off_by_default(daemon, served_models):
    plain = daemon("--model", served_models["ar"][0])                              # ipc:// only
    on = daemon("--model", served_models["ar"][0], "--metrics-port", free_port())
    assert _tcp_listeners(plain.proc.pid) == 0 and "metrics at" not in plain.log()
    assert _tcp_listeners(on.proc.pid) == 1


def test_import_engine_cli_does_not_import_prometheus_client():
    code = "import sys, engine.cli; print('prometheus_client' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def _serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--bind", "tcp://127.0.0.1:*", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([*(env or []), str(ROOT)])))


def test_without_the_extra_serve_says_what_to_install(served_models, tmp_path):
    fake = tmp_path / "site"
    (fake / "prometheus_client").mkdir(parents=True)  # shadows the installed package: importing it fails
    (fake / "prometheus_client" / "__init__.py").write_text("raise ImportError('no prometheus_client here')\n")
    r = _serve("--model", served_models["ar"][0], "--metrics-port", free_port(), env=[str(fake)])
    assert r.returncode == 2 and "pip install 'lstm-stream[metrics]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_taken_port_is_refused_at_start(served_models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = _serve("--model", served_models["ar"][0], "--metrics-port", s.getsockname()[1])
    assert r.returncode == 2 and "cannot listen there" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["70000", "-1", "http"])
def test_a_bad_port_is_refused_with_what_is_expected(value):
    r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--metrics-port", value], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and "is not a TCP port; expected a number from 1 to 65535" in r.stderr, r.stderr


# ---- the loop's histograms, in-process -----------------------------------------------------------------
def test_buckets_are_cumulative_with_inclusive_bounds():
    b = Buckets((1.0, 2.0, 4.0))
    for v in (0.5, 1.0, 1.5, 4.0, 9.0):
        b.observe(v)
    b.observe(2.0, n=3)
    counts, total = b.read()
    assert counts == [2, 6, 7, 8] and total == pytest.approx(0.5 + 1.0 + 1.5 + 4.0 + 9.0 + 6.0)
    with pytest.raises(ValueError, match="increasing"):
        Buckets((2.0, 1.0))


def test_queue_waits_are_counted_once_per_request():
    s = LoopStats()
    first, second = 10.0, 10.5  # two drains' read times; requests popped round robin from both
    s.arrivals.extend([first, first, second, first, second])
    s.turn(11.0, 11.25)
    counts, total = s.queue_wait_seconds.read()
    assert counts[-1] == 5 and total == pytest.approx(3 * 1.0 + 2 * 0.5) and s.arrivals == []
    assert s.turn_seconds.read() == ([0] * 13 + [1] * 7, 0.25)


def test_an_exporter_on_any_free_port_serves_until_closed(served_models):
    """start_metrics in-process over a real EngineCore: port 0 picks a free port (in exporter.url), the loop's
    histograms are turned on, and close() releases the port."""
    import lstm_stream as ls
    from engine.core import EngineCore
    from engine.metrics import start_metrics
    core = EngineCore(ls.Streams(served_models["ar"][1]))
    exporter = start_metrics(core, "127.0.0.1", 0)
    try:
        assert core.stats is not None and exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"
        core.call({"v": 1, "id": 1, "op": "step", "stream": "a", "x": [0.1] * I})
        m = scrape(exporter.port)
        assert m["lstm_stream_requests_total", (("op", "step"),)] == 1 and m["lstm_stream_streams", ()] == 1
    finally:
        exporter.close()
    with pytest.raises(OSError):
        scrape(exporter.port)
