"""engine/logs.py: `--log-format json` (every line an object with the fields operators filter on) and repeated
failures written once with a count, in-process and from a real daemon."""
import io
import json
import logging
import signal

import msgpack
import pytest
import zmq

from engine import logs

FIELDS = ("ts", "level", "logger", "event", "message")


def parse(text: str) -> list:
    """Every line of `text` as JSON; fails naming the first line that is not."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return out


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def sink():
    """A logger writing through a handler with the JsonFormatter and a RepeatFilter on a fake clock."""
    stream, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    repeats = logs.RepeatFilter(handler, window=60.0, clock=clock)
    handler.addFilter(repeats)
    logger = logging.getLogger("lstm_stream.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, clock, repeats
    logger.removeHandler(handler)


def test_json_lines_have_the_fields(sink):
    logger, stream, _, _ = sink
    logger.info("snapshot: %d streams\nsecond line", 12, extra={"event": "snapshot", "streams": 12,
                                                                 "path": "state/x", "duration_s": 0.5})
    logger.warning("plain")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    a, b, c = parse(stream.getvalue())
    assert set(FIELDS) <= set(a) and a["level"] == "info" and a["logger"] == "lstm_stream.test_logs"
    assert a["event"] == "snapshot" and a["streams"] == 12 and a["path"] == "state/x" and a["duration_s"] == 0.5
    assert a["message"] == "snapshot: 12 streams\nsecond line" and a["ts"].endswith("Z") and "T" in a["ts"]
    assert b["event"] is None and b["level"] == "warning" and "repeat" not in b
    assert c["level"] == "error" and "RuntimeError: boom" in c["exc"]


def test_a_repeated_failure_is_written_once_then_counted(sink):
    logger, stream, clock, repeats = sink
    for i in range(500):
        logger.error("write failed: %s", f"disk full {i}", extra=logs.repeating("log_write_failed", path="p"))
        logger.info("other %d", i) if i in (10, 20) else None  # other records are never held back
        clock.now += 0.01
    lines = parse(stream.getvalue())
    assert [x["message"] for x in lines] == ["write failed: disk full 0", "other 10", "other 20"]
    repeats.flush_repeats()  # the window (60 s) has not passed: still counting
    assert len(parse(stream.getvalue())) == 3
    clock.now += 60
    repeats.flush_repeats()
    summary = parse(stream.getvalue())[-1]
    assert summary["event"] == "log_write_failed" and summary["repeated"] == 499 and summary["path"] == "p"
    assert summary["message"].startswith("write failed: disk full 499 [repeated 499 more times in ")
    # after the window, the next occurrence is written again
    logger.error("write failed: %s", "again", extra=logs.repeating("log_write_failed", path="p"))
    assert parse(stream.getvalue())[-1]["message"] == "write failed: again"


def test_the_count_comes_at_the_next_occurrence_after_the_window(sink):
    logger, stream, clock, _ = sink
    for _ in range(3):
        logger.warning("bad message", extra=logs.repeating("bad_message", "bad_message"))
    clock.now += 61
    logger.warning("bad message", extra=logs.repeating("bad_message", "bad_message"))
    lines = parse(stream.getvalue())
    assert [x.get("repeated") for x in lines] == [None, 2, None]


def test_keys_keep_events_apart(sink):
    logger, stream, _, _ = sink
    for op in ("copy", "reset", "copy", "reset", "copy"):
        logger.error("%s request failed", op, extra=logs.repeating("request_failed", op, op=op))
    assert [x["op"] for x in parse(stream.getvalue())] == ["copy", "reset"]


def test_the_zap_logger_is_counted_by_its_format(sink):
    _, stream, clock, repeats = sink
    zap = logging.getLogger("lstm_stream.zap")
    zap.addHandler(repeats.handler)
    zap.setLevel(logging.DEBUG)
    try:
        for i in range(50):
            zap.debug("DENIED %s", f"client key {i}")
        zap.debug("ZAP reply code=%s", 400)
        zap.debug("%s (CURVE) key=%s", "ALLOWED", "a")  # pyzmq's verdict first: two events
        zap.debug("%s (CURVE) key=%s", "DENIED", "b")
        zap.debug("%s (CURVE) key=%s", "DENIED", "c")
        clock.now += 60
        repeats.flush_repeats()
    finally:
        zap.removeHandler(repeats.handler)
        zap.setLevel(logging.NOTSET)
    lines = parse(stream.getvalue())
    assert [x["message"] for x in lines][:4] == ["DENIED client key 0", "ZAP reply code=400",
                                                 "ALLOWED (CURVE) key=a", "DENIED (CURVE) key=b"]
    assert [x["repeated"] for x in lines[4:]] == [49, 1]


def test_setup_replaces_its_handler():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = logs.setup("info", "text", stream=io.StringIO())
        second = logs.setup("warning", "text", stream=io.StringIO())
        assert second in root.handlers and first not in root.handlers and root.level == logging.WARNING
        with pytest.raises(ValueError, match="expected one of text, json"):
            logs.setup("info", "xml")
    finally:
        root.removeHandler(logs._State.handler)
        logs._State.handler = logs._State.repeats = None
        root.setLevel(level)
    assert root.handlers == before


# ---- a real daemon -----------------------------------------------------------------------------------------
def send_raw(endpoint: str, payloads) -> list:
    """Send raw payloads over a DEALER and read one reply each (bounded waits)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(endpoint)
        for p in payloads:
            sock.send(p)
        return [msgpack.unpackb(sock.recv(), raw=False) for _ in payloads]
    finally:
        sock.close()
        ctx.term()


