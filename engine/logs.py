"""The daemon's log output: one line per event on stderr, as text (the default) or as JSON objects, and
failures that repeat in a loop written once with a count instead of once per occurrence.

    logs.setup("info", "json")                   # serve does this once its options are known
    log.info("snapshot (%s): ...", reason, ..., extra={"event": "snapshot", "streams": n, "duration_s": s})
    log.error("step log write failed: %s", e, extra=logs.repeating("log_write_failed", path=p))

JSON lines carry `ts` (UTC, ISO 8601), `level`, `logger`, `event` (null where the call named none), `message`
(the text line's message), every `extra=` field, and `exc` (the traceback) where there is one.

Repeats: a record made with extra=repeating(event, key=...) (or any record of a logger in REPEATING_LOGGERS,
keyed by its format string) is written the first time; the same event again within REPEAT_WINDOW seconds is
only counted, and once the window has passed one line says how many were held back (with the last one's
message), at the event's next occurrence or at the next flush_repeats() (the serving loop's housekeeping, and
at exit), whichever is first. A continuous flood therefore writes two lines per window, not one per failure.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

REPEAT_WINDOW = 60.0  # seconds during which a repeated event is counted, not written
# Loggers whose every record may repeat in a loop: pyzmq's ZAP handler (engine/access.py) logs each CURVE
# handshake at debug level (three lines), and a refused client may retry in a loop.
REPEATING_LOGGERS = ("lstm_stream.zap",)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# The attributes every LogRecord has: anything else on a record came from extra= (or a summary of repeats).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName",
                                                                               "event", "repeat"}


def repeating(event: str, key="", **fields) -> dict:
    """extra= for a log call that a loop may repeat: the same (event, key) within REPEAT_WINDOW is counted and
    summarised instead of written (key: what makes two occurrences different events, e.g. an op's name)."""
    return {"event": event, "repeat": f"{event}\0{key}", **fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a message's newlines are escaped by JSON)."""

    def format(self, record) -> str:
        out = {"ts": _utc(record.created), "level": record.levelname.lower(), "logger": record.name,
               "event": getattr(record, "event", None), "message": record.getMessage()}
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _utc(created: float) -> str:
    """2026-12-04T03:10:49.123Z"""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class RepeatFilter(logging.Filter):
    """A handler's filter that writes a repeating event once per window and then a count (module docstring).
    Thread-safe: the serving loop, the fsync thread and the ZAP thread all log."""

    def __init__(self, handler: logging.Handler, window: float = REPEAT_WINDOW, clock=time.monotonic):
        super().__init__()
        self.handler, self.window, self._clock = handler, window, clock
        self._lock = threading.RLock()
        self._seen: dict = {}  # key -> [window end, held back, last held-back record, window start]

    @staticmethod
    def key(record):
        """What makes records the same repeating event, or None for a record that is always written."""
        if getattr(record, "_repeat_summary", False):
            return None
        key = getattr(record, "repeat", None)
        if key is None and record.name in REPEATING_LOGGERS:  # by the format string, and by the verdict that
            verdict = record.args[0] if str(record.msg).startswith("%s") and record.args else ""  # pyzmq puts
            key = f"{record.name}\0{record.msg}\0{verdict}"  # first (ALLOWED, DENIED)
        return key

    def filter(self, record) -> bool:
        key = self.key(record)
        if key is None:
            return True
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now < seen[0]:
                seen[1] += 1
                seen[2] = record
                return False
            if seen is not None and seen[1]:
                self._summarise(seen, now)
            self._seen[key] = [now + self.window, 0, None, now]
            return True

    def flush_repeats(self, now: float | None = None) -> None:
        """Write the count of every event whose window has passed (all of them with now=inf, at exit)."""
        now = self._clock() if now is None else now
        with self._lock:
            for key, seen in list(self._seen.items()):
                if now >= seen[0]:
                    del self._seen[key]
                    if seen[1]:
                        self._summarise(seen, min(now, self._clock()))

    def _summarise(self, seen, now):
        """One record: the last held-back occurrence, with how many were held back since the window began."""
        _, n, last, start = seen
        record = logging.makeLogRecord(dict(last.__dict__))
        record.msg, record.args = "%s [repeated %d more times in %.0f s]", (last.getMessage(), n, now - start)
        record.repeat, record.repeated, record.window_s = None, n, round(now - start, 3)
        record.exc_info = record.exc_text = None  # the first occurrence carried the traceback
        record._repeat_summary = True
        self.handler.handle(record)


class _State:
    handler: logging.Handler | None = None
    repeats: RepeatFilter | None = None


def setup(level: str = "info", fmt: str = "text", stream=None) -> logging.Handler:
    """Send every log record at `level` or above to stderr (or `stream`) as `fmt` (text or json), with repeats
    counted; replaces the handler an earlier setup() installed. In json, uncaught exceptions and warnings are
    logged as JSON lines too, so that every line of the stream parses."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    if _State.handler is not None:
        root.removeHandler(_State.handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    _State.repeats = RepeatFilter(handler)
    handler.addFilter(_State.repeats)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _State.handler = handler
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda a: _log_uncaught(a.exc_type, a.exc_value, a.exc_traceback, a.thread)
    return handler


def _log_uncaught(exc_type, exc, tb, thread=None):
    if issubclass(exc_type, KeyboardInterrupt):
        return sys.__excepthook__(exc_type, exc, tb)
    where = "" if thread is None else f" in thread {thread.name}"
    logging.getLogger("lstm_stream.engine").critical("uncaught exception%s", where, exc_info=(exc_type, exc, tb),
                                                     extra={"event": "uncaught"})


def flush_repeats(now: float | None = None) -> None:
    """The counts of repeated events whose window has passed (see RepeatFilter); nothing before setup()."""
    if _State.repeats is not None:
        _State.repeats.flush_repeats(now)


class RepeatFlusher:
    """A housekeeping ticker (EngineCore.add_ticker) that writes due repeat counts about once a second."""

    def __init__(self, every: float = 1.0):
        self.every = every

    def __call__(self, now: float) -> float:
        flush_repeats()
        return now + self.every
