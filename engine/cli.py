"""The `lstm-stream` command: `serve` runs the daemon; `ping`, `info` and `step` talk to one from a shell.

    lstm-stream serve --model pump.npz --bind tcp://127.0.0.1:5555 --snapshot-dir ./state --snapshot-every 30s
    lstm-stream ping --connect tcp://127.0.0.1:5555
    lstm-stream info
    lstm-stream step pump-7 0.1,0.2,0.3          # one sample; --json '[[...], [...]]' for several
    lstm-stream demo                             # the default model on live replayed sensor streams

Subcommands are the COMMANDS table (name -> (help, add_arguments, run)); adding one is one entry. Only `serve`
imports the engine (and numba); the client subcommands need pyzmq, msgpack and numpy only.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
_SIZES = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20}

log = logging.getLogger("lstm_stream.engine")


def parse_duration(text: str) -> float:
    """'250ms', '30s', '5m', '1h', '2d' or plain seconds ('1.5') -> seconds (> 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration; expected e.g. 250ms, 30s, 5m, 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """'65536', '64KiB', '16MiB' -> bytes (> 0)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SIZES or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size; expected e.g. 65536, 64KiB, 16MiB")
    return int(m.group(1)) * _SIZES[m.group(2)]


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


def parse_connect(text: str) -> str:
    """A --connect address: as parse_endpoint, without the wildcards (*) only a bind can take."""
    text = parse_endpoint(text)
    if text.startswith("tcp://") and "*" in text:
        raise argparse.ArgumentTypeError(f"{text!r} has a wildcard (*), which only --bind takes; expected the "
                                         "daemon's tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    return text


def load_serving_model(path):
    """The model to serve: the .npz at `path`, or the shipped default model when path is None."""
    from lstm_stream.model import load_model
    if path is not None:
        return load_model(path)
    try:
        from lstm_stream.defaults import load_default_model
    except ImportError:
        raise SystemExit("--model is required: this installation has no default model") from None
    return load_default_model()


# ---- serve -------------------------------------------------------------------------------------------
def add_serve_arguments(p):
    from .core import EngineConfig
    d = EngineConfig()
    p.add_argument("--model", help="model .npz written by LSTMModel.save (default: the shipped default model)")
    p.add_argument("--bind", action="append", type=parse_endpoint,
                   help=f"endpoint to listen on, tcp:// or ipc://; repeatable (default {DEFAULT_ENDPOINT})")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "auto"), help="kernel backend")
    p.add_argument("--threads", type=int, help="CPU kernel threads (default: all cores numba may use)")
    p.add_argument("--max-streams", type=int, help="refuse new streams beyond this many (default: no limit)")
    p.add_argument("--idle-ttl", type=parse_duration, help="drop streams idle for this long, e.g. 1h")
    p.add_argument("--snapshot-dir", help="directory of the snapshot file; restored at start if present")
    p.add_argument("--snapshot-every", type=parse_duration, help="timed snapshot period, e.g. 30s (needs "
                                                                 "--snapshot-dir; skipped when nothing changed)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="requests served per loop turn")
    p.add_argument("--max-turn-samples", type=int, default=d.max_turn_samples,
                   help="a turn takes no more step requests once it has this many samples (stream-steps)")
    p.add_argument("--max-pending", type=int, default=d.max_pending,
                   help="queued requests beyond which new ones get a 'busy' error")
    p.add_argument("--max-message-bytes", type=parse_size, default=d.max_message_bytes,
                   help="largest request accepted, e.g. 16MiB")
    p.add_argument("--hwm", type=int, default=d.hwm, help="ZeroMQ high-water mark per peer (messages)")
    p.add_argument("--spin-us", type=float, default=d.spin * 1e6,
                   help="after serving, poll this many µs without sleeping: lower latency, some CPU (0 = off)")
    p.add_argument("--metrics-every", type=parse_duration, default=d.metrics_every,
                   help="period of the metrics log line")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run_serve(args) -> int:
    """Load the model, restore the snapshot, bind, serve until SIGTERM/SIGINT, snapshot, exit."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lstm_stream.errors import LSTMStreamError, SnapshotError
    if args.snapshot_every is not None and args.snapshot_dir is None:
        log.error("--snapshot-every needs --snapshot-dir")
        return EXIT_USAGE
    try:
        config = _engine_config(args)
    except ValueError as e:
        log.error("bad option: %s", e)
        return EXIT_USAGE
    try:
        streams, snapshots = _open_state(args)
    except SnapshotError as e:
        log.error("refusing to start: %s. The snapshot file was left untouched; start with the model that "
                  "wrote it, or move the file away to start empty.", e)
        return EXIT_USAGE
    except (LSTMStreamError, OSError) as e:
        log.error("cannot start: %s", e)
        return EXIT_USAGE
    return _serve(args, streams, snapshots, config)


def _engine_config(args):
    from .core import EngineConfig
    return EngineConfig(max_batch=args.max_batch, max_turn_samples=args.max_turn_samples,
                        max_pending=args.max_pending, read_per_turn=2 * args.max_batch,
                        max_message_bytes=args.max_message_bytes, hwm=args.hwm, metrics_every=args.metrics_every,
                        spin=max(args.spin_us, 0.0) * 1e-6)


def _open_state(args):
    import lstm_stream as ls
    from .persistence import Snapshots, prepare_dir
    if args.snapshot_dir is not None:  # first: a directory it cannot write fails at once, not after compiling
        prepare_dir(args.snapshot_dir)  # OSError naming it: run_serve refuses to start (exit 2)
    model = load_serving_model(args.model)
    t0 = time.perf_counter()
    warm_up(model, args.backend, args.threads)
    streams = ls.Streams(model, backend=args.backend, max_streams=args.max_streams, idle_ttl=args.idle_ttl,
                         threads=args.threads)
    log.info("model %r fingerprint %s: %d inputs -> %d outputs, hidden %d x %d layers, %s, backend %s "
             "(kernels ready in %.2f s)", model.name, model.fingerprint, model.input_size, model.output_size,
             model.hidden_size, model.num_layers, model.dtype, streams.backend, time.perf_counter() - t0)
    snapshots = None
    if args.snapshot_dir is not None:
        snapshots = Snapshots(streams, args.snapshot_dir, every=args.snapshot_every)
        snapshots.restore()
    return streams, snapshots


def warm_up(model, backend, threads):
    """Compile (or load from the cache) every kernel the daemon uses before serving, logging each stage
    (lstm_stream/warm.py: on a cold cache, in parallel processes). The CUDA kernels by stepping a scratch store."""
    import numpy as np

    import lstm_stream as ls
    from lstm_stream import warm
    warm.warm_up(model.dtype, model.autoregressive, progress=lambda message: log.info("kernels: %s", message),
                 defer=True)  # cold: the one-stream kernel is left to a child process (warm.deferred)
    if backend != "cpu":
        scratch = ls.Streams(model, backend=backend, threads=threads)
        if scratch.backend != "cpu":
            x = np.zeros((2, model.input_size), model.dtype)
            scratch.step(0, x[0])
            scratch.step(0, x)
            scratch.step_batch(list(range(64)), [x[:1]] * 64)
            if model.autoregressive:
                scratch.forecast(0, 1)


# Python's cyclic garbage collector, for the serving loop. Every request allocates a few dicts and lists that
# die by reference counting (the hot path makes no cycles), yet each 700 allocations trigger a collection that
# scans every young object, the queued requests among them, and now and then everything the imports left.
# Measured in-process at 256 one-sample requests per turn: 8.5 µs per request with the defaults, 6.0 with
# collection off, 6.0 with the settings below. Cycles (an exception's traceback, say) are still collected.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc():
    """Freeze what start-up allocated (modules, model, compiled kernels: never garbage) out of the collector's
    sight, and collect the young generation every GC_THRESHOLDS[0] allocations instead of 700."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _serve(args, streams, snapshots, config) -> int:
    import zmq

    from .core import EngineCore
    from .server import Server
    from lstm_stream import warm
    background = None if warm.finish_background() else warm.finish_background
    core = EngineCore(streams, config, snapshots=snapshots, background=background)
    try:
        server = Server(core, args.bind or [DEFAULT_ENDPOINT])
    except zmq.ZMQError as e:
        log.error("cannot bind %s: %s", args.bind or [DEFAULT_ENDPOINT], e)
        return EXIT_USAGE

    def on_signal(signum, frame):
        log.info("received %s: finishing queued requests, then snapshot and exit", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving %d streams (max_batch %d, max_pending %d)", len(streams), config.max_batch,
             config.max_pending)
    tune_gc()
    server.run()
    warm.cancel_background()
    status = EXIT_OK
    if snapshots is not None:
        try:
            snapshots.save("shutdown")
        except Exception:
            log.exception("shutdown snapshot to %s failed", snapshots.path)
            status = EXIT_FAILED
    log.info("stopped (%d requests served)", core.metrics["requests"])
    return status


# ---- client subcommands ----------------------------------------------------------------------------
def add_client_arguments(p):
    p.add_argument("--connect", default=DEFAULT_ENDPOINT, type=parse_connect,
                   help=f"daemon address, tcp:// or ipc:// (default {DEFAULT_ENDPOINT})")
    p.add_argument("--timeout", type=parse_duration, default=5.0, help="seconds to wait for a reply")


# argparse reads an argument that starts with "-" as an option unless it looks like a negative number, and
# only -1 and -.5 do: `step ID -0.1,0.2` or `-1e-3,2` were "unrecognized arguments". `step` has no option that
# starts with a digit, so there "-" then a digit (or "-." then a digit) is a value. _negative_number_matcher is
# argparse's own (private) per-parser pattern; test_step_takes_negative_values checks it still does this.
_NEGATIVE_VALUE = re.compile(r"-\.?\d")


def add_step_arguments(p):
    p._negative_number_matcher = _NEGATIVE_VALUE
    add_client_arguments(p)
    p.add_argument("stream", help="stream id (a str; see --int-id)")
    p.add_argument("values", nargs="?", help="one sample as comma-separated numbers, e.g. 0.1,0.2,0.3")
    p.add_argument("--json", help="samples as JSON: [..] for one, [[..], [..]] for several")
    p.add_argument("--int-id", action="store_true", help="send the stream id as an int")


def _client(args):
    from clients import Client
    return Client(args.connect, timeout=args.timeout)


def run_ping(args) -> int:
    with _client(args) as c:
        t0 = time.perf_counter()
        c.ping()
        print(f"pong from {args.connect} in {1e3 * (time.perf_counter() - t0):.2f} ms")
    return EXIT_OK


def run_info(args) -> int:
    with _client(args) as c:
        print(json.dumps(c.info(), indent=2, default=str))
    return EXIT_OK


def run_step(args) -> int:
    if (args.values is None) == (args.json is None):
        print("give the sample either as VALUES (comma-separated) or with --json", file=sys.stderr)
        return EXIT_USAGE
    from clients import InputError
    try:
        x = _read_sample(args)
        stream = _read_stream(args)
    except ValueError as e:
        print(f"cannot read the input: {e}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as c:
        try:
            y = c.step(stream, x)
        except InputError as e:  # e.g. --json '[0.1, "a"]': refused before sending
            print(f"cannot read the input: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(y.tolist()))
    return EXIT_OK


def _read_stream(args):
    """The stream id of `step`: the str, or with --int-id the int; ValueError if it is not one."""
    if not args.int_id:
        return args.stream
    try:
        return int(args.stream)
    except ValueError:
        raise ValueError(f"stream {args.stream!r} is not an int; --int-id expects an integer id, e.g. 7") from None


def _read_sample(args):
    """The sample(s) of `step`, from VALUES or --json; ValueError saying what was wrong and what was expected."""
    if args.json is not None:
        try:
            return json.loads(args.json)
        except ValueError as e:
            raise ValueError(f"--json {args.json!r} is not valid JSON ({e}); expected e.g. [0.1, -0.2] for one "
                             "sample or [[0.1, -0.2], [0.3, 0.4]] for several") from None
    try:
        return [float(v) for v in args.values.split(",")]
    except ValueError:
        raise ValueError(f"VALUES {args.values!r} is not comma-separated numbers; expected e.g. 0.1,-0.2,3e-3"
                         ) from None


def add_demo_arguments(p):
    """The demo's options (engine/demo.py)."""
    from .demo import add_demo_arguments as add
    add(p)


def run_demo(args) -> int:
    """Run `lstm-stream demo` (engine/demo.py)."""
    from .demo import run_demo as run
    return run(args)


def add_warm_arguments(p):
    p.add_argument("--model", help="compile for this model's dtype (default: the shipped default model)")
    p.add_argument("--dtype", nargs="+", choices=("float32", "float64"), help="compile for these dtypes instead")
    p.add_argument("--autoregressive", action="store_true", help="with --dtype: also forecast (O == I models)")


def run_warm(args) -> int:
    """Compile every kernel serving uses into the cache now (lstm_stream/warm.py), e.g. when building an image
    or in a systemd ExecStartPre, so that the first `serve` starts warm."""
    from lstm_stream import jitcache, warm
    if args.dtype:
        jobs = [(d, args.autoregressive) for d in args.dtype]
    else:
        try:
            model = load_serving_model(args.model)
        except Exception as e:  # a file that is not a model: ModelError, worded for the user
            print(f"cannot load the model: {e}", file=sys.stderr)
            return EXIT_USAGE
        jobs = [(model.dtype, model.autoregressive)]
    for dtype, ar in jobs:
        r = warm.warm_up(dtype, ar, progress=lambda m: print(m, flush=True))
        print(f"{dtype}{' (autoregressive)' if ar else ''}: {'compiled' if r['cold'] else 'already compiled'} "
              f"in {r['total']:.1f} s", flush=True)
    print(f"cache: {jitcache.cache_dir()}")
    return EXIT_OK


COMMANDS = {
    "serve": ("run the daemon", add_serve_arguments, run_serve),
    "warm": ("compile the kernels into the cache now, so that the first start is warm (for images and "
             "systemd units)", add_warm_arguments, run_warm),
    "demo": ("replay held-out smartwatch recordings as live streams through a daemon; show predictions, "
             "latency, and streaming vs offline accuracy", add_demo_arguments, run_demo),
    "ping": ("check that a daemon answers", add_client_arguments, run_ping),
    "info": ("print a daemon's model, backend and counts as JSON", add_client_arguments, run_info),
    "step": ("step one stream by one or more samples, print the output as JSON", add_step_arguments, run_step),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand in COMMANDS."""
    parser = argparse.ArgumentParser(prog="lstm-stream", description="Streaming LSTM inference daemon and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    """Entry point of the `lstm-stream` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as e:
        from clients.errors import ClientError
        if isinstance(e, ClientError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
