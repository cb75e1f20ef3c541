"""The options of `lstm-stream bridge mqtt`, and the broker address they name. Imports no MQTT library: the
CLI builds its parser from here without paho installed; only running the bridge needs it."""
from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .payload import FORMATS, OUTPUT_FORMATS

PASSWORD_ENV = "LSTM_STREAM_MQTT_PASSWORD"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

EPILOG = f"""\
exactly-once: a step is applied once per MQTT message when the message carries its sample number
(--seq-field: a JSON field or an MQTT 5 user property; the stream's sample count including this sample,
1 for its first), across restarts of the broker, the bridge and the daemon (run the daemon with
--snapshot-dir, i.e. the step log, and --fsync always). Without --seq-field the bridge numbers the steps
itself: exactly-once across broker and daemon restarts while the bridge runs, and across a crash of the
bridge's process (kill -9) with --state-file; after a crash of the bridge's machine, or without
--state-file after any bridge crash, a message the daemon had applied before the bridge acknowledged it is
applied again (at-least-once). Each message is acknowledged (PUBACK) only after the daemon applied it and
its prediction was acknowledged by the broker; predictions are at-least-once (a redelivered message
republishes its prediction, with "duplicate": true in JSON).
Password: ${PASSWORD_ENV} or --password-file. Details: docs/mqtt.md."""


@dataclass(frozen=True)
class Broker:
    """Where the broker is: host, port, TLS or not."""
    host: str
    port: int
    tls: bool

    def __str__(self):
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(text: str) -> Broker:
    """mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS); ArgumentTypeError saying what was expected."""
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--broker {text!r}: {e}; expected mqtt://HOST:PORT") from None
    if u.scheme not in DEFAULT_PORTS or not u.hostname or u.path not in ("", "/") or u.username or u.query:
        raise argparse.ArgumentTypeError(f"--broker {text!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
                                         "(TLS), e.g. mqtt://127.0.0.1:1883; credentials go in --username and "
                                         f"${PASSWORD_ENV} or --password-file")
    return Broker(u.hostname, port or DEFAULT_PORTS[u.scheme], u.scheme == "mqtts")


def parse_topic_filter(text: str) -> str:
    """A subscription filter: '+' and '#' only as whole levels, '#' last."""
    levels = text.split("/")
    bad = not text or "\0" in text or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels)
    if bad or "#" in levels[:-1]:
        raise argparse.ArgumentTypeError(f"--subscribe {text!r} is not a topic filter: '+' and '#' stand for "
                                         "whole levels and '#' only last, e.g. sensors/+/imu")
    return text


def parse_publish(text: str) -> str:
    """--publish: a topic with {stream} in it and no wildcards."""
    if "{stream}" not in text or "+" in text or "#" in text:
        raise argparse.ArgumentTypeError(f"--publish {text!r}: expected a topic with {{stream}} and no wildcards, "
                                         "e.g. predictions/{stream}")
    return text


