"""`lstm-stream cluster`: start shards on Ray, show them, stop them (docs/cluster.md).

    lstm-stream cluster up --shards 3 --model pump.npz --storage /mnt/cluster            # a local Ray, foreground
    lstm-stream cluster up --shards 3 --model pump.npz --storage /mnt/cluster --address ray://head:10001
    lstm-stream cluster status --storage /mnt/cluster        # or --connect ENDPOINT of any shard (no Ray needed)
    lstm-stream cluster down --address ray://head:10001

Each shard takes the options of `serve` (engine/config.py) but those the cluster sets per shard (--model is
the cluster's, its directory comes from --storage, its endpoint from --host and a free port).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from .. import config
from .shard import RESERVED

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# serve's options that a shard does not take: namespaced ids (the owner would have to be computed from the
# client's id inside moves too) and several models (a cluster serves one; see docs/cluster.md, Not done yet)
ONE_DAEMON_ONLY = frozenset({"namespaces", "model_dir", "default_model"})
STATUS_TIMEOUT = 2.0  # seconds a shard has to answer `status`
ADDRESS_HELP = ("the Ray cluster the shards run on (`up` prints its address; a local Ray uses token auth: set "
                "RAY_AUTH_MODE=token)")
log = logging.getLogger("lstm_stream.engine")


def add_arguments(p):
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start the map keeper and N shards (or find them running)",
                        description="Start the map keeper and N shards on Ray. Without --address: a local Ray, "
                                    "in the foreground until SIGTERM/SIGINT (then every shard snapshots and "
                                    "stops). With --address: an existing Ray cluster; the actors are detached "
                                    "and stay when this command returns.")
    up.add_argument("--shards", type=int, help="number of shards, named s0 .. sN-1 (a --storage that holds a "
                    "cluster already keeps its shards)")
    up.add_argument("--storage", required=True, help="directory every node reaches at the same path: each "
                    "shard's snapshots and step log, and the shard map")
    up.add_argument("--address", help="an existing Ray cluster (e.g. auto, or ray://HEAD:10001); default: start "
                    "a local Ray")
    up.add_argument("--host", help="address the shards bind on (default: 127.0.0.1 on a local Ray, else each "
                    "node's IP address as Ray knows it)")
    up.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: the machine's)")
    group = up.add_argument_group("shard options", "as for `serve` (see docs/operations.md); each shard gets them")
    for cls in config.SERVE_CONFIGS:
        for f in config.options(cls):
            if (f.name in RESERVED and f.name != "model") or f.name in ONE_DAEMON_ONLY:
                continue
            m = f.metadata
            if f.name == "model":  # one file, every shard's: a cluster serves one model
                group.add_argument("--model", metavar="PATH", help="the model .npz every shard serves (at the "
                                   "same path on every node; a cluster serves one model: run one cluster per "
                                   "model); default: the shipped model")
                continue
            group.add_argument(config.flag(f), dest=f.name, type=m["unit"].parse, choices=m["choices"],
                               metavar=None if m["choices"] else m["unit"].metavar, default=None,
                               help=config.plain(m["help"]).replace("%", "%%"))
    status = sub.add_parser("status", help="the shard map and each shard's endpoint, streams and map version")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--storage", help="read the shard map saved in this cluster's storage")
    where.add_argument("--connect", help="the endpoint of any shard (its info holds the map)")
    where.add_argument("--address", help="ask the map keeper on this Ray cluster")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--server-key", metavar="FILE", help="the cluster's public key file (NAME.key): connect "
                        "with CURVE (needs --client-key)")
    status.add_argument("--client-key", metavar="FILE", help="this client's NAME.key_secret")
    down = sub.add_parser("down", help="stop every shard (each snapshots) and remove the actors")
    down.add_argument("--address", required=True, help=ADDRESS_HELP)
    for action, text in (("add-shard", "add shard NAME: the streams whose owner becomes NAME move to it, live"),
                         ("remove-shard", "remove shard NAME: its streams move to their new owners, live; then "
                          "it stops (its directory is kept, renamed)")):
        a = sub.add_parser(action, help=text, description=text + " (docs/cluster.md, Rescaling).")
        a.add_argument("name", help="the shard's name (1-64 of letters, digits, '.', '_', '-')")
        a.add_argument("--address", required=True, help=ADDRESS_HELP)
        a.add_argument("--storage", required=True, help="the cluster's --storage")
    a = sub.add_parser("reload-keys", help="every shard re-reads its CURVE client key directories (as SIGHUP "
                       "does for serve)")
    a.add_argument("--address", required=True, help=ADDRESS_HELP)
    a = sub.add_parser("abort-move", help="give up a rescale that stopped before its map was published")
    a.add_argument("--address", required=True, help=ADDRESS_HELP)
    a.add_argument("--storage", required=True, help="the cluster's --storage")


def _shard_options(args) -> dict:
    return {f.name: getattr(args, f.name) for cls in config.SERVE_CONFIGS for f in config.options(cls)
            if f.name not in RESERVED and getattr(args, f.name, None) is not None}


def run(args) -> int:
    return {"up": run_up, "status": run_status, "down": run_down, "add-shard": run_rescale,
            "remove-shard": run_rescale, "abort-move": run_rescale, "reload-keys": run_down}[args.action](args)


def _ray():
    try:
        import ray
    except ImportError:
        print("the cluster needs Ray: pip install 'lstm-stream[ray]'", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return ray


def run_up(args) -> int:
    ray = _ray()
    from lstm_stream.errors import InputError

    from . import control
    from .actors import NAMESPACE
    level = args.log_level or "info"
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .storage import SharedPath
    try:
        SharedPath(args.storage).shard_names(args.shards)  # before starting Ray: a wrong --shards fails at once
        name, sep, _ = (args.model or "").partition("=")
        if sep and config.MODEL_NAME.fullmatch(name):
            raise InputError(f"--model {args.model}: a cluster serves one model, unnamed; give --model PATH (run "
                             "one cluster per model)")
    except (InputError, ValueError) as e:
        print(f"cannot start the cluster: {e}", file=sys.stderr)
        return EXIT_USAGE
    local = args.address is None
    init = dict(include_dashboard=False, namespace=NAMESPACE)
    ray.init(**init, num_cpus=args.num_cpus) if local else ray.init(address=args.address, **init)
    try:
        try:
            m = control.up(args.shards, storage=args.storage, model=args.model,
                           host=args.host or ("127.0.0.1" if local else None), options=_shard_options(args),
                           log_level=level)
        except (InputError, ValueError) as e:
            print(f"cannot start the cluster: {e}", file=sys.stderr)
            return EXIT_USAGE
        except ray.exceptions.RayError as e:  # a shard's constructor failed: a model file it cannot read, ...
            print(f"cannot start the cluster: a shard failed to start: {_cause(e)}", file=sys.stderr)
            return EXIT_FAILED
        print(json.dumps(m.as_map(), indent=1), flush=True)
        address = ray.get_runtime_context().gcs_address
        print(f"cluster up: {len(m.names)} shards, map version {m.version}; connect with "
              f"ClusterClient({m.endpoints[m.names[0]]!r}); Ray address {address} (for add-shard, remove-shard, "
              "status --address; with RAY_AUTH_MODE=token in their environment: a local Ray uses token auth)",
              file=sys.stderr, flush=True)
        if not local:
            return EXIT_OK
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        log.info("stopping: every shard snapshots, then the local Ray shuts down")
        control.down()
        return EXIT_OK
    finally:
        if local:
            ray.shutdown()


def _cause(e) -> str:
    """The last line of a Ray error's text: the shard's own exception (Ray prefixes its traceback)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(e)


