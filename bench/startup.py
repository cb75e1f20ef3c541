"""Start-up benchmark: from launching `lstm-stream serve` to its first reply, cold and warm Numba cache.

    python -m bench.startup             # full run (report to bench-results/)
    python -m bench.startup --write-docs   # also its section of docs/benchmarks.md
    python -m bench.startup --quick   # smoke run: report to bench-results/ only

Cold: NUMBA_CACHE_DIR is a fresh, empty temporary directory, so every kernel compiles. Warm: the same
directory again, now filled by the cold launch. A pass is one cold launch then several warm ones; two passes,
each with its own cache directory. The clock starts just before the process is spawned and stops when the
reply to a `step` request (sent at once, queued by ZeroMQ until the daemon binds) arrives.
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


def serve_command(model_path: str, endpoint: str) -> tuple:
    """(argv, label): the `lstm-stream` console script when installed beside this python, else the module."""
    script = Path(sys.executable).with_name("lstm-stream")
    args = ["serve", "--model", model_path, "--bind", endpoint, "--threads", "1", "--log-level", "info"]
    if script.exists():
        return [str(script)] + args, "lstm-stream serve"
    found = shutil.which("lstm-stream")
    if found:
        return [found] + args, "lstm-stream serve"
    return [sys.executable, "-m", "engine.cli"] + args, "python -m engine.cli serve"


def launch_to_first_reply(model_path: str, cache_dir: str, log_path: Path, ctx) -> dict:
    """{'total': s, 'kernels': s or None} for one launch of the daemon with NUMBA_CACHE_DIR=cache_dir."""
    import zmq

    endpoint = f"tcp://127.0.0.1:{common.free_port()}"
    argv, _ = serve_command(model_path, endpoint)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 5)  # retry the connection every 5 ms until the daemon binds
    sock.connect(endpoint)
    req = msgpack.packb({"v": 1, "id": 1, "op": "step", "stream": "first",
                         "x": wire_array(np.zeros(SPEC.I, np.float32))})
    try:
        t0 = time.perf_counter()
        with common.subprocess_server(argv, env=common.clean_env(NUMBA_CACHE_DIR=cache_dir),
                                      log_path=log_path) as proc:
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
    finally:
        sock.close(0)
    m = READY.search(log_path.read_text(errors="replace"))
    return {"total": total, "kernels": float(m.group(1)) if m else None}


def imports_only(cache_dir: str) -> float:
    """Seconds for a bare `python -c 'import numpy, numba, zmq'`: the floor any such daemon pays."""
    import subprocess
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, numba, zmq, msgpack"], check=True,
                   env=common.clean_env(NUMBA_CACHE_DIR=cache_dir))
    return time.perf_counter() - t0


def run(n_warm: int, passes: int = 2) -> dict:
    """{'cold': [per pass], 'warm': [median per pass], 'warm_all': [...], 'kernels_cold/warm': [...],
    'imports': [...]}."""
    import zmq

    ctx = zmq.Context()
    out = {k: [] for k in ("cold", "warm", "warm_all", "kernels_cold", "kernels_warm", "imports")}
    try:
        with tempfile.TemporaryDirectory(prefix="lstm-bench-startup-") as tmp:
            model_path = str(Path(tmp) / "model.npz")
            torch_modules(SPEC)[2].save(model_path)
            for p in range(passes):
                cache = tempfile.mkdtemp(prefix=f"numba-cache-{p}-", dir=tmp)  # fresh and empty
                cold = launch_to_first_reply(model_path, cache, Path(tmp) / f"cold{p}.log", ctx)
                out["cold"].append(cold["total"])
                out["kernels_cold"].append(cold["kernels"])
                warm = [launch_to_first_reply(model_path, cache, Path(tmp) / f"warm{p}_{k}.log", ctx)
                        for k in range(n_warm)]
                out["warm_all"] += [w["total"] for w in warm]
                out["warm"].append(statistics.median(w["total"] for w in warm))
                out["kernels_warm"].append(statistics.median(w["kernels"] or 0.0 for w in warm))
                out["imports"].append(imports_only(cache))
                print(f"pass {p + 1}: cold {cold['total']:.2f} s, warm median {out['warm'][-1]:.3f} s",
                      flush=True)
    finally:
        ctx.destroy(0)
    return out


def report(r, args) -> str:
    _, cmd = serve_command("M.npz", "tcp://127.0.0.1:PORT")

    def cell(v, digits=3):
        return f"{np.mean(v):.{digits}f} s (±{common.spread(*v[:2]) * 50:.0f}%)" if len(v) > 1 else \
            f"{v[0]:.{digits}f} s"
    warm = float(np.mean(r["warm"]))
    lines = ["## Start-up: launch to first reply", "",
             f"`python -m bench.startup` — launches `{cmd} --model M.npz --bind tcp://127.0.0.1:PORT "
             "--threads 1` (model I=8 H=64, head 4) and times it to the reply of its first `step` request. "
             "Cold: empty `NUMBA_CACHE_DIR` (a fresh temporary directory); warm: the same directory after "
             f"the cold launch, {args.warm} launches per pass (median). 'kernels ready' is the daemon's own "
             "log figure for compiling or loading its kernels. Two passes; ± is half their spread."
             + (" (The `lstm-stream` console script was not installed here; `python -m engine.cli` runs the "
                "same `main()`.)" if cmd.startswith("python") else ""), ""]
    lines += common.machine_lines({"mode": "quick (smoke run: figures not meaningful)" if args.quick
                                   else "full"})
    lines += ["", "### Goals", "",
              common.goal_line("warm start to first reply < 1 s", warm < 1.0, f"{warm:.3f} s"), "",
              common.table(["", "launch to first reply", "of which kernels ready (daemon log)"],
                           [["cold cache", cell(r["cold"], 2), cell(r["kernels_cold"], 2)],
                            ["warm cache", cell(r["warm"]), cell(r["kernels_warm"])],
                            ["bare `python -c 'import numpy, numba, zmq, msgpack'`", cell(r["imports"]), ""]]),
              "", f"Every warm launch (s): {', '.join(f'{x:.3f}' for x in r['warm_all'])}", ""]
    return "\n".join(lines)


def parse(argv):
    ap = argparse.ArgumentParser(description="lstm-stream start-up benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--warm", type=int, default=None, help="warm launches per pass (default 3, quick 1)")
    common.add_doc_options(ap)
    a = ap.parse_args(argv)
    a.warm = a.warm or (1 if a.quick else 3)
    common.resolve_doc(a)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    common.sample_busy()
    common.exit_on_sigterm()
    text = report(run(args.warm), args)
    common.publish("startup", text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
