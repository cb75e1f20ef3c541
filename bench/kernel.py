"""Kernel benchmark: one LSTM step for N streams, lstm-stream against torch and onnxruntime.

    python -m bench.kernel            # full run (report to bench-results/)
    python -m bench.kernel --write-docs   # also its section of docs/benchmarks.md and docs/kernel.png
    python -m bench.kernel --quick    # smoke run: a few sizes, report to bench-results/ only

Per shape, thread count and streams per call, every contender is built from the same weights in this one
process and timed interleaved (bench/common.py); the whole sweep runs twice (two passes) and the table gives
the mean of the two medians with their spread. All contenders are cross-checked against each other first.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# torch's OpenMP threads spin for a while after each parallel region (OpenMP's default wait policy); with
# contenders interleaved in one process, one contender's spinning threads then steal the cores from the next
# one's. Passive waiting (set before torch loads its runtime) treats all alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import numpy as np  # noqa: E402

from . import common  # noqa: E402
from . import contenders as C  # noqa: E402

SHAPES = (C.Spec(8, 64), C.Spec(32, 256), C.Spec(8, 64, 2))
STREAMS = (1, 16, 256, 4096)
THREADS = (1, 2)
PLOT = common.ROOT / "docs" / "kernel.png"
FULL = dict(rounds=7, block_s=0.02, warmup_s=0.1)
QUICK = dict(rounds=3, block_s=0.004, warmup_s=0.01)


def contenders_for(n: int) -> list:
    """Contenders timed at n streams per call (Streams.step is one stream per call by definition)."""
    return [x for x in C.ALL if C.available(x) and (x != C.STEP or n == 1)]


def measure(spec, mods, n, threads, timing) -> dict:
    """{contender: seconds per call} for one configuration, all contenders interleaved."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, spec.I), dtype=np.float32)
    runs = {name: C.make(name, mods, n, threads) for name in contenders_for(n)}
    return common.interleaved({name: (lambda r=r: r.run(X)) for name, r in runs.items()}, **timing)


def sweep(shapes, streams, threads, passes, timing, log=print) -> dict:
    """{(label, threads, n, contender): [seconds per call of each pass]}."""
    out = {}
    mods = {spec: C.torch_modules(spec) for spec in shapes}
    for p in range(passes):
        for spec in shapes:
            for t in threads:
                for n in streams:
                    res = measure(spec, mods[spec], n, t, timing)
                    for name, sec in res.items():
                        out.setdefault((spec.label, t, n, name), []).append(sec)
                    best = min(res, key=res.get)
                    log(f"pass {p + 1}: {spec.label:14s} threads={t} N={n:5d}  fastest {best} "
                        f"{res[best] * 1e6:.1f} µs")
    return out


def api_name(n: int) -> str:
    """The public lstm-stream call a user makes for n streams."""
    return C.STEP if n == 1 else C.STEP_MANY


def rows_for(spec, results, streams, threads, peak) -> list:
    rows = []
    for t in threads:
        for n in streams:
            api = results.get((spec.label, t, n, api_name(n)))
            api_s = float(np.mean(api)) if api else None
            for name in C.ALL:
                v = results.get((spec.label, t, n, name))
                if not v:
                    continue
                sec = float(np.mean(v))
                gflops = spec.flops_per_stream() * n / sec / 1e9
                ratio = common.fmt(sec / api_s, 3) + "×" if api_s else "n/a"
                rows.append([t, n, name, common.fmt(sec * 1e6), f"±{common.spread(*v[:2]) * 50:.1f}%"
                             if len(v) > 1 else "n/a", common.fmt(n / sec), common.fmt(gflops),
                             f"{gflops / peak[str(t)] * 100:.1f}%", ratio])
    return rows


def get(results, label, t, n, name):
    v = results.get((label, t, n, name))
    return float(np.mean(v)) if v else None


