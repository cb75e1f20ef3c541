"""The Prometheus endpoint on against off: the same daemon build, same load, both running, alternating rounds.

    python -m bench.metrics                  # prints the table and the per-round ratios
    python -m bench.metrics --write-docs     # also its section of docs/benchmarks.md ("Metrics")
    python -m bench.metrics --quick          # a smoke run

Two daemons serve the same random model (I=8, H=64, O=4, 1 layer, `--threads 1`, no state directory) on free
loopback ports: one plain, one with `--metrics-port`. A scraper process GETs the second one's /metrics every
--scrape-every seconds (Prometheus' default interval is 15 s; 1 s is the harsh case) for the whole run, so
the scrapes fall on the measured windows. The load generator (bench/loadgen.py, one DEALER per daemon) runs
in this process. Every round measures both, one after the other (the order alternating), so the host's drift
falls on both: 100 streams per message (10,000 streams, 16 in flight: the figure the goal is on), one sample
per message (1,024 streams, 256 in flight), and the p50 of one request in flight. Printed: each figure's
median over rounds and the per-round ratio on/off, median (min-max).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from . import common
from .loadgen import LoadGen, step_pool

ROUNDS, BLOCK_S, LATENCY_CALLS, READY_TIMEOUT_S = 8, 2.0, 1000, 180
I, H, O = 8, 64, 4
GOAL = 0.97  # on/off at 100 streams per message: at most 3% slower

# The scraper: GET the endpoint every `every` seconds until SIGTERM; then print scrapes, failures, the median
# scrape time (ms) and the size of the last body (bytes).
SCRAPER = """
import signal, statistics, sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
times, failures, size = [], 0, 0
def stop(*_):
    raise SystemExit
signal.signal(signal.SIGTERM, stop)
nxt = time.monotonic()
try:
    while True:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                size = len(r.read())
            times.append(time.perf_counter() - t0)
        except OSError:
            failures += 1
        nxt += every
        time.sleep(max(nxt - time.monotonic(), 0))
