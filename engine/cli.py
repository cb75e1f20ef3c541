"""The `lstm-stream` command: `serve` runs the daemon; `ping`, `info` and `step` talk to one from a shell.

    lstm-stream serve --model pump.npz --bind tcp://127.0.0.1:5555 --snapshot-dir ./state --snapshot-every 30s
    lstm-stream ping --connect tcp://127.0.0.1:5555
    lstm-stream info
    lstm-stream step pump-7 0.1,0.2,0.3          # one sample; --json '[[...], [...]]' for several
    lstm-stream reload [PATH] [--reset]          # serve new weights, every stream kept (docs/operations.md)
    lstm-stream demo                             # the default model on live replayed sensor streams
    lstm-stream keygen keys/ server              # keys/server.key (public, 0644), keys/server.key_secret (0600)
    lstm-stream bridge mqtt --broker mqtt://127.0.0.1:1883 --subscribe 'sensors/+/imu' --publish 'predictions/{stream}'
    lstm-stream cluster up --shards 3 --storage DIR   # shards on Ray (engine/cluster/, docs/cluster.md)

Subcommands are the COMMANDS table (name -> (help, add_arguments, run)); adding one is one entry. Only `serve`
imports the engine (and numba); the client subcommands need pyzmq, msgpack and numpy only.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .config import DEFAULT_ENDPOINT  # noqa: F401 (API)
from .units import parse_duration, parse_endpoint, parse_size  # noqa: F401 (API)
from .client_cli import (add_client_arguments, add_keygen_arguments, add_reload_arguments,  # noqa: F401
                         add_step_arguments, parse_connect, run_info, run_keygen, run_ping, run_reload, run_step)
from .convert_cli import add_convert_arguments, add_inspect_arguments, run_convert, run_inspect

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOG_FATAL = 0, 1, 2, 3

log = logging.getLogger("lstm_stream.engine")


# ---- serve -------------------------------------------------------------------------------------------
def add_serve_arguments(p):
    """The options of `serve`: one per field of engine/config.py's SERVE_CONFIGS; --config and --print-config."""
    from . import config, configfile
    config.add_arguments(p)
    configfile.add_arguments(p)
    p.epilog = ("DURATION: 250ms, 30s, 5m, 1h, 2d or plain seconds. SIZE: 65536, 64KiB, 16MiB. "
                "All options, the configuration file, and what they cost: docs/operations.md.")


def run_serve(args) -> int:
    """Read the options (flags over --config's file), load the model, restore the snapshot, bind, tell systemd,
    serve until SIGTERM/SIGINT, snapshot, exit."""
    from lstm_stream.errors import LSTMStreamError, SnapshotError

    from . import logs, sdnotify
    from .configfile import dumps, resolve
    from .startup import open_models
    try:
        configs = resolve(args)
    except ValueError as e:
        logs.setup(args.log_level or "info", args.log_format or "text")  # the command line's, if any
        return _refuse("bad option: %s", e)
    serve, streams_config, engine_config = configs
    if args.print_config:
        sys.stdout.write(dumps(configs))
        return EXIT_OK
    logs.setup(serve.log_level, serve.log_format)
    sdnotify.status("starting")
    try:
        models = open_models(serve, streams_config)
    except SnapshotError as e:
        return _refuse("refusing to start: %s. The snapshot file was left untouched; start with the model that "
                       "wrote it, or move the file away to start empty.", e)
    except (LSTMStreamError, OSError) as e:
        return _refuse("cannot start: %s", e)
    return _serve(serve, models, engine_config)


def _refuse(message, *args) -> int:
    """Log why the daemon does not start (and tell systemd); EXIT_USAGE."""
    from . import sdnotify
    log.error(message, *args, extra={"event": "start_failed"})
    sdnotify.status("failed to start: " + message % args)
    return EXIT_USAGE


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


