"""Snapshot benchmark: what a snapshot of n streams (I=8, H=64, 1 layer, str ids) costs the serving loop.

    python -m bench.snapshot --streams 1000000 2000000

Each n runs in a fresh child process (`--child N`), which builds the streams with step_many and measures:
  old          the synchronous path before background snapshots: every id and a copy of every array
               (export_slots of all slots), then the file: the loop is stopped for all of it
  blocks       the synchronous path now (shutdown, the `snapshot` request): the file a block at a time
  copy         option (a): the copy alone (export_slots of all slots), the stall a thread writer pays
  fork         option (b), as the daemon's timer does it: Snapshots.start (fork) while the loop keeps
               serving turns of 256 random one-sample steps until the child is done
  fork-worst   the same with every stream stepped while the child writes (its child held by SIGSTOP until
               the loop has written every page of the slabs): the most memory a fork snapshot can take
  fork-split   fork again after that, huge pages left split by the writes (the daemon before it merged them)
  fork-merged  fork again after engine/hugepages.py merged them back, as the daemon does after each write
               (its row's write s: the merge's seconds; turn p50 / max: serving turns during the merge)
  request      a `snapshot` request through EngineCore, as the daemon serves it (after a merge): the stall
               is its turn; turns are served until its reply (the file durable)
Stall: time the loop thread is blocked (start() for fork). Extra memory: peak over the write of (this
process's RSS + the child's private memory, /proc/PID/smaps_rollup) minus this process's RSS before; for
the in-process paths, VmHWM (reset by /proc/self/clear_refs) minus VmRSS before.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common

I, H, O = 8, 64, 4
CHUNK = 65_536
TURN = 256  # one-sample steps per serving turn while a fork snapshot is written


def kb_field(path, *names) -> int:
    """Sum of the named 'Name: N kB' fields of a /proc file, in bytes (0 if the process is gone)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines() if line.split(":")[0] in names)


def rss() -> int:
    return kb_field("/proc/self/status", "VmRSS")


def peak_of(fn):
    """(seconds, result, peak extra RSS) of fn() run in this process."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return seconds, out, kb_field("/proc/self/status", "VmHWM") - before


def build(n):
    import lstm_stream as ls
    rng = np.random.default_rng(0)
    t = {"weight_ih_l0": rng.normal(0, 0.3, (4 * H, I)), "weight_hh_l0": rng.normal(0, 0.3, (4 * H, H)),
         "bias_ih_l0": np.zeros(4 * H), "bias_hh_l0": np.zeros(4 * H),
         "head.weight": rng.normal(0, 0.3, (O, H)), "head.bias": np.zeros(O)}
    streams = ls.Streams(ls.LSTMModel.from_arrays(t, dtype="float32"))
    ids = [f"sensor-{k:07d}" for k in range(n)]
    X = rng.standard_normal((CHUNK, I), dtype=np.float32)
    for a in range(0, n, CHUNK):
        streams.step_many(ids[a:a + CHUNK], X[:len(ids[a:a + CHUNK])])
    return streams, ids


def fork_run(snaps, streams, ids, worst: bool, core=None) -> dict:
    """Snapshots.start, then serve turns until the child is done; the figures of the fork rows. With an
    EngineCore (the request row): a `snapshot` request's turn instead of start, and serving turns until
    its reply (the stall: that turn)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((TURN, I), dtype=np.float32)
    base, turns = rss(), []
    t0 = time.perf_counter()
    if core is None:
        snaps.start("bench")
    else:
        from lstm_stream import protocol as P
        core.submit("bench", P.parse_request({"v": 1, "id": 1, "op": "snapshot"}))
        answered = core.step()
    stall = time.perf_counter() - t0
    pid, extra, child_peak = snaps.status()["writer"], 0, 0

    def sample():
        nonlocal extra, child_peak
        child = kb_field(f"/proc/{pid}/smaps_rollup", "Private_Clean", "Private_Dirty")
        child_peak = max(child_peak, child)
        extra = max(extra, rss() + child - base)
    if worst:
        os.kill(pid, signal.SIGSTOP)
        for a in range(0, len(ids), CHUNK):
            # each chunk's ids made afresh, as a daemon decodes them from a request: stepping the list that
            # `build` keeps would write every str object's refcount, copying ~130 MB of this process's heap
            # (at 2M) that a daemon does not hold (its ids live in the id table's arena, lstm_stream/ids/)
            chunk = [f"sensor-{k:07d}" for k in range(a, min(a + CHUNK, len(ids)))]
            t = time.perf_counter()
            streams.step_many(chunk, np.resize(x, (len(chunk), I)))
            turns.append(time.perf_counter() - t)
        sample()
        os.kill(pid, signal.SIGCONT)
    while snaps.busy if core is None else not answered:
        batch = [f"sensor-{k:07d}" for k in rng.integers(0, len(ids), TURN)]  # fresh str objects (see above)
        t = time.perf_counter()
        if not worst:
            streams.step_many(batch, x)
        if core is None:
            snaps.poll()
        else:
            core.housekeep()
            answered = core.step()
        turns.append(time.perf_counter() - t)  # a turn: the steps and the poll (not the sampling below)
        sample()
        time.sleep(0.0005)
    total = time.perf_counter() - t0
    if core is not None:
        assert answered[0][1].ok, answered[0][1].message
    return {"stall": stall, "total": total, "extra": extra, "child_private": child_peak,
            "turns": len(turns), "turn_max": max(turns), "turn_p50": float(np.median(turns)),
            "bytes": snaps.last["bytes"]}


