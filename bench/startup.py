"""Start-up benchmark: from launching `lstm-stream serve` to its first reply, and the first 100 replies after it,
with a cold and a warm kernel cache.

    python -m bench.startup                # full run (report to bench-results/)
    python -m bench.startup --write-docs   # also its section of docs/benchmarks.md
    python -m bench.startup --quick        # smoke run: report to bench-results/ only

Cold: NUMBA_CACHE_DIR is a fresh, empty temporary directory and LSTM_STREAM_CACHE_DIR is unset, so every kernel
compiles (lstm_stream/jitcache.py keeps the package's compiled code under NUMBA_CACHE_DIR then; nothing of it
is anywhere else). Warm: the same directory again, now filled by the cold launch. A pass is one cold launch
then several warm ones, each pass with its own cache directory. The clock starts just before the process is
spawned and stops when the reply to a `step` request (sent at once, queued by ZeroMQ until the daemon binds)
arrives. Then 100 more requests, one at a time, of every kind serving takes (one stream and many, str and int
ids, ragged, state ops): their p99 and maximum show whether anything was left to compile after ready.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from . import common
from .contenders import Spec, torch_modules
from .servers import wire_array

SPEC = Spec(8, 64)
TIMEOUT_S = 600  # a cold compile on a loaded 2-core machine can take minutes
READY = re.compile(r"kernels ready in ([0-9.]+) s")
STAGE = re.compile(r"kernels: (?:compiling|loading) (.+?): done in ([0-9.]+) s")
AFTER = 100  # requests timed after the first reply


def serve_command(model_path: str, endpoint: str) -> tuple:
    """(argv, label): the `lstm-stream` console script when installed beside this python, else the module."""
    script = Path(sys.executable).with_name("lstm-stream")
    args = ["serve", "--model", model_path, "--bind", endpoint, "--log-level", "info"]
    if script.exists():
        return [str(script)] + args, "lstm-stream serve"
    found = shutil.which("lstm-stream")
    if found:
        return [found] + args, "lstm-stream serve"
    return [sys.executable, "-m", "engine.cli"] + args, "python -m engine.cli serve"


def requests_after(rng) -> list:
    """AFTER request maps cycling over every kind serving takes."""
    x = lambda *shape: wire_array(rng.normal(size=shape + (SPEC.I,)))  # noqa: E731
    ids = [f"sensor-{k}" for k in range(64)]
    kinds = [
        lambda k: {"op": "step", "stream": f"new-{k}", "x": x()},
        lambda k: {"op": "step", "stream": "first", "x": x()},
        lambda k: {"op": "step", "stream": k % 7, "x": x(3)},  # int ids 0..6 (k = 2, 12, ... visit 2 first)
        lambda k: {"op": "step_many", "streams": ids, "x": x(64)},
        lambda k: {"op": "step_many", "streams": list(range(1000, 1300)), "x": x(300)},
        lambda k: {"op": "step_many", "streams": ["first", 5, "first"], "xs": [x(2), x(), x(4)]},
        lambda k: {"op": "get_state", "stream": "first"},
        lambda k: {"op": "copy", "src": "first", "dst": f"copy-{k}"},
        lambda k: {"op": "drop", "stream": f"copy-{k - 1}"} if k % 9 == 8 else {"op": "reset", "stream": 2},
        lambda k: {"op": "info"},
    ]
    return [msgpack.packb({"v": 1, "id": k + 2, **kinds[k % len(kinds)](k)}) for k in range(AFTER)]


def launch_to_first_reply(model_path: str, cache_dir: str, log_path: Path, ctx) -> dict:
    """{'total': s, 'kernels': s or None, 'after': [s per request], 'stages': {stage: s}} for one launch of
    the daemon with NUMBA_CACHE_DIR=cache_dir."""
    import zmq

    endpoint = f"tcp://127.0.0.1:{common.free_port()}"
    argv, _ = serve_command(model_path, endpoint)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 5)  # retry the connection every 5 ms until the daemon binds
    sock.connect(endpoint)
    req = msgpack.packb({"v": 1, "id": 1, "op": "step", "stream": "first",
                         "x": wire_array(np.zeros(SPEC.I, np.float32))})
    after = []
    env = common.clean_env(NUMBA_CACHE_DIR=cache_dir)
    env.pop("LSTM_STREAM_CACHE_DIR", None)
    try:
        t0 = time.perf_counter()
        with common.subprocess_server(argv, env=env, log_path=log_path) as proc:
            sock.send(req)
            while not sock.poll(50):
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}:\n"
                                       f"{log_path.read_text(errors='replace')[-3000:]}")
                if time.perf_counter() - t0 > TIMEOUT_S:
                    raise RuntimeError(f"no reply within {TIMEOUT_S} s")
            total = time.perf_counter() - t0
            reply = msgpack.unpackb(sock.recv())
            if reply.get("ok") is not True:
                raise RuntimeError(f"first reply is an error: {reply.get('error')}")
            for data in requests_after(np.random.default_rng(0)):
                t = time.perf_counter()
                sock.send(data)
                reply = msgpack.unpackb(sock.recv())
                after.append(time.perf_counter() - t)
                if reply.get("ok") is not True:
                    raise RuntimeError(f"a request after the first failed: {reply.get('error')}")
    finally:
        sock.close(0)
    text = log_path.read_text(errors="replace")
    m = READY.search(text)
    return {"total": total, "kernels": float(m.group(1)) if m else None, "after": after,
            "stages": {name: float(sec) for name, sec in STAGE.findall(text)}}


def imports_only(cache_dir: str) -> float:
    """Seconds for a bare `python -c 'import numpy, numba, zmq'`: the floor any such daemon pays."""
    import subprocess
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, numba, zmq, msgpack"], check=True,
                   env=common.clean_env(NUMBA_CACHE_DIR=cache_dir))
    return time.perf_counter() - t0


def run(n_warm: int, passes: int = 2) -> dict:
    """{'cold': [per pass], 'warm': [median per pass], 'warm_all': [...], 'kernels_cold/warm': [...],
    'p99_cold/warm', 'max_cold/warm': [of the AFTER requests, per launch], 'stages': [{stage: s} per cold
    launch], 'imports': [...]}."""
    import zmq

    ctx = zmq.Context()
    keys = ("cold", "warm", "warm_all", "kernels_cold", "kernels_warm", "imports", "p99_cold", "p99_warm",
            "max_cold", "max_warm", "stages")
    out = {k: [] for k in keys}
    try:
        with tempfile.TemporaryDirectory(prefix="lstm-bench-startup-") as tmp:
            model_path = str(Path(tmp) / "model.npz")
            torch_modules(SPEC)[2].save(model_path)
            for p in range(passes):
                cache = tempfile.mkdtemp(prefix=f"numba-cache-{p}-", dir=tmp)  # fresh and empty
                cold = launch_to_first_reply(model_path, cache, Path(tmp) / f"cold{p}.log", ctx)
                out["cold"].append(cold["total"])
                out["kernels_cold"].append(cold["kernels"])
                out["stages"].append(cold["stages"])
                out["p99_cold"].append(common.percentile(cold["after"], 99))
                out["max_cold"].append(max(cold["after"]))
                warm = [launch_to_first_reply(model_path, cache, Path(tmp) / f"warm{p}_{k}.log", ctx)
                        for k in range(n_warm)]
                out["warm_all"] += [w["total"] for w in warm]
                out["warm"].append(statistics.median(w["total"] for w in warm))
                out["kernels_warm"].append(statistics.median(w["kernels"] or 0.0 for w in warm))
                out["p99_warm"] += [common.percentile(w["after"], 99) for w in warm]
                out["max_warm"] += [max(w["after"]) for w in warm]
                out["imports"].append(imports_only(cache))
                print(f"pass {p + 1}: cold {cold['total']:.2f} s (next {AFTER}: p99 "
                      f"{1e3 * out['p99_cold'][-1]:.1f} ms), warm median {out['warm'][-1]:.3f} s", flush=True)
    finally:
        ctx.destroy(0)
    return out


def report(r, args) -> str:
    _, cmd = serve_command("M.npz", "tcp://127.0.0.1:PORT")

    def cell(v, digits=3):
        lo, hi = min(v), max(v)
        return f"{np.mean(v):.{digits}f} s ({lo:.{digits}f}–{hi:.{digits}f})" if len(v) > 1 else \
            f"{v[0]:.{digits}f} s"

    def ms(v):
        return f"{1e3 * np.mean(v):.1f} ms ({1e3 * min(v):.1f}–{1e3 * max(v):.1f})" if len(v) > 1 else \
            f"{1e3 * v[0]:.1f} ms"
    cold, warm = float(np.mean(r["cold"])), float(np.mean(r["warm"]))
    stages = sorted({k for st in r["stages"] for k in st})
    lines = ["## Start-up: launch to first reply", "",
             f"`python -m bench.startup` — launches `{cmd} --model M.npz --bind tcp://127.0.0.1:PORT` (model "
             "I=8 H=64, head 4; default threads) and times it to the reply of its first `step` request, then "
             f"times {AFTER} more requests one at a time, cycling over every kind serving takes (new and known "
             "streams, str and int ids, one sample and several, `step_many` of 64 str and 300 int ids, "
             "ragged with a repeated id, get_state, copy, reset/drop, info). Cold: an empty `NUMBA_CACHE_DIR` "
             "(a fresh temporary directory; the package keeps all its compiled code under it, nothing in "
             f"`__pycache__` or elsewhere); warm: the same directory after the cold launch, {args.warm} "
             f"launches per pass. {args.passes} passes; ranges are (lowest–highest). 'kernels ready' is the "
             "daemon's own log figure for compiling or loading its kernels."
             + (" (The `lstm-stream` console script was not installed here; `python -m engine.cli` runs the "
                "same `main()`.)" if cmd.startswith("python") else ""), ""]
    lines += common.machine_lines({"mode": "quick (smoke run: figures not meaningful)" if args.quick
                                   else "full"})
    lines += ["", "### Goals", "",
              common.goal_line("cold start to first reply <= 8 s", cold <= 8.0, f"{cold:.2f} s"), "",
              common.goal_line("warm start to first reply < 1 s", warm < 1.0, f"{warm:.3f} s"), "",
              common.table(["", "launch to first reply", "of which kernels ready (daemon log)",
                            f"next {AFTER} replies: p99", "and the slowest"],
                           [["cold cache", cell(r["cold"], 2), cell(r["kernels_cold"], 2), ms(r["p99_cold"]),
                             ms(r["max_cold"])],
                            ["warm cache", cell(r["warm"]), cell(r["kernels_warm"]), ms(r["p99_warm"]),
                             ms(r["max_warm"])],
                            ["bare `python -c 'import numpy, numba, zmq, msgpack'`", cell(r["imports"]), "", "",
                             ""]]),
              "", "Cold start, the warm-up's stages as the daemon logs them (lstm_stream/warm.py): the "
                  "many-stream kernel compiles in the daemon while a child process compiles the id tables, "
                  "which the daemon then loads; the last stage drives every path serving takes and compiles "
                  "what is left (nothing, by then). The one-stream kernel compiles in a child process after the "
                  "daemon is ready (single streams take the many-stream kernel meanwhile, with the same bits), "
                  "so it is not in these figures; a warm launch right after a cold one that was stopped before "
                  "that finished compiles it then, which shows in the warm p99 range.", "",
              common.table(["stage", "seconds (per cold launch)"],
                           [[k, ", ".join(f"{st.get(k, float('nan')):.2f}" for st in r["stages"])]
                            for k in stages]),
              "", f"Every warm launch (s): {', '.join(f'{x:.3f}' for x in r['warm_all'])}", ""]
    return "\n".join(lines)


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream start-up benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--warm", type=int, default=None, help="warm launches per pass (default 3, quick 1)")
    ap.add_argument("--passes", type=int, default=None, help="cold launches, each with its warm ones "
                    "(default 3, quick 1)")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    a.warm = a.warm or (1 if a.quick else 3)
    a.passes = a.passes or (1 if a.quick else 3)
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    common.sample_busy()
    common.exit_on_sigterm()
    text = report(run(args.warm, args.passes), args)
    common.publish("startup", text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