def _serve(serve, models, config) -> int:
    """Serve the opened models [(name, streams, snapshots, journal)]: one EngineCore each, behind a ModelRouter
    when they are named (several models, or one given as NAME=PATH)."""
    import zmq

    from . import logs, sdnotify
    from .access import open_keys
    from .core import EngineCore
    from .server import Server
    from lstm_stream import warm
    background = None if warm.finish_background() else warm.finish_background
    try:
        access, curve = open_keys(serve)
    except (OSError, ValueError) as e:
        return _refuse("cannot start: %s", e)
    paths = {name: path for (_, path), (name, *_) in zip(serve.models, models)}
    cores = {name: EngineCore(streams, config, snapshots=snapshots, journal=journal, background=background,
                              access=access, name=name, model_path=paths[name])
             for name, streams, snapshots, journal in models}
    if any(name is not None for name, _ in serve.models):
        from .multimodel import ModelRouter
        core = ModelRouter(cores, serve.default_model)
    else:
        core = next(iter(cores.values()))
    exporter = None
    if serve.metrics_port is not None:  # prometheus_client is imported there, only then (the `metrics` extra)
        from .metrics import MetricsError, start_metrics
        try:
            exporter = start_metrics(core, serve.metrics_bind, serve.metrics_port)
        except MetricsError as e:
            return _refuse("cannot start: %s", e)
    try:
        server = Server(core, serve.bind, curve=curve)
    except zmq.ZMQError as e:
        return _refuse("cannot bind %s: %s", list(serve.bind), e)
    if exporter is not None:
        exporter.watch(server)
    if curve is None:
        for endpoint in server.endpoints:
            if not is_loopback(endpoint):
                log.warning("listening on %s, which is not a loopback address, without CURVE: anyone who can "
                            "reach it may read and change every stream; see docs/operations.md, \"Keys and "
                            "roles\" (--curve-secret, --allow-keys)", endpoint,
                            extra={"event": "insecure_bind", "endpoint": endpoint})
    notify = sdnotify.notifier()
    def describe():  # systemd's STATUS= while serving
        return f"serving {n_streams()} streams; {core.requests()} requests served"

    def n_streams():
        return sum(len(c.streams) for c in cores.values())

    from . import modelwatch
    reloader = sdnotify.Reloader(notify, access, describe,
                                 models=(lambda: modelwatch.reload_files(core)) if modelwatch.has_files(core) else None)
    if serve.model_dir is not None:  # its files are watched: a changed one is reloaded (engine/modelwatch.py)
        core.add_ticker(modelwatch.ModelWatcher({path: (name, cores[name]) for name, path in serve.models
                                                 if path is not None and os.path.normpath(os.path.dirname(path))
                                                 == os.path.normpath(serve.model_dir)}))
    for tick in [logs.RepeatFlusher(), reloader] + ([sdnotify.Ticker(notify, describe)] if notify.enabled else []):
        core.add_ticker(tick)

    def on_signal(signum, frame):
        log.info("received %s: finishing queued requests, then snapshot and exit", signal.Signals(signum).name,
                 extra={"event": "signal", "signal": signal.Signals(signum).name})
        notify.stopping("stopping: finishing queued requests, then the shutdown snapshot")
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: reloader.ask())  # only flags: the loop reloads
    log.info("serving %d streams (max_batch %d, max_pending %d)", n_streams(), config.max_batch,
             config.max_pending, extra={"event": "serving", "streams": n_streams(), "endpoints": server.endpoints,
                                        "max_batch": config.max_batch, "max_pending": config.max_pending})
    tune_gc()
    notify.ready(describe())  # bound, kernels warm, snapshot restored, step log replayed
    server.run()
    notify.stopping("stopping: the shutdown snapshot")
    warm.cancel_background()
    status = EXIT_LOG_FATAL if server.fatal else EXIT_OK
    for _, _, snapshots, journal in models:
        if snapshots is not None and not server.fatal:  # fatal: the step log is not durable (journal.py says why)
            try:
                snapshots.save("shutdown")
            except Exception:
                log.exception("shutdown snapshot to %s failed", snapshots.path,
                              extra={"event": "snapshot_failed", "reason": "shutdown", "path": snapshots.path})
                status = EXIT_FAILED
        if journal is not None and not server.fatal:
            journal.close()
    logs.flush_repeats(float("inf"))
    log.info("stopped (%d requests served)", core.requests(),
             extra={"event": "stopped", "requests": core.requests(), "exit_status": status})
    return status