def merge_run(streams, ids) -> dict:
    """engine/hugepages.py's merge of the hot arrays, serving turns meanwhile; its figures."""
    from engine.hugepages import Merger
    merger, rng = Merger(), np.random.default_rng(3)
    x = rng.standard_normal((TURN, I), dtype=np.float32)
    huge, vm = kb_field("/proc/self/smaps_rollup", "AnonHugePages"), vmstat()
    t0, turns = time.perf_counter(), []
    if not merger.start(streams.hot_arrays()):
        return {"why_not": merger.why_not or "not started", "seconds": 0.0, "turns": []}
    while merger.running:
        batch = [ids[k] for k in rng.integers(0, len(ids), TURN)]
        t = time.perf_counter()
        streams.step_many(batch, x)
        turns.append(time.perf_counter() - t)
        time.sleep(0.0005)
    merger.join()
    return {**merger.status(), "wall": time.perf_counter() - t0, "huge_before": huge,
            "huge_after": kb_field("/proc/self/smaps_rollup", "AnonHugePages"),
            "turn_p50": float(np.median(turns)) if turns else 0.0, "turn_max": max(turns, default=0.0),
            "vmstat": {k: v - vm.get(k, 0) for k, v in vmstat().items()}}


def vmstat() -> dict:
    """The kernel's compaction and huge page collapse counters (/proc/vmstat; {} where there is none)."""
    try:
        lines = Path("/proc/vmstat").read_text().split("\n")
    except OSError:
        return {}
    keep = ("compact_stall", "compact_fail", "compact_success", "thp_collapse_alloc", "thp_collapse_alloc_failed")
    return {k: int(v) for k, v in (line.split() for line in lines if line) if k in keep}