def goals(results, peak) -> list:
    """Goal lines (met / not met with the figures) from the issue; n/a when a size was not run."""
    a, b = SHAPES[0].label, SHAPES[1].label
    lines = []
    step, cell, ort = (get(results, a, 1, 1, x) for x in (C.STEP, C.TORCH_CELL, C.ORT))
    if step and cell:
        lines.append(common.goal_line("1 stream/call (I=8 H=64, 1 thread): Streams.step ≥ 8× nn.LSTMCell",
                                      cell / step >= 8, f"{cell / step:.2f}×: {step * 1e6:.1f} vs "
                                      f"{cell * 1e6:.1f} µs"))
    if step and ort:
        lines.append(common.goal_line("1 stream/call (I=8 H=64, 1 thread): Streams.step ≥ 5× onnxruntime",
                                      ort / step >= 5, f"{ort / step:.2f}×: {step * 1e6:.1f} vs "
                                      f"{ort * 1e6:.1f} µs"))
    flops = SHAPES[1].flops_per_stream() * 4096 / 1e9
    for t in (1, 2):
        many, ort = get(results, b, t, 4096, C.STEP_MANY), get(results, b, t, 4096, C.ORT)
        if many and ort:
            lines.append(common.goal_line(f"4096 streams/call (I=32 H=256, {t} thread{'s' * (t > 1)}): "
                                          "step_many ≥ 1.2× onnxruntime", ort / many >= 1.2,
                                          f"{ort / many:.2f}×: {many * 1e3:.2f} vs {ort * 1e3:.2f} ms"))
    k1, k2 = get(results, b, 1, 4096, C.KERNEL), get(results, b, 2, 4096, C.KERNEL)
    if k1:
        frac = flops / k1 / peak["1"]
        lines.append(common.goal_line("4096 streams/call (I=32 H=256, 1 thread): kernel ≥ 80% of matmul peak",
                                      frac >= 0.8, f"{frac * 100:.1f}%: {flops / k1:.1f} of "
                                      f"{peak['1']:.1f} GFLOP/s"))
    if k1 and k2 and "2" in peak:
        lines.append(common.goal_line("... scaling on 2 threads (taken as ≥ 1.6× the 1-thread rate)",
                                      k1 / k2 >= 1.6, f"{k1 / k2:.2f}×; {flops / k2 / peak['2'] * 100:.1f}% "
                                      f"of the 2-thread peak {peak['2']:.1f} GFLOP/s"))
    return lines


def invariant_cost(shapes, streams, timing, log=print) -> dict:
    """{(label, n): (step_many s, BLAS path s)} at 1 thread, the two interleaved, two passes each; run after
    everything else, since the BLAS path sets process-wide BLAS threading (OpenBLAS workers left spinning
    took the other contenders' cores when it ran inside the main sweep)."""
    if not C.available(C.BLAS):
        return {}
    out = {}
    mods = {spec: C.torch_modules(spec) for spec in shapes}
    for spec in shapes:
        for n in [n for n in streams if n >= 256]:
            X = np.random.default_rng(n).standard_normal((n, spec.I), dtype=np.float32)
            a, b = C.make(C.STEP_MANY, mods[spec], n, 1), C.make(C.BLAS, mods[spec], n, 1)
            err = float(np.max(np.abs(a.run(X) - b.run(X))))
            if not err <= C.TOLERANCE:
                raise AssertionError(f"{spec.label}, {n} streams: the BLAS path differs by {err:.3g}")
            times = [common.interleaved({"many": lambda: a.run(X), "blas": lambda: b.run(X)}, **timing)
                     for _ in range(2)]
            out[(spec.label, n)] = (float(np.mean([t["many"] for t in times])),
                                    float(np.mean([t["blas"] for t in times])))
            log(f"invariant cost: {spec.label:14s} N={n:5d}  step_many {out[(spec.label, n)][0] * 1e6:.0f} µs, "
                f"BLAS path {out[(spec.label, n)][1] * 1e6:.0f} µs")
    return out


def cost_lines(cost, results) -> list:
    """The section on what invariant 2 costs: a table and the 4096-stream line beside onnxruntime."""
    if not cost:
        return []
    lines = ["### What invariant 2 costs", "",
             "A path lstm-stream does not offer: each layer's gate sums for the whole batch as one numpy BLAS "
             "product (1 thread, limited with threadpoolctl), then lstm-stream's own cell and head (Numba). "
             "A BLAS orders each sum by the matrix shape, so a stream's bits would depend on its batch. Timed "
             "last, interleaved with `Streams.step_many`, two passes; outputs agree within "
             f"{C.TOLERANCE:g}.", "",
             common.table(["shape", "streams/call", "step_many µs", "BLAS path µs", "BLAS path faster by"],
                          [[label, f"{n:,}", common.fmt(m * 1e6), common.fmt(b * 1e6), f"{m / b:.2f}×"]
                           for (label, n), (m, b) in cost.items()]), ""]
    key = (SHAPES[1].label, 4096)
    ort = get(results, SHAPES[1].label, 1, 4096, C.ORT)
    if key in cost and ort:
        m, b = cost[key]
        lines += [f"At 4,096 streams (I=32 H=256, 1 thread) the BLAS path would be {ort / b:.2f}× onnxruntime "
                  f"(step_many: {ort / m:.2f}× in this measurement).", ""]
    return lines


def thread_settings(threads) -> str:
    import torch

    return (f"threads {list(threads)} set equally for every contender: torch.set_num_threads, onnxruntime "
            f"intra_op_num_threads (inter_op 1, sequential), lstm-stream via Streams(threads=) (its own worker "
            f"threads beside the caller's); torch interop threads {torch.get_num_interop_threads()}")


