"""Binary `x` against nested lists, and the daemon against the raw kernel at the same shape, in one run.

    python -m bench.wire                  # prints the table and the ratios
    python -m bench.wire --write-docs     # also its section of docs/benchmarks.md ("Binary x and nested lists")

One daemon (a random model of the server benchmark's shape, I=8 H=64 with a head of 4; `--threads 1`) runs as a child process on a free loopback port; the
load generator (bench/loadgen.py, one DEALER, requests encoded up front) and the raw kernel run in this
process. Loads: one sample per message with 256 in flight (1,024 streams) and 100 streams per message with 16
in flight (10,000 streams), each with `x` as the binary map {dtype, shape, data} and as nested lists of
numbers. The raw kernel is bench.contenders.RawKernel (the CPU kernel on preallocated arrays, no API, no
wire) at 100 streams per call on one thread. Every block is timed in rotating order, ROUNDS times; figures
are medians.

The daemon runs with its Prometheus endpoint on (`--metrics-port`, when prometheus_client is installed): around
each block of 100 streams per message its kernel time is read (lstm_stream_kernel_seconds_sum, and the samples
of its kernel calls), which splits the daemon's ratio to the raw kernel in two: the share of its time in
kernel calls (the rest: ZeroMQ, decode, planning, replies), and its kernel calls' speed against the raw
kernel's (the same kernel on the slots of 10,000 streams, beside the load generator and ZeroMQ's threads on
the other CPUs, against 100 streams on an otherwise idle machine).

Three more blocks split the time outside the kernel, a message of 100 streams: `socket_floor` (a bare ROUTER
loop's receives and sends, nothing else), the kernel behind the socket (bench/ceiling.py, a second child
process: the daemon's loop with the kernel call and nothing of the request path, under the same load) and
`in_process` (the daemon's request path, WireCore over EngineCore, without any socket). The report sets them
against what 0.8× of the raw kernel leaves.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import zmq

from . import common
from .contenders import RawKernel
from .loadgen import LoadGen, step_pool
from .servers import wire_array

ROUNDS = 6
BLOCK_S = 1.0
MANY = 100
READY_TIMEOUT_S = 180
FLOOR_MESSAGES = 8192  # messages of the socket floor's block (queued up front)
FLOOR_TURN = 8  # messages read per poll in the socket floor's loop (the daemon's turns held ~8 at this load)


def lists_pool(pool: list) -> list:
    """The same requests with `x` as nested lists of numbers (float32 values, exact as msgpack floats)."""
    out = []
    for data in pool:
        msg = msgpack.unpackb(data)
        x = msg["x"]
        a = np.frombuffer(x["data"], np.float32).reshape(x["shape"])
        msg["x"] = a.tolist()
        out.append(msgpack.packb(msg))
    return out


def random_model(I: int = 8, H: int = 64, O: int = 4, seed: int = 0):
    """bench.server's shape (I=8 H=64, head of 4), random weights, without torch."""
    import lstm_stream as ls
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-H ** -0.5, H ** -0.5, shape).astype(np.float32)  # nn.LSTM's init range
    return ls.LSTMModel.from_arrays({"weight_ih_l0": u(4 * H, I), "weight_hh_l0": u(4 * H, H),
                                     "bias_ih_l0": u(4 * H), "bias_hh_l0": u(4 * H),
                                     "head.weight": u(O, H), "head.bias": u(O)})


def socket_floor(ctx, pool: list, reply: bytes, n: int = FLOOR_MESSAGES) -> float:
    """µs a message of a bare ROUTER loop over loopback TCP, measured on the loop's thread: the calls the
    daemon's loop makes per message and nothing else (per poll: up to FLOOR_TURN messages, each two receives
    and the RCVMORE look, then per message two sends: identity and `reply`). The requests are queued up front,
    so no time is spent waiting for them: what the socket costs the loop at least, whatever the loop does
    with the bytes."""
    srv, cli = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        for sock in (srv, cli):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        cli.connect(f"tcp://127.0.0.1:{srv.bind_to_random_port('tcp://127.0.0.1')}")
        for k in range(n):
            cli.send(pool[k % len(pool)])
        nb, more, rcvmore = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.RCVMORE)
        poller = zmq.Poller()
        poller.register(srv, zmq.POLLIN)
        time.sleep(0.5)  # every message over the connection first (~20 MB over loopback)
        done, t0 = 0, time.perf_counter()
        while done < n:
            poller.poll(0)
            turn = []
            for _ in range(FLOOR_TURN):
                try:
                    frames = [srv.recv(nb), srv.recv(nb)]
                except zmq.Again:
                    break
                srv.getsockopt(rcvmore)
                turn.append(frames)
            for ident, _ in turn:
                srv.send(ident, more)
                srv.send(reply, nb)
            done += len(turn)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        srv.close(0)
        cli.close(0)


