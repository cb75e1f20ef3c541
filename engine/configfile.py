"""`lstm-stream serve --config FILE.toml` and `serve --print-config`: every option of `serve` in a TOML file, from
the same fields of engine/config.py as the flags and the docs, so that an option added there is in the file too.

    # /etc/lstm-stream/serve.toml
    model = "/var/lib/lstm-stream/pump.npz"
    bind = ["tcp://0.0.0.0:5555", "ipc:///run/lstm-stream/sock"]
    snapshot-dir = "/var/lib/lstm-stream"
    snapshot-every = "30s"
    max-pending-bytes = "64MiB"

- Keys are the flags' names without the dashes (`--snapshot-dir` is `snapshot-dir`, `--spin-us` is `spin-us`);
  the same name with underscores (`snapshot_dir`) is read too. One spelling everywhere: the command line, the
  file, the docs' table and --print-config.
- Values: TOML strings are read exactly like the flag's text (same units: "250ms", "64MiB", "tcp://..."); a
  number is read as its text would be (a duration in seconds, a size in bytes, a count); `true`/`false` for an
  on/off option; a list of strings for an option that repeats (`bind`; one string is a list of one).
- Flags given on the command line override the file (a repeated flag's list replaces the file's list).
- A key that is not an option is an error naming the nearest valid key; a value of the wrong kind is an error
  naming the key and the expected form (ConfigError).
- Relative paths are relative to the working directory, as on the command line.

TOML is read by tomllib (Python 3.11+) or tomli, its backport for 3.10 (a dependency there only).
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap

from . import config as C


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, the key and what was expected."""


def key(f) -> str:
    """The file's key of option field `f`: its flag without the leading dashes."""
    return C.flag(f)[2:]


def option_fields(configs=C.SERVE_CONFIGS) -> dict:
    """{key: field} of every option of `serve`, in the order of the classes and their fields."""
    return {key(f): f for cls in configs for f in C.options(cls)}


def add_arguments(parser) -> None:
    """--config and --print-config; and None as every option's default, so that a flag that was given can be told
    from one that was not (from_args puts the field's default in place of None)."""
    group = parser.add_argument_group("configuration file")
    group.add_argument("--config", metavar="FILE", help="read options from this TOML file (keys: the options' "
                       "names without the dashes, e.g. snapshot-dir = \"state\"); flags given too override it")
    group.add_argument("--print-config", action="store_true", help="print the effective configuration (the file "
                       "and the flags) as TOML that --config reads, and exit")
    parser.set_defaults(**{f.name: None for f in option_fields().values()})


