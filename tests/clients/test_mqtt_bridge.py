"""`lstm-stream bridge mqtt` against a real Mosquitto broker and a real daemon: the default model's recordings go
in as MQTT messages, the predictions that come out equal an offline run bit for bit, and restarts of the broker,
the daemon (kill -9, step log, --fsync always) and the bridge (kill -9) lose no acknowledged sample and step
none twice."""
from __future__ import annotations

import json
import shutil
import signal
import struct

import numpy as np
import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install 'lstm-stream[mqtt]')")

from mqtt_broker import (
    MOSQUITTO,
    WHY_NO_BROKER,
    BridgeProcess,
    Collector,
    Mosquitto,
    make_password_file,
    make_tls_files,
    mqtt_client,
    publish_all,
)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=WHY_NO_BROKER)

S, T = 4, 40  # streams (recordings) and samples per stream
WAIT = 60.0  # seconds: a bound, not a timing assertion (a shared CI machine, a daemon restart)


@pytest.fixture(scope="module")
def replay():
    """(X (S, T, 6) float32, offline outputs (S, T, 4)): the default model's recordings, run in-process."""
    from lstm_stream.defaults import load_default_model, load_replay, offline_outputs
    X = np.ascontiguousarray(load_replay().X[:S, :T])
    return X, offline_outputs(load_default_model(), X)


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def bridges(tmp_path):
    """bridges(broker, daemon, *extra args) -> a started BridgeProcess; every one stopped at teardown."""
    started = []

    def start(broker, endpoint, *extra, client_id="test-bridge", env=None, wait=True):
        b = BridgeProcess(["--broker", broker.url, "--connect", endpoint, "--subscribe", "sensors/+/imu",
                           "--publish", "predictions/{stream}", "--client-id", client_id, "--timeout", "1",
                           "--log-level", "debug", *extra], tmp_path / f"bridge{len(started)}.log", env)
        started.append(b)
        return b.start(wait=wait)
    yield start
    for b in started:
        b.stop()