def parse_fields(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if not all(fields) or len(set(fields)) != len(fields):
        raise argparse.ArgumentTypeError(f"--fields {text!r}: expected distinct comma-separated names, e.g. "
                                         "ax,ay,az,gx,gy,gz (one per model input, in order)")
    return fields


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int >= 1")
    return n


def add_bridge_parsers(p, add_client_arguments) -> None:
    """`bridge KIND` under the CLI's `bridge`: KIND mqtt, with the daemon's options (add_client_arguments: the
    CLI's --connect, --timeout and CURVE keys) and the bridge's."""
    kinds = p.add_subparsers(dest="bridge", required=True, metavar="KIND")
    mqtt = kinds.add_parser("mqtt", help="MQTT topics in, predictions out (needs 'lstm-stream[mqtt]')",
                            description="Step the daemon with sensor samples from MQTT topics and publish each "
                                        "prediction, QoS 1 end to end.")
    add_client_arguments(mqtt)
    add_arguments(mqtt)


def add_arguments(p) -> None:
    """The options of `lstm-stream bridge mqtt` (the daemon's --connect and keys come from the CLI)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    b = p.add_argument_group("broker")
    b.add_argument("--broker", required=True, type=parse_broker, metavar="URL",
                   help="mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT] (TLS, default port 8883)")
    b.add_argument("--client-id", default=f"lstm-stream-bridge-{socket.gethostname()}",
                   help="MQTT client id; the broker keeps this id's session (subscriptions and unacknowledged "
                        "messages) across restarts, so keep it stable and unique per bridge (default: "
                        "lstm-stream-bridge-HOSTNAME)")
    b.add_argument("--username", help=f"MQTT user name; the password from ${PASSWORD_ENV} or --password-file")
    b.add_argument("--password-file", metavar="FILE", help="file whose first line is the MQTT password")
    b.add_argument("--tls-ca", metavar="FILE", help="mqtts: CA certificates to verify the broker with (default: "
                                                    "the system's)")
    b.add_argument("--tls-cert", metavar="FILE", help="mqtts: this client's certificate (with --tls-key)")
    b.add_argument("--tls-key", metavar="FILE", help="mqtts: this client's private key")
    b.add_argument("--tls-insecure", action="store_true", help="mqtts: do not check the broker's host name "
                                                               "(testing only)")
    b.add_argument("--session-expiry", type=positive_int, default=7 * 24 * 3600, metavar="SECONDS",
                   help="how long the broker keeps the session while the bridge is away (default one week)")
    b.add_argument("--keepalive", type=positive_int, default=30, metavar="SECONDS", help="MQTT keepalive")
    t = p.add_argument_group("topics and payloads")
    t.add_argument("--subscribe", action="append", required=True, type=parse_topic_filter, metavar="FILTER",
                   help="topic filter of sensor samples, QoS 1 (repeatable), e.g. 'sensors/+/imu'")
    t.add_argument("--publish", required=True, type=parse_publish, metavar="TEMPLATE",
                   help="topic of each prediction, QoS 1, e.g. 'predictions/{stream}'")
    t.add_argument("--stream-from", metavar="SPEC",
                   help="where the stream id is: level:N (topic level N, 0-based), a template such as "
                        "'sensors/{stream}/imu', or field:NAME (a JSON payload field); default: the level of the "
                        "first '+' of the --subscribe filter the topic matched")
    t.add_argument("--int-id", action="store_true", help="send the stream id to the daemon as an int")
    t.add_argument("--format", choices=FORMATS, default="json",
                   help="json: [x1, ..., xI] or an object (see --fields; else its field 'x'); raw: I "
                        "little-endian float32 (default json)")
    t.add_argument("--fields", type=parse_fields, metavar="A,B,...",
                   help="json objects: the fields holding the model's inputs, in the model's order")
    t.add_argument("--seq-field", metavar="NAME",
                   help="the message's sample number (JSON field or MQTT 5 user property NAME): the stream's "
                        "sample count including this one, 1 first. Makes steps exactly-once across bridge "
                        "restarts too (see below)")
    t.add_argument("--state-file", metavar="FILE",
                   help="without --seq-field: keep the bridge's record of the numbers it gave to messages not "
                        "yet acknowledged in FILE, so that steps stay exactly-once across a crash of the bridge "
                        "process (not of its machine: see below)")
    t.add_argument("--on-seq-gap", choices=("reject", "apply"), default="reject",
                   help="a --seq-field number beyond the stream's next (samples lost upstream, or the daemon "
                        "lost state): reject it (log, --errors-topic, acknowledge) or apply it as the next step "
                        "(default reject)")
    t.add_argument("--output", choices=OUTPUT_FORMATS, default="json",
                   help="prediction payload: json {\"stream\", \"seq\", \"y\"} or raw float32 with the stream "
                        "and seq as MQTT 5 user properties (default json)")
    t.add_argument("--errors-topic", metavar="TOPIC",
                   help="publish each message that cannot be stepped here (JSON: topic, error, payload_hex) "
                        "before acknowledging it; without it such messages are logged and acknowledged")
    r = p.add_argument_group("batching and logs")
    r.add_argument("--max-batch", type=positive_int, default=256, metavar="N",
                   help="messages stepped in one pipelined round trip (distinct streams; default 256). Also the "
                        "MQTT 5 receive maximum: the broker's in-flight messages to the bridge")
    r.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def read_password(args) -> str | None:
    """The MQTT password: --password-file's first line, else $LSTM_STREAM_MQTT_PASSWORD, else None; a
    ValueError naming the file if it cannot be read."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise ValueError(f"--password-file {args.password_file}: {e.strerror}") from None
    return os.environ.get(PASSWORD_ENV)


def check(args) -> None:
    """Option combinations argparse cannot check; ValueError saying what to change."""
    if not args.broker.tls and (args.tls_ca or args.tls_cert or args.tls_key or args.tls_insecure):
        raise ValueError("--tls-* options need an mqtts:// --broker")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if (args.password_file or os.environ.get(PASSWORD_ENV)) and not args.username:
        raise ValueError(f"a password (--password-file or ${PASSWORD_ENV}) needs --username")
    if args.state_file and args.seq_field:
        raise ValueError("--state-file is for steps the bridge numbers itself; with --seq-field the numbers "
                         "travel with the messages and need no file")
    if args.fields and args.format != "json":
        raise ValueError("--fields needs --format json")
    if args.errors_topic is not None and (not args.errors_topic or "+" in args.errors_topic
                                          or "#" in args.errors_topic):
        raise ValueError(f"--errors-topic {args.errors_topic!r}: expected a topic without wildcards")
