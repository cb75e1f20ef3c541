"""What one MQTT message means to the bridge: its stream id, its sample, its sequence number; and the payload
of the prediction the bridge publishes back. Pure functions over bytes and topics: no broker, no daemon.

Input payload formats (--format):
    json    a JSON array of I numbers, [0.1, -0.2, ...], or a JSON object: with --fields a,b,c the sample is
            [obj["a"], obj["b"], obj["c"]] (the model's inputs in order), else obj["x"] (an array)
    raw     I little-endian float32 values, 4·I bytes, nothing else

The stream id comes from the topic (a level, a template) or from a JSON object's field; the sequence number
(optional, --seq-field) from a JSON object's field or an MQTT 5 user property of that name.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

FORMATS = ("json", "raw")
OUTPUT_FORMATS = ("json", "raw")
MAX_SEQ = 2 ** 63 - 1  # the daemon's step count stops there (docs/protocol.md, get_state)


class PayloadError(ValueError):
    """A message the bridge cannot step: the message says what was wrong and what was expected."""


@dataclass(frozen=True)
class Sample:
    """One decoded message: the stream to step, its sample x (I,) float64 or float32, and its seq (or None)."""
    stream: object
    x: np.ndarray
    seq: int | None


# ---- where the stream id comes from ------------------------------------------------------------------
class StreamFromTopic:
    """The stream id as one level of the topic: a fixed index, or the first '+' of the filter that matched."""

    def __init__(self, filters: list[str], level: int | None = None, template: str | None = None):
        self.template = None
        if template is not None:
            levels = template.split("/")
            if levels.count("{stream}") != 1 or any("#" in t or ("{" in t and t != "{stream}") for t in levels):
                raise ValueError(f"--stream-from {template!r}: a topic template needs exactly one level "
                                 "'{stream}' and no '#', e.g. 'sensors/{stream}/imu'")
            self.template, level = levels, levels.index("{stream}")
        self.level = level
        self.by_filter: list[tuple[str, int]] = []
        if level is None:  # the default: each filter's first '+' level
            for f in filters:
                plus = f.split("/")
                if "+" not in plus:
                    raise ValueError(f"--subscribe {f!r} has no '+' level to take the stream id from; expected a "
                                     "filter like 'sensors/+/imu', or --stream-from (level:N, a template such as "
                                     "'sensors/{stream}/imu', or field:NAME)")
                self.by_filter.append((f, plus.index("+")))

    def __call__(self, topic: str, obj) -> str:
        levels = topic.split("/")
        level = self.level
        if self.template is not None:
            t = self.template
            if len(levels) != len(t) or any(a != b and b not in ("+", "{stream}") for a, b in zip(levels, t)):
                raise PayloadError(f"topic {topic!r} does not match the template {'/'.join(t)!r}")
        elif level is None:
            level = next((lv for f, lv in self.by_filter if topic_matches(f, topic)), None)
            if level is None:
                raise PayloadError(f"topic {topic!r} matches none of the --subscribe filters")
        if level >= len(levels) or not levels[level]:
            raise PayloadError(f"topic {topic!r} has no level {level} to take the stream id from")
        return levels[level]


class StreamFromField:
    """The stream id as a field of a JSON object payload."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, topic: str, obj):
        if not isinstance(obj, dict):
            raise PayloadError(f"the stream id is the payload field {self.name!r}, but the payload is not a JSON "
                               "object")
        if self.name not in obj:
            raise PayloadError(f"payload has no field {self.name!r} (the stream id); fields: {sorted(obj)[:10]}")
        v = obj[self.name]
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise PayloadError(f"payload field {self.name!r} (the stream id) is {v!r}; expected a str or an int")
        return v


def topic_matches(sub: str, topic: str) -> bool:
    """Whether topic matches the subscription filter sub ('+' one level, '#' the rest)."""
    s, t = sub.split("/"), topic.split("/")
    for k, level in enumerate(s):
        if level == "#":
            return True
        if k >= len(t) or (level != "+" and level != t[k]):
            return False
    return len(s) == len(t)


def parse_stream_from(spec: str | None, filters: list[str]):
    """--stream-from: None (each filter's first '+'), 'level:N', 'field:NAME' or a template with {stream}."""
    if spec is None:
        return StreamFromTopic(filters)
    if spec.startswith("field:") and spec[6:]:
        return StreamFromField(spec[6:])
    if spec.startswith("level:"):
        try:
            n = int(spec[6:])
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"--stream-from {spec!r}: expected level:N with N >= 0 (0 is the topic's first level)")
        return StreamFromTopic(filters, level=n)
    if "{stream}" in spec:
        return StreamFromTopic(filters, template=spec)
    raise ValueError(f"--stream-from {spec!r}: expected level:N, field:NAME or a topic template such as "
                     "'sensors/{stream}/imu'")


