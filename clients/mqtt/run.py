"""`lstm-stream bridge mqtt`: read the options, reach the daemon, connect to the broker, run the bridge until
SIGTERM or SIGINT, finish the batch under way, disconnect."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from .options import check, read_password

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("lstm_stream.bridge")


def import_paho():
    """paho.mqtt.client, or ImportError saying how to install it."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ImportError("the MQTT bridge needs paho-mqtt: pip install 'lstm-stream[mqtt]'") from None
    return mqtt


def run_bridge(args) -> int:
    """Entry point of `lstm-stream bridge mqtt` (options: options.py)."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check(args)
        password = read_password(args)
        mqtt = import_paho()
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from clients import Client

    from .bridge import Bridge
    from .payload import parse_stream_from
    from .progress import Progress, StateFileError
    from .stepper import Stepper
    stop = threading.Event()
    try:
        stream_from = parse_stream_from(args.stream_from, args.subscribe)
        client = Client(args.connect, timeout=args.timeout, server_key=args.server_key,
                        client_keys=args.client_key, model=getattr(args, "model", None))
    except ValueError as e:  # --stream-from, or a key file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            progress = None if args.state_file is None else \
                Progress(args.state_file, broker=str(args.broker), client_id=args.client_id)
            stepper = Stepper(client, sequenced=args.seq_field is not None, on_gap=args.on_seq_gap, stop=stop,
                              progress=progress)
        except StateFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        m = _mqtt_client(mqtt, args, password)
        _on_signals(stop)
        bridge = Bridge(m, stepper, None, filters=args.subscribe, publish=args.publish, output=args.output,
                        errors_topic=args.errors_topic, max_batch=args.max_batch, stop=stop)
        try:
            _connect(mqtt, m, args)
        except (OSError, ValueError) as e:
            print(f"error: cannot reach the broker at {args.broker}: {e}", file=sys.stderr)
            return EXIT_FAILED
        m.loop_start()  # subscribed (and the broker queueing for us) even while the daemon is still away
        try:
            status = _serve(bridge, client, args, stream_from, stop)
        finally:
            m.disconnect()
            m.loop_stop()
        log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in bridge.counts.items()))
        if progress is not None:
            progress.close()
    if bridge.fatal:
        print(f"error: {bridge.fatal}", file=sys.stderr)
        return EXIT_FAILED
    return status


def _serve(bridge, client, args, stream_from, stop) -> int:
    """Wait for the daemon's model (the payloads' size), then run the bridge until stopped."""
    from .payload import Decoder
    model = _model(client, stop)
    if model is None:  # stopped (a signal, or a broker refusal) before the daemon answered
        return EXIT_OK
    try:
        bridge.decoder = Decoder(fmt=args.format, inputs=model["input_size"], fields=args.fields,
                                 stream_from=stream_from, seq_field=args.seq_field, int_id=args.int_id)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log.info("bridging %s (%s) -> %s via daemon %s; sequence numbers %s", ", ".join(args.subscribe),
             args.format, args.publish, args.connect,
             f"from {args.seq_field!r} (exactly-once)" if args.seq_field else "numbered by the bridge")
    bridge.run()
    return EXIT_OK


def _on_signals(stop: threading.Event) -> None:
    def on_signal(signum, frame):
        log.info("received %s: finishing the batch under way, then disconnecting", signal.Signals(signum).name)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _model(client, stop):
    """The daemon's model config, waiting (with backoff) until the daemon answers; None if stopped first."""
    from clients import ClientError
    wait = 0.5
    while True:
        try:
            return client.info()["model"]
        except ClientError as e:
            log.warning("the daemon at %s does not answer yet (%s); retrying in %.1f s", client.address, e, wait)
        if stop.wait(wait):
            return None
        wait = min(2 * wait, 10.0)


def _mqtt_client(mqtt, args, password):
    """A paho client for MQTT 5 with manual acknowledgements, TLS and credentials as the options say."""
    m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5,
                    manual_ack=True, reconnect_on_failure=True)
    m.max_inflight_messages_set(max(20, args.max_batch))  # the predictions of one batch in flight at once
    m.max_queued_messages_set(0)
    m.reconnect_delay_set(min_delay=1, max_delay=30)
    if args.broker.tls:
        m.tls_set(ca_certs=args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)
        m.tls_insecure_set(args.tls_insecure)
    if args.username:
        m.username_pw_set(args.username, password)
    m.enable_logger(logging.getLogger("lstm_stream.bridge.paho"))
    return m


def _connect(mqtt, m, args) -> None:
    """Connect with a persistent session (clean start off, a session expiry; receive maximum = --max-batch).
    A broker that is down is retried by paho's loop (connect_async), so the bridge may start before it."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = args.session_expiry
    props.ReceiveMaximum = min(args.max_batch, 65535)
    m.connect_async(args.broker.host, args.broker.port, keepalive=args.keepalive, clean_start=False,
                    properties=props)
