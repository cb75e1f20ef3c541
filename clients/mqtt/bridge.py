"""The MQTT side of the bridge: a paho-mqtt client with a persistent session and manual acknowledgements, and
the loop that takes messages in arrival order, steps them in batches and acknowledges them.

One loop, one batch at a time:
  take    messages in arrival order, up to --max-batch, until a stream repeats (a stream's next message waits
          for the next batch, so each stream has at most one message applied but not acknowledged, and its
          messages are stepped in the order the broker delivered them)
  step    the batch in one pipelined round trip (stepper.py), resent until the daemon answers
  publish each prediction (QoS 1), each refused message to --errors-topic, and wait for the broker's PUBACKs
  ack     every message of the batch, in arrival order (PUBACK), if it came on the current connection
A message is acknowledged only after its step is applied and its prediction is with the broker: a crash or a
disconnect anywhere before that leaves it unacknowledged, and the broker (persistent session: clean start off,
a session expiry) delivers it again, to be answered from the daemon's receipt rather than applied again.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from .payload import PayloadError, error_payload, prediction_payload, publish_topic
from .progress import StateFileError
from .stepper import Outcome, Stepper

log = logging.getLogger("lstm_stream.bridge")

# CONNACK reasons that retrying cannot cure (MQTT 5 reason codes): the bridge stops and says why
PERMANENT = {0x84: "unsupported protocol version", 0x85: "client identifier not valid",
             0x86: "bad user name or password", 0x87: "not authorized", 0x8A: "banned",
             0x8C: "bad authentication method"}
TAKE_WAIT = 0.25  # seconds the loop waits for a first message before checking the stop flag
LOG_EVERY = 10.0  # seconds between log lines about the same topic's bad messages


@dataclass
class Item:
    """One received message: the connection it came on, the message, and what it decoded to."""
    generation: int
    msg: object
    sample: object = None
    error: str | None = None
    outcome: Outcome | None = None


class RateLimitedLog:
    """At most one warning per key (what, topic) per LOG_EVERY seconds; the next one says how many were held."""

    def __init__(self, every: float = LOG_EVERY):
        self.every, self._last, self._held = every, {}, {}

    def warning(self, key, msg, *args):
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        if len(self._last) > 10_000:
            self._last.clear()
        held = self._held.pop(key, 0)
        self._last[key] = now
        log.warning(msg + (f" ({held} more like it since the last report)" if held else ""), *args)


def no_delay(client) -> None:
    """TCP_NODELAY on the client's socket: paho leaves Nagle's algorithm on, which holds each small PUBLISH or
    PUBACK until the previous one is acknowledged (up to the peer's 40 ms delayed ACK: ~50 ms per batch)."""
    sock = client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a unix socket, websockets): nothing to do
            pass