def in_process(model, pool: list, per_turn: int = FLOOR_TURN):
    """The daemon's request path without a socket: a block function returning stream-steps/s of a WireCore over
    an EngineCore (the daemon's defaults, the kernel on one thread) fed `per_turn` messages of `pool` a turn:
    submit each (decode, admission, queue), then one step() (plan, kernel call, replies, encoding). What the
    daemon could reach if receiving and sending cost nothing: the request path's own share of the gap."""
    import lstm_stream as ls
    from engine.config import EngineConfig
    from engine.core import EngineCore
    from engine.wire import WireCore

    streams = ls.Streams(model, threads=1)
    streams.warm_up()
    wire = WireCore(EngineCore(streams, EngineConfig()))
    tag = (b"peer",)  # one client, as the load generator is
    n = len(pool)
    k = 0

    def block(duration: float) -> float:
        nonlocal k
        done, t0 = 0, time.perf_counter()
        t_end = t0 + duration
        while True:
            for _ in range(per_turn):
                if wire.submit(tag, pool[k % n]) is not None:
                    raise RuntimeError("the in-process core refused a request of the pool")
                k += 1
            replies = wire.step()
            if done == 0:  # the block's first turn: every reply a success (as LoadGen checks 1 in 64)
                for _, data in replies:
                    rep = msgpack.unpackb(data)
                    if rep.get("ok") is not True:
                        raise RuntimeError(f"the in-process core answered an error: {rep.get('error')}")
            done += len(replies)
            now = time.perf_counter()
            if now >= t_end:
                return done * MANY / (now - t0)
    return block


