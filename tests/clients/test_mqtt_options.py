"""The MQTT bridge's options and payload decoding (clients/mqtt/options.py, payload.py): no broker needed.
Every refusal names what was wrong and what was expected."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from clients.mqtt.options import parse_broker, parse_topic_filter
from clients.mqtt.payload import Decoder, PayloadError, parse_stream_from, prediction_payload, publish_topic
from engine.cli import build_parser, main


def decoder(fmt="json", **kw):
    stream_from = parse_stream_from(kw.pop("stream_from", None), ["sensors/+/imu"])
    return Decoder(fmt=fmt, inputs=3, stream_from=stream_from, **kw)


def test_json_array_object_fields_and_raw():
    s = decoder()("sensors/pump-7/imu", b"[0.5, -1, 2e-3]")
    assert s.stream == "pump-7" and s.seq is None
    np.testing.assert_array_equal(s.x, [0.5, -1.0, 2e-3])
    s = decoder(fields=["a", "b", "c"], seq_field="n")("sensors/p/imu", json.dumps({"c": 3, "a": 1, "b": 2, "n": 7}))
    np.testing.assert_array_equal(s.x, [1, 2, 3])
    assert s.seq == 7
    s = decoder()("sensors/p/imu", json.dumps({"x": [1, 2, 3]}))
    np.testing.assert_array_equal(s.x, [1, 2, 3])
    x = np.array([0.1, -0.2, 3.5], np.float32)
    s = decoder("raw", seq_field="n")("sensors/p/imu", x.astype("<f4").tobytes(), [("n", "4")])
    assert s.x.dtype == np.float32 and s.seq == 4
    np.testing.assert_array_equal(s.x, x)


@pytest.mark.parametrize("payload,fmt,kw,says", [
    (b"\xff[", "json", {}, "not JSON"),
    (b"[1, 2]", "json", {}, "2 values in the array; the model takes 3 inputs"),
    (b'[1, "a", 2]', "json", {}, "expected finite numbers"),
    (b"[1, true, 2]", "json", {}, "expected finite numbers"),
    (b"[1, NaN, 2]", "json", {}, "expected finite numbers"),
    (b'"text"', "json", {}, "str JSON"),
    (b'{"a": 1}', "json", {}, "no field 'x'"),
    (b'{"a": 1, "b": 2}', "json", {"fields": ["a", "b", "c"]}, "lacks field(s) 'c'"),
    (b"\0" * 8, "raw", {}, "raw payload of 8 bytes; expected 12"),
    (b"[1, 2, 3]", "json", {"seq_field": "n"}, "no sequence number"),
    (b'{"x": [1, 2, 3], "n": 0}', "json", {"seq_field": "n"}, "expected an int >= 1"),
    (b'{"x": [1, 2, 3], "n": "3"}', "json", {"seq_field": "n"}, "expected an int >= 1"),
    (b'{"x": [1, 2, 3]}', "json", {"stream_from": "field:id"}, "no field 'id'"),
])
def test_bad_payloads_are_named(payload, fmt, kw, says):
    with pytest.raises(PayloadError) as e:
        decoder(fmt, **kw)("sensors/p/imu", payload)
    assert says in str(e.value)


def test_stream_from_level_template_field_and_int_id():
    assert decoder(stream_from="level:0")("a/b/c", b"[1,2,3]").stream == "a"
    assert decoder(stream_from="site/{stream}/+")("site/s9/imu", b"[1,2,3]").stream == "s9"
    with pytest.raises(PayloadError, match="does not match the template"):
        decoder(stream_from="site/{stream}/+")("other/s9/imu", b"[1,2,3]")
    assert decoder(stream_from="field:id")("t", b'{"id": 42, "x": [1,2,3]}').stream == 42
    assert decoder(int_id=True)("sensors/17/imu", b"[1,2,3]").stream == 17
    with pytest.raises(PayloadError, match="not an int"):
        decoder(int_id=True)("sensors/pump/imu", b"[1,2,3]")
    with pytest.raises(ValueError, match="no '\\+' level"):
        parse_stream_from(None, ["sensors/all"])
    with pytest.raises(ValueError, match="expected level:N"):
        parse_stream_from("level:x", ["a/+"])
    with pytest.raises(ValueError, match="one field per input"):
        decoder(fields=["a", "b"])


def test_broker_and_topic_options():
    b = parse_broker("mqtt://broker.local")
    assert (b.host, b.port, b.tls) == ("broker.local", 1883, False)
    assert parse_broker("mqtts://10.0.0.2:9000").port == 9000 and parse_broker("mqtts://h").port == 8883
    for bad in ("tcp://h:1883", "mqtt://", "mqtt://user:pw@h", "mqtt://h:99999"):
        with pytest.raises(Exception, match="expected mqtt://HOST"):
            parse_broker(bad)
    assert parse_topic_filter("a/+/#") == "a/+/#"
    for bad in ("a/b+/c", "a/#/c", ""):
        with pytest.raises(Exception, match="not a topic filter"):
            parse_topic_filter(bad)


def test_prediction_payloads():
    y = np.array([0.25, 0.75], np.float32)
    assert json.loads(prediction_payload("json", "p", 3, y, True)) == {"stream": "p", "seq": 3, "y": [0.25, 0.75],
                                                                       "duplicate": True}
    assert prediction_payload("raw", "p", 3, y, False) == struct.pack("<2f", 0.25, 0.75)
    assert publish_topic("predictions/{stream}", "p-1") == "predictions/p-1"
    with pytest.raises(PayloadError, match="cannot be put into the topic"):
        publish_topic("predictions/{stream}", "a/b")


def test_cli_refuses_bad_combinations(capsys):
    base = ["bridge", "mqtt", "--subscribe", "s/+", "--publish", "p/{stream}"]
    assert main(base + ["--broker", "mqtt://127.0.0.1:1", "--tls-ca", "ca.pem"]) == 2
    assert "--tls-* options need an mqtts://" in capsys.readouterr().err
    assert main(base + ["--broker", "mqtt://127.0.0.1:1", "--format", "raw", "--fields", "a,b"]) == 2
    assert "--fields needs --format json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(base[:2] + ["--subscribe", "s/+", "--publish", "p/x", "--broker", "mqtt://h"])
    assert "expected a topic with {stream}" in capsys.readouterr().err


def test_cli_does_not_import_paho():
    code = ("import sys, engine.cli; engine.cli.build_parser().parse_args(['bridge', 'mqtt', '--broker', "
            "'mqtt://h', '--subscribe', 's/+', '--publish', 'p/{stream}']); "
            "assert not any(m.startswith('paho') for m in sys.modules), 'paho imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_refuses_a_state_file_it_cannot_use(tmp_path, capsys):
    base = ["bridge", "mqtt", "--broker", "mqtt://127.0.0.1:1", "--subscribe", "s/+", "--publish", "p/{stream}"]
    assert main(base + ["--state-file", str(tmp_path / "s"), "--seq-field", "n"]) == 2
    assert "--state-file is for steps the bridge numbers itself" in capsys.readouterr().err
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install 'lstm-stream[mqtt]')")
    (tmp_path / "notes.txt").write_text("my notes\n")
    assert main(base + ["--state-file", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt is not a bridge's state file" in err
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"  # left as it was