def test_daemon_json_log_and_counted_bad_messages(daemon, tmp_path):
    """A real daemon with --log-format json: every stderr line parses and has the fields; its important events
    are there with their fields; 300 bad messages make one line and, at exit, one count, not 300 lines."""
    from clients import Client
    d = daemon("--log-format", "json", "--snapshot-dir", tmp_path / "state")
    with Client(d.endpoint, timeout=10) as c:
        n_in = c.info()["model"]["input_size"]
        c.step("pump-1", [0.1] * n_in)
        c.step("pump-2", [0.2] * n_in)
    replies = send_raw(d.endpoint, [b"\xc1 not msgpack"] * 300)
    assert all(r["error"]["code"] == "bad_message" for r in replies)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0
    lines = parse(d.log())
    for x in lines:
        assert set(FIELDS) <= set(x), x
    events = {x["event"]: x for x in lines if x["event"]}
    assert {"model_loaded", "listening", "serving", "snapshot", "stopped", "signal", "log_opened"} <= set(events)
    assert events["serving"]["streams"] == 0 and events["serving"]["endpoints"] == [d.endpoint]
    assert events["snapshot"]["reason"] == "shutdown" and events["snapshot"]["streams"] == 2
    assert events["snapshot"]["path"].endswith("streams.lstmsnap") and events["snapshot"]["duration_s"] >= 0
    assert events["stopped"]["exit_status"] == 0 and events["stopped"]["requests"] >= 303
    bad = [x for x in lines if x["event"] == "bad_message"]
    assert len(bad) == 2, bad  # the first, then the count (written at exit)
    assert bad[0]["code"] == "bad_message" and "repeated" not in bad[0] and bad[0]["level"] == "warning"
    assert bad[1]["repeated"] == 299


def test_text_stays_the_default(daemon):
    d = daemon()
    d.stop()
    first = d.log().splitlines()[0]
    assert not first.startswith("{") and " INFO lstm_stream.engine: " in first


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_daemon_counts_a_refused_client_retrying(daemon, tmp_path):
    """A client whose key is not allowed retries its CURVE handshake in a loop. At --log-level debug the ZAP
    handler logs every attempt: each of its lines is written once, then counted (the count at exit)."""
    import shutil

    import zmq.auth
    from zmq.utils.monitor import recv_monitor_message

    from engine.cli import main
    for name in ("server", "gw", "stranger"):
        assert main(["keygen", str(tmp_path / "keys"), name]) == 0
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(tmp_path / "keys" / "gw.key", allow)
    d = daemon("--log-format", "json", "--curve-secret", tmp_path / "keys" / "server.key_secret",
               "--allow-keys", allow, client=dict(server_key=str(tmp_path / "keys" / "server.key"),
                                                  client_keys=str(tmp_path / "keys" / "gw.key_secret")))
    server_public, _ = zmq.auth.load_certificate(tmp_path / "keys" / "server.key")
    public, secret = zmq.auth.load_certificate(tmp_path / "keys" / "stranger.key_secret")
    ctx = zmq.Context()
    refused = 0
    try:
        for _ in range(6):  # a client retrying with a new socket each time, as a Lazy Pirate client does
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            monitor.setsockopt(zmq.RCVTIMEO, 30_000)
            try:
                sock.connect(d.endpoint)
                assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                refused += 1  # the daemon refused this handshake (the client saw its ZAP error)
            finally:
                sock.disable_monitor()
                monitor.close()
                sock.close()
    finally:
        ctx.term()
    assert d.stop() == 0
    lines = parse(d.log())
    zap = [x for x in lines if x["logger"] == "lstm_stream.zap"]
    denied = [x for x in zap if x["message"].startswith("DENIED (CURVE auth_callback)")]
    # the first attempt, then the count of the others
    assert len(denied) == 2, "\n".join(x["message"][:150] for x in zap)
    assert "repeated" not in denied[0] and denied[1]["repeated"] == refused - 1 == 5
    assert len(zap) < 2 * refused  # without the counting: three lines per attempt
    assert sum(x["event"] == "curve_refused" for x in lines) == 1  # the refused key: once