def kernel_reading(port: int) -> tuple:
    """(the daemon's kernel seconds, the samples of its kernel calls, perf_counter now), from its endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("lstm_stream_kernel_seconds_sum", "lstm_stream_batch_samples_sum"):
            values[name] = float(value)
    return values["lstm_stream_kernel_seconds_sum"], values["lstm_stream_batch_samples_sum"], time.perf_counter()


def run(rounds: int = ROUNDS, block_s: float = BLOCK_S) -> dict:
    import numba

    model = random_model()
    I = model.input_size
    one, many = step_pool(1024, I), step_pool(10_000, I, per_message=MANY)
    pools = {"one binary": one, "one lists": lists_pool(one), "many binary": many, "many lists": lists_pool(many)}
    numba.set_num_threads(1)
    kernel = RawKernel(model, MANY, 1)
    X = np.random.default_rng(0).standard_normal((MANY, I), dtype=np.float32)
    n_calls = common.calibrate(lambda: kernel.run(X), 0.05)

    def raw():
        t0 = time.perf_counter()
        for _ in range(n_calls):
            kernel.run(X)
        return MANY * n_calls / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        endpoint = f"tcp://127.0.0.1:{common.free_port()}"
        model.save(Path(tmp) / "model.npz")
        args = [common.python(), "-m", "engine.cli", "serve", "--threads", "1", "--log-level", "warning",
                "--bind", endpoint, "--model", str(Path(tmp) / "model.npz")]
        port = common.free_port() if importlib.util.find_spec("prometheus_client") else None
        if port is not None:
            args += ["--metrics-port", str(port)]
        kernel_time = []  # per block of 100 streams per message, binary x: (kernel s, its samples, wall s)
        ceiling_endpoint = f"tcp://127.0.0.1:{common.free_port()}"
        ceiling_args = [common.python(), "-m", "bench.ceiling", "--bind", ceiling_endpoint, "--model",
                        str(Path(tmp) / "model.npz"), "--per-message", str(MANY)]
        ctx = zmq.Context()
        with common.subprocess_server(args, log_path=Path(tmp) / "daemon.log") as proc, \
                common.subprocess_server(ceiling_args, log_path=Path(tmp) / "ceiling.log") as ceiling_proc:
            gen, ceiling_gen = LoadGen(endpoint, ctx), LoadGen(ceiling_endpoint, ctx)
            try:
                gen.wait_ready(READY_TIMEOUT_S, proc)
                ceiling_gen.wait_ready(READY_TIMEOUT_S, ceiling_proc)
                blocks = {name: (lambda p=p, w=(16 if name.startswith("many") else 256),
                                 k=(MANY if name.startswith("many") else 1): k * gen.throughput(p, w, block_s))
                          for name, p in pools.items()}
                blocks["raw kernel"] = lambda: statistics.median(raw() for _ in range(max(1, int(block_s / 0.05))))
                reply = msgpack.packb({"v": 1, "id": 0, "ok": True, "y": wire_array(
                    np.zeros((MANY, model.output_size), np.float32))})  # a 100-stream reply's size
                blocks["socket floor"] = lambda: socket_floor(ctx, pools["many binary"], reply)
                blocks["in process"] = lambda f=in_process(model, pools["many binary"]): f(block_s)
                blocks["kernel behind the socket"] = lambda: MANY * ceiling_gen.throughput(pools["many binary"], 16,
                                                                                            block_s)
                if port is not None:
                    many = blocks["many binary"]

                    def many_read():
                        before = kernel_reading(port)
                        rate = many()
                        after = kernel_reading(port)
                        kernel_time.append(tuple(b - a for a, b in zip(before, after)))
                        return rate
                    blocks["many binary"] = many_read
                for fn in blocks.values():  # warm-up: every stream exists, the kernel compiled
                    fn()
                del kernel_time[:]
                res = {name: [] for name in blocks}
                names = list(blocks)
                for r in range(rounds):
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        time.sleep(common.SETTLE_S)
                        res[name].append(blocks[name]())
            finally:
                gen.close()
                ceiling_gen.close()
                ctx.term()
    kernel = None
    if kernel_time:  # the daemon's kernel rate while serving, and the share of its time in kernel calls
        kernel = (statistics.median(n / k for k, n, _ in kernel_time), statistics.median(k / t for k, _, t in kernel_time))
    return {"median": {k: statistics.median(v) for k, v in res.items()},
            "range": {k: (min(v), max(v)) for k, v in res.items()}, "model": model, "rounds": rounds,
            "kernel": kernel}


def report(r: dict) -> str:
    m, med, rng = r["model"], r["median"], r["range"]
    raw = med["raw kernel"]
    rows = []
    for label, b, lst in (("1 sample per message, 256 in flight", "one binary", "one lists"),
                          (f"{MANY} streams per message, 16 in flight", "many binary", "many lists")):
        rows.append([label, f"{med[b]:,.0f}", f"{med[lst]:,.0f}", f"{med[lst] / med[b]:.2f}×",
                     f"{med[b] / raw:.2f}×"])
    ratio = med["many binary"] / raw
    lo, hi = rng["many binary"][0] / raw, rng["many binary"][1] / raw
    lines = [f"Model: random weights, {m.input_size} inputs, hidden {m.hidden_size} × {m.num_layers}, head of "
             f"{m.output_size}, {m.dtype}; the daemon with `--threads 1` on 127.0.0.1; the raw kernel ({MANY} streams per call, "
             f"one thread) in the load generator's process: {raw:,.0f} stream-steps/s. {r['rounds']} rotating "
             "rounds, medians; client and daemon share the machine.", "",
             common.table(["load (stream-steps/s)", "binary x", "nested lists", "lists / binary",
                           "binary / raw kernel"], rows), "",
             common.goal_line(f"{MANY} streams per message with binary x ≥ 0.8× the raw kernel at {MANY} "
                              "streams per call (1 thread)", ratio >= 0.8,
                              f"{ratio:.2f}× (rounds {lo:.2f}–{hi:.2f}×)"), "",
             *split_lines(r, raw, ratio),
             *request_path_lines(r, raw),
             *common.machine_lines()]
    return "\n".join(lines)


def split_lines(r: dict, raw: float, ratio: float) -> list:
    """The daemon's ratio to the raw kernel split in two, from its own kernel time (none without metrics);
    and the ratio to the raw kernel's fastest round (its speed moves from minute to minute on a shared host)."""
    best = r["range"]["raw kernel"][1]
    lines = [f"The raw kernel's rounds ranged {r['range']['raw kernel'][0]:,.0f}–{best:,.0f} stream-steps/s; "
             f"against its fastest round the daemon's median is {r['median']['many binary'] / best:.2f}×.", ""]
    if r.get("kernel") is None:
        return lines + ["(The daemon's kernel time was not read: prometheus_client is not installed.)", ""]
    rate, share = r["kernel"]
    lines += budget_lines(r, raw, rate)
    return lines + [f"Where the daemon's time goes at {MANY} streams per message, binary x (its endpoint's kernel time, "
            f"medians over the blocks): {share:.0%} of it in kernel calls, which ran {rate:,.0f} stream-steps/s, "
            f"{rate / raw:.2f}× the raw kernel alone; {share:.2f} × {rate / raw:.2f} = {share * rate / raw:.2f}, "
            f"against the {ratio:.2f}× measured (the rest of its time: ZeroMQ, decode, planning, replies).", ""]