def report(results, peak, args, check_err, cost=None) -> str:
    shapes = [s for s in SHAPES if s.label in {k[0] for k in results}]
    pk = ", ".join(f"{t} thread{'s' * (t != '1')}: {v:.1f} GFLOP/s" for t, v in peak["gflops"].items())
    lines = ["## Kernel: one step of N streams", "",
             "`python -m bench.kernel` — lstm-stream's public API (`Streams.step` for one stream, "
             "`Streams.step_many` for N) and the raw kernel each of those runs (`step_one` for one stream; `step_ragged`, "
             "shared out over the worker threads for large batches, for N), on "
             "preallocated arrays, no API cost) against torch `nn.LSTMCell` (states in and out), torch "
             "`nn.LSTM` on a length-1 sequence, and an onnxruntime session of an ONNX `LSTM` node "
             "(initial_h/initial_c) + MatMul/Add head. Each shape has a linear head of 4 outputs. "
             "Time per call is the median over interleaved rounds; two passes, ± is half their spread. "
             "GFLOP/s counts 2·4H·(I+H) per stream and layer; % peak is against a "
             f"{peak['n']}² float32 numpy matmul on the same thread count, measured in the same run "
             f"({pk}; BLAS: {peak['blas']}"
             + (f"; unset for it: {', '.join(peak['unset'])}" if peak.get("unset") else "") + "). "
             "'× API' is the contender's time over lstm-stream's public call at that size (> 1: lstm-stream "
             "is faster).", ""]
    lines += common.machine_lines({"thread settings": thread_settings(args.threads),
                                   "cross-check": f"all contenders agree within {C.TOLERANCE:g} on every "
                                                  f"shape (largest difference {check_err:.2g})",
                                   "mode": "quick (smoke run: figures not meaningful)" if args.quick
                                   else f"full ({FULL['rounds']} rounds per pass, 2 passes)"})
    lines += ["", "### Goals", ""] + goals(results, peak["gflops"]) + [""]
    header = ["threads", "streams/call", "contender", "µs/call", "spread", "steps/s", "GFLOP/s", "% peak",
              "× API"]
    for spec in shapes:
        lines += [f"### {spec.label}, head O={spec.O}", "",
                  common.table(header, rows_for(spec, results, args.streams, args.threads, peak["gflops"])), ""]
    lines += ["![steps/s against streams per call](kernel.png)", ""]
    lines += cost_lines(cost, results)
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    """steps/s against streams per call, log-log; one panel per shape, one colour per contender
    (solid: 1 thread, dashed: 2 threads)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    labels = [s.label for s in SHAPES if s.label in {k[0] for k in results}]
    fig, axes = plt.subplots(1, len(labels), figsize=(5.2 * len(labels), 4.6), squeeze=False)
    colors = dict(zip(C.ALL, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = {1: "-", 2: "--"}
    for ax, label in zip(axes[0], labels):
        for name in C.ALL:
            for t, style in styles.items():
                pts = sorted((n, n / float(np.mean(v))) for (lb, tt, n, nm), v in results.items()
                             if lb == label and tt == t and nm == name)
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=4, color=colors[name])
        ax.set(xscale="log", yscale="log", xlabel="streams per call", ylabel="steps/s (streams × calls/s)",
               title=label)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colors[n], marker="o", ms=4, label=n) for n in C.ALL]
    handles += [Line2D([], [], color="grey", ls=s, label=f"{t} thread{'s' * (t > 1)}") for t, s in styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream kernel benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--streams", type=int, nargs="+", default=None, help=f"streams per call {STREAMS}")
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    a.streams = a.streams or ([1, 256] if a.quick else list(STREAMS))
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    common.sample_busy()
    from . import peak as peak_mod

    worst = 0.0
    for spec in SHAPES:  # correctness first: a wrong contender's timing means nothing
        for n in (1, 3, 300):
            worst = max(worst, C.crosscheck(spec, n=n, threads=max(args.threads)))
    print(f"cross-check: all contenders agree (largest difference {worst:.2g})", flush=True)
    peak = peak_mod.measure(args.threads, quick=args.quick)
    print(f"matmul peak: {peak}", flush=True)
    timing = QUICK if args.quick else FULL
    results = sweep(SHAPES, args.streams, args.threads, 2, timing, log=lambda s: print(s, flush=True))
    again = peak_mod.measure(args.threads, quick=args.quick)  # before and after: keep the better of the two
    peak["gflops"] = {t: max(v, again["gflops"][t]) for t, v in peak["gflops"].items()}
    cost = invariant_cost(SHAPES, args.streams, timing, log=lambda s: print(s, flush=True))
    text = report(results, peak, args, worst, cost)
    if common.publish("kernel", text, args):
        plot(results, args.doc.parent / PLOT.name)
        print(f"wrote {args.doc.parent / PLOT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
