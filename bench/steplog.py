"""What the step log costs, and how fast a start replays it (docs/benchmarks.md, "The step log").

    python -m bench.steplog                 # ~3 minutes: 4 daemons x 3 figures x rounds, then recovery
    python -m bench.steplog --quick         # a smoke run

Four daemons serve the same random model (I=8, H=64, O=8) side by side: the step log off (`--step-log off`),
and on with `--fsync no`, `everysec`, `always`, each with its state directory on this machine's disk. Every
round measures each daemon one after the other (the order rotating), so the host's drift falls on all four:

    many   samples/s of step_many messages of 100 streams (10,000 streams, 16 messages in flight)
    one    samples/s of one-sample step messages (1,024 streams, 256 in flight)
    p50    one request in flight: the median round trip of a one-sample step

Printed: each figure's median over rounds and each log policy's per-round ratio to `off` (median and range).
Then recovery: a daemon with `--fsync no` is loaded for --replay-seconds, killed with SIGKILL, and started
again; its log line says how many steps it replayed and how fast, which is set against the live rate of the
same load (steps/s while it was being written).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import LoadGen, step_pool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"off": ["--step-log", "off"], "no": ["--fsync", "no"], "everysec": ["--fsync", "everysec"],
           "always": ["--fsync", "always"]}
I, H = 8, 64


def _model(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from models import random_model
    path = tmp / "bench.npz"
    random_model(np.random.default_rng(0), I=I, H=H, L=1, O=I).save(path)
    return path


def _free_endpoint() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def _daemon(model: Path, state: Path, extra: list, threads: int, log_path: Path):
    endpoint = _free_endpoint()
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", str(model), "--bind", endpoint,
           "--snapshot-dir", str(state), "--threads", str(threads), "--log-level", "info", *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield endpoint, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _ratios(values: dict) -> str:
    base = values["off"]
    out = []
    for name in ("no", "everysec", "always"):
        r = [v / b for v, b in zip(values[name], base)]
        out.append(f"{name} {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")
    return ", ".join(out)


def side_by_side(args, model, tmp) -> dict:
    ctx = zmq.Context.instance()
    many = step_pool(10_000, I, per_message=100, seed=1)
    one = step_pool(1024, I, seed=2)
    figures = {k: {name: [] for name in CONFIGS} for k in ("many", "one", "p50")}
    with contextlib.ExitStack() as stack:
        gens = {}
        for name, extra in CONFIGS.items():
            endpoint, proc = stack.enter_context(_daemon(model, tmp / name, extra, args.threads,
                                                         tmp / f"{name}.log"))
            gen = LoadGen(endpoint, ctx)
            stack.callback(gen.close)
            gen.wait_ready(180, proc)
            gens[name] = gen
        for name, gen in gens.items():  # create the streams and warm every path once
            gen.throughput(many, 16, 0.5)
            gen.throughput(one, 256, 0.3)
        names = list(CONFIGS)
        for r in range(args.rounds):
            order = names[r % 4:] + names[:r % 4]
            for name in order:
                gen = gens[name]
                figures["many"][name].append(100 * gen.throughput(many, 16, args.seconds))
                figures["one"][name].append(gen.throughput(one, 256, args.seconds))
                figures["p50"][name].append(statistics.median(gen.latency(one, args.lat_count)))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    return figures


def durable_lag(args, model, tmp) -> dict:
    """`everysec` under load: how far the durable position trails the written one (what a machine crash at
    the worst moment would lose), sampled every 20 ms through `info` while a LoadGen steps 100 streams per
    message. Returns the largest gap in records, in seconds of writing, and in steps."""
    import threading

    from clients import Client
    ctx = zmq.Context.instance()
    many = step_pool(10_000, I, per_message=100, seed=4)
    with _daemon(model, tmp / "lag", ["--fsync", "everysec"], args.threads, tmp / "lag.log") as (endpoint, proc):
        gen = LoadGen(endpoint, ctx)
        gen.wait_ready(180, proc)
        rate = []
        t = threading.Thread(target=lambda: rate.append(100 * gen.throughput(many, 16, args.lag_seconds)))
        samples = []
        with Client(endpoint, timeout=10) as c:
            first = c.info()["log"]["lsn"]
            t0 = time.perf_counter()
            t.start()
            while t.is_alive():
                log = c.info()["log"]
                samples.append((time.perf_counter(), log["lsn"], log["durable"]))
                time.sleep(0.02)
            t.join()
            last = c.info()["log"]["lsn"]
        gen.close()
    seconds = time.perf_counter() - t0
    records_per_s = (last - first) / seconds
    gap = max(lsn - durable for _, lsn, durable in samples)
    steps_per_record = rate[0] * seconds / max(last - first, 1)
    return {"gap_records": gap, "gap_seconds": gap / records_per_s, "gap_steps": gap * steps_per_record,
            "rate": rate[0], "samples": len(samples)}


def recovery(args, model, tmp, seconds) -> dict:
    """Load a daemon (--fsync no) for `seconds`, kill it, start it again: steps replayed and how fast."""
    ctx = zmq.Context.instance()
    state, log_path = tmp / f"recovery-{seconds}", tmp / f"recovery-{seconds}.log"
    many = step_pool(10_000, I, per_message=100, seed=3)
    with _daemon(model, state, ["--fsync", "no"], args.threads, log_path) as (endpoint, proc):
        gen = LoadGen(endpoint, ctx)
        gen.wait_ready(180, proc)
        live = 100 * gen.throughput(many, 16, seconds)
        gen.close()
        proc.kill()
        proc.wait(10)
    size = sum(f.stat().st_size for f in (state / "log").iterdir())
    t0 = time.perf_counter()
    with _daemon(model, state, ["--fsync", "no"], args.threads, log_path) as (endpoint, proc):
        gen = LoadGen(endpoint, ctx)
        gen.wait_ready(600, proc)
        start = time.perf_counter() - t0
        gen.close()
    m = re.findall(r"replayed (\d+) step log records \((\d+) steps\) after the snapshot in ([0-9.]+) s",
                   log_path.read_text())
    if not m:
        raise SystemExit(f"the restarted daemon did not log a replay:\n{log_path.read_text()[-3000:]}")
    records, steps, seconds = int(m[-1][0]), int(m[-1][1]), float(m[-1][2])
    return {"live": live, "records": records, "steps": steps, "seconds": seconds, "rate": steps / seconds,
            "log_bytes": size, "start": start}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (1 round, short windows)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0, help="each throughput window")
    ap.add_argument("--lat-count", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="each daemon's kernel threads")
    ap.add_argument("--replay-seconds", type=float, nargs="+", default=[3.0, 10.0, 30.0],
                    help="load written before each kill (one recovery per value)")
    ap.add_argument("--lag-seconds", type=float, default=10.0, help="load while everysec's lag is sampled")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.lat_count, args.replay_seconds, args.lag_seconds = 1, 0.3, 50, [1.0], 1.5
    with tempfile.TemporaryDirectory(prefix="bench-steplog-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        model = _model(tmp)
        f = side_by_side(args, model, tmp)
        print(f"\nstep log cost, {args.rounds} rounds, medians (I={I}, H={H}, threads {args.threads})")
        for key, label, unit in (("many", "100 streams/message", "samples/s"), ("one", "1 sample/message",
                                                                                 "samples/s")):
            med = {n: statistics.median(v) for n, v in f[key].items()}
            print(f"  {label}: " + ", ".join(f"{n} {med[n]:,.0f}" for n in CONFIGS) + f" {unit}")
            print(f"    ratio to off: {_ratios(f[key])}")
        med = {n: statistics.median(v) * 1e6 for n, v in f["p50"].items()}
        print("  1 in flight, p50: " + ", ".join(f"{n} {med[n]:.0f}" for n in CONFIGS) + " us")
        inv = {n: [1 / v for v in vals] for n, vals in f["p50"].items()}
        print(f"    speed ratio to off (1/p50): {_ratios(inv)}")
        lag = durable_lag(args, model, tmp)
        print(f"\neverysec under load ({lag['rate']:,.0f} steps/s): the durable position trailed the written one by "
              f"at most {lag['gap_records']} records = {lag['gap_seconds']:.2f} s of writing = "
              f"{lag['gap_steps']:,.0f} steps ({lag['samples']} samples): a machine crash at the worst moment "
              f"loses that much")
        print("\nrecovery (kill -9, then start): log written at the live rate for each duration")
        for seconds in args.replay_seconds:
            r = recovery(args, model, tmp, seconds)
            print(f"  {seconds:g} s: {r['steps']:,} steps in {r['records']:,} records ({r['log_bytes'] / 2**20:.1f} "
                  f"MiB) replayed in {r['seconds']:.2f} s = {r['rate']:,.0f} steps/s; live {r['live']:,.0f} "
                  f"steps/s: replay {r['rate'] / r['live']:.2f}x live; start to first reply {r['start']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