def budget_lines(r: dict, raw: float, rate: float) -> list:
    """What 0.8× leaves for everything outside the kernel, a message, against what the socket alone costs."""
    daemon, floor = r["median"]["many binary"], r["median"].get("socket floor")
    if floor is None:
        return []
    kernel_us = MANY / rate * 1e6  # a message's kernel time at the daemon's kernel speed
    budget = MANY / (0.8 * raw) * 1e6 - kernel_us
    rest = MANY / daemon * 1e6 - kernel_us
    return [f"The budget, a message of {MANY} streams: its kernel time at the daemon's kernel speed is "
            f"{kernel_us:.1f} µs, so 0.8× the raw kernel leaves {budget:.1f} µs for everything else (receiving, "
            f"decoding, planning, replying, sending, polling); the daemon spends {rest:.1f} µs on it. A bare "
            f"ROUTER loop's receives and sends alone take {floor:.1f} µs a message on the loop's thread (medians; "
            f"rounds {r['range']['socket floor'][0]:.1f}–{r['range']['socket floor'][1]:.1f} µs; `socket_floor`: "
            "requests queued up front, no decode, nothing else).", ""]


def request_path_lines(r: dict, raw: float) -> list:
    """The socket and the kernel without the request path (bench/ceiling.py), and the request path without the
    socket (in_process), against the raw kernel: what 0.8× leaves the request path, and what it takes (a
    message's time less its kernel time at the daemon's kernel speed, or the raw kernel's without metrics)."""
    kernel_us = MANY / (r["kernel"][0] if r.get("kernel") else raw) * 1e6
    lines, left = [], None
    ceiling = r["median"].get("kernel behind the socket")
    if ceiling is not None:
        lo, hi = (v / raw for v in r["range"]["kernel behind the socket"])
        left = MANY / (0.8 * raw) * 1e6 - MANY / ceiling * 1e6
        lines += [f"The kernel behind the socket (`bench.ceiling`: a loop like the daemon's under the same load, one "
                  f"kernel call a turn and a pre-encoded reply a message; no decode, queues, planning or encoding): "
                  f"{ceiling:,.0f} stream-steps/s, {ceiling / raw:.2f}× the raw kernel (rounds "
                  f"{lo:.2f}–{hi:.2f}×), the ceiling of any request path here; 0.8× leaves the request path "
                  f"{left:.1f} µs a message.", ""]
    inproc = r["median"].get("in process")
    if inproc is not None:
        lo, hi = (v / raw for v in r["range"]["in process"])
        rest = MANY / inproc * 1e6 - kernel_us
        lines += [f"The request path without the socket (`in_process`: the daemon's WireCore and EngineCore in this "
                  f"process, {FLOOR_TURN} messages submitted a turn, then one step): {inproc:,.0f} stream-steps/s, "
                  f"{inproc / raw:.2f}× the raw kernel (rounds {lo:.2f}–{hi:.2f}×); decoding, admission, planning, "
                  f"replies and encoding take about {rest:.1f} µs a message there"
                  + ("." if left is None else f", against the {left:.1f} µs left them."), ""]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.splitlines()[0])
    common.add_doc_options(ap)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--block", type=float, default=BLOCK_S, help="seconds per timed block")
    args = ap.parse_args(argv)
    common.resolve_doc(args)
    common.exit_on_sigterm()
    text = report(run(args.rounds, args.block))
    common.publish("wire", text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