class Bridge:
    """Subscribes, steps, publishes, acknowledges: run() until stop is set."""

    def __init__(self, mqtt_client, stepper: Stepper, decoder, *, filters, publish: str, output: str = "json",
                 errors_topic: str | None = None, max_batch: int = 256, stop: threading.Event):
        self.mqtt, self.stepper, self.decoder = mqtt_client, stepper, decoder
        self.filters, self.publish, self.output, self.errors_topic = list(filters), publish, output, errors_topic
        self.max_batch, self.stop = max_batch, stop
        self.generation, self.session_present, self.connected = 0, False, threading.Event()
        self.fatal: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._published: set = set()
        self._pub_done = threading.Condition()
        self._carry = None
        self._bad = RateLimitedLog()
        self.counts = {"stepped": 0, "duplicates": 0, "stale": 0, "rejected": 0, "acked": 0,
                       "refused_by_broker": 0}
        mqtt_client.on_connect, mqtt_client.on_disconnect = self._on_connect, self._on_disconnect
        mqtt_client.on_message, mqtt_client.on_publish = self._on_message, self._on_publish
        mqtt_client.on_subscribe = self._on_subscribe

    # ---- paho's callbacks (its network thread) ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            if reason.value in PERMANENT:
                self.fatal = f"the broker refused the connection: {reason} (check --username, the password, " \
                             "--client-id and the broker's ACL)"
                log.error("%s; stopping", self.fatal)
                self.stop.set()
                client.disconnect()
            else:
                log.error("the broker refused the connection: %s; retrying", reason)
            return
        no_delay(client)
        self.generation += 1
        self.session_present = bool(flags.session_present)
        if self.session_present:
            log.info("connected to the broker: session resumed, subscribed to %s", ", ".join(self.filters))
        else:
            log.info("connected to the broker: new session, subscribing to %s", ", ".join(self.filters))
            try:
                self.stepper.session_lost()
            except StateFileError as e:
                self._fail(str(e))
                return
            from paho.mqtt.subscribeoptions import SubscribeOptions
            # retain handling 2: retained messages are old samples, never stepped on (re)subscribing
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            client.subscribe([(f, opts) for f in self.filters])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        failed = [f"{f} ({r})" for f, r in zip(self.filters, reasons) if r.is_failure]
        if failed:
            log.error("the broker refused the subscription(s) %s: no messages from there", ", ".join(failed))
        else:
            log.info("subscribed to %s (QoS 1)", ", ".join(self.filters))

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.connected.clear()
        if not self.stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client, userdata, msg):
        if not msg.dup:  # a packet id carrying a new message: its old number must not be reused (stepper.py)
            try:
                self.stepper.forget(msg.mid)
            except StateFileError as e:
                self._fail(str(e))
                return
        self._queue.put(Item(self.generation, msg))

    def _fail(self, why: str) -> None:
        """Stop for good: nothing more is acknowledged; the broker keeps what was not."""
        self.fatal = why
        log.error("%s", why)
        self.stop.set()

    def _on_publish(self, client, userdata, mid, reason, properties):
        if reason.is_failure:  # e.g. not authorized by the broker's ACL: retrying would block the stream forever
            self.counts["refused_by_broker"] += 1
            self._bad.warning(("puback", reason.value), "the broker refused a prediction (%s): it is dropped "
                              "and its message acknowledged; check the broker's ACL for --publish", reason)
        with self._pub_done:
            self._published.add(mid)
            self._pub_done.notify_all()

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Take, step, publish, acknowledge, until stop is set (the batch under way is finished first)."""
        while not self.stop.is_set():
            batch = self._take()
            try:
                if batch:
                    self._process(batch)
            except StateFileError as e:
                self._fail(str(e))

    def _take(self) -> list:
        """Up to max_batch messages in arrival order, each stream at most once (the first repeat is kept for
        the next batch); messages of an earlier connection are dropped when the broker kept the session (it
        delivers them again)."""
        batch, streams = [], set()
        while len(batch) < self.max_batch:
            item, self._carry = self._carry, None
            if item is None:
                try:
                    item = self._queue.get(timeout=TAKE_WAIT) if not batch else self._queue.get_nowait()
                except queue.Empty:
                    break
            if item.generation != self.generation and self.session_present:
                continue
            if item.sample is None and item.error is None:
                self._decode(item)
            if item.sample is not None:
                if item.sample.stream in streams:
                    self._carry = item
                    break
                streams.add(item.sample.stream)
            batch.append(item)
        return batch

    def _decode(self, item: Item) -> None:
        msg = item.msg
        props = getattr(getattr(msg, "properties", None), "UserProperty", None) or ()
        try:
            item.sample = self.decoder(msg.topic, msg.payload, props)
            publish_topic(self.publish, item.sample.stream)  # an id that cannot be a topic level: refused now
        except PayloadError as e:
            item.sample, item.error = None, str(e)

    def _process(self, batch: list) -> None:
        t0 = time.perf_counter()
        good = [it for it in batch if it.sample is not None]
        mids = [it.msg.mid if it.msg.qos else None for it in good]
        outcomes = self.stepper.step([it.sample for it in good], mids, [it.msg.dup for it in good]) if good else []
        if outcomes is None:  # stopped while the daemon was away: nothing acknowledged, all delivered again
            return
        for it, o in zip(good, outcomes):
            if o.kind == "rejected":
                it.sample, it.error = None, o.error
            else:
                it.outcome = o
        t1 = time.perf_counter()
        mids = [m for it in batch if (m := self._send(it)) is not None]
        if not self._wait_published(mids):
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch of %d: stepped in %.1f ms, published in %.1f ms", len(batch), 1e3 * (t1 - t0),
                      1e3 * (time.perf_counter() - t1))
        generation = self.generation
        for it in batch:
            if it.msg.qos and it.generation == generation:
                self.mqtt.ack(it.msg.mid, it.msg.qos)
                self.counts["acked"] += 1

    def _send(self, it: Item):
        """Publish the prediction (or the dead letter) of one message; the packet id to wait for, or None."""
        if it.sample is None:
            self.counts["rejected"] += 1
            self._bad.warning(("bad", it.msg.topic), "cannot step a message on %r: %s", it.msg.topic, it.error)
            if self.errors_topic is None:
                return None
            return self.mqtt.publish(self.errors_topic, error_payload(it.msg.topic, it.msg.payload, it.error),
                                     qos=1).mid
        o: Outcome = it.outcome
        if o.kind == "stale":
            self.counts["stale"] += 1
            self._bad.warning(("stale", it.msg.topic), "message on %r was stepped before (stream %r at number %s "
                              "or later); acknowledged, no prediction to publish (its outputs are no longer kept)",
                              it.msg.topic, it.sample.stream, o.seq)
            return None
        self.counts["duplicates" if o.duplicate else "stepped"] += 1
        props = None
        if self.output == "raw":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("stream", str(it.sample.stream)), ("seq", str(o.seq))] + (
                [("duplicate", "true")] if o.duplicate else [])
        payload = prediction_payload(self.output, it.sample.stream, o.seq, np.asarray(o.y), o.duplicate)
        return self.mqtt.publish(publish_topic(self.publish, it.sample.stream), payload, qos=1,
                                 properties=props).mid

    def _wait_published(self, mids) -> bool:
        """Wait until the broker acknowledged every publish (paho resends them after a reconnect); False if
        stopped first and the broker is gone."""
        want = set(mids)
        with self._pub_done:
            while not want <= self._published:
                if self.stop.is_set() and not self.connected.is_set():
                    return False
                self._pub_done.wait(0.5)
            self._published -= want
        return True
