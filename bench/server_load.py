"""Daemon load through the Python client library: one stream's round-trip latency, and samples/s of many
streams from several client processes.

    python -m bench.server_load                          # starts its own daemon on a free loopback port
    python -m bench.server_load --connect tcp://127.0.0.1:5555 --streams 1000 --procs 4 --seconds 10

Latency: a sync Client steps one stream one sample at a time, `--lat-count` times; p50/p99 of the round trip.
Throughput: `--procs` processes, each owning streams/procs streams, step each of its streams once per round,
for `--seconds`, in two modes: "step" (one request per stream, all of a round in flight at once on one
AsyncClient: cellular batching across requests) and "step_many" (one message per round per process).
Figures are client-measured and include the client library's own cost. Prints one line per figure.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def daemon(args, ready_timeout=180.0):
    """A daemon subprocess serving a random 8 -> 8, hidden 64 model; yields its endpoint; always stopped."""
    sys.path.insert(0, str(ROOT / "tests"))
    from models import random_model
    from clients import Client, Timeout
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.npz"
        random_model(np.random.default_rng(0), I=args.inputs, H=args.hidden, L=1, O=args.inputs).save(model)
        endpoint = free_endpoint()
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", str(model), "--bind", endpoint,
               "--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else [])
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            deadline = time.monotonic() + ready_timeout
            with Client(endpoint, timeout=0.5, retries=0) as c:
                while True:
                    try:
                        c.ping()
                        break
                    except Timeout:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("the daemon did not start") from None
            yield endpoint
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def latency(endpoint, I, count) -> tuple:
    """(p50, p99, mean) seconds of one stream's step round trip through the sync Client."""
    from clients import Client
    x = np.random.default_rng(1).standard_normal(I).astype(np.float32)
    with Client(endpoint) as c:
        for _ in range(200):
            c.step("lat", x)
        times = np.empty(count)
        for k in range(count):
            t0 = time.perf_counter()
            c.step("lat", x)
            times[k] = time.perf_counter() - t0
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), float(times.mean())


def _load_worker(endpoint, ids, I, seconds, mode, start, out):
    from clients import AsyncClient
    X = np.random.default_rng(len(ids)).standard_normal((len(ids), I)).astype(np.float32)

    async def run():
        async with AsyncClient(endpoint, timeout=60) as c:
            async def one_round():
                if mode == "step":
                    await asyncio.gather(*(c.step(i, X[k]) for k, i in enumerate(ids)))
                else:
                    await c.step_many(dict(zip(ids, X)))
            await one_round()  # warm
            start.wait(60)
            rounds, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await one_round()
                rounds += 1
            return rounds, time.perf_counter() - t0

    out.put(asyncio.run(run()))


def throughput(endpoint, I, streams, procs, seconds, mode) -> float:
    """Samples per second over all processes (each steps its streams once per round)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    ids = [f"{mode}-{k}" for k in range(streams)]
    workers = [ctx.Process(target=_load_worker, args=(endpoint, ids[p::procs], I, seconds, mode, start, out))
               for p in range(procs)]
    for w in workers:
        w.start()
    try:
        results = [out.get(timeout=seconds + 120) for _ in workers]
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    return sum(r * len(ids[p::procs]) / dt for p, (r, dt) in enumerate(results))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", help="use a running daemon (its model needs --inputs inputs)")
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, help="daemon kernel threads")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--lat-count", type=int, default=5000)
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        endpoint = args.connect or stack.enter_context(daemon(args))
        print(f"daemon {endpoint}; model {args.inputs} -> {args.inputs}, hidden {args.hidden}; "
              f"{os.cpu_count()} CPUs on this machine (shared by daemon and clients)")
        p50, p99, mean = latency(endpoint, args.inputs, args.lat_count)
        print(f"latency, one stream, sync Client: p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, "
              f"mean {mean * 1e6:.0f} us ({args.lat_count} steps)")
        for mode in ("step", "step_many"):
            rate = throughput(endpoint, args.inputs, args.streams, args.procs, args.seconds, mode)
            print(f"throughput, {args.streams} streams from {args.procs} client processes, {mode}: "
                  f"{rate:,.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