def run_rescale(args) -> int:
    """add-shard, remove-shard, abort-move on the cluster at --address; prints the resulting map."""
    ray = _ray()
    from lstm_stream.errors import InputError

    from . import control
    from .actors import NAMESPACE
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init(address=args.address, namespace=NAMESPACE, include_dashboard=False)
    try:
        if args.action == "add-shard":
            m = control.add_shard(args.name, storage=args.storage)
        elif args.action == "remove-shard":
            m = control.remove_shard(args.name, storage=args.storage)
        else:
            m = control.abort_move(storage=args.storage)
    except (InputError, ValueError) as e:
        print(f"{args.action}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ray.exceptions.RayError as e:
        print(f"{args.action} failed (a rescale that failed before publishing was aborted): {_cause(e)}",
              file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(m.as_map(), indent=1))
    return EXIT_OK


def run_down(args) -> int:
    """`down`, or `reload-keys`: one call to every shard of the cluster at --address."""
    ray = _ray()
    from . import control
    from .actors import NAMESPACE
    ray.init(address=args.address, namespace=NAMESPACE, include_dashboard=False)
    try:
        control.down() if args.action == "down" else control.reload_keys()
    except ValueError as e:  # no keeper: nothing runs
        print(f"no cluster on {args.address}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _find_map(args):
    """The shard map's wire form from --storage, --connect or --address; SystemExit with a message if none."""
    if args.address is not None:
        _ray().init(address=args.address, include_dashboard=False)
        from . import control
        return control.shard_map().as_map()
    if args.storage is not None:
        from .storage import SharedPath
        m = SharedPath(args.storage).read_map()
        if m is None:
            print(f"no shard map in {args.storage} (no cluster was started with this --storage)", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        return m
    from clients import Client, ClientError
    try:
        with Client(args.connect, timeout=STATUS_TIMEOUT, retries=0, server_key=args.server_key,
                    client_keys=args.client_key) as c:
            m = c.info().get("cluster")
    except ClientError as e:
        print(f"cannot reach {args.connect}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    if m is None:
        print(f"{args.connect} is a daemon, not a shard of a cluster (its info has no cluster map)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return m


def run_status(args) -> int:
    """Each shard of the map, asked directly (no Ray): endpoint, streams, its map version, requests served."""
    from clients import Client, ClientError
    keys = dict(server_key=args.server_key, client_keys=args.client_key)
    m = _find_map(args)
    rows = []
    for s in m["shards"]:
        row = {"name": s["name"], "endpoint": s["endpoint"], "up": False}
        if s["endpoint"]:
            try:
                with Client(s["endpoint"], timeout=STATUS_TIMEOUT, retries=0, **keys) as c:
                    info = c.info()
                row.update(up=True, streams=info["streams"], map_version=(info.get("cluster") or {}).get("version"),
                           requests=info["counters"].get("requests", 0),
                           log_lsn=(info.get("log") or {}).get("lsn"))
            except ClientError as e:
                row["error"] = str(e)
        rows.append(row)
    if args.json:
        print(json.dumps({"map": m, "shards": rows}, indent=1))
        return EXIT_OK if all(r["up"] for r in rows) else EXIT_FAILED
    up = [r for r in rows if r["up"]]
    print(f"shard map version {m['version']} ({m['hash']}): {len(rows)} shards, {len(up)} answering, "
          f"{sum(r['streams'] for r in up)} streams")
    print(f"{'shard':<10} {'endpoint':<28} {'streams':>9} {'map':>5} {'requests':>10}")
    for r in rows:
        if r["up"]:
            print(f"{r['name']:<10} {r['endpoint']:<28} {r['streams']:>9} {r['map_version']:>5} {r['requests']:>10}")
        else:
            print(f"{r['name']:<10} {r['endpoint'] or '(not started)':<28} not answering: {r.get('error', '')}")
    return EXIT_OK if len(up) == len(rows) else EXIT_FAILED
