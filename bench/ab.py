"""A/B of two versions of lstm-stream on this machine, interleaved so that the host's drift falls on both:

    python -m bench.ab HEAD~1 HEAD                     # the daemon: 100 streams/message, 1 sample/message, 1 in flight
    python -m bench.ab main . --what kernel            # the kernel: step_many of 600 among 10,000 streams, I=8 H=64
    python -m bench.ab main . --what kernel --shape 32,256 --streams 4096
    python -m bench.ab v1 v2 --rounds 12 --threads 2
    python -m bench.ab HEAD~1 HEAD --what cpu          # the daemon's own CPU per request (Linux), --spin-us 0

Why: this host's speed moves by ±30% from one quarter of an hour to the next, so two runs of `python -m
bench.server` made minutes apart cannot tell a 5% change from the weather. Here both versions are measured in
every round, one right after the other (the order alternating), and what is printed is the median of the
per-round ratios B/A with their range: a change is real when that range stays on one side of 1.

A version is a git revision (exported with `git archive` into a temporary directory) or a directory holding a
checkout ('.' is the working tree, uncommitted changes included). Each runs from its own copy in its own
processes: one daemon per version (`serve --threads N` on a free loopback port, loaded by one DEALER), or,
for the kernel, one child process per version and round. The model is random (seeded), I=8 H=64 O=4 for the
daemon. Nothing is written to docs/; no figure here is a goal.

`--what cpu` loads the same daemons, started with `--spin-us 0` (so that no polling is counted), and reads
the CPU time of each daemon's main thread (the loop: decode, plan, kernel, encode, socket calls) from /proc
around every block: CPU µs per request. On a host where the load generator, the daemon and their ZeroMQ I/O
threads share few cores, throughput moves with whoever gets the CPU; the loop's own CPU per request moves
much less, so it shows a change of a few microseconds per request that throughput cannot.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

MANY, MANY_STREAMS, MANY_WINDOW = 100, 10_000, 16   # as bench.server
ONE_STREAMS, ONE_WINDOW = 1024, 256
LAT_COUNT = 200

# The kernel child: the version's lstm_stream comes first on its path. Only the public API, so that any
# version since step_many took a list of ids can be timed. Prints ns per stream-step (median over calls).
KERNEL_CHILD = r"""
import sys, time
import numpy as np
import lstm_stream as ls
I, H, n_streams, per_call, calls, seed, threads = (int(a) for a in sys.argv[1:8])
rng = np.random.default_rng(seed)
t = {"weight_ih_l0": rng.normal(0, 0.3, (4 * H, I)), "weight_hh_l0": rng.normal(0, 0.3, (4 * H, H)),
     "bias_ih_l0": rng.normal(0, 0.1, 4 * H), "bias_hh_l0": rng.normal(0, 0.1, 4 * H),
     "head.weight": rng.normal(0, 0.3, (4, H)), "head.bias": rng.normal(0, 0.1, 4)}
s = ls.Streams(ls.LSTMModel.from_arrays(t, dtype="float32"), threads=threads, initial_capacity=n_streams)
ids = list(range(n_streams))
for a in range(0, n_streams, 4096):
    s.step_many(ids[a:a + 4096], rng.standard_normal((len(ids[a:a + 4096]), I)).astype(np.float32))
