"""Overload and bounded requests: the daemon under 1x, 10x and 100x the in-flight load that saturates it,
a ping during requests at the per-request bounds, and the daemon's memory after adversarial messages.

    python -m bench.overload               # full run (report to bench-results/)
    python -m bench.overload --quick       # smoke run
    python -m bench.overload --write-docs  # also its section of docs/benchmarks.md
    python -m bench.overload --repo DIR    # the daemon from another checkout (say the code before issue 18)

The daemon (the shipped default model, one thread) runs as a child process on a free loopback port. The load
comes from worker processes, each with several DEALER sockets that keep a window of one-sample `step` requests
in flight; served samples/s is the sum of their successful replies per second. Meanwhile a fresh client (a
DEALER connected for the measurement) sends one ping every 10 ms and times each reply. The daemon's RSS is read
from /proc.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from . import common

I = 6                    # the shipped default model's inputs
STREAMS_PER_WORKER = 1024
# workers x sockets x window. 1x: 256 in flight, which saturates the daemon (docs/benchmarks.md: ~100 in
# flight reach its peak); two worker processes at every level, so that the load generators' own CPU (they share the
# machine's cores with the daemon) is about the same at every level. 100x and issue 18's 50 clients x 1,000
# are beyond --max-pending (16,384).
LEVELS = {"1x": (2, 2, 64), "10x": (2, 20, 64), "100x": (2, 40, 320), "50x1000": (2, 25, 1000)}
FULL = dict(duration=8.0, settle=2.0)
QUICK = dict(duration=2.0, settle=0.5)
PING_EVERY_S = 0.01
READY_TIMEOUT_S = 180


def _pool(worker: int, n: int) -> list:
    rng = np.random.default_rng(worker)
    out = []
    for k in range(n):
        x = rng.standard_normal(I, dtype=np.float32)
        out.append(msgpack.packb({"v": 1, "id": k, "op": "step", "stream": f"w{worker}-{k}",
                                  "x": {"dtype": "float32", "shape": [I], "data": x.tobytes()}}))
    return out


def load_worker(endpoint, worker, sockets, window, start_at, duration, out):
    """Keep `window` requests in flight on each of `sockets` DEALERs from start_at for `duration` seconds;
    put (ok replies in the window, other replies, {error code: count}) on `out`."""
    import zmq
    ctx = zmq.Context()
    pool = _pool(worker, STREAMS_PER_WORKER)
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    sent = 0
    while time.time() < start_at:
        time.sleep(0.01)
    for s in socks:
        for _ in range(window):
            s.send(pool[sent % len(pool)], zmq.NOBLOCK)
            sent += 1
    ok = bad = 0
    codes: dict = {}
    t0 = time.time()
    t_end = t0 + duration
    while True:
        now = time.time()
        if now >= t_end:
            break
        for s, _ in poller.poll(100):
            while True:
                try:
                    data = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if data[:40].find(b"\xa2ok\xc3") >= 0:  # "ok": true (a reply map's head)
                    ok += 1
                else:
                    bad += 1
                    err = msgpack.unpackb(data).get("error", {}).get("code")
                    codes[err] = codes.get(err, 0) + 1
                s.send(pool[sent % len(pool)], zmq.NOBLOCK)
                sent += 1
    out.put((ok, bad, codes, now - t0))
    ctx.destroy(0)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pinger(ctx, endpoint, duration, pid=None):
    """A fresh client pinging every PING_EVERY_S for `duration` s: (latencies in s, pings lost (no reply in 2 s)
    or refused, max RSS MB)."""
    import zmq
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    lat, lost, rss = [], 0, 0.0
    t_end = time.time() + duration
    k = 0
    while time.time() < t_end:
        k += 1
        t0 = time.perf_counter()
        s.send(msgpack.packb({"v": 1, "id": k, "op": "ping"}))
        while True:  # skip a late reply to an earlier (lost) ping
            if not s.poll(2000):
                lost += 1
                break
            r = msgpack.unpackb(s.recv())
            if r.get("id") == k:
                if r.get("ok"):
                    lat.append(time.perf_counter() - t0)
                else:  # refused (busy, before issue 18): not an answer
                    lost += 1
                break
        if pid is not None:
            rss = max(rss, rss_mb(pid))
        time.sleep(PING_EVERY_S)
    s.close(0)
    return lat, lost, rss


def run_level(endpoint, pid, ctx, level, timing):
    workers, sockets, window = LEVELS[level]
    q = mp.get_context("spawn").Queue()
    start_at = time.time() + 3.0  # the workers' imports and connections first
    procs = [mp.get_context("spawn").Process(target=load_worker, args=(endpoint, w, sockets, window, start_at,
                                                                         timing["duration"], q))
             for w in range(workers)]
    for p in procs:
        p.start()
    try:
        time.sleep(max(0.0, start_at - time.time()) + timing["settle"])
        lat, lost, rss = pinger(ctx, endpoint, timing["duration"] - timing["settle"] - 0.5, pid)
        results = [q.get(timeout=60 + timing["duration"]) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    ok = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    codes: dict = {}
    for r in results:
        for c, n in r[2].items():
            codes[c] = codes.get(c, 0) + n
    secs = max(r[3] for r in results)
    return {"in_flight": workers * sockets * window, "rate": ok / secs, "errors": bad, "codes": codes,
            "p50": common.percentile(lat, 50) if lat else None, "p99": common.percentile(lat, 99) if lat else None,
            "pings": len(lat), "lost": lost, "rss": rss}


def bounded_requests(endpoint, pid, ctx, limits, timing):
    """A client sending requests at the per-request bounds back to back (one in flight), a fresh client
    pinging meanwhile: each kind's time per request, and the ping's p50/p99."""
    import threading

    import zmq
    n_samples, n_new = limits
    rng = np.random.default_rng(9)
    known = [f"k{j}" for j in range(n_samples)]
    kinds = {
        f"step_many of {n_samples:,} known streams": lambda k: {"streams": known},
        f"step_many creating {n_new:,} new streams": lambda k: {"streams": [f"n{k}-{j}" for j in range(n_new)]},
    }
    out = {}
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)

    def call(msg):
        s.send(msgpack.packb(msg))
        r = msgpack.unpackb(s.recv())
        if not r.get("ok"):
            raise RuntimeError(f"refused: {r.get('error')}")
    # create the known streams first, within the new-stream bound
    for j in range(0, n_samples, n_new):
        ids = known[j:j + n_new]
        call({"v": 1, "id": 0, "op": "step_many", "streams": ids,
              "x": {"dtype": "float32", "shape": [len(ids), I], "data": bytes(4 * I * len(ids))}})
    for name, fields in kinds.items():
        times, stop = [], threading.Event()

        def load(fields=fields, times=times, stop=stop):
            k = 0
            while not stop.is_set():
                k += 1
                f = fields(k)
                x = rng.standard_normal((len(f["streams"]), I), dtype=np.float32)
                t0 = time.perf_counter()
                call({"v": 1, "id": k, "op": "step_many", **f,
                      "x": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()}})
                times.append(time.perf_counter() - t0)
        th = threading.Thread(target=load)
        th.start()
        try:
            time.sleep(0.5)
            lat, lost, _ = pinger(ctx, endpoint, timing["duration"] / 2, pid)
        finally:
            stop.set()
            th.join(60)
        out[name] = {"request_ms": 1e3 * float(np.median(times)), "request_max_ms": 1e3 * max(times),
                     "p50": common.percentile(lat, 50), "p99": common.percentile(lat, 99), "lost": lost}
    s.close(0)
    return out


ADVERSARIAL = {  # issue 18's 16 MiB messages
    "16M zeros": lambda: [0] * (16 * 2**20 - 32),
    "[[0]] x 8M": lambda: [[0]] * (8 * 2**20 - 16),
    '[{"":0}] x 5.6M': lambda: [{"": 0}] * (16 * 2**20 // 3 - 16),
    "rows of 100 zeros x 160k": lambda: [[0] * 100] * (16 * 2**20 // 102 - 8),
}


def adversarial(endpoint, pid, ctx):
    """The daemon's RSS (MB) before and after each adversarial message, then four of the last kind back to
    back; each reply's error code and time."""
    import zmq
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    rows = []
    for name, make in list(ADVERSARIAL.items()) + [("4 x " + list(ADVERSARIAL)[-1], None)]:
        data = msgpack.packb({"v": 1, "id": 1, "op": "step", "stream": "a",
                              "x": (make or list(ADVERSARIAL.values())[-1])()})[:16 * 2**20]
        before = rss_mb(pid)
        t0 = time.perf_counter()
        for _ in range(1 if make else 4):
            s.send(data)
        for _ in range(1 if make else 4):
            r = msgpack.unpackb(s.recv())
        rows.append((name, len(data), r.get("error", {}).get("code") if not r.get("ok") else "ok",
                     time.perf_counter() - t0, before, rss_mb(pid), rss_mb(pid, "VmHWM")))
    s.close(0)
    return rows