finally:
    print(len(times), failures, 1e3 * statistics.median(times) if times else 0.0, size, flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used, from /proc: what a load costs the daemon, which other
    processes on a shared host disturb far less than they disturb its throughput."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _model(tmp: Path) -> Path:
    sys.path.insert(0, str(common.ROOT / "tests"))
    from models import random_model
    path = tmp / "bench.npz"
    random_model(np.random.default_rng(0), I=I, H=H, L=1, O=O).save(path)
    return path


def run(rounds: int = ROUNDS, block_s: float = BLOCK_S, every: float = 1.0, lat_calls: int = LATENCY_CALLS) -> dict:
    pools = {"one": step_pool(1024, I, seed=2), "many": step_pool(10_000, I, per_message=100, seed=1)}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        tmp = Path(tmp)
        model = _model(tmp)
        ports = {"off": common.free_port(), "on": common.free_port()}
        metrics_port = common.free_port()
        base = [common.python(), "-m", "engine.cli", "serve", "--model", str(model), "--threads", "1",
                "--log-level", "warning"]
        args = {"off": base + ["--bind", f"tcp://127.0.0.1:{ports['off']}"],
                "on": base + ["--bind", f"tcp://127.0.0.1:{ports['on']}", "--metrics-port", str(metrics_port)]}
        ctx = zmq.Context()
        with common.subprocess_server(args["off"], log_path=tmp / "off.log") as p_off, \
                common.subprocess_server(args["on"], log_path=tmp / "on.log") as p_on:
            gens = {"off": LoadGen(f"tcp://127.0.0.1:{ports['off']}", ctx),
                    "on": LoadGen(f"tcp://127.0.0.1:{ports['on']}", ctx)}
            scraper = None
            try:
                for k, p in (("off", p_off), ("on", p_on)):
                    gens[k].wait_ready(READY_TIMEOUT_S, p)
                scraper = subprocess.Popen([common.python(), "-c", SCRAPER,
                                            f"http://127.0.0.1:{metrics_port}/metrics", str(every)],
                                           stdout=subprocess.PIPE, text=True, env=common.clean_env())
                res = {k: {"one": [], "many": [], "p50": [], "cpu_many": [], "cpu_one": []} for k in gens}
                pids = {"off": p_off.pid, "on": p_on.pid}
                for g in gens.values():  # warm-up: every stream exists before timing
                    g.throughput(pools["one"], 256, 0.5)
                    g.throughput(pools["many"], 16, 0.5)
                for r in range(rounds):
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for k in order:
                        g = gens[k]
                        for load, window, per in (("many", 16, 100), ("one", 256, 1)):
                            c0, t0 = cpu_seconds(pids[k]), time.perf_counter()
                            rate = per * g.throughput(pools[load], window, block_s)
                            cpu, wall = cpu_seconds(pids[k]) - c0, time.perf_counter() - t0
                            res[k][load].append(rate)
                            res[k]["cpu_" + load].append(1e6 * cpu / (rate * wall))  # µs of CPU per sample
                        res[k]["p50"].append(statistics.median(g.latency(pools["one"], lat_calls)))
                        time.sleep(0.05)
                    print(f"round {r + 1}/{rounds} done", flush=True)
            finally:
                if scraper is not None:
                    scraper.terminate()
                    out, _ = scraper.communicate(30)
                for g in gens.values():
                    g.close()
                ctx.term()
    scrapes, failures, scrape_ms, size = out.split()
    return {"res": res, "rounds": rounds, "block_s": block_s, "every": every, "scrapes": int(scrapes),
            "failures": int(failures), "scrape_ms": float(scrape_ms), "size": int(size)}


def in_process(rounds: int = 15, reps: int = 30) -> dict:
    """The same two loads without sockets or other processes, where this host's noise is smaller: an EngineCore
    behind its WireCore serves turns of encoded requests (16 messages of 100 streams, or 256 one-sample ones),
    with the loop's histograms off and on (stamped and observed as Server.run does), interleaved round by
    round; and the daemon-side cost of one scrape (the collectors and the text exposition) over that core.
    Returns {load: {off, on: [µs of CPU per request per round]}, "scrape_ms": median ms}."""
    sys.path.insert(0, str(common.ROOT / "tests"))
    import prometheus_client
    from models import random_model

    import lstm_stream as ls
    from engine.core import EngineCore
    from engine.loopstats import LoopStats
    from engine.metrics import EngineCollector
    from engine.wire import WireCore
    core = EngineCore(ls.Streams(random_model(np.random.default_rng(0), I=I, H=H, L=1, O=O), threads=1))
    wire, clock = WireCore(core), time.perf_counter
    pools = {"many": (step_pool(10_000, I, per_message=100, seed=1), 16), "one": (step_pool(1024, I, seed=2), 256)}

    def turns(pool, per_turn, stats):
        core.stats, k = stats, 0
        t0 = time.process_time()  # CPU time: what other processes on a shared host disturb least
        for _ in range(reps):
            if stats is not None:
                core.arrival = clock()
            for _ in range(per_turn):
                wire.submit((b"peer",), pool[k % len(pool)])
                k += 1
            while core.pending:
                t = clock() if stats is not None else 0.0
                wire.step()
                if stats is not None:
                    stats.turn(t, clock())
        return 1e6 * (time.process_time() - t0) / (reps * per_turn)

    out = {}
    for load, (pool, per_turn) in pools.items():
        turns(pool, per_turn, None)  # every stream exists, caches warm
        out[load] = {"off": [], "on": []}
        for r in range(rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                out[load][mode].append(turns(pool, per_turn, LoopStats() if mode == "on" else None))
    registry = prometheus_client.CollectorRegistry()  # as engine/metrics.py builds it
    for extra in (prometheus_client.ProcessCollector, prometheus_client.PlatformCollector,
                  prometheus_client.GCCollector):
        extra(registry=registry)
    registry.register(EngineCollector(core))
    core.stats = LoopStats()
    times = []
    for _ in range(200):
        t0 = clock()
        prometheus_client.generate_latest(registry)
        times.append(clock() - t0)
    out["scrape_ms"] = 1e3 * statistics.median(times)
    return out


def _ratio(on: list, off: list, invert: bool = False) -> tuple:
    """Per-round on/off (off/on for a time): median, min, max."""
    r = [(b / a) if invert else (a / b) for a, b in zip(on, off)]
    return statistics.median(r), min(r), max(r)


def report(r: dict) -> str:
    res, rows = r["res"], []
    ratios = {}
    for label, key, unit, scale in (("100 streams per message, 16 in flight", "many", "samples/s", 1),
                                    ("1 sample per message, 256 in flight", "one", "samples/s", 1),
                                    ("p50, one request in flight", "p50", "µs", 1e6),
                                    ("daemon CPU per sample, 100 streams per message", "cpu_many", "µs", 1),
                                    ("daemon CPU per sample, 1 sample per message", "cpu_one", "µs", 1)):
        off, on = (statistics.median(res[k][key]) * scale for k in ("off", "on"))
        med, lo, hi = ratios[key] = _ratio(res["on"][key], res["off"][key], invert=key == "p50" or
                                           key.startswith("cpu"))
        digits = 2 if key.startswith("cpu") else 0
        rows.append([label, f"{off:,.{digits}f} {unit}", f"{on:,.{digits}f} {unit}", f"{med:.3f} ({lo:.3f}-{hi:.3f})"])
    med, lo, hi = ratios["many"]
    lines = [f"Model: random, I={I} H={H} O={O}, 1 layer, float32; two daemons of the same build with `--threads 1` "
             f"on 127.0.0.1 (no state directory), both running, timed in {r['rounds']} alternating rounds of "
             f"{r['block_s']:g} s per load; the on daemon scraped every {r['every']:g} s throughout ({r['scrapes']} "
             f"scrapes, {r['failures']} failed, median {r['scrape_ms']:.1f} ms each, {r['size']:,} bytes). "
             "Client, scraper and daemons share the machine.", "",
             common.table(["load", "metrics off", "metrics on", "on / off per round: median (min-max)"], rows), "",
             "(For the p50 and the CPU per sample the ratio is off/on: a speed, like the others; below 1 is "
             "slower. CPU per sample: the daemon's user + system time from /proc over each window, divided by "
             "the samples it served then; it includes the spin after each turn (`--spin-us`) and the scrapes.)",
             "", common.goal_line(f"cost at 100 streams per message <= 3% (on/off >= {GOAL}), throughput",
                                  med >= GOAL, f"median {med:.3f}, range {lo:.3f}-{hi:.3f}")]
    cm, clo, chi = ratios["cpu_many"]
    lines += [common.goal_line(f"the same in daemon CPU per sample", cm >= GOAL,
                               f"median {cm:.3f}, range {clo:.3f}-{chi:.3f}"), ""]
    p = r.get("in_process")
    if p is not None:
        rows = []
        for label, key in (("16 messages of 100 streams per turn", "many"),
                           ("256 one-sample messages per turn", "one")):
            off, on = statistics.median(p[key]["off"]), statistics.median(p[key]["on"])
            m, a, b = _ratio(p[key]["off"], p[key]["on"])  # off/on time per request: a speed ratio
            rows.append([label, f"{off:.2f} µs", f"{on:.2f} µs", f"{m:.3f} ({a:.3f}-{b:.3f})"])
        lines += [f"In-process (EngineCore + WireCore, no sockets, {len(p['many']['off'])} interleaved rounds; CPU "
                  "time per request (process_time), histograms kept and stamped as the server loop does):", "",
                  common.table(["turns of", "histograms off", "on", "speed on/off per round: median (min-max)"], rows),
                  "", f"One scrape's work in the daemon (the collectors and the text exposition, on its HTTP thread, "
                  f"holding the GIL; HTTP itself not counted): {p['scrape_ms']:.2f} ms, i.e. "
                  f"{p['scrape_ms'] / 10:.2f}% of the loop's time at "
                  "one scrape a second, "
                  f"{p['scrape_ms'] / 150:.3f}% at Prometheus' default 15 s.", ""]
    lines += common.machine_lines()
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.splitlines()[0])
    common.add_doc_options(ap)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--seconds", type=float, default=BLOCK_S, help="each throughput window")
    ap.add_argument("--scrape-every", type=float, default=1.0, help="seconds between two scrapes")
    ap.add_argument("--quick", action="store_true", help="a smoke run (2 rounds, short windows)")
    args = ap.parse_args(argv)
    common.resolve_doc(args)
    common.exit_on_sigterm()
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    r = run(args.rounds, args.seconds, args.scrape_every, 100 if args.quick else LATENCY_CALLS)
    r["in_process"] = in_process(3 if args.quick else 15, 5 if args.quick else 30)
    text = report(r)
    common.publish("metrics", text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