# ---- the decoder ----------------------------------------------------------------------------------------
class Decoder:
    """bytes + topic (+ MQTT 5 user properties) -> Sample; PayloadError naming what was wrong."""

    def __init__(self, *, fmt: str, inputs: int, stream_from, fields=None, seq_field=None, int_id=False):
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if fields is not None and len(fields) != inputs:
            raise ValueError(f"--fields names {len(fields)} fields ({','.join(fields)}), but the daemon's model "
                             f"takes {inputs} inputs: name one field per input, in the model's order")
        if fmt == "raw" and isinstance(stream_from, StreamFromField):
            raise ValueError("--stream-from field:NAME needs --format json (a raw payload has no fields)")
        self.fmt, self.inputs, self.stream_from = fmt, inputs, stream_from
        self.fields, self.seq_field, self.int_id = fields, seq_field, int_id

    def __call__(self, topic: str, payload: bytes, user_properties=()) -> Sample:
        obj = None
        if self.fmt == "raw":
            x = self._raw(payload)
        else:
            obj = self._json(payload)
            x = self._sample(obj)
        stream = self.stream_from(topic, obj)
        if self.int_id and not isinstance(stream, int):
            try:
                stream = int(stream)
            except ValueError:
                raise PayloadError(f"stream id {stream!r} is not an int (--int-id)") from None
        return Sample(stream, x, self._seq(obj, user_properties))

    def _raw(self, payload: bytes) -> np.ndarray:
        if len(payload) != 4 * self.inputs:
            raise PayloadError(f"raw payload of {len(payload)} bytes; expected {4 * self.inputs} "
                               f"({self.inputs} little-endian float32 values)")
        return np.frombuffer(payload, "<f4").astype(np.float32)

    def _json(self, payload: bytes):
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise PayloadError(f"payload is not JSON ({e}); expected an array of {self.inputs} numbers or an "
                               "object") from None

    def _sample(self, obj) -> np.ndarray:
        if isinstance(obj, list):
            values, what = obj, "the array"
        elif isinstance(obj, dict):
            if self.fields is not None:
                missing = [f for f in self.fields if f not in obj]
                if missing:
                    raise PayloadError(f"payload object lacks field(s) {', '.join(map(repr, missing))}; expected "
                                       f"{', '.join(self.fields)} (--fields)")
                values, what = [obj[f] for f in self.fields], "the fields"
            elif "x" in obj:
                values, what = obj["x"], "field 'x'"
                if not isinstance(values, list):
                    raise PayloadError(f"payload field 'x' is {values!r:.60}; expected an array of {self.inputs} "
                                       "numbers")
            else:
                raise PayloadError(f"payload object has no field 'x' and no --fields were given; fields: "
                                   f"{sorted(obj)[:10]}")
        else:
            raise PayloadError(f"payload is {type(obj).__name__} JSON; expected an array of {self.inputs} numbers "
                               "or an object")
        if len(values) != self.inputs:
            raise PayloadError(f"{len(values)} values in {what}; the model takes {self.inputs} inputs")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PayloadError(f"{v!r:.40} in {what}; expected finite numbers")
        return np.array(values, np.float64)

    def _seq(self, obj, user_properties):
        if self.seq_field is None:
            return None
        if isinstance(obj, dict) and self.seq_field in obj:
            v = obj[self.seq_field]
        else:
            v = next((val for key, val in user_properties if key == self.seq_field), None)
            if v is None:
                raise PayloadError(f"no sequence number: the payload has no field {self.seq_field!r} and the "
                                   "message no MQTT 5 user property of that name (--seq-field)")
            try:
                v = int(v)
            except ValueError:
                raise PayloadError(f"user property {self.seq_field!r} is {v!r:.40}; expected an int >= 1") from None
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SEQ:
            raise PayloadError(f"sequence number {self.seq_field!r} is {v!r:.40}; expected an int >= 1 (the "
                               "stream's sample count including this sample)")
        return v


# ---- predictions out ------------------------------------------------------------------------------------
def prediction_payload(fmt: str, stream, seq: int, y: np.ndarray, duplicate: bool) -> bytes:
    """The payload published for one step: JSON {"stream", "seq", "y"[, "duplicate": true]} or raw float32."""
    if fmt == "raw":
        return np.asarray(y, "<f4").tobytes()
    body = {"stream": stream, "seq": seq, "y": [float(v) for v in y]}
    if duplicate:
        body["duplicate"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def publish_topic(template: str, stream) -> str:
    """--publish with {stream} replaced; PayloadError if the id cannot be one topic level."""
    s = str(stream)
    if not s or any(c in s for c in "/+#\0"):
        raise PayloadError(f"stream id {s!r} cannot be put into the topic {template!r} (it contains '/', '+', "
                           "'#' or NUL, or is empty)")
    return template.replace("{stream}", s)


def error_payload(topic: str, payload: bytes, error: str) -> bytes:
    """The dead letter published on --errors-topic: the source topic, the error, the payload's first 256
    bytes as hex."""
    return json.dumps({"topic": topic, "error": error, "payload_hex": payload[:256].hex(),
                       "payload_bytes": len(payload)}, separators=(",", ":")).encode()