group = min(100, per_call)
X = rng.standard_normal((per_call, I)).astype(np.float32)
times = []
for c in range(calls):  # per call: runs of 100 consecutive streams at random places, as a daemon's turn
    starts = rng.choice(n_streams // group, per_call // group, replace=False) * group
    picked = [i for a in starts.tolist() for i in range(a, a + group)]
    t0 = time.perf_counter()
    s.step_many(picked, X[:len(picked)])
    times.append((time.perf_counter() - t0) / len(picked))
print(float(np.median(times[calls // 5:])) * 1e9)
"""


def export(version: str, into: Path) -> Path:
    """A directory holding `version`: the directory itself if it is a checkout, else the git revision's tree."""
    p = Path(version)
    if p.is_dir() and (p / "lstm_stream").is_dir():
        return p.resolve()
    into.mkdir(parents=True)
    try:
        arch = subprocess.run(["git", "-C", str(common.ROOT), "archive", version], capture_output=True)
    except FileNotFoundError:  # no git here
        raise SystemExit(f"{version!r} is not a directory holding a checkout (with lstm_stream/), and git is "
                         "not installed to read it as a revision") from None
    if arch.returncode != 0:
        raise SystemExit(f"{version!r} is neither a directory holding a checkout (with lstm_stream/) nor a git "
                         f"revision of {common.ROOT}: {arch.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=arch.stdout, check=True)
    return into


def ratios(a: list, b: list) -> str:
    """'median (min-max)' of the per-round ratios b/a."""
    r = np.array(b) / np.array(a)
    return f"{np.median(r):.3f} ({r.min():.3f}-{r.max():.3f})"


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) that a process's main thread has used (Linux: /proc/PID/task/PID/stat)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # (the command name may hold spaces)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_server(dirs: dict, args, tmp: Path) -> list:
    import zmq

    import lstm_stream as ls
    from bench.loadgen import LoadGen, step_pool

    rng = np.random.default_rng(0)
    t = {"weight_ih_l0": rng.normal(0, 0.3, (256, 8)), "weight_hh_l0": rng.normal(0, 0.3, (256, 64)),
         "bias_ih_l0": rng.normal(0, 0.1, 256), "bias_hh_l0": rng.normal(0, 0.1, 256),
         "head.weight": rng.normal(0, 0.3, (4, 64)), "head.bias": rng.normal(0, 0.1, 4)}
    model_path = str(tmp / "model.npz")
    ls.LSTMModel.from_arrays(t, dtype="float32").save(model_path)
    many = step_pool(MANY_STREAMS, 8, per_message=MANY, prefix="m")
    one, lat = step_pool(ONE_STREAMS, 8), step_pool(1, 8, prefix="lat")
    ctx = zmq.Context()
    try:
        with contextlib.ExitStack() as stack:
            gens = {}
            for name, d in dirs.items():
                endpoint = f"tcp://127.0.0.1:{common.free_port()}"
                cmd = [common.python(), "-m", "engine.cli", "serve", "--model", model_path, "--bind", endpoint,
                       "--log-level", "warning", "--threads", str(args.threads)]
                if args.what == "cpu":
                    cmd += ["--spin-us", "0"]
                # cwd: `python -m` puts the working directory first on the path
                proc = stack.enter_context(common.subprocess_server(
                    cmd, env=common.clean_env(PYTHONPATH=str(d)), log_path=tmp / f"{name}.log", cwd=d))
                gen = LoadGen(endpoint, ctx)
                stack.callback(gen.close)
                gen.wait_ready(120, proc)
                gen.throughput(many, MANY_WINDOW, args.block)  # creates the streams, warms the caches
                gen.throughput(one, ONE_WINDOW, args.block)
                gens[name] = (gen, proc.pid)
            res = {n: {"many": [], "one": [], "lat": []} for n in gens}
            for r in range(args.rounds):
                for name in (list(gens) if r % 2 == 0 else list(gens)[::-1]):
                    g, pid = gens[name]
                    if args.what == "cpu":  # µs of the loop's CPU per request
                        for key, pool, window in (("many", many, MANY_WINDOW), ("one", one, ONE_WINDOW)):
                            c0, t0 = main_thread_cpu_s(pid), time.perf_counter()
                            served = g.throughput(pool, window, args.block) * (time.perf_counter() - t0)
                            res[name][key].append((main_thread_cpu_s(pid) - c0) / served * 1e6)
                        continue
                    res[name]["many"].append(MANY * g.throughput(many, MANY_WINDOW, args.block))
                    res[name]["one"].append(g.throughput(one, ONE_WINDOW, args.block))
                    res[name]["lat"].append(float(np.median(g.latency(lat, LAT_COUNT))) * 1e6)
    finally:
        ctx.destroy(0)
    a, b = res["A"], res["B"]
    if args.what == "cpu":
        return [[f"daemon main-thread CPU µs per request, {MANY} streams per message (lower is better)",
                 f"{np.median(a['many']):.1f}", f"{np.median(b['many']):.1f}", ratios(a["many"], b["many"])],
                ["daemon main-thread CPU µs per request, 1 sample per message (lower is better)",
                 f"{np.median(a['one']):.1f}", f"{np.median(b['one']):.1f}", ratios(a["one"], b["one"])]]
    return [[f"samples/s, {MANY} streams per message ({MANY_WINDOW} in flight)", common.fmt(np.median(a["many"])),
             common.fmt(np.median(b["many"])), ratios(a["many"], b["many"])],
            [f"samples/s, 1 per message ({ONE_WINDOW} in flight)", common.fmt(np.median(a["one"])),
             common.fmt(np.median(b["one"])), ratios(a["one"], b["one"])],
            ["p50 µs, 1 in flight (lower is better)", f"{np.median(a['lat']):.0f}", f"{np.median(b['lat']):.0f}",
             ratios(a["lat"], b["lat"])]]


def run_kernel(dirs: dict, args) -> list:
    I, H = args.shape
    per_call = min(args.per_call, args.streams)
    res = {n: [] for n in dirs}
    for r in range(args.rounds):
        for name in (list(dirs) if r % 2 == 0 else list(dirs)[::-1]):
            out = subprocess.run([common.python(), "-c", KERNEL_CHILD, str(I), str(H), str(args.streams),
                                  str(per_call), str(args.calls), str(r), str(args.threads)],
                                 env=common.clean_env(PYTHONPATH=str(dirs[name])), cwd=dirs[name],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the kernel child of version {name} failed:\n{out.stderr[-3000:]}")
            res[name].append(float(out.stdout.split()[-1]))
    a, b = res["A"], res["B"]
    return [[f"ns per stream-step, I={I} H={H}, {per_call} of {args.streams} streams per call, {args.threads} "
             f"thread{'s' * (args.threads > 1)} (lower is better)", f"{np.median(a):.0f}", f"{np.median(b):.0f}", ratios(a, b)]]


def parse(argv):
    ap = argparse.ArgumentParser(description="interleaved A/B of two lstm-stream versions (see the module doc)")
    ap.add_argument("a", help="version A: a git revision, or a directory holding a checkout ('.': the tree)")
    ap.add_argument("b", help="version B, the same way")
    ap.add_argument("--what", choices=("server", "cpu", "kernel"), default="server")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; every figure of both versions in each")
    ap.add_argument("--block", type=float, default=None,
                    help="server, cpu: seconds per block (default 0.4; cpu 1.5: /proc counts in 10 ms ticks)")
    ap.add_argument("--threads", type=int, default=1, help="the daemons' --threads; kernel: Streams(threads=)")
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(8, 64),
                    help="kernel: I,H (default 8,64)")
    ap.add_argument("--streams", type=int, default=10_000, help="kernel: streams in the store")
    ap.add_argument("--per-call", type=int, default=600, help="kernel: streams stepped per call")
    ap.add_argument("--calls", type=int, default=300, help="kernel: timed calls per child")
    a = ap.parse_args(argv)
    if a.block is None:
        a.block = 1.5 if a.what == "cpu" else 0.4
    if a.what == "cpu" and not Path("/proc/self/task").is_dir():
        ap.error("--what cpu reads the daemons' CPU time from /proc (Linux)")
    if a.rounds < 1 or a.block <= 0 or a.threads < 1 or a.streams < 1 or a.per_call < 1 or a.calls < 5 \
            or len(a.shape) != 2 or min(a.shape) < 1:
        ap.error("--rounds, --threads, --streams, --per-call must be >= 1, --calls >= 5, --block > 0, "
                 "--shape two sizes >= 1")
    return a


def main(argv=None) -> int:
    args = parse(argv)
    common.exit_on_sigterm()
    common.sample_busy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = {"A": export(args.a, tmp / "A"), "B": export(args.b, tmp / "B")}
        rows = run_kernel(dirs, args) if args.what == "kernel" else run_server(dirs, args, tmp)
    lines = [f"A/B ({args.what}, {args.rounds} rounds, interleaved): A = {args.a}, B = {args.b}", ""]
    lines += [line for line in common.machine_lines({"threads": args.threads})
              if not line.startswith("- code measured")]  # (the checkout running this, not A or B)
    lines += ["", common.table(["figure", "A (median)", "B (median)", "B/A per round: median (min-max)"], rows)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