def messages(X, fmt="array", seq=False, streams=range(S), samples=range(T)):
    """(topic, payload[, properties]) of sample t of each stream, interleaved across streams, time in order."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    out = []
    for t in samples:
        for s in streams:
            x, topic = X[s, t], f"sensors/r{s}/imu"
            if fmt == "array":
                out.append((topic, json.dumps([float(v) for v in x])))
            elif fmt == "object":
                body = dict(zip(("ax", "ay", "az", "gx", "gy", "gz"), map(float, x)), note="ok")
                if seq:
                    body["n"] = t + 1
                out.append((topic, json.dumps(body)))
            else:  # raw float32, the sequence number as an MQTT 5 user property
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("n", str(t + 1))]
                out.append((topic, struct.pack("<6f", *x), props) if seq else (topic, struct.pack("<6f", *x)))
    return out


def check_predictions(collector, offline, endpoint, streams=range(S), client=None):
    """Every (stream, seq) predicted, each copy bit-identical to the offline run; the daemon stepped each stream
    exactly T times."""
    from clients import Client
    got = collector.predictions()
    for s in streams:
        for t in range(T):
            ys = got.get((f"r{s}", t + 1))
            assert ys, f"no prediction for stream r{s} sample {t + 1}"
            for y in ys:
                np.testing.assert_array_equal(np.array(y, np.float32), offline[s, t])
    with Client(endpoint, **(client or {})) as c:
        assert [c.seq(f"r{s}") for s in streams] == [T] * len(streams)


def all_in(n_streams=S):
    def done(msgs):
        keys = {(json.loads(m.payload)["stream"], json.loads(m.payload)["seq"]) for m in msgs}
        return len(keys) >= n_streams * T
    return done


def _wait(collector, pred, *procs):
    if not collector.wait_for(pred, WAIT):
        raise AssertionError("predictions missing after the wait:\n" + "\n".join(p.log()[-4000:] for p in procs))


@pytest.mark.parametrize("fmt,extra", [
    ("array", []),
    ("object", ["--fields", "ax,ay,az,gx,gy,gz", "--seq-field", "n"]),
    ("raw", ["--format", "raw", "--seq-field", "n"]),
])
def test_predictions_equal_the_offline_run(replay, broker, daemon, bridges, fmt, extra):
    X, offline = replay
    d = daemon()
    collector = Collector(broker.port, "predictions/#")
    bridge = bridges(broker, d.endpoint, *extra)
    pub = mqtt_client(broker.port, "test-publisher")
    publish_all(pub, messages(X, fmt, seq=bool(extra)))
    _wait(collector, all_in(), bridge)
    check_predictions(collector, offline, d.endpoint)
    assert not any(json.loads(m.payload).get("duplicate") for m in collector.messages)
    pub.disconnect()
    collector.close()


def test_malformed_and_redelivered_messages(replay, broker, daemon, bridges):
    """Bad payloads go to --errors-topic (naming the topic) and are acknowledged; a sequenced sample published
    twice is stepped once (the second answered from the receipt, duplicate: true); an old one is not stepped."""
    X, offline = replay
    d = daemon()
    collector = Collector(broker.port, "predictions/#")
    errors = Collector(broker.port, "errors", client_id="test-errors")
    bridge = bridges(broker, d.endpoint, "--seq-field", "n", "--errors-topic", "errors")
    pub = mqtt_client(broker.port, "test-publisher")
    topic = "sensors/r0/imu"

    def sample(t):
        return topic, json.dumps({"x": [float(v) for v in X[0, t]], "n": t + 1})
    publish_all(pub, [sample(0), (topic, b"\xff not json"), (topic, json.dumps([1.0, 2.0])), sample(0), sample(1),
                      sample(0), (topic, json.dumps({"x": [float(v) for v in X[0, 3]], "n": 9})), sample(2)])
    assert collector.wait_for(lambda m: len(m) >= 4, WAIT), bridge.log()
    assert errors.wait_for(lambda m: len(m) >= 3, WAIT), bridge.log()
    bodies = [json.loads(m.payload) for m in collector.messages]
    assert [(b["seq"], b.get("duplicate", False)) for b in bodies] == [(1, False), (1, True), (2, False), (3, False)]
    for b in bodies:
        np.testing.assert_array_equal(np.array(b["y"], np.float32), offline[0, b["seq"] - 1])
    dead = [json.loads(m.payload) for m in errors.messages]
    assert all(e["topic"] == topic for e in dead)
    assert "not JSON" in dead[0]["error"] and "6 inputs" in dead[1]["error"] and "skips samples" in dead[2]["error"]
    from clients import Client
    with Client(d.endpoint) as c:
        assert c.seq("r0") == 3
    assert "was stepped before" in bridge.log() and bridge.proc.poll() is None
    pub.disconnect()
    collector.close()
    errors.close()


def test_daemon_killed_mid_run(replay, broker, daemon, bridges, tmp_path):
    """kill -9 the daemon (step log, --fsync always) while the bridge steps: it resends with the same numbers
    until the restarted daemon answers; nothing lost, nothing stepped twice (bridge-numbered steps)."""
    X, offline = replay
    args = ("--snapshot-dir", tmp_path / "state", "--fsync", "always")
    d = daemon(*args, endpoint=daemon.endpoint("tcp"))
    collector = Collector(broker.port, "predictions/#")
    bridge = bridges(broker, d.endpoint)
    pub = mqtt_client(broker.port, "test-publisher")
    publish_all(pub, messages(X, samples=range(T // 2)))
    _wait(collector, lambda m: len(m) >= S * T // 8, bridge)
    d.stop(signal.SIGKILL)
    publish_all(pub, messages(X, samples=range(T // 2, T)))  # the bridge steps these into a dead daemon, resends
    d2 = daemon(*args, endpoint=d.endpoint)
    _wait(collector, all_in(), bridge, d2)
    check_predictions(collector, offline, d.endpoint)
    pub.disconnect()
    collector.close()


def test_broker_restarted_mid_run(replay, broker, daemon, bridges):
    """Restart the broker (its persistence keeps the sessions) between two halves of the data: the bridge
    reconnects, resumes its session, and redelivered messages are answered from the daemon's receipts."""
    X, offline = replay
    d = daemon()
    collector = Collector(broker.port, "predictions/#")
    bridge = bridges(broker, d.endpoint)
    pub = mqtt_client(broker.port, "test-publisher")
    publish_all(pub, messages(X, samples=range(T // 2)))
    _wait(collector, lambda m: len(m) >= S * T // 8, bridge)
    broker.restart()
    publish_all(pub, messages(X, samples=range(T // 2, T)))
    _wait(collector, all_in(), bridge, broker)
    check_predictions(collector, offline, d.endpoint)
    pub.disconnect()
    collector.close()


@pytest.mark.parametrize("numbers", ["seq-field", "state-file"])
def test_bridge_killed_mid_run(replay, broker, daemon, bridges, tmp_path, numbers):
    """kill -9 the bridge mid-run and start it again: the messages it had stepped but not acknowledged come
    again and are answered from the receipts, never stepped twice: numbered by the sensors (--seq-field), or
    by the bridge with --state-file."""
    X, offline = replay
    d = daemon()
    collector = Collector(broker.port, "predictions/#")
    if numbers == "seq-field":
        fmt, extra = "object", ("--fields", "ax,ay,az,gx,gy,gz", "--seq-field", "n")
    else:
        fmt, extra = "array", ("--state-file", tmp_path / "bridge.state")
    first = bridges(broker, d.endpoint, *extra)
    pub = mqtt_client(broker.port, "test-publisher")
    publish_all(pub, messages(X, fmt, seq=True, samples=range(T // 2)))
    _wait(collector, lambda m: len(m) >= S * T // 8, first)
    first.stop(signal.SIGKILL)
    publish_all(pub, messages(X, fmt, seq=True, samples=range(T // 2, T)))  # queued for it by the broker
    second = bridges(broker, d.endpoint, *extra)
    _wait(collector, all_in(), second)
    check_predictions(collector, offline, d.endpoint)
    pub.disconnect()
    collector.close()


def test_tls_and_password(replay, daemon, bridges, tmp_path):
    """mqtts:// with --tls-ca, --username and the password from $LSTM_STREAM_MQTT_PASSWORD; a wrong password
    stops the bridge with a clear error instead of retrying forever."""
    X, offline = replay
    tls = make_tls_files(tmp_path / "tls")
    users = {"bridge": "br1dge-pw", "tester": "t3st-pw"}
    pw = make_password_file(tmp_path / "passwd", users)
    if tls is None or pw is None:
        pytest.skip("openssl or mosquitto_passwd is missing: cannot make the broker's certificate or passwords")
    broker = Mosquitto(tmp_path / "broker", tls=tls, password_file=pw).start()
    try:
        d = daemon()
        options = {"ca": tls[0], "auth": ("tester", users["tester"])}
        collector = Collector(broker.port, "predictions/#", **options)
        bridge = bridges(broker, d.endpoint, "--tls-ca", tls[0], "--username", "bridge",
                         env={"LSTM_STREAM_MQTT_PASSWORD": users["bridge"]})
        pub = mqtt_client(broker.port, "test-publisher", **options)
        publish_all(pub, messages(X, streams=[0], samples=range(3)))
        assert collector.wait_for(lambda m: len(m) >= 3, WAIT), bridge.log()
        for m in collector.messages:
            body = json.loads(m.payload)
            np.testing.assert_array_equal(np.array(body["y"], np.float32), offline[0, body["seq"] - 1])
        wrong = bridges(broker, d.endpoint, "--tls-ca", tls[0], "--username", "bridge", client_id="other",
                        env={"LSTM_STREAM_MQTT_PASSWORD": "nope"}, wait=False)
        assert wrong.proc.wait(60) == 1
        assert "bad user name or password" in wrong.log().lower() or "not authorized" in wrong.log().lower()
        pub.disconnect()
        collector.close()
    finally:
        broker.stop()


def test_the_replay_recipe(broker, daemon, bridges):
    """docs/mqtt.md's recipe: scripts/mqtt_replay.py through a broker and a bridge gives the offline outputs."""
    import subprocess
    import sys

    from mqtt_broker import ROOT
    d = daemon()
    bridge = bridges(broker, d.endpoint, "--fields", "ax,ay,az,gx,gy,gz", "--seq-field", "n")
    r = subprocess.run([sys.executable, "scripts/mqtt_replay.py", "--broker", broker.url, "--speed", "0",
                        "--limit", "3", "--timeout", str(WAIT)], cwd=ROOT, capture_output=True, text=True,
                       check=False, timeout=WAIT + 120)
    assert r.returncode == 0, r.stdout + r.stderr + bridge.log()[-3000:]
    assert "outputs bit-identical to offline: yes" in r.stdout


def test_curve_keys_and_a_key_allowed_late(replay, broker, daemon, bridges, tmp_path):
    """The bridge reaches a CURVE daemon with --server-key/--client-key. While its key is not allow-listed the
    daemon does not answer: the bridge retries and acknowledges nothing; once the key is allowed (SIGHUP),
    every sample is stepped once."""
    import zmq

    from engine import cli
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    allow.mkdir()
    for name in ("server", "bridge"):
        assert cli.main(["keygen", str(keys), name]) == 0
    X, offline = replay
    d = daemon("--curve-secret", keys / "server.key_secret", "--allow-keys", allow, endpoint=daemon.endpoint("tcp"),
               wait=False)
    collector = Collector(broker.port, "predictions/#")
    bridge = bridges(broker, d.endpoint, "--server-key", keys / "server.key", "--client-key",
                     keys / "bridge.key_secret", "--seq-field", "n", "--fields", "ax,ay,az,gx,gy,gz")
    pub = mqtt_client(broker.port, "test-publisher")
    publish_all(pub, messages(X, "object", seq=True, streams=[0, 1]))
    assert not collector.wait_for(lambda m: len(m) > 0, 3.0)  # nothing answers an unknown key
    shutil.copy(keys / "bridge.key", allow)
    d.proc.send_signal(signal.SIGHUP)
    _wait(collector, all_in(2), bridge, d)
    check_predictions(collector, offline, d.endpoint, streams=[0, 1],
                      client={"server_key": keys / "server.key", "client_keys": keys / "bridge.key_secret"})
    pub.disconnect()
    collector.close()
