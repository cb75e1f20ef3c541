"""CURVE on against off: the same daemon build, same load, both running at once, timed in alternating rounds.

    python -m bench.curve                  # prints the table and the ratios
    python -m bench.curve --write-docs     # also its section of docs/benchmarks.md ("Encryption")

Two daemons (one `--curve-secret ... --admin-keys ...`, one plain) run as child processes on free loopback
ports, one thread each; the load generator (bench/loadgen.py, one DEALER per daemon) runs in this process.
Loads: one sample per message with 256 in flight (1,024 streams), 100 streams per message with 16 in flight
(10,000 streams), and the p50 of one request in flight (one sample).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import zmq
import zmq.auth

from . import common
from .loadgen import LoadGen, step_pool

ROUNDS = 5
BLOCK_S = 1.5
LATENCY_CALLS = 2000
READY_TIMEOUT_S = 180


def keys(tmp: Path):
    """Server and client key pairs; the client's public key in an admin allow-list directory."""
    server_pub, server_sec = zmq.auth.create_certificates(tmp, "server")
    (tmp / "clients").mkdir()
    client_pub, client_sec = zmq.auth.create_certificates(tmp / "clients", "bench")
    (tmp / "admin").mkdir()
    shutil.copy(client_pub, tmp / "admin")
    server = zmq.auth.load_certificate(server_pub)[0]
    public, secret = zmq.auth.load_certificate(client_sec)
    return server_sec, tmp / "admin", (server, public, secret)


def run(rounds: int = ROUNDS, block_s: float = BLOCK_S) -> dict:
    from lstm_stream.defaults import load_default_model
    model = load_default_model()
    I = model.input_size
    pools = {"one": step_pool(1024, I), "many": step_pool(10_000, I, per_message=100)}
    with tempfile.TemporaryDirectory(prefix="bench-curve-") as tmp:
        tmp = Path(tmp)
        server_secret, admin_dir, client_keys = keys(tmp)
        ports = {"off": common.free_port(), "on": common.free_port()}
        base = [common.python(), "-m", "engine.cli", "serve", "--threads", "1", "--log-level", "warning"]
        args = {"off": base + ["--bind", f"tcp://127.0.0.1:{ports['off']}"],
                "on": base + ["--bind", f"tcp://127.0.0.1:{ports['on']}", "--curve-secret", str(server_secret),
                              "--admin-keys", str(admin_dir)]}
        ctx = zmq.Context()
        with common.subprocess_server(args["off"], log_path=tmp / "off.log") as p_off, \
                common.subprocess_server(args["on"], log_path=tmp / "on.log") as p_on:
            gens = {"off": LoadGen(f"tcp://127.0.0.1:{ports['off']}", ctx),
                    "on": LoadGen(f"tcp://127.0.0.1:{ports['on']}", ctx, curve=client_keys)}
            try:
                gens["off"].wait_ready(READY_TIMEOUT_S, p_off)
                gens["on"].wait_ready(READY_TIMEOUT_S, p_on)
                res = {k: {"one": [], "many": [], "p50": []} for k in gens}
                for g in gens.values():  # warm-up: every stream exists before timing
                    g.throughput(pools["one"], 256, 0.5)
                    g.throughput(pools["many"], 16, 0.5)
                for r in range(rounds):
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for k in order:
                        g = gens[k]
                        res[k]["one"].append(g.throughput(pools["one"], 256, block_s))
                        res[k]["many"].append(100 * g.throughput(pools["many"], 16, block_s))
                        res[k]["p50"].append(statistics.median(g.latency(pools["one"], LATENCY_CALLS)))
                        time.sleep(0.05)
            finally:
                for g in gens.values():
                    g.close()
                ctx.term()
    return {k: {m: statistics.median(v) for m, v in r.items()} for k, r in res.items()} | {"model": model}


def report(r: dict) -> str:
    m = r["model"]
    rows = []
    for label, key, unit, scale in (("1 sample per message, 256 in flight", "one", "samples/s", 1),
                                    ("100 streams per message, 16 in flight", "many", "samples/s", 1),
                                    ("p50, one request in flight", "p50", "µs", 1e6)):
        off, on = r["off"][key] * scale, r["on"][key] * scale
        rows.append([label, f"{off:,.0f} {unit}", f"{on:,.0f} {unit}", f"{on / off:.2f}×"])
    lines = [f"Model: the shipped default ({m.input_size} inputs, hidden {m.hidden_size} × {m.num_layers}, "
             f"{m.dtype}); daemons with `--threads 1` on 127.0.0.1, both running, timed in {ROUNDS} alternating "
             f"rounds (medians); client and daemons share the machine.", "",
             common.table(["load", "plain", "CURVE", "CURVE / plain"], rows), "",
             *common.machine_lines()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.curve", description=__doc__.splitlines()[0])
    common.add_doc_options(ap)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args(argv)
    common.resolve_doc(args)
    common.exit_on_sigterm()
    text = report(run(args.rounds))
    common.publish("curve", text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
