"""Every option of `lstm-stream serve`, defined once: one dataclass per layer, each field carrying its default,
help text and unit. The command line (engine/cli.py) and the option table of docs/operations.md are generated
from these fields; no option is written anywhere else.

    ServeConfig     what the daemon loads, where it listens, where it snapshots     (engine/cli.py)
    StreamsConfig   the Streams it serves: Streams(model, **asdict(config))        (lstm_stream/streams.py)
    EngineConfig    the serving loop's batching, backpressure and timing           (engine/core.py, server.py)

A field is declared with option(default, help, unit=..., flag=..., ...) (engine/units.py: the units, how each
value is written as text); its "why this value" is the comment above it. A field with flag=None has no command-line option (set in code, or derived from the other options).

    python -m engine.config --markdown       # print the option table of docs/operations.md
    python -m engine.config --write-docs     # rewrite it in place (tests/engine/test_config.py checks it)
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from lstm_stream import protocol as P

from .units import ADDRESS, DIR, DURATION, ENDPOINT, MICROSECONDS, NAME, PATH, PORT, SIZE, count, option

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


# ---- the options -------------------------------------------------------------------------------------
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a model's name (in requests, state dirs, metrics)


@dataclass(frozen=True)
class ServeConfig:
    """What the daemon serves, where it listens, where it snapshots."""

    # Several models in one daemon: engine/multimodel.py; each named model keeps its state in
    # <snapshot-dir>/models/NAME/, an unnamed one (the only one) in <snapshot-dir> itself.
    model: tuple = option((), "model `.npz` written by `LSTMModel.save`; `NAME=PATH` names it, and repeated "
                          "(`--model pump=pump.npz --model fan=fan.npz`) serves several, each request naming "
                          "its model (see [Several models](#several-models))", unit=PATH, repeat=True,
                          shown="the shipped default model")
    model_dir: str | None = option(None, "serve every `NAME.npz` of this directory as model NAME (with any "
                                   "`--model`)", unit=DIR, shown="none")
    default_model: str | None = option(None, "the model of requests that name none, with several models",
                                       unit=NAME, shown="the only model; with several, none: a request must "
                                       "name its model")
    # A weights update (the `reload` op) continues every stream; a start whose state directory reached other
    # weights than --model's must not switch silently (docs/operations.md, "Updating a model's weights").
    model_update: str = option("refuse", "with `--snapshot-dir`: when the state reached other weights than "
                               "`--model`'s (a weights update, then a new file): `refuse` to start (exit 2), or "
                               "`keep` every stream's state and continue it under the file's weights (logged as a "
                               "weights update; the sizes must match)", choices=("refuse", "keep"))
    bind: tuple = option((DEFAULT_ENDPOINT,), "`tcp://HOST:PORT` or `ipc:///path`; repeat to listen on several; "
                         "`tcp://127.0.0.1:*` picks a free port (logged)", unit=ENDPOINT, repeat=True)
    snapshot_dir: str | None = option(None, "where the snapshot file lives; created if missing, restored at start",
                                      unit=DIR, shown="none")
    # A crash loses the steps applied since the last snapshot; this period bounds that loss.
    snapshot_every: float | None = option(None, "timed snapshots (skipped when nothing changed); needs "
                                          "`--snapshot-dir`", unit=DURATION, shown="none")
    # A forked snapshot's copy-on-write splits the state's huge pages: merged back, the next fork stays short.
    huge_pages: str = option("merge", "after each snapshot a forked child wrote: `merge` the state's huge pages "
                             "back, so that the next fork() pauses the loop ~1 ms per GB of state rather than "
                             "~20-30 (Linux 6.1+; see [Snapshots](#snapshots)), or `leave` them to the kernel",
                             choices=("merge", "leave"))
    # The step log makes a crash lose nothing acknowledged (docs/operations.md, "The step log").
    step_log: str = option("on", "with `--snapshot-dir`: log every state change before it is applied and replay "
                           "the log after the snapshot at start, so that a crash loses nothing acknowledged",
                           choices=("on", "off"))
    # Redis's appendfsync: `everysec` is its default too (a machine crash loses about a second).
    fsync: str = option("everysec", "when the step log reaches the disk: `always` (a reply leaves once its "
                        "record is fsynced; group commit), `everysec` (fsync once a second), `no` (the kernel "
                        "decides); see [The step log](#the-step-log)", choices=("always", "everysec", "no"))
    # Segments are deleted whole once a snapshot holds them: the size bounds the disk a log takes beyond it.
    log_segment: int = option(64 * 2**20, "a step log segment is closed and a new one started past this size "
                              "(and at every snapshot)", unit=SIZE)
    log_level: str = option("info", "log lines below this level are not written", choices=("debug", "info",
                                                                                            "warning", "error"))
    # JSON for log collectors (journald, Loki, Elasticsearch): one object per line with the fields operators filter
    # on (engine/logs.py); text stays the default for a person reading a terminal.
    log_format: str = option("text", "`text` (one line per event) or `json` (one object per line: `ts`, `level`, "
                             "`logger`, `event`, `message` and the event's fields; see [Logs](#logs))",
                             choices=("text", "json"))
    # CURVE (encryption and client keys): see docs/operations.md, "Keys and roles". Off by default: plain TCP
    # on loopback, as before; serve warns when it binds a non-loopback tcp address without it.
    curve_secret: str | None = option(None, "the daemon's `NAME.key_secret` (from `lstm-stream keygen`): every "
                                      "connection is encrypted with CURVE and only allow-listed client keys may "
                                      "connect (see [Keys and roles](#keys-and-roles))", unit=PATH, shown="none "
                                      "(plain, unauthenticated)")
    allow_keys: str | None = option(None, "with `--curve-secret`: directory of the public key files (`NAME.key`) "
                                    "of clients that may step (role `step`); re-read on SIGHUP", unit=DIR,
                                    shown="none")
    admin_keys: str | None = option(None, "with `--curve-secret`: directory of the public key files of clients "
                                    "that may do every op (role `admin`); re-read on SIGHUP", unit=DIR,
                                    shown="none")
    namespaces: str = option("off", "with `--curve-secret`: `on` gives each step key its own stream ids (kept "
                             "apart internally by the key's id; `streams` lists its own)", choices=("on", "off"))
    # The Prometheus endpoint (docs/operations.md, "Metrics"): off by default, and on loopback unless told
    # otherwise: the metrics name no stream, but they show the load, the errors and the model's fingerprint.
    metrics_port: int | None = option(None, "serve Prometheus metrics at `http://ADDRESS:PORT/metrics` (needs "
                                      "`pip install 'lstm-stream[metrics]'`; 0: any free port, logged; see "
                                      "[Metrics](#metrics))", unit=PORT, shown="off")
    metrics_bind: str = option("127.0.0.1", "the address the metrics endpoint listens on (`0.0.0.0`: every "
                               "interface; anyone who can reach it reads the metrics)", unit=ADDRESS)

    def __post_init__(self):
        if isinstance(self.model, str):  # ServeConfig(model="pump.npz"), as before models repeated
            object.__setattr__(self, "model", (self.model,))
        elif self.model is None:
            object.__setattr__(self, "model", ())
        self.models  # noqa: B018 (checks the names)
        if self.snapshot_every is not None and self.snapshot_dir is None:
            raise ValueError("--snapshot-every needs --snapshot-dir")
        if self.curve_secret is None:
            for name in ("allow_keys", "admin_keys"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')} needs --curve-secret (client keys are checked "
                                     "only on CURVE connections)")
            if self.namespaces == "on":
                raise ValueError("--namespaces on needs --curve-secret (a namespace is a client key's)")
        elif self.allow_keys is None and self.admin_keys is None:
            raise ValueError("--curve-secret needs --allow-keys DIR or --admin-keys DIR (or both): with neither, "
                             "no client could connect")
        port = self.metrics_port
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            raise ValueError(f"--metrics-port must be a TCP port from 1 to 65535 (0: any free port), got {port!r}")
        if not isinstance(self.metrics_bind, str) or not self.metrics_bind:
            raise ValueError(f"--metrics-bind must be a host address, e.g. 127.0.0.1, got {self.metrics_bind!r}")

    @property
    def models(self) -> list:
        """[(name or None, path)] of --model (NAME=PATH or PATH) and --model-dir; [(None, None)]: the shipped
        default model. ValueError for a bad or repeated name, or an unnamed model beside others."""
        import os
        out = []
        for text in self.model:
            name, sep, path = text.partition("=")
            if not sep or not MODEL_NAME.fullmatch(name):  # a path (which may hold a '=')
                name, path = None, text
            out.append((name, path))
        if self.model_dir is not None:
            try:
                files = sorted(f for f in os.listdir(self.model_dir) if f.endswith(".npz"))
            except OSError as e:
                raise ValueError(f"--model-dir {self.model_dir}: cannot list it ({e.strerror})") from None
            for f in files:
                if not MODEL_NAME.fullmatch(f[:-4]):
                    raise ValueError(f"--model-dir: {f}: a model's name (the file name before .npz) must be 1 to 64 "
                                     "letters, digits, '_', '-' or '.', starting with a letter or digit")
                out.append((f[:-4], os.path.join(self.model_dir, f)))
            if not files and not out:
                raise ValueError(f"--model-dir {self.model_dir} holds no model (NAME.npz)")
        if len(out) > 1:
            unnamed = [p for n, p in out if n is None]
            if unnamed:
                raise ValueError(f"--model {unnamed[0]}: with several models each needs a name: --model NAME=PATH")
            names = [n for n, _ in out]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"model name {twice[0]!r} is given twice; each model needs its own name")
        names = [n for n, _ in out]
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"--default-model {self.default_model!r} is not a model served here; the models: "
                             f"{', '.join(n or '(unnamed)' for n in names) or '(the shipped default)'}")
        return out or [(None, None)]

    @property
    def logging_steps(self) -> bool:
        """Whether the daemon writes a step log (it needs a state directory)."""
        return self.snapshot_dir is not None and self.step_log == "on"


@dataclass(frozen=True)
class StreamsConfig:
    """The Streams the daemon serves: Streams(model, **asdict(config)); Streams checks the values."""

    backend: str = option("cpu", "`cuda` fails at start without a usable GPU; `auto` takes CUDA if usable "
                          "(logged), else the CPU", choices=("cpu", "cuda", "auto"))
    threads: int | None = option(None, "threads that step a turn with enough work at once (see "
                                 "[Threads](#threads)); outputs do not depend on it", unit=count("threads"),
                                 shown="the machine's CPUs")
    max_streams: int | None = option(None, "streams in memory beyond N are refused with `store_full` (new ones, "
                                     "and evicted ones coming back; evicted streams do not count)",
                                     unit=count("streams"), shown="no limit")
    idle_ttl: float | None = option(None, "streams not stepped for this long leave memory (looked for every "
                                    "second): evicted to disk with `--snapshot-dir`, dropped without (see "
                                    "`--idle-action`)", unit=DURATION, shown="never")
    # Evicting keeps every stream (on disk, back on its next request) at a disk write per eviction batch and a
    # lookup per request for an id not in memory; dropping frees the memory and forgets the stream.
    idle_action: str | None = option(None, "what `--idle-ttl` does to an idle stream: `evict` moves its state to "
                                     "`<snapshot-dir>/cold.sqlite3`, back exactly on its next request (see "
                                     "[Idle streams on disk](#idle-streams-on-disk)); `drop` forgets it",
                                     choices=("evict", "drop"), shown="`evict` with `--snapshot-dir`, else `drop`")


@dataclass(frozen=True)
class EngineConfig:
    """The serving loop: batching, backpressure, timing (every tunable with its default and why)."""

    # Requests served per loop turn. Bounds one turn's latency; large enough that a turn can batch thousands
    # of streams into one kernel call.
    max_batch: int = option(4096, "requests served per loop turn (one kernel call)", unit=count("requests"))
    # Samples (stream-steps) after which a turn stops taking step requests; the rest wait for the next turn.
    # Replies go out when their turn ends, so under load a cap lets the first replies leave (and their
    # clients send again) while the daemon steps the rest: a kernel call of ~1,000 stream-steps is already
    # as efficient per step as a larger one. 100 streams per message, 16 in flight, 2 cores: 725-904k samples/s
    # uncapped, 891-986k with turns of 800.
    max_turn_samples: int = option(1024, "a turn takes no more step requests once it holds N samples "
                                   "(stream-steps); the rest wait for the next turn, so under load the first "
                                   "replies leave sooner", unit=count("samples"))
    # Requests read but not yet served. The server reads no more from its socket while this many are queued,
    # so ZeroMQ's high-water marks push back on the senders (their sends wait) instead of the daemon reading
    # requests only to refuse them: refusing costs as much as serving (decode, encode, send) and under 10x
    # overload left ~6% of the peak served (docs/benchmarks.md, "Overload and bounded requests").
    max_pending: int = option(16384, "queued requests; while this many wait, the daemon reads no more from its "
                              "socket (ZeroMQ's high-water marks push back on the senders; see "
                              "[Backpressure](#backpressure-a-client-faster-than-the-daemon))",
                              unit=count("requests"))
    # The wire bytes of the queued requests: with the decode bound (docs/protocol.md, "Memory of a request":
    # at most 4x a message's size + 64 KiB), what bounds the queue's memory when messages are large: 64 MiB of
    # queued messages is at most ~256 MiB decoded (16,384 messages of 16 MiB would be 1 TiB by count alone).
    max_pending_bytes: int = option(64 * 2**20, "wire bytes of queued requests; while this much waits, the "
                                    "daemon reads no more from its socket (like `--max-pending`)", unit=SIZE)
    # A quota per client connection: off by default (round robin over the connections already keeps one
    # flooding client from starving the others). Set, a client with this many requests queued gets `busy` for
    # the next ones (not applied) instead of taking more of the queue.
    max_peer_pending: int | None = option(None, "requests one client connection may have queued; beyond it its "
                                          "requests get `busy` (not applied)", unit=count("requests"),
                                          shown="no quota")
    # One request's size, so that no request holds the loop: a step_many creating 419k new streams took 8.25 s
    # (~20 µs per new stream: a ping waited 8.0 s behind it); 1,024 new streams take ~20 ms, 16,384 samples of
    # known streams ~10-20 ms (I=8, H=64, 2 cores). Larger requests get `too_large`, nothing applied: split them.
    max_request_samples: int = option(16384, "samples (stream-steps) one `step`/`step_many` may carry, and the "
                                      "largest `forecast` horizon; `too_large` above", unit=count("samples"))
    max_request_new_streams: int = option(1024, "new streams one `step_many` may create; `too_large` above",
                                          unit=count("streams"))
    # Frames the server reads per turn at most (while fewer than max_pending requests are queued).
    read_per_turn: int = option(8192, "frames the server reads per turn", unit=count("frames"), flag=None,
                                derive=lambda values: 2 * values["max_batch"])
    # Largest accepted request; larger ones get `too_large`. ZeroMQ drops connections sending 4x this.
    max_message_bytes: int = option(P.MAX_MESSAGE_BYTES, "largest request accepted (`too_large` above; "
                                    "ZeroMQ drops a connection that sends 4× this)", unit=SIZE)
    # ZeroMQ high-water mark, messages per peer and direction: the socket-level bound behind max_pending.
    hwm: int = option(10_000, "ZeroMQ high-water mark per connection and direction (0: no limit)",
                      unit=count("messages"))
    # How often idle streams are looked for when idle_ttl is set (eviction costs O(streams)).
    evict_every: float = option(1.0, "how often idle streams are looked for", unit=DURATION, flag=None)
    # How often one metrics line is logged (only when there was traffic).
    metrics_every: float = option(60.0, "period of the metrics log line (written only when there was traffic)",
                                  unit=DURATION)
    # After a turn that served requests, keep polling without sleeping this long. A process woken from
    # sleep runs its next request on cold caches: one request in flight measured p50 126 µs without this
    # and 60 µs with 200 µs of spinning (2-core VM). It costs CPU only while requests keep coming; 0 = off.
    spin: float = option(200e-6, "after a turn that served requests, keep polling this long without sleeping: "
                         "lower latency for some CPU; 0 = off (see [Latency and --spin-us](#latency-and---spin-us))",
                         unit=MICROSECONDS, flag="--spin-us")

    def __post_init__(self):
        for name in ("max_batch", "max_turn_samples", "max_pending", "read_per_turn", "max_message_bytes",
                     "max_request_samples", "max_request_new_streams", "max_pending_bytes"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= 1, got {v!r}")
        if self.max_peer_pending is not None and (type(self.max_peer_pending) is not int
                                                  or self.max_peer_pending < 1):
            raise ValueError(f"max_peer_pending (--max-peer-pending) must be an integer >= 1, got "
                             f"{self.max_peer_pending!r}")
        if type(self.hwm) is not int or self.hwm < 0:
            raise ValueError(f"hwm (--hwm) must be an integer >= 0 (0: no limit), got {self.hwm!r}")
        for name in ("evict_every", "metrics_every", "spin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {v!r}")


SERVE_CONFIGS = (ServeConfig, StreamsConfig, EngineConfig)  # the options of `serve`, in this order


# ---- generated: command-line options, configs from them, the docs table ------------------------------
def options(cls) -> list:
    """The fields of config class `cls` that are command-line options."""
    return [f for f in fields(cls) if f.metadata["flag"] is not None]


def flag(f) -> str:
    """The command-line option of field `f`: --field-name unless the field names another."""
    name = f.metadata["flag"]
    return name if isinstance(name, str) else "--" + f.name.replace("_", "-")


def default_text(f) -> str:
    """Field `f`'s default as text (markdown): the unit's rendering, or the words given for it."""
    m = f.metadata
    if m["shown"] is not None:
        return m["shown"]
    values = f.default if m["repeat"] else (f.default,)
    text = ", ".join(f"`{m['unit'].show(v)}`" for v in values)
    return f"{text} {m['unit'].word}".rstrip()


def plain(markdown: str) -> str:
    """Help text for a terminal: markdown code spans as plain text, links to docs/operations.md's sections
    as their titles."""
    return re.sub(r"\[([^]]*)\]\(#[^)]*\)", r"\1 in docs/operations.md", markdown).replace("`", "")


def add_arguments(parser, configs=SERVE_CONFIGS) -> None:
    """Add one command-line option per option field of each config class, in a group per class."""
    for cls in configs:
        group = parser.add_argument_group(cls.__name__, cls.__doc__.splitlines()[0])
        for f in options(cls):
            m = f.metadata
            help_text = f"{plain(m['help'])} (default: {plain(default_text(f))})".replace("%", "%%")
            group.add_argument(flag(f), dest=f.name, type=m["unit"].parse, choices=m["choices"],
                               metavar=None if m["choices"] else m["unit"].metavar, help=help_text,
                               action="append" if m["repeat"] else "store",
                               default=None if m["repeat"] else f.default)  # append would extend a default


def from_args(cls, args):
    """The config `cls` from arguments parsed by add_arguments; raises ValueError for a bad value."""
    values = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    for f in options(cls):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = tuple(v) if f.metadata["repeat"] else v
    for f in fields(cls):
        if f.metadata["derive"] is not None:
            values[f.name] = f.metadata["derive"](values)
    return cls(**values)


def markdown_table(configs=SERVE_CONFIGS) -> str:
    """The option table of docs/operations.md."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for cls in configs:
        for f in options(cls):
            m = f.metadata
            value = "{" + ",".join(m["choices"]) + "}" if m["choices"] else m["unit"].metavar
            rows.append(f"| `{flag(f)} {value}` | {default_text(f)} | {m['help']} |")
    return "\n".join(rows) + "\n"


DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
_TABLE = re.compile(r"(<!-- options: [^\n]* -->\n)(.*?)(<!-- /options -->)", re.DOTALL)


def with_table(doc: str) -> str:
    """`doc` (docs/operations.md's text) with the generated option table between its markers."""
    if not _TABLE.search(doc):
        raise ValueError("no '<!-- options: ... -->' ... '<!-- /options -->' markers in the document")
    return _TABLE.sub(lambda m: m.group(1) + markdown_table() + m.group(3), doc, count=1)


def main(argv=None) -> int:
    """`python -m engine.config --markdown | --write-docs`."""
    p = argparse.ArgumentParser(prog="python -m engine.config", description="The option table of `serve`.")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the table and the example configuration "
                   f"file in {DOCS} (default: print the table)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown (the default)")
    args = p.parse_args(argv)
    if args.write_docs:  # the option table, and the example configuration file made from the same fields
        from .configfile import with_example
        DOCS.write_text(with_example(with_table(DOCS.read_text(encoding="utf-8"))), encoding="utf-8")
    else:
        sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
