"""Replay the default model's held-out recordings through an MQTT broker and `lstm-stream bridge mqtt`, and check
the predictions that come back against an offline run (the recipe of docs/mqtt.md).

    mosquitto -p 1883 &
    lstm-stream serve &
    lstm-stream bridge mqtt --broker mqtt://127.0.0.1:1883 --subscribe 'sensors/+/imu' \\
        --publish 'predictions/{stream}' --fields ax,ay,az,gx,gy,gz --seq-field n &
    python scripts/mqtt_replay.py --broker mqtt://127.0.0.1:1883 --speed 0

Each recording becomes a sensor: topic sensors/<run>-<NN>/imu, one JSON object per sample
{"ax": .., "ay": .., "az": .., "gx": .., "gy": .., "gz": .., "n": <sample number, 1 first>}, QoS 1, every
sensor at the recordings' 10 Hz times --speed (0: as fast as the broker takes them). The predictions are read
from predictions/<run>-<NN>; at the end the streamed class accuracy is compared with an offline run of the
same model in this process, and the outputs must be bit-identical. Exit 0 when they are.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FIELDS = ("ax", "ay", "az", "gx", "gy", "gz")  # the default model's inputs, in order (lstm_stream/data/README.md)


def connect(host, port, client_id):
    """A paho MQTT 5 client with its loop running, connected (a fresh session)."""
    import paho.mqtt.client as mqtt

    from clients.mqtt.bridge import no_delay
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    up = threading.Event()
    def on_connect(client, *a):
        no_delay(client)
        up.set()
    c.on_connect = on_connect
    c.connect(host, port)
    c.loop_start()
    if not up.wait(10):
        raise SystemExit(f"no connection to the broker at {host}:{port}")
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT")
    ap.add_argument("--speed", type=float, default=1.0, help="multiple of real time (10 Hz); 0: no pacing")
    ap.add_argument("--limit", type=int, default=40, help="replay the first N recordings (default all 40)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the last predictions")
    a = ap.parse_args(argv)
    from clients.mqtt.options import parse_broker
    from lstm_stream.defaults import accuracy, load_default_model, load_replay, offline_outputs
    broker = parse_broker(a.broker)
    replay = load_replay().subset(a.limit)
    N, T, _ = replay.X.shape
    run = uuid.uuid4().hex[:6]
    names = [f"{run}-{n:02d}" for n in range(N)]
    got: dict = {}
    done = threading.Condition()

    def on_message(client, userdata, msg):
        body = json.loads(msg.payload)
        with done:
            got[(body["stream"], body["seq"])] = body["y"]
            done.notify_all()
    sub = connect(broker.host, broker.port, f"replay-sub-{run}")
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe([(f"predictions/{name}", 1) for name in names])
    if not subscribed.wait(10):
        raise SystemExit("the broker did not confirm the subscription to the predictions")
    pub = connect(broker.host, broker.port, f"replay-pub-{run}")
    print(f"replaying {N} recordings x {T} samples as sensors/{run}-NN/imu at "
          f"{'full speed' if a.speed == 0 else f'{a.speed:g} x 10 Hz'}", flush=True)
    t0 = time.monotonic()
    for t in range(T):
        if a.speed > 0:
            time.sleep(max(0.0, t0 + t / (replay.sample_rate_hz * a.speed) - time.monotonic()))
        for n, name in enumerate(names):
            body = dict(zip(FIELDS, map(float, replay.X[n, t])), n=t + 1)
            pub.publish(f"sensors/{name}/imu", json.dumps(body), qos=1)
    with done:
        complete = done.wait_for(lambda: len(got) >= N * T, a.timeout)
    elapsed = time.monotonic() - t0
    pub.disconnect()
    sub.disconnect()
    print(f"{len(got)} of {N * T} predictions in {elapsed:.1f} s ({len(got) / elapsed:.0f} samples/s)")
    if not complete:
        print("predictions are missing: is the bridge running with --fields ax,ay,az,gx,gy,gz --seq-field n, "
              "and the daemon serving the default model?", file=sys.stderr)
        return 1
    ys = np.array([[got[(name, t + 1)] for t in range(T)] for name in names], np.float32)
    offline = offline_outputs(load_default_model(), replay.X)
    streaming, off = accuracy(ys.argmax(-1), replay.labels), accuracy(offline.argmax(-1), replay.labels)
    identical = bool(np.array_equal(ys, offline))
    print(f"streaming accuracy through MQTT: {streaming}\noffline accuracy:                {off}\n"
          f"outputs bit-identical to offline: {'yes' if identical else 'NO'}")
    return 0 if identical and streaming == off else 1


if __name__ == "__main__":
    sys.exit(main())
