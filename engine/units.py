"""The units of `serve`'s options: how each value is written as text (durations, sizes, endpoints, ports), and
option(), the dataclass field that engine/config.py declares every option with.

    parse_duration("30s") == 30.0;  format_duration(90.0) == "90s"
    parse_size("64MiB") == 67108864;  parse_endpoint("tcp://127.0.0.1:5555")
    max_batch: int = option(1024, "requests served per turn", unit=count("requests"))
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ---- how a value is written as text -----------------------------------------------------------
_DURATIONS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
_SIZES = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20}


def parse_duration(text: str) -> float:
    """'250ms', '30s', '5m', '1h', '2d' or plain seconds ('1.5') -> seconds (> 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration; expected e.g. 250ms, 30s, 5m, 1h")
    return float(m.group(1)) * _DURATIONS[m.group(2)]


def format_duration(seconds: float) -> str:
    """Seconds -> the text parse_duration reads back, in the largest whole unit: 60.0 -> '1m'."""
    for suffix in ("d", "h", "m", "s", "ms"):
        n = seconds / _DURATIONS[suffix]
        if n >= 1 and n == round(n):
            return f"{round(n)}{suffix}"
    return f"{seconds:g}"


def parse_size(text: str) -> int:
    """'65536', '64KiB', '16MiB' -> bytes (> 0)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SIZES or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size; expected e.g. 65536, 64KiB, 16MiB")
    return int(m.group(1)) * _SIZES[m.group(2)]


def format_size(n: int) -> str:
    """Bytes -> the text parse_size reads back: 16777216 -> '16MiB'."""
    for suffix, size in (("MiB", 2**20), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def parse_microseconds(text: str) -> float:
    """'200' (µs) -> seconds; a negative number is 0 (off)."""
    try:
        return max(float(text), 0.0) / 1e6
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds; expected e.g. 200, or 0 "
                                         "for off") from None


_ENDPOINT_HELP = "expected tcp://HOST:PORT or ipc://PATH, e.g. tcp://127.0.0.1:5555"


def parse_endpoint(text: str) -> str:
    """A --bind/--connect address: tcp://HOST:PORT (PORT a number, or * to bind any free one) or ipc://PATH."""
    scheme, sep, rest = str(text).partition("://")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} has no scheme; {_ENDPOINT_HELP}")
    if scheme not in ("tcp", "ipc"):
        raise argparse.ArgumentTypeError(f"{text!r} has scheme {scheme!r}, which a daemon cannot be reached by; "
                                         f"{_ENDPOINT_HELP}")
    if scheme == "ipc":
        if not rest:
            raise argparse.ArgumentTypeError(f"{text!r} has no path; {_ENDPOINT_HELP}")
        return text
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"{text!r} needs a host and a port; {_ENDPOINT_HELP}")
    if port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r} has port {port!r}; expected a number from 1 to 65535, e.g. "
                                         "tcp://127.0.0.1:5555 (--bind also takes * for any free port)")
    return text


def parse_port(text: str) -> int:
    """A TCP port: 1 to 65535, or 0 for any free one."""
    if not str(text).strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; expected a number from 1 to 65535 (e.g. "
                                         "9464), or 0 for any free port (logged)")
    return int(text)


@dataclass(frozen=True)
class Unit:
    """How an option's value is written as text: its metavar, text -> value, value -> text, a word after it."""

    metavar: str | None
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str
    word: str = ""


def count(word: str) -> Unit:
    """A whole number of `word` (requests, streams ...)."""
    return Unit("N", int, str, word)


TEXT = Unit(None)
PATH, DIR, NAME = Unit("PATH"), Unit("DIR"), Unit("NAME")
ENDPOINT = Unit("ENDPOINT", parse_endpoint)
PORT, ADDRESS = Unit("PORT", parse_port), Unit("ADDRESS")
DURATION = Unit("DURATION", parse_duration, format_duration)
SIZE = Unit("SIZE", parse_size, format_size)
MICROSECONDS = Unit("N", parse_microseconds, lambda seconds: f"{seconds * 1e6:g}", "µs")


def option(default, help: str, *, unit: Unit = TEXT, flag: str | bool = True, shown: str | None = None,
           choices: tuple | None = None, repeat: bool = False, derive: Callable[[dict], Any] | None = None):
    """A dataclass field that is a `serve` option. help: markdown, one or two lines. flag: True for
    --field-name, a str for another name, None for no option. shown: the default in words (for None).
    repeat: the option may be given several times (a tuple). derive(values): the value when built from the
    command line, from the other fields' values."""
    return field(default=default, metadata={"help": help, "unit": unit, "flag": flag, "shown": shown,
                                            "choices": choices, "repeat": repeat, "derive": derive})
