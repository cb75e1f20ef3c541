"""Server benchmark: the lstm-stream daemon against a ZeroMQ echo server (the floor) and a naive torch server.

    python -m bench.server             # full run (report to bench-results/)
    python -m bench.server --write-docs   # also its section of docs/benchmarks.md
    python -m bench.server --quick    # smoke run: report to bench-results/ only

All three servers run at once as child processes on free loopback ports (127.0.0.1), one thread each, and are
always stopped at the end; the load generator (bench/loadgen.py) runs in this process. Each measurement goes
round by round over the servers in a rotating order; the whole set runs twice (two passes).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common
from .contenders import Spec
from .loadgen import LoadGen, ServerFailed, step_pool

ECHO, DAEMON, NAIVE, CLIENT = "echo (ZeroMQ + msgpack floor)", "lstm-stream daemon", "naive torch server", \
    "lstm-stream daemon via clients.Client"
ASYNC = "lstm-stream daemon via clients.AsyncClient"
ASYNC_PIPE = "lstm-stream daemon via AsyncClient.pipeline()"
ASYNC_TASKS = "lstm-stream daemon via AsyncClient, tasks stepping in a loop"
RAW_BATCHES = "lstm-stream daemon, raw DEALER in batches (the ceiling of a pipeline of one request per call)"
SEPARATE = ", merge_steps=False (one request per call)"  # the clients' rows sending every step as its own request
CLIENT_1, ASYNC_1, ASYNC_PIPE_1, ASYNC_TASKS_1 = (n + SEPARATE for n in (CLIENT, ASYNC, ASYNC_PIPE, ASYNC_TASKS))
DAEMON_DEFAULT = "lstm-stream daemon, default --threads"  # what `lstm-stream serve` uses unless told: all cores
SERVERS = (ECHO, DAEMON, DAEMON_DEFAULT, NAIVE)
SPEC = Spec(8, 64)
STREAMS = 1024          # distinct streams in the one-sample-per-message load
WINDOW = 256            # messages in flight, one sample each
MANY = 100              # streams per message
MANY_STREAMS = 10_000   # distinct streams in the many-per-message load
MANY_WINDOW = 16        # messages in flight, MANY samples each
READY_TIMEOUT_S = 180   # a cold daemon compiles its kernels before it answers
START_ATTEMPTS = 3      # a server that exits at once (port taken since we picked it) gets another port
FULL = dict(rounds=6, lat_count=500, block_s=0.5)
QUICK = dict(rounds=2, lat_count=100, block_s=0.1)


def save_model(path: str) -> None:
    """The servers' model (torch_modules(SPEC): torch's init, seed 0) written to path by a child process, so
    that this process, where the clients are measured, never imports torch: its hundreds of thousands of
    objects make every full garbage collection slow, and AsyncClient, which allocates a few objects per step
    that outlive a round trip (tasks, futures), ran 0.75x as fast here with torch imported (58k against 78k
    steps/s, 256 gathered)."""
    code = ("import sys; from bench.contenders import Spec, torch_modules; "
            f"torch_modules(Spec({SPEC.I}, {SPEC.H}, {SPEC.L}, {SPEC.O}))[2].save(sys.argv[1])")
    subprocess.run([common.python(), "-c", code, path], check=True, cwd=Path(__file__).resolve().parents[1])


def server_args(name, endpoint, model_path, threads):
    py = [common.python()]
    if name == ECHO:
        return py + ["-m", "bench.servers", "echo", "--bind", endpoint]
    if name == NAIVE:
        return py + ["-m", "bench.servers", "naive", "--bind", endpoint, "--model", model_path,
                     "--threads", str(threads)]
    return py + ["-m", "engine.cli", "serve", "--model", model_path, "--bind", endpoint, "--log-level", "warning"] \
        + ([] if name == DAEMON_DEFAULT else ["--threads", str(threads)])


@contextlib.contextmanager
def running_servers(tmp: Path, model_path: str, threads: int, ctx):
    """{name: LoadGen} for the three servers, each started and ready; all stopped on exit, always.
    A server that exits before answering (say its free port was taken meanwhile) is retried on another."""
    with contextlib.ExitStack() as stack:
        gens = {}
        for name in SERVERS:
            for attempt in range(START_ATTEMPTS):
                endpoint = f"tcp://127.0.0.1:{common.free_port()}"
                log = tmp / f"{name.split()[0]}{attempt}.log"
                proc = stack.enter_context(common.subprocess_server(
                    server_args(name, endpoint, model_path, threads), log_path=log))
                gen = LoadGen(endpoint, ctx)
                stack.callback(gen.close)
                try:
                    gen.wait_ready(READY_TIMEOUT_S, proc)
                    break
                except ServerFailed:
                    sys.stderr.write(f"--- {name} log ---\n{log.read_text(errors='replace')[-3000:]}\n")
                    if proc.poll() is None or attempt == START_ATTEMPTS - 1:
                        raise
            gens[name] = gen
        yield gens


def rounds(blocks: dict, n_rounds: int) -> dict:
    """{name: [values of every round]}: blocks {name: fn() -> list of values}, rotating order per round."""
    names = list(blocks)
    out = {n: [] for n in names}
    for r in range(n_rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(common.SETTLE_S)
            out[name].extend(blocks[name]())
    return out


def client_blocks(client, timing):
    """Latency and pipelined-throughput blocks through the real client library (what a user gets)."""
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((WINDOW, SPEC.I), dtype=np.float32)
    ids = [f"c{k}" for k in range(WINDOW)]

    def latency():
        out = []
        for k in range(timing["lat_count"]):
            t0 = time.perf_counter_ns()
            client.step("c-lat", xs[k % WINDOW])
            out.append((time.perf_counter_ns() - t0) * 1e-9)
        return out

    def paired(gen, pool):
        """(raw DEALER, Client.step) seconds of round trips taken in alternation on the same daemon, one of
        each at a time: both see the same moment of a shared machine (its slow phases last longer than a
        block, so blocks timed one after the other can differ by 2x for either)."""
        raw, via = [], []
        for k in range(timing["lat_count"]):
            raw.extend(gen.latency(pool, 1))
            t0 = time.perf_counter_ns()
            client.step("c-lat", xs[k % WINDOW])
            via.append((time.perf_counter_ns() - t0) * 1e-9)
        return raw, via

    def pipelined(merge_steps=True):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < timing["block_s"]:
            with client.pipeline(merge_steps=merge_steps) as p:
                for k in range(WINDOW):
                    p.step(ids[k], xs[k])
            n += WINDOW
        return [n / (time.perf_counter() - t0)]
    return latency, pipelined, lambda: pipelined(False), paired


def async_blocks(endpoint, timing):
    """The same blocks through clients.AsyncClient (awaited one at a time; WINDOW gathered; a pipeline of
    WINDOW; WINDOW tasks each stepping in a loop, so WINDOW in flight all the time, as the raw DEALER keeps),
    on an event loop of their own; returns (latency, gathered, pipelined, tasks, close), each block but
    latency a function of merge_steps (the client's default True, or False: one request per call)."""
    import asyncio

    loop = asyncio.new_event_loop()
    clients = {m: loop.run_until_complete(_async_client(endpoint, m)) for m in (True, False)}
    client = clients[True]
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((WINDOW, SPEC.I), dtype=np.float32)
    ids = [f"a{k}" for k in range(WINDOW)]

    async def lat():
        out = []
        for k in range(timing["lat_count"]):
            t0 = time.perf_counter_ns()
            await client.step("a-lat", xs[k % WINDOW])
            out.append((time.perf_counter_ns() - t0) * 1e-9)
        return out

    async def pipe(c):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < timing["block_s"]:
            await asyncio.gather(*(c.step(ids[k], xs[k]) for k in range(WINDOW)))
            n += WINDOW
        return [n / (time.perf_counter() - t0)]

    async def pipeline(c):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < timing["block_s"]:
            async with c.pipeline(merge_steps=c is client) as p:
                for k in range(WINDOW):
                    p.step(ids[k], xs[k])
            n += WINDOW
        return [n / (time.perf_counter() - t0)]

    async def tasks(c):
        n, t0 = 0, time.perf_counter()
        stop = t0 + timing["block_s"]

        async def worker(k):
            nonlocal n
            while time.perf_counter() < stop:
                await c.step(ids[k], xs[k])
                n += 1
        await asyncio.gather(*(worker(k) for k in range(WINDOW)))
        return [n / (time.perf_counter() - t0)]

    def close():
        for c in clients.values():
            loop.run_until_complete(c.close())
        loop.close()

    def block(fn):
        return lambda merge_steps=True: loop.run_until_complete(fn(clients[merge_steps]))
    return (lambda: loop.run_until_complete(lat())), block(pipe), block(pipeline), block(tasks), close


async def _async_client(endpoint, merge_steps=True):
    from clients import AsyncClient
    return AsyncClient(endpoint, timeout=10.0, merge_steps=merge_steps)


def one_pass(gens, client, timing) -> dict:
    """{(measure, contender): values} for one pass over every measurement."""
    lat_pool = step_pool(1, SPEC.I, prefix="lat")
    one_pool = step_pool(STREAMS, SPEC.I)
    many_pool = step_pool(MANY_STREAMS, SPEC.I, per_message=MANY, prefix="m")
    c_lat, c_pipe, c_pipe_1, c_paired = client_blocks(client, timing)
    a_lat, a_gather, a_pipe, a_tasks, a_close = async_blocks(gens[DAEMON].endpoint, timing)
    res = {}
    lat = {n: (lambda g=g: g.latency(lat_pool, timing["lat_count"])) for n, g in gens.items()}
    lat[CLIENT], lat[ASYNC] = c_lat, a_lat
    for name, v in rounds(lat, timing["rounds"]).items():
        res[("latency", name)] = v
    res[("paired", DAEMON)], res[("paired", CLIENT)] = [], []
    for _ in range(timing["rounds"]):
        time.sleep(common.SETTLE_S)
        raw, via = c_paired(gens[DAEMON], lat_pool)
        res[("paired", DAEMON)] += raw
        res[("paired", CLIENT)] += via
    one = {n: (lambda g=g: [g.throughput(one_pool, WINDOW, timing["block_s"])]) for n, g in gens.items()}
    one[CLIENT], one[ASYNC], one[ASYNC_PIPE], one[ASYNC_TASKS] = c_pipe, a_gather, a_pipe, a_tasks
    one[CLIENT_1], one[ASYNC_1] = c_pipe_1, lambda: a_gather(False)
    one[ASYNC_PIPE_1], one[ASYNC_TASKS_1] = (lambda: a_pipe(False)), (lambda: a_tasks(False))
    one[RAW_BATCHES] = lambda g=gens[DAEMON]: [g.batches(one_pool, WINDOW, timing["block_s"])]
    for name, v in rounds(one, timing["rounds"]).items():
        res[("one", name)] = v
    a_close()
    many = {n: (lambda g=g: [MANY * g.throughput(many_pool, MANY_WINDOW, timing["block_s"])])
            for n, g in gens.items()}
    for name, v in rounds(many, timing["rounds"]).items():
        res[("many", name)] = v
    return res


def summarise(passes: list) -> dict:
    """{(measure, contender, stat): [figure of each pass]} with stat p50/p99 (latency) or rate (median)."""
    out = {}
    for res in passes:
        for (measure, name), v in res.items():
            if measure in ("latency", "paired"):
                out.setdefault((measure, name, "p50"), []).append(common.percentile(v, 50))
                out.setdefault((measure, name, "p99"), []).append(common.percentile(v, 99))
            else:
                out.setdefault((measure, name, "rate"), []).append(statistics.median(v))
    return out


def fig(s, key):
    v = s.get(key)
    return (float(np.mean(v)), f"±{common.spread(*v[:2]) * 50:.1f}%" if v and len(v) > 1 else "n/a") \
        if v else (None, "n/a")


def report(s, args) -> str:
    lines = ["## Server: the daemon against the ZeroMQ floor and a naive torch server", "",
             "`python -m bench.server` — model I=8 H=64 + head of 4 outputs; every server a child process on "
             "127.0.0.1, one thread each (daemon `--threads 1`, naive `torch.set_num_threads(1)`); the load "
             "generator (pre-encoded msgpack requests, one DEALER) in the bench process. The echo server "
             "decodes each request and answers with its input: ZeroMQ + msgpack, no work. The naive server "
             "keeps torch (h, c) in a dict and runs nn.LSTMCell per message. The daemon is also measured "
             f"through `clients.Client` (step; pipelines of {WINDOW} steps) and `clients.AsyncClient` (awaited "
             f"steps; {WINDOW} gathered; pipelines of {WINDOW}; {WINDOW} tasks each stepping in a loop), each on "
             f"{WINDOW} streams with one sample per step: as the clients send them by default (merge_steps=True: "
             "the steps of a pipeline, and those made in one turn of the event loop, go out as one `step_many` "
             "each, clients/coalesce.py), and one request per call (merge_steps=False). The raw DEALER keeps "
             f"{WINDOW} requests in flight all the time, a pipeline sends its calls and waits for all their "
             "replies. The daemon runs with its defaults, "
             "so after each turn it keeps polling for 200 µs without sleeping (`--spin-us`), while the echo and "
             "naive servers block in recv between requests; with `--spin-us 0` its one-in-flight p50 is about "
             "twice as high (docs/operations.md). Client.step's goal is judged on round trips taken in alternation "
             "with the raw DEALER's (one of each at a time, on the same daemon): blocks timed one after the other "
             "can differ by 2× on a shared machine whose slow phases outlast a block. The daemon is measured a "
             "second time as `lstm-stream serve` "
             f"starts it without `--threads`: kernel threads on all {os.cpu_count()} cores for turns with enough "
             "work (its OpenMP workers sleep between calls). Two passes; ± is half their spread.", ""]
    lines += common.machine_lines({"thread settings": f"servers {args.threads} thread each, except '{DAEMON_DEFAULT}' "
                                                      f"({os.cpu_count()} here); generator in the bench process",
                                   "mode": "quick (smoke run: figures not meaningful)" if args.quick
                                   else f"full ({FULL['rounds']} rounds per pass, 2 passes)"})
    e50, d50 = fig(s, ("latency", ECHO, "p50"))[0], fig(s, ("latency", DAEMON, "p50"))[0]
    e1, d1, n1 = (fig(s, ("one", x, "rate"))[0] for x in (ECHO, DAEMON, NAIVE))
    dm, dd = fig(s, ("many", DAEMON, "rate"))[0], fig(s, ("many", DAEMON_DEFAULT, "rate"))[0]
    c50, c1, a1 = fig(s, ("latency", CLIENT, "p50"))[0], fig(s, ("one", CLIENT, "rate"))[0], \
        fig(s, ("one", ASYNC, "rate"))[0]
    ap1, at1, rb1 = (fig(s, ("one", x, "rate"))[0] for x in (ASYNC_PIPE, ASYNC_TASKS, RAW_BATCHES))
    cp50, dp50 = fig(s, ("paired", CLIENT, "p50"))[0], fig(s, ("paired", DAEMON, "p50"))[0]
    lat_count = (QUICK if args.quick else FULL)["lat_count"]
    c1_1, a1_1, ap1_1, at1_1 = (fig(s, ("one", x, "rate"))[0] for x in (CLIENT_1, ASYNC_1, ASYNC_PIPE_1, ASYNC_TASKS_1))

    def separately(rate):
        return f"; one request per call: {rate / d1:.2f}×, {rate:,.0f} samples/s"
    lines += ["", "### Goals", "",
              common.goal_line("one request in flight: daemon p50 within 1.15× of the echo floor",
                               d50 / e50 <= 1.15, f"{d50 / e50:.2f}×: {d50 * 1e6:.0f} vs {e50 * 1e6:.0f} µs"),
              common.goal_line(f"one sample per message, {WINDOW} in flight: daemon ≥ 0.8× echo",
                               d1 / e1 >= 0.8, f"{d1 / e1:.2f}×: {d1:,.0f} vs {e1:,.0f} samples/s"),
              common.goal_line("... and ≥ 4× the naive torch server", d1 / n1 >= 4,
                               f"{d1 / n1:.2f}×: {d1:,.0f} vs {n1:,.0f} samples/s"),
              common.goal_line(f"{MANY} streams per message: daemon ≥ 1,000,000 samples/s", dm >= 1e6,
                               f"{dm:,.0f} samples/s"),
              common.goal_line(f"... the daemon with its default threads ({os.cpu_count()} here)", dd >= 1e6,
                               f"{dd:,.0f} samples/s"),
              common.goal_line("Client.step p50 within 1.1× of a raw DEALER on the same daemon", cp50 / dp50 <= 1.1,
                               f"{cp50 / dp50:.2f}×: {cp50 * 1e6:.0f} vs {dp50 * 1e6:.0f} µs, their round trips "
                               f"taken in alternation ({lat_count} pairs a round); timed in separate blocks as in "
                               f"the table, {c50 / d50:.2f}×: {c50 * 1e6:.0f} vs {d50 * 1e6:.0f} µs"),
              common.goal_line(f"Client.pipeline of {WINDOW} ≥ 0.8× the raw DEALER's rate ({WINDOW} in flight)",
                               c1 / d1 >= 0.8, f"{c1 / d1:.2f}×: {c1:,.0f} vs {d1:,.0f} samples/s" + separately(c1_1)),
              common.goal_line(f"AsyncClient, {WINDOW} gathered, ≥ 0.8× the raw DEALER's rate", a1 / d1 >= 0.8,
                               f"{a1 / d1:.2f}×: {a1:,.0f} vs {d1:,.0f} samples/s" + separately(a1_1)),
              common.goal_line(f"AsyncClient.pipeline of {WINDOW} ≥ 0.8× the raw DEALER's rate", ap1 / d1 >= 0.8,
                               f"{ap1 / d1:.2f}×: {ap1:,.0f} vs {d1:,.0f} samples/s" + separately(ap1_1)),
              common.goal_line(f"AsyncClient, {WINDOW} tasks each stepping in a loop ({WINDOW} in flight all the "
                               "time, as the raw DEALER keeps) ≥ 0.8× the raw DEALER's rate", at1 / d1 >= 0.8,
                               f"{at1 / d1:.2f}×: {at1:,.0f} vs {d1:,.0f} samples/s" + separately(at1_1)),
              f"- For scale: the raw DEALER sending batches of {WINDOW} and waiting for each batch's replies "
              f"(the pattern of a pipeline of one request per call, with no client work) reaches {rb1 / d1:.2f}× "
              f"its rate with {WINDOW} in flight all the time: the most such a pipeline can reach here. The "
              "clients' default exceeds it by sending fewer, larger requests (the 100-per-message column shows "
              "what that is worth to the daemon).", ""]
    rows = []
    for name in SERVERS + (RAW_BATCHES, CLIENT, ASYNC, ASYNC_PIPE, ASYNC_TASKS, CLIENT_1, ASYNC_1, ASYNC_PIPE_1,
                           ASYNC_TASKS_1):
        p50, sp50 = fig(s, ("latency", name, "p50"))
        p99, sp99 = fig(s, ("latency", name, "p99"))
        one, sone = fig(s, ("one", name, "rate"))
        many, smany = fig(s, ("many", name, "rate"))
        rows.append([name, common.fmt(p50 and p50 * 1e6), sp50, common.fmt(p99 and p99 * 1e6), sp99,
                     common.fmt(one), sone, common.fmt(many), smany])
    lines.append(common.table(["server", "p50 µs (1 in flight)", "spread", "p99 µs", "spread",
                               f"samples/s (1 per msg, {WINDOW} in flight)", "spread",
                               f"samples/s ({MANY} per msg, {MANY_WINDOW} in flight)", "spread"], rows))
    return "\n".join(lines) + "\n"


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream server benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--threads", type=int, default=1, help="threads of each server (default 1)")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    import zmq

    from clients import Client

    args = parse(argv)
    common.sample_busy()
    common.exit_on_sigterm()
    timing = QUICK if args.quick else FULL
    ctx = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="lstm-bench-") as tmp:
            model_path = str(Path(tmp) / "model.npz")
            save_model(model_path)
            with running_servers(Path(tmp), model_path, args.threads, ctx) as gens, \
                    Client(gens[DAEMON].endpoint, timeout=10.0, context=ctx) as client:
                passes = []
                for p in range(2):
                    passes.append(one_pass(gens, client, timing))
                    print(f"pass {p + 1} done", flush=True)
    finally:
        ctx.destroy(0)
    text = report(summarise(passes), args)
    common.publish("server", text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
