"""Memory benchmark: resident memory with 1,000,000 streams (I=8, H=64, 1 layer) against what they need.

    python -m bench.memory             # full run (report to bench-results/)
    python -m bench.memory --write-docs   # also its section of docs/benchmarks.md
    python -m bench.memory --quick    # 100,000 streams; report to bench-results/ only

Each measurement is a fresh child process (`python -m bench.memory --child ...`) so nothing else lives in its
heap: it loads the model, makes an empty Streams and steps it once (kernels loaded), reads VmRSS from
/proc/self/status (the baseline), creates the streams with Streams.step_many in chunks, and reads VmRSS and
VmHWM (peak) again. 'Needed' is model.state_bytes × n plus the model's weights. Int ids and str ids are
measured separately (a str id costs a Python string object); each twice.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import common

N_FULL, N_QUICK = 1_000_000, 100_000
CHUNK = 65_536
I, H, O = 8, 64, 4


def proc_status() -> dict:
    """{'VmRSS': bytes, 'VmHWM': bytes} of this process."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024  # kB
    return out


def child(n: int, id_kind: str) -> dict:
    """Runs in the child: the measurement itself."""
    import lstm_stream as ls

    rng = np.random.default_rng(0)
    t = {"weight_ih_l0": rng.normal(0, 0.3, (4 * H, I)), "weight_hh_l0": rng.normal(0, 0.3, (4 * H, H)),
         "bias_ih_l0": np.zeros(4 * H), "bias_hh_l0": np.zeros(4 * H),
         "head.weight": rng.normal(0, 0.3, (O, H)), "head.bias": np.zeros(O)}
    model = ls.LSTMModel.from_arrays(t, dtype="float32")
    streams = ls.Streams(model, threads=1)
    warm = -1 if id_kind == "int" else "warm-up"  # compiles the kernels; an id of the kind measured
    streams.step(warm, np.zeros(I, np.float32))
    streams.drop(warm)
    gc.collect()
    base = proc_status()
    X = rng.standard_normal((CHUNK, I), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        ids = range(start, stop) if id_kind == "int" else [f"sensor-{k:07d}" for k in range(start, stop)]
        streams.step_many(ids, X[: stop - start])
    del X
    gc.collect()
    after = proc_status()
    model_bytes = sum(a.nbytes for a in model.tensors().values())
    return {"id_map": id_map_bytes(streams), "n": n, "ids": id_kind, "base": base["VmRSS"], "rss": after["VmRSS"], "hwm": after["VmHWM"],
            "state_bytes": model.state_bytes, "model_bytes": model_bytes, "streams": len(streams),
            "capacity": streams.stats()["capacity"]}


def id_map_bytes(streams) -> int:
    """Bytes of the store's id bookkeeping: the str id arena, offsets and table, the int id table and slot ->
    id array, the per-slot kind (a breakdown only: 0 if the store has no such figure)."""
    return getattr(getattr(streams, "_store", None), "id_nbytes", 0)


def measure(n: int, id_kind: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.memory", "--child", "--n", str(n), "--ids", id_kind],
                         env=common.clean_env(), capture_output=True, text=True, timeout=900, cwd=common.ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(runs: dict, args) -> str:
    mb = 1e6
    lines = ["## Memory: 1,000,000 streams", "",
             "`python -m bench.memory` — a fresh process per measurement: model I=8 H=64 (1 layer, head 4), "
             "`Streams(threads=1)` stepped once (one stream of the id kind measured, then dropped), then n "
             "streams created with `step_many` in chunks of "
             f"{CHUNK:,}. Resident memory from /proc/self/status. 'Needed' = model.state_bytes × n + the "
             "model's weights; 'streams added' = RSS after − RSS before creating them (the interpreter, numpy, "
             "numba and the compiled kernels are the baseline); 'id map' = the store's id bookkeeping: the str ids' "
             "arena, per-slot offsets and hash table (ids/strs.py), the int id hash table and slot -> id array, "
             "the per-slot kind. Two runs each; ± is half their spread.", ""]
    lines += common.machine_lines({"mode": "quick (smoke run: 100,000 streams)" if args.quick else "full"})
    rows, goal = [], []
    for kind, rs in runs.items():
        r = rs[0]
        need = r["state_bytes"] * r["n"] + r["model_bytes"]
        added = [x["rss"] - x["base"] for x in rs]
        total = [x["rss"] for x in rs]
        ratio = [a / need for a in added]
        sp = f" (±{common.spread(*added[:2]) * 50:.1f}%)" if len(added) > 1 else ""
        rows.append([f"{r['n']:,} streams, {kind} ids", f"{need / mb:,.1f}", f"{np.mean(added) / mb:,.1f}{sp}",
                     f"{np.mean(ratio):.2f}×", f"{r['id_map'] / mb:,.1f}", f"{np.mean(total) / mb:,.1f}", f"{np.mean(total) / need:.2f}×",
                     f"{np.mean([x['hwm'] for x in rs]) / mb:,.1f}", f"{r['base'] / mb:,.1f}",
                     f"{r['capacity']:,}"])
        goal.append(common.goal_line(f"{r['n']:,} streams ({kind} ids) within 1.2× of state bytes + model",
                                     np.mean(ratio) <= 1.2, f"streams added {np.mean(ratio):.2f}× of "
                                     f"{need / mb:,.1f} MB; whole process {np.mean(total) / need:.2f}×"))
    lines += ["", "### Goals", "", *goal, "",
              common.table(["", "needed MB", "streams added MB", "added / needed",
                            "of which id map MB", "process RSS MB",
                            "RSS / needed", "peak RSS MB", "baseline RSS MB", "slab capacity"], rows), ""]
    return "\n".join(lines)


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream memory benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help=f"{N_QUICK:,} streams")
    ap.add_argument("--n", type=int, default=None, help=f"streams (default {N_FULL:,})")
    ap.add_argument("--ids", choices=("int", "str"), default="int", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    a.n = a.n or (N_QUICK if a.quick else N_FULL)
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    if not args.child:
        common.sample_busy()
    if args.child:
        print(json.dumps(child(args.n, args.ids)))
        return 0
    runs = {}
    for p in range(2):
        for kind in ("int", "str"):
            runs.setdefault(kind, []).append(measure(args.n, kind))
            r = runs[kind][-1]
            print(f"run {p + 1}, {kind} ids: RSS {r['base'] / 1e6:.0f} -> {r['rss'] / 1e6:.0f} MB", flush=True)
    text = report(runs, args)
    common.publish("memory", text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