def report(res, bounded, adv, info, args) -> str:
    head = "## Overload and bounded requests" if not args.repo else \
        f"### The same load against the daemon from {args.repo}"
    lines = [head, "",
             "`python -m bench.overload`" + (" --quick" if args.quick else "") + ": the daemon (shipped default "
             f"model, I={I} H=32, `--threads 1`, default limits: `--max-pending {info['max_pending']}`, "
             f"`--max-request-samples {info.get('max_request_samples', 'n/a')}`, `--max-request-new-streams "
             f"{info.get('max_request_new_streams', 'n/a')}`) under one-sample `step` requests from worker "
             "processes (DEALER sockets, each with a window in flight), while a fresh client pings every 10 ms. "
             "Load generators and daemon share the machine's cores.", ""]
    lines += common.machine_lines({"daemon code": args.repo or "this checkout",
                                   "daemon options": args.daemon_args or "the defaults"})
    lines.append("")
    peak = res["1x"]["rate"]
    rows = []
    for level, r in res.items():
        rows.append([level if level != "50x1000" else "50 clients × 1,000 (issue 18)", f"{r['in_flight']:,}", common.fmt(r["rate"]), f"{r['rate'] / peak:.2f}",
                     common.fmt(r["p50"] and r["p50"] * 1e3), common.fmt(r["p99"] and r["p99"] * 1e3),
                     f"{r['lost']}/{r['pings'] + r['lost']}", common.fmt(r["rss"]),
                     ", ".join(f"{c} {n:,}" for c, n in r["codes"].items()) or "none"])
    lines.append(common.table(["load", "in flight", "served samples/s", "× 1x", "fresh ping p50 ms",
                               "ping p99 ms", "pings lost or refused", "daemon RSS MB (max)", "error replies"], rows))
    lines.append("")
    r10 = res.get("10x")
    if r10:
        lines.append(common.goal_line("10x overload: served samples/s ≥ 0.9× the 1x figure",
                                      r10["rate"] >= 0.9 * peak, f"{r10['rate'] / peak:.2f}×"))
        lines.append(common.goal_line("10x overload: a fresh client's ping p99 < 50 ms",
                                      r10["p99"] is not None and r10["p99"] < 0.05 and not r10["lost"],
                                      f"{common.fmt(r10['p99'] and r10['p99'] * 1e3)} ms, {r10['lost']} lost"))
    if bounded:
        lines += ["", ("Requests at the per-request bounds, back to back (one in flight), a fresh client pinging "
                       "meanwhile:"), ""]
        rows = [[k, common.fmt(v["request_ms"]), common.fmt(v["request_max_ms"]), common.fmt(v["p50"] * 1e3),
                 common.fmt(v["p99"] * 1e3), v["lost"]] for k, v in bounded.items()]
        lines.append(common.table(["request", "time per request ms (median)", "max ms", "ping p50 ms",
                                   "ping p99 ms", "pings lost"], rows))
        worst = max(v["p99"] for v in bounded.values())
        lines += ["", common.goal_line("ping p99 < 50 ms while any accepted request is served", worst < 0.05,
                                       f"worst p99 {worst * 1e3:.1f} ms")]
    if adv:
        lines += ["", "Adversarial 16 MiB messages (issue 18), the daemon's RSS around each:", ""]
        rows = [[n, f"{size:,}", code, f"{t * 1e3:.0f}", f"{b:.0f}", f"{a:.0f}", f"{h:.0f}"]
                for n, size, code, t, b, a, h in adv]
        lines.append(common.table(["message", "bytes", "reply", "ms", "RSS before MB", "RSS after MB",
                                   "peak RSS (VmHWM) MB"], rows))
    return "\n".join(lines) + "\n"


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream overload benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--repo", default=None, help="run the daemon from this checkout instead (a comparison)")
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    ap.add_argument("--daemon-args", default="", help="more options of `serve`, e.g. '--max-turn-samples 512'")
    ap.add_argument("--no-adversarial", action="store_true", help="skip the adversarial messages (an old daemon "
                    "takes seconds and gigabytes for them)")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    import zmq
    args = parse(argv)
    common.exit_on_sigterm()
    timing = QUICK if args.quick else FULL
    ctx = zmq.Context()
    repo = Path(args.repo).resolve() if args.repo else common.ROOT
    try:
        with tempfile.TemporaryDirectory(prefix="lstm-overload-") as tmp:
            endpoint = f"tcp://127.0.0.1:{common.free_port()}"
            cmd = [common.python(), "-m", "engine.cli", "serve", "--bind", endpoint, "--log-level", "warning",
                   "--threads", "1", *args.daemon_args.split()]
            env = common.clean_env(PYTHONPATH=str(repo))
            with common.subprocess_server(cmd, env=env, cwd=str(repo), log_path=Path(tmp) / "daemon.log") as proc:
                from .loadgen import LoadGen
                gen = LoadGen(endpoint, ctx)
                gen.wait_ready(READY_TIMEOUT_S, proc)
                gen.close()
                s = ctx.socket(zmq.DEALER)
                s.connect(endpoint)
                s.send(msgpack.packb({"v": 1, "id": 1, "op": "info"}))
                info = msgpack.unpackb(s.recv())
                s.close(0)
                res = {}
                for level in args.levels:
                    res[level] = run_level(endpoint, proc.pid, ctx, level, timing)
                    print(level, res[level], flush=True)
                bounded = None
                if "max_request_samples" in info:
                    bounded = bounded_requests(endpoint, proc.pid, ctx, (info["max_request_samples"],
                                                                         info["max_request_new_streams"]), timing)
                    print(bounded, flush=True)
                adv = None if args.no_adversarial else adversarial(endpoint, proc.pid, ctx)
                print(adv, flush=True)
    finally:
        ctx.destroy(0)
    common.publish("overload" if not args.repo else "overload-other", report(res, bounded, adv, info, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
