"""The client subcommands of `lstm-stream` (ping, info, step) and keygen: they need pyzmq, msgpack and numpy
only, never the engine or numba. engine/cli.py's COMMANDS table names them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from .config import DEFAULT_ENDPOINT
from .units import parse_duration, parse_endpoint

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_connect(text: str) -> str:
    """A --connect address: as parse_endpoint, without the wildcards (*) only a bind can take."""
    text = parse_endpoint(text)
    if text.startswith("tcp://") and "*" in text:
        raise argparse.ArgumentTypeError(f"{text!r} has a wildcard (*), which only --bind takes; expected the "
                                         "daemon's tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    return text


# ---- keygen ------------------------------------------------------------------------------------------
def add_keygen_arguments(p):
    p.add_argument("directory", help="where to write the key files (created 0700 if missing)")
    p.add_argument("name", help="the key's name: files NAME.key (public) and NAME.key_secret (secret)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files of that name")


def run_keygen(args) -> int:
    """Write a CURVE key pair with zmq.auth.create_certificates: DIR/NAME.key (the public key, mode 0644:
    copy it to the daemon's --allow-keys or --admin-keys directory, or to clients as the server key) and
    DIR/NAME.key_secret (both halves, mode 0600: it stays with its owner). Written under umask 077, so the
    secret is never readable by others, not even for an instant."""
    import os

    import zmq
    import zmq.auth
    if not zmq.has("curve"):
        print("this libzmq was built without CURVE support", file=sys.stderr)
        return EXIT_FAILED
    if not args.name or "/" in args.name or args.name.startswith("."):
        print(f"bad key name {args.name!r}: a plain file name, e.g. pump-gateway", file=sys.stderr)
        return EXIT_USAGE
    public, secret = (os.path.join(args.directory, args.name + ext) for ext in (".key", ".key_secret"))
    existing = [f for f in (public, secret) if os.path.exists(f)]
    if existing and not args.force:
        print(f"{', '.join(existing)} already exist(s); --force overwrites (the old key stops working)",
              file=sys.stderr)
        return EXIT_USAGE
    old = os.umask(0o077)
    try:
        os.makedirs(args.directory, mode=0o700, exist_ok=True)
        for f in existing:
            os.unlink(f)
        public, secret = zmq.auth.create_certificates(args.directory, args.name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    key = zmq.auth.load_certificate(public)[0].decode("ascii")
    print(f"public key {key}\n  {public} (0644): give it to the daemon (--allow-keys/--admin-keys DIR) or, for "
          f"a daemon's key, to its clients\n  {secret} (0600): keep it secret; the daemon's --curve-secret or a "
          "client's --client-key")
    return EXIT_OK


# ---- client subcommands ----------------------------------------------------------------------------
def add_client_arguments(p):
    p.add_argument("--connect", default=DEFAULT_ENDPOINT, type=parse_connect,
                   help=f"daemon address, tcp:// or ipc:// (default {DEFAULT_ENDPOINT})")
    p.add_argument("--timeout", type=parse_duration, default=5.0, help="seconds to wait for a reply")
    p.add_argument("--server-key", metavar="FILE", help="the daemon's public key file (NAME.key) or z85 key: "
                   "connect with CURVE (needs --client-key)")
    p.add_argument("--client-key", metavar="FILE", help="this client's NAME.key_secret (from `lstm-stream keygen`)")
    p.add_argument("--model", metavar="NAME", help="the model to use, in a daemon serving several (default: its "
                   "default model)")


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
    try:
        return Client(args.connect, timeout=args.timeout, server_key=args.server_key, client_keys=args.client_key,
                      model=args.model)
    except ValueError as e:  # a key file that cannot be read, one key without the other
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


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


def add_reload_arguments(p):
    add_client_arguments(p)
    p.add_argument("path", nargs="?", help="model .npz on the daemon's machine (default: its --model file)")
    p.add_argument("--reset", action="store_true", help="drop every stream (needed when the sizes differ)")


def run_reload(args) -> int:
    """`lstm-stream reload [PATH] [--reset]`: the daemon serves new weights (docs/operations.md)."""
    with _client(args) as c:
        print(json.dumps(c.reload(args.path, reset=args.reset), indent=2, default=str))
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
