"""A real Mosquitto broker and `lstm-stream bridge mqtt` in subprocesses, plus a paho publisher/collector, for
the bridge's tests and benchmark: free loopback ports, generated config (persistence on, in a tmp dir),
bounded waits, always stopped."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                               if os.path.exists(p)), None)
WHY_NO_BROKER = ("the mosquitto binary is not installed (apt-get install mosquitto; .ci/run does this when "
                 "root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One broker on 127.0.0.1:port; start() waits until it accepts connections; restart() keeps the port and
    the persistence file (its queued messages and sessions)."""

    def __init__(self, directory, *, tls=None, password_file=None):
        """tls: (ca, cert, key) files for an mqtts listener; password_file: mosquitto_passwd's file (then
        anonymous clients are refused)."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.log_path = self.dir / "mosquitto.log"
        self.proc = None
        conf = [f"listener {self.port} 127.0.0.1"]
        if tls:
            conf += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        conf += [f"password_file {password_file}", "allow_anonymous false"] if password_file else \
            ["allow_anonymous true"]
        conf += ["persistence true",
                f"persistence_location {self.dir}/", "autosave_interval 1",
                # unlimited queues: a broker's default (1000 messages per client) drops QoS 1 messages silently
                "max_queued_messages 0", "max_inflight_messages 0",
                "set_tcp_nodelay true",  # PUBACKs without Nagle's delay (40 ms a batch otherwise)
                "log_dest stdout", "log_type error", "log_type warning", "log_type notice"]
        if os.geteuid() == 0:
            conf.append("user root")  # mosquitto drops root privileges to 'mosquitto' otherwise
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    def start(self, timeout: float = 20.0) -> Mosquitto:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> None:
        """SIGTERM: mosquitto writes its persistence file and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class BridgeProcess:
    """`python -m engine.cli bridge mqtt ARGS` in a subprocess, its log in a file."""

    def __init__(self, args, log_path, env=None):
        self.args, self.log_path, self.proc = [str(a) for a in args], Path(log_path), None
        self.env = dict(env or {})

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> BridgeProcess:
        """Start the bridge and (wait) return once its subscription stands: its log says "subscribed to" or
        "session resumed"."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "bridge", "mqtt", *self.args],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while wait and "subscribed to" not in self.log() and "session resumed" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"the bridge did not subscribe within {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0):
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def mqtt_client(port: int, client_id: str, *, persistent: bool = False, ca=None, auth=None):
    """A connected paho MQTT 5 client (its loop running); persistent: clean start off, a session that
    outlives a broker restart; ca: TLS with this CA file; auth: (user, password)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from clients.mqtt.bridge import no_delay
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(0.2, 2)
    if ca:
        c.tls_set(ca_certs=str(ca))
    if auth:
        c.username_pw_set(*auth)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if persistent else 0
    connected = threading.Event()
    def on_connect(client, *a):
        no_delay(client)
        connected.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=30, clean_start=not persistent, properties=props)
    c.loop_start()
    if not connected.wait(10):
        c.loop_stop()
        raise RuntimeError(f"could not connect to the broker on port {port}")
    return c


class Collector:
    """Subscribes (QoS 1, persistent session) to a topic filter and keeps every message: JSON predictions by
    (stream, seq), and the raw list."""

    def __init__(self, port: int, topic: str, client_id: str = "test-collector", **options):
        self.messages: list = []
        self.lock = threading.Condition()
        self.client = mqtt_client(port, client_id, persistent=True, **options)
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        if not done.wait(10):
            raise RuntimeError(f"no SUBACK for {topic}")

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)
            self.lock.notify_all()

    def wait_for(self, predicate, timeout: float = 120.0) -> bool:
        """Wait until predicate(messages) is true; False after timeout."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
        return True

    def predictions(self) -> dict:
        """{(stream, seq): [y, ...]} from the JSON payloads (a list: a republished prediction appears twice)."""
        out: dict = {}
        with self.lock:
            for m in self.messages:
                body = json.loads(m.payload)
                out.setdefault((body["stream"], body["seq"]), []).append(body["y"])
        return out

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(client, items, timeout: float = 60.0) -> None:
    """Publish (topic, payload[, properties]) items at QoS 1 and wait for every PUBACK (after waiting for the
    client to be connected: paho refuses to wait on a message published while it reconnects)."""
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher did not reconnect to the broker in time")
        time.sleep(0.05)
    infos = [client.publish(t, p, qos=1, properties=(rest[0] if rest else None)) for t, p, *rest in items]
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise RuntimeError("the broker did not acknowledge a publish in time")


def make_tls_files(directory) -> tuple | None:
    """(ca.crt, server.crt, server.key) for 127.0.0.1, made with the openssl binary; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=lstm-stream test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
        "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "san.cnf")
    return d / "ca.crt", d / "server.crt", d / "server.key"


def make_password_file(path, users: dict) -> Path | None:
    """A mosquitto password file for {user: password}, made with mosquitto_passwd; None without it."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return None
    path = Path(path)
    for k, (user, password) in enumerate(users.items()):
        subprocess.run([tool, "-b", *(["-c"] if k == 0 else []), str(path), user, password], check=True,
                       capture_output=True)
    return path