def is_loopback(endpoint: str) -> bool:
    """Whether a bound endpoint is reachable from this host only: ipc://, or tcp:// on a loopback address."""
    import ipaddress
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name or an interface: assume reachable from elsewhere
        return False


def add_demo_arguments(p):
    """The demo's options (engine/demo.py)."""
    from .demo import add_demo_arguments as add
    add(p)


def run_demo(args) -> int:
    """Run `lstm-stream demo` (engine/demo.py)."""
    from .demo import run_demo as run
    return run(args)


def add_cluster_arguments(p):  # engine/cluster/cli.py, imported only for `cluster` (Ray only when it runs)
    from .cluster.cli import add_arguments
    add_arguments(p)


def run_cluster(args) -> int:
    from .cluster.cli import run
    return run(args)


def add_warm_arguments(p):
    p.add_argument("--model", help="compile for this model's dtype (default: the shipped default model)")
    p.add_argument("--dtype", nargs="+", choices=("float32", "float64"), help="compile for these dtypes instead")
    p.add_argument("--autoregressive", action="store_true", help="with --dtype: also forecast (O == I models)")


def run_warm(args) -> int:
    """Compile every kernel serving uses into the cache now (lstm_stream/warm.py), e.g. when building an image
    or in a systemd ExecStartPre, so that the first `serve` starts warm."""
    from lstm_stream import jitcache, warm

    from .startup import load_serving_model
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


def add_bridge_arguments(p):
    """`bridge mqtt` (clients/mqtt/): its options and the daemon's, like the other client subcommands."""
    from clients.mqtt.options import add_bridge_parsers
    add_bridge_parsers(p, add_client_arguments)


def run_bridge(args) -> int:
    """Run `lstm-stream bridge mqtt` (clients/mqtt/run.py)."""
    from clients.mqtt.run import run_bridge as run
    return run(args)


COMMANDS = {
    "serve": ("run the daemon", add_serve_arguments, run_serve),
    "warm": ("compile the kernels into the cache now, so that the first start is warm (for images and "
             "systemd units)", add_warm_arguments, run_warm),
    "demo": ("replay held-out smartwatch recordings as live streams through a daemon; show predictions, "
             "latency, and streaming vs offline accuracy", add_demo_arguments, run_demo),
    "cluster": ("shards on Ray: `up` starts N shards (a local Ray, or --address), `status` shows them, `down` "
                "stops them (docs/cluster.md)", add_cluster_arguments, run_cluster),
    "keygen": ("write a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600)",
               add_keygen_arguments, run_keygen),
    "convert": ("write an lstm-stream model (.npz) from an ONNX, Keras, arrays or PyTorch state_dict file",
                add_convert_arguments, run_convert),
    "inspect": ("print a model file's sizes, layers, head, dtype and fingerprint", add_inspect_arguments,
                run_inspect),
    "ping": ("check that a daemon answers", add_client_arguments, run_ping),
    "info": ("print a daemon's model, backend and counts as JSON", add_client_arguments, run_info),
    "step": ("step one stream by one or more samples, print the output as JSON", add_step_arguments, run_step),
    "reload": ("make a daemon serve new weights (its --model file again, or PATH), keeping every stream's state",
               add_reload_arguments, run_reload),
    "bridge": ("bridge a message broker to the daemon: `bridge mqtt` steps streams from MQTT topics and "
               "publishes the predictions", add_bridge_arguments, run_bridge),
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