def serving_baseline(streams, ids) -> float:
    """Median time of a serving turn (TURN random one-sample steps) without a snapshot."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((TURN, I), dtype=np.float32)
    times = []
    for _ in range(200):
        batch = [ids[k] for k in rng.integers(0, len(ids), TURN)]
        t = time.perf_counter()
        streams.step_many(batch, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def child(n: int) -> dict:
    from engine.core import EngineConfig, EngineCore
    from engine.persistence import Snapshots
    from lstm_stream.snapshot import write_snapshot
    t0 = time.perf_counter()
    streams, ids = build(n)
    out = {"n": n, "build_s": time.perf_counter() - t0, "rss": rss(), "state_bytes": n * streams.model.state_bytes}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SNAPSHOT_DIR")) as d:
        path = os.path.join(d, "old.lstmsnap")

        def old():
            all_ids, arrays = streams.export_all()
            return write_snapshot(path, fingerprint=streams.model.fingerprint, ids=all_ids, arrays=arrays)
        out["turn_p50_idle"] = serving_baseline(streams, ids)
        snaps = Snapshots(streams, d, method="fork", merge_huge_pages=False)
        # first: the others leave freed memory
        for name, worst in (("fork", False), ("fork-worst", True), ("fork-split", False)):
            out[name] = fork_run(snaps, streams, ids, worst)
            print(f"{n:,} {name}: {out[name]}", file=sys.stderr, flush=True)
        out["merge"] = merge_run(streams, ids)
        out["fork-merged"] = fork_run(snaps, streams, ids, False)
        print(f"{n:,} merge: {out['merge']}\n{n:,} fork-merged: {out['fork-merged']}", file=sys.stderr, flush=True)
        snaps.wait()
        out["merge"]["second"] = merge_run(streams, ids)  # the pages fork-merged's turns split, merged again
        core = EngineCore(streams, EngineConfig(metrics_every=1e9), snapshots=snaps)
        out["request"] = fork_run(snaps, streams, ids, False, core=core)
        print(f"{n:,} request: {out['request']}", file=sys.stderr, flush=True)
        for name, fn in (("blocks", lambda: streams.save_snapshot(path)),
                         ("copy", lambda: streams.export_all()[1]["h"].nbytes), ("old", old)):
            seconds, _, extra = peak_of(fn)
            out[name] = {"stall": seconds, "total": seconds, "extra": extra}
            print(f"{n:,} {name}: {seconds:.3f} s, +{extra / 1e6:.0f} MB", file=sys.stderr, flush=True)
    return out


def report(runs) -> str:
    mb = 1e6
    rows = []
    for r in runs:
        for name in ("old", "blocks", "copy", "fork", "fork-worst", "fork-split", "fork-merged", "request"):
            x = r[name]
            turns = (f"{1e3 * x['turn_p50']:.2f} / {1e3 * x['turn_max']:.1f}" if "turn_max" in x else "")
            rows.append([f"{r['n']:,}", name, f"{1e3 * x['stall']:,.1f}", f"{x['total']:.2f}",
                         f"{x['extra'] / mb:,.0f}", turns])
    lines = [common.table(["streams", "path", "loop stall ms", "write s", "extra memory MB",
                           "turn p50 / max ms while writing"], rows), ""]
    for r in runs:
        lines.append(f"- {r['n']:,} streams: state {r['state_bytes'] / mb:,.0f} MB, process RSS "
                     f"{r['rss'] / mb:,.0f} MB, serving turn ({TURN} one-sample steps) p50 "
                     f"{1e3 * r['turn_p50_idle']:.2f} ms without a snapshot; fork child's own private memory "
                     f"peak {r['fork']['child_private'] / mb:,.0f} MB (idle loop) / "
                     f"{r['fork-worst']['child_private'] / mb:,.0f} MB (every page written)")
        m = r["merge"]
        lines.append(f"- {r['n']:,} streams, the merge before fork-merged: "
                     + (f"not run ({m['why_not']})" if "why_not" in m and not m.get("runs") else
                        f"{m['merged_bytes'] / mb:,.0f} MB merged ({m['failed_bytes'] / mb:,.0f} MB refused) in "
                        f"{m['seconds']:.2f} s, huge pages {m['huge_before'] / mb:,.0f} -> {m['huge_after'] / mb:,.0f} "
                        f"MB; serving turns meanwhile p50 {1e3 * m['turn_p50']:.2f} / max {1e3 * m['turn_max']:.1f} ms; "
                        f"kernel counters {m.get('vmstat') or 'n/a'}"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="snapshot stall and memory (see docs/benchmarks.md)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1_000_000, 2_000_000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    runs = []
    for n in args.streams:
        p = subprocess.run([sys.executable, "-m", "bench.snapshot", "--child", str(n)], cwd=common.ROOT,
                           env=common.clean_env(), stdout=subprocess.PIPE, timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"child for {n} streams failed")
        runs.append(json.loads(p.stdout.decode().strip().splitlines()[-1]))
    text = report(runs)
    print(text)
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / f"snapshot-{int(time.time())}.json").write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
