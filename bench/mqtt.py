"""python -m bench.mqtt [--quick] [--write-docs]: samples/s through a Mosquitto broker + `lstm-stream bridge mqtt` +
the daemon, against the daemon alone, in the same run with the same samples.

One daemon (the default model), one broker (tests/mqtt_broker.py's config: persistence on, unlimited queues,
TCP_NODELAY) and two bridges (--fields; one with --seq-field, one numbering the steps itself with
--state-file), all on loopback. Each round replays the
default model's held-out recordings (N streams x T samples, time step by time step across the streams) as
fresh streams through each contender, in a rotating order:
  daemon, one step per call      Client.step(stream, x, seq=n): one round trip per sample
  daemon, pipelined per time step a Pipeline of the N streams' steps (with seq): one round trip per time step
  broker alone                   publish every sample (QoS 1) and receive it back on a subscription: MQTT's
                                 own cost, no bridge, no daemon
  bridge                         publish every sample (QoS 1) until the last prediction comes back
  bridge, --state-file           the same through a second bridge that numbers the steps itself and keeps
                                 its packet-id memory in a state file (no --seq-field)
The figure is the median over rounds of samples/s (from the first send to the last reply or prediction).
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import common

FIELDS = ("ax", "ay", "az", "gx", "gy", "gz")
WAIT_S = 300.0  # bound on one bridge round (not a measure)


def _daemon(tmp):
    from clients import Client, Timeout
    endpoint = f"tcp://127.0.0.1:{common.free_port()}"
    with open(Path(tmp) / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--bind", endpoint, "--log-level",
                                 "warning"], cwd=common.ROOT, env=common.clean_env(), stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    with Client(endpoint, timeout=0.5, retries=0) as c:
        while True:
            try:
                c.ping()
                return proc, endpoint
            except Timeout:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start") from None


class Rounds:
    """The contenders, each a function(prefix) -> seconds to put every sample through."""

    def __init__(self, X, endpoint, port):
        from mqtt_broker import mqtt_client

        from clients import Client
        self.X, self.N, self.T = X, X.shape[0], X.shape[1]
        self.client = Client(endpoint)
        self.pub = mqtt_client(port, "bench-publisher")
        self.sub = mqtt_client(port, "bench-subscriber")
        self.got, self.cond = 0, threading.Condition()
        self.sub.on_message = self._on_message
        ok = threading.Event()
        self.sub.on_subscribe = lambda *a: ok.set()
        self.sub.subscribe([("predictions/#", 1), ("echo/#", 1)])
        if not ok.wait(10):
            raise RuntimeError("no SUBACK")

    def _on_message(self, *a):
        with self.cond:
            self.got += 1
            if self.got >= self.N * self.T:
                self.cond.notify_all()

    def daemon_single(self, prefix):
        c, X = self.client, self.X
        t0 = time.perf_counter()
        for t in range(self.T):
            for n in range(self.N):
                c.step(f"{prefix}-{n}", X[n, t], seq=t + 1)
        return time.perf_counter() - t0

    def daemon_pipelined(self, prefix):
        c, X = self.client, self.X
        t0 = time.perf_counter()
        for t in range(self.T):
            with c.pipeline() as p:
                for n in range(self.N):
                    p.step(f"{prefix}-{n}", X[n, t], seq=t + 1)
        return time.perf_counter() - t0

    def _through_mqtt(self, topic_of, prefix):
        payloads = [(topic_of(f"{prefix}-{n}"), json.dumps(dict(zip(FIELDS, map(float, self.X[n, t])), n=t + 1)))
                    for t in range(self.T) for n in range(self.N)]
        with self.cond:
            self.got = 0
        t0 = time.perf_counter()
        for topic, body in payloads:
            self.pub.publish(topic, body, qos=1)
        with self.cond:
            if not self.cond.wait_for(lambda: self.got >= self.N * self.T, WAIT_S):
                raise RuntimeError(f"only {self.got} of {self.N * self.T} messages came back")
        return time.perf_counter() - t0

    def broker_alone(self, prefix):
        return self._through_mqtt(lambda s: f"echo/{s}", prefix)

    def bridge(self, prefix):
        return self._through_mqtt(lambda s: f"sensors/{s}/imu", prefix)

    def bridge_state_file(self, prefix):
        return self._through_mqtt(lambda s: f"numbered/{s}/imu", prefix)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--streams", type=int, default=40, help="streams (recordings, at most 40)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=256, help="the bridge's --max-batch")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    common.resolve_doc(a)
    if a.quick:
        a.streams, a.rounds = min(a.streams, 8), 2
    sys.path.insert(0, str(common.ROOT / "tests"))
    from mqtt_broker import MOSQUITTO, WHY_NO_BROKER, BridgeProcess, Mosquitto
    if MOSQUITTO is None:
        print(WHY_NO_BROKER, file=sys.stderr)
        return 2
    from lstm_stream.defaults import load_replay
    X = np.ascontiguousarray(load_replay().X[:a.streams])
    common.exit_on_sigterm()
    common.sample_busy()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        proc, endpoint = _daemon(tmp)
        common_args = ["--broker", broker.url, "--connect", endpoint, "--publish", "predictions/{stream}",
                       "--fields", ",".join(FIELDS), "--max-batch", a.max_batch, "--log-level", "info"]
        bridges = [BridgeProcess([*common_args, "--subscribe", "sensors/+/imu", "--seq-field", "n", "--client-id",
                                  "bench-bridge"], Path(tmp) / "bridge.log"),
                   BridgeProcess([*common_args, "--subscribe", "numbered/+/imu", "--state-file",
                                  Path(tmp) / "bridge.state", "--client-id", "bench-bridge-numbered"],
                                 Path(tmp) / "bridge-numbered.log")]
        try:
            for b in bridges:
                b.start()
            rounds = Rounds(X, endpoint, broker.port)
            names = ("daemon_single", "daemon_pipelined", "broker_alone", "bridge", "bridge_state_file")
            times = {k: [] for k in names}
            for r in range(a.rounds + 1):  # round 0 warms up
                for k in names[r % len(names):] + names[:r % len(names)]:
                    dt = getattr(rounds, k)(f"r{r}-{k}")
                    if r:
                        times[k].append(dt)
        finally:
            for b in bridges:
                b.stop()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            broker.stop()
    return report(a, X.shape, times)


def report(a, shape, times) -> int:
    N, T, _ = shape
    rate = {k: N * T / statistics.median(v) for k, v in times.items()}
    labels = {"daemon_single": "daemon alone, one step per call (Client.step, seq)",
              "daemon_pipelined": f"daemon alone, pipelined per time step ({N} steps per round trip, seq)",
              "broker_alone": "broker alone: publish QoS 1, receive on a subscription (no bridge, no daemon)",
              "bridge": "broker + bridge + daemon: publish QoS 1 until the prediction is received (--seq-field)",
              "bridge_state_file": "the same, steps numbered by the bridge, --state-file"}
    rows = [[labels[k], f"{rate[k]:,.0f}", f"{rate['bridge'] / rate[k]:.2f}"] for k in labels]
    busy = common._busy_before is not None and common._busy_before > common.BUSY_SHARE
    setup = (f"`python -m bench.mqtt{' --quick' if a.quick else ''}`: the default model, {N} recordings x {T} "
             f"samples as {N} streams per round, {a.rounds} rounds (median), contenders in rotating order, one "
             f"Mosquitto 2.0 (persistence on, TCP_NODELAY), bridge --max-batch {a.max_batch} with --seq-field "
             "(exactly-once), broker, bridge, daemon and load generator all on this host, on loopback."
             + (" **The host was shared with other work during this run** (see below): the ratios, taken within "
                "the run, mean more than the absolute figures." if busy else ""))
    why = ("Every bridge message waits for its step (one pipelined round trip per batch of distinct streams) and "
           "for the broker's PUBACK of its prediction before it is acknowledged (docs/mqtt.md); batches are "
           "taken one after another, so the bridge's rate is bounded by one step round trip plus one publish "
           "round trip per batch, and by paho-mqtt's per-message Python cost.")
    lines = ["## MQTT bridge: samples/s through broker + bridge + daemon vs the daemon alone", "", setup, "",
             common.table(["path", "samples/s", "bridge / this"], rows), "", why, ""]
    lines += common.machine_lines()
    common.publish("mqtt", "\n".join(lines) + "\n", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
