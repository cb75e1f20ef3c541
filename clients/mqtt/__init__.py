"""The MQTT bridge (`lstm-stream bridge mqtt`): sensor samples from MQTT topics in, predictions out, through a
daemon, QoS 1 end to end. A client of the daemon like any other; docs/mqtt.md says what it guarantees.

    options.py  the command's options and the broker address (no MQTT library needed to build the parser)
    payload.py  a message -> (stream, sample, seq); a prediction -> payload
    stepper.py  a batch of samples -> steps with sequence numbers, resent until the daemon answers
    bridge.py   paho-mqtt: persistent session, manual acknowledgements, the take/step/publish/ack loop
    run.py      the command: options, daemon, broker, signals

paho-mqtt is imported only when the bridge runs (the `mqtt` extra: pip install 'lstm-stream[mqtt]').
"""