# ---- reading ---------------------------------------------------------------------------------------
def _toml_load(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (3.10)
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def read(path: str) -> dict:
    """{field name: value} of the options in the TOML file at `path`, each parsed as its flag's text is;
    ConfigError naming the key for an unknown key, a key given twice, or a value of the wrong kind."""
    by_key = option_fields()
    values, seen = {}, {}
    for raw_key, raw in _toml_load(path).items():
        k = raw_key.replace("_", "-")
        f = by_key.get(k)
        if f is None:
            near = difflib.get_close_matches(k, by_key, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{path}: unknown key {raw_key!r}{hint} (the keys are the options of `lstm-stream "
                              "serve --help` without the dashes; `serve --print-config` lists them all)")
        if k in seen:
            raise ConfigError(f"{path}: {seen[k]!r} and {raw_key!r} are the same option; give it once")
        seen[k] = raw_key
        values[f.name] = _parse(f, raw, f"{path}: {raw_key}")
    return values


def _parse(f, raw, where: str):
    """One value of the file as the field's value (a tuple for a repeated option)."""
    if not f.metadata["repeat"]:
        return _parse_one(f, raw, where)
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:  # (an empty list: as if the option were given no value)
        raise ConfigError(f"{where} = {_shown(raw)}: expected a list of one or more strings, each "
                          f"{expected(f)}{_example(f)}")
    return tuple(_parse_one(f, item, f"{where}[{i}]") for i, item in enumerate(items))


def _parse_one(f, raw, where: str):
    m = f.metadata
    unit, choices = m["unit"], m["choices"]
    text = None
    if isinstance(raw, bool):
        if choices is not None and set(choices) == {"on", "off"}:
            text = "on" if raw else "off"
    elif isinstance(raw, str):
        text = raw
    elif isinstance(raw, (int, float)) and unit.parse is not str and choices is None:
        text = repr(raw)
    if text is None:
        raise ConfigError(f"{where} = {_shown(raw)}: expected {expected(f)}{_example(f)}")
    if choices is not None and text not in choices:
        raise ConfigError(f"{where} = {_shown(raw)}: expected {expected(f)}")
    try:
        return unit.parse(text)
    except argparse.ArgumentTypeError as e:  # the flag's own message: what was wrong, what was expected
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where} = {_shown(raw)}: expected {expected(f)}{_example(f)}") from None


_FORMS = {"N": "a whole number", "DURATION": 'a duration: a string such as "250ms", "30s", "5m", "1h", or a number '
          "of seconds", "SIZE": 'a size: a string such as "64KiB", "16MiB", or a number of bytes',
          "ENDPOINT": 'an address string such as "tcp://127.0.0.1:5555" or "ipc:///run/lstm-stream/sock"',
          "PATH": "a path (a string)", "DIR": "a directory (a string)",
          "PORT": "a TCP port number (0: any free port)", "ADDRESS": 'a host address string such as "127.0.0.1"'}


def expected(f) -> str:
    """What a value of field `f` looks like in the file, in words."""
    m = f.metadata
    if m["choices"] is not None:
        words = " or ".join(json.dumps(c) for c in m["choices"])
        return words + (" (or true/false)" if set(m["choices"]) == {"on", "off"} else "")
    if m["unit"].word == "µs":
        return "a number of microseconds"
    return _FORMS.get(m["unit"].metavar, "a string")


def _example(f) -> str:
    """', e.g. KEY = DEFAULT' for an option whose default is a value (for error messages)."""
    return "" if f.default is None else f", e.g. {key(f)} = {render(f, f.default)}"


def _shown(raw) -> str:
    """A value of the file as it was written, roughly (for error messages)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return json.dumps(raw, ensure_ascii=False)
    return f"<a TOML {type(raw).__name__.replace('dict', 'table').replace('list', 'array')}>"


# ---- merging ---------------------------------------------------------------------------------------
def resolve(args) -> tuple:
    """The config objects of SERVE_CONFIGS (ServeConfig, StreamsConfig, EngineConfig) from the command line over
    --config's file; ValueError (ConfigError for the file) naming what is wrong."""
    merged = merge(args)
    return tuple(C.from_args(cls, merged) for cls in C.SERVE_CONFIGS)


def merge(args) -> argparse.Namespace:
    """The parsed command line with the options it did not give taken from --config's file (if any)."""
    merged = argparse.Namespace(**vars(args))
    if getattr(args, "config", None):
        for name, value in read(args.config).items():
            if getattr(merged, name, None) is None:
                setattr(merged, name, value)
    return merged


# ---- writing ---------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def render(f, value) -> str:
    """Field `f`'s value as a TOML value that read() parses back to it."""
    m = f.metadata
    if m["repeat"]:
        return "[" + ", ".join(render_one(f, v) for v in value) + "]"
    return render_one(f, value)


def render_one(f, value) -> str:
    unit = f.metadata["unit"]
    text = unit.show(value)
    if unit.parse is not str and f.metadata["choices"] is None and _NUMBER.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


HEADER = """\
# lstm-stream serve --config FILE: every option of `serve` (docs/operations.md, "The configuration file").
# Keys are the options' names without the dashes; flags given on the command line override this file.
# DURATION: "250ms", "30s", "5m", "1h", "2d" or seconds. SIZE: "65536", "64KiB", "16MiB" or bytes."""


def dumps(configs) -> str:
    """The TOML of config objects (one per class of SERVE_CONFIGS, in order): each option with its help as a
    comment; an option that is not set (None, or no value of one that repeats) as a comment saying what that
    means."""
    out = [HEADER]
    for obj in configs:
        out += ["", f"# ---- {type(obj).__doc__.splitlines()[0].rstrip('.')}"]
        for f in C.options(type(obj)):
            out += [""] + textwrap.wrap(C.plain(f.metadata["help"]), 110, initial_indent="# ",
                                        subsequent_indent="# ", break_on_hyphens=False)
            value = getattr(obj, f.name)
            if value is None or value == ():  # (an option that repeats, given no value: --model)
                out.append(f"# {key(f)} is not set: {C.plain(C.default_text(f))}")
            else:
                out.append(f"{key(f)} = {render(f, value)}")
    return "\n".join(out) + "\n"


def example() -> str:
    """The defaults as a configuration file: docs/operations.md's example (and --print-config without options)."""
    return dumps([cls() for cls in C.SERVE_CONFIGS])


_EXAMPLE = re.compile(r"(<!-- config-example: [^\n]* -->\n```toml\n)(.*?)(```\n<!-- /config-example -->)",
                      re.DOTALL)


def with_example(doc: str) -> str:
    """`doc` (docs/operations.md's text) with the generated example configuration between its markers."""
    if not _EXAMPLE.search(doc):
        raise ValueError("no '<!-- config-example: ... -->' ```toml ... ``` '<!-- /config-example -->' markers in "
                         "the document")
    return _EXAMPLE.sub(lambda m: m.group(1) + example() + m.group(3), doc, count=1)

