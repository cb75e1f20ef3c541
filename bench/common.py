"""Shared by every benchmark: interleaved timing, machine facts, markdown sections, subprocess servers.

Timing rule for every comparison: all contenders of one configuration are built in one process, warmed up,
then timed in rounds; each round times a block of calls of every contender, in a rotating order, so drift
(other load, turbo, thermal) hits all of them alike. The figure is the median over rounds of time per call.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
# libgomp / ORT pools spin a little after each call; a pause between blocks keeps one contender's spinning
# threads from stealing a core from the next one on a small machine (the pause is not timed).
SETTLE_S = 0.002
# Share of the CPUs busy with other work, sampled just before a run, above which its figures are marked as
# taken on a busy machine. (The load average is no use here: it still counts the previous benchmark.)
BUSY_SHARE = 0.15
_busy_before = None  # set by sample_busy() at the start of a run
_speed_before = None  # host_speed() at the start of a run, also set by sample_busy()


# ---- timing -------------------------------------------------------------------------------------------
def calibrate(fn, target_s: float, max_calls: int = 1_000_000) -> int:
    """Number of calls of fn that take about target_s (at least 1)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= target_s / 4 or n >= max_calls:
            return max(1, min(max_calls, int(n * target_s / max(dt, 1e-9))))
        n *= 4


def interleaved(fns: dict, *, rounds: int, block_s: float, warmup_s: float) -> dict:
    """{name: median seconds per call} for callables fns {name: fn}, timed in interleaved rounds."""
    names = list(fns)
    for name in names:  # warm-up: caches, JIT, thread pools, allocator
        t_end = time.perf_counter() + warmup_s
        fns[name]()
        while time.perf_counter() < t_end:
            fns[name]()
    calls = {name: calibrate(fns[name], block_s) for name in names}
    per_call = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = fns[name], calls[name]
            time.sleep(SETTLE_S)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            per_call[name].append((time.perf_counter_ns() - t0) * 1e-9 / n)
    return {name: statistics.median(v) for name, v in per_call.items()}


def spread(a: float, b: float) -> float:
    """Relative spread of two runs' figures: |a - b| / mean."""
    m = (a + b) / 2
    return abs(a - b) / m if m else 0.0


def percentile(values, q: float) -> float:
    """q-th percentile (0..100) by nearest rank of a non-empty sequence."""
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


# ---- machine facts -------------------------------------------------------------------------------------
def cpu_model() -> str:
    """'AMD EPYC (AVX-512; L2 1024K, L3 32768K)': the model name, widest SIMD and per-core caches."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "?"
    caches = []
    for idx in (2, 3):
        with contextlib.suppress(OSError):
            size = Path(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size").read_text().strip()
            caches.append(f"L{idx} {size}")
    return f"{name} ({simd}" + (f"; {', '.join(caches)}" if caches else "") + ")"


def versions() -> dict:
    """Versions of python and of every library a benchmark may load (None when not installed)."""
    out = {"python": platform.python_version()}
    for mod in ("numpy", "numba", "torch", "onnxruntime", "zmq", "msgpack"):
        try:
            out["pyzmq" if mod == "zmq" else mod] = __import__(mod).__version__
        except Exception:  # not installed: say so in the table instead of failing
            out["pyzmq" if mod == "zmq" else mod] = None
    return out


def code_version() -> str:
    """'git 1a2b3c4' plus the measured code's uncommitted files, so a table names what it measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lstm_stream", "engine", "clients"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    files = [line[3:] for line in dirty if line.strip()]
    return f"git {head or '?'}" + (f" with uncommitted changes in {', '.join(files[:6])}"
                                   + (" …" if len(files) > 6 else "") if files else "")


def host_speed():
    """GFLOP/s of a 1024x1024 float32 matmul on one thread (best of 5), or None without threadpoolctl (the
    bench extra). This host's speed drifts by tens of percent within an hour, and every figure drifts with
    it: taken at the start and the end of a run, it tells a slow phase from a slow change."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best / 1e9


def sample_busy(seconds: float = 1.0):
    """Share of all CPUs that other processes kept busy over `seconds` while this one slept (from /proc/stat;
    None where there is none), and the host's speed (host_speed). Called at the start of a run;
    machine_lines reports both."""
    global _busy_before, _speed_before
    _speed_before = host_speed()

    def snap():
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # all jiffies, idle + iowait

    try:
        total0, idle0 = snap()
        time.sleep(seconds)
        total1, idle1 = snap()
    except (OSError, ValueError, IndexError):
        _busy_before = None
        return None
    _busy_before = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    return _busy_before


def machine_lines(extra: dict | None = None) -> list:
    """Markdown bullet lines naming the machine, the versions and (extra) the thread settings."""
    v = versions()
    load = os.getloadavg()
    busy = _busy_before is not None and _busy_before > BUSY_SHARE
    before = "not sampled" if _busy_before is None else f"{_busy_before:.0%} of the CPUs busy with other work"
    lines = [f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} "
             f"{platform.release()}",
             "- versions: " + ", ".join(f"{k} {val or 'n/a'}" for k, val in v.items()),
             f"- code measured: {code_version()}",
             f"- run at {time.strftime('%Y-%m-%d %H:%M %Z')}; just before it, {before} (load average at the end: "
             f"{', '.join(f'{x:.2f}' for x in load)})"
             + (" — **the machine was busy: figures (2-thread ones above all) are not reliable**" if busy else "")]
    if _speed_before is not None:
        lines.append(f"- host speed (1-thread 1024² float32 matmul): {_speed_before:.0f} GFLOP/s at the start, "
                     f"{host_speed():.0f} at the end (85–106 on this VM on 2026-11-30; the low end is a slow phase "
                     "of the host, in which every figure here is slower too)")
    for k, val in (extra or {}).items():
        lines.append(f"- {k}: {val}")
    return lines


# ---- command line -------------------------------------------------------------------------------------
RESULTS = ROOT / "bench-results"  # every run's reports, one file each (git ignores it)


def add_doc_options(ap) -> None:
    """--write-docs, --doc PATH and --no-doc, shared by every benchmark script."""
    ap.add_argument("--write-docs", action="store_true",
                    help="also replace this benchmark's section of docs/benchmarks.md with the report")
    ap.add_argument("--doc", type=Path, default=None, help="markdown file whose section to replace instead "
                    "(implies --write-docs)")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the run's report files (default bench-results/)")
    ap.add_argument("--no-doc", action="store_true", help="print only: write no file at all")


def resolve_doc(a) -> None:
    """a.doc: the markdown file to update, or None. A run writes docs/benchmarks.md only when asked
    (--write-docs or --doc PATH); every run writes its report to the results folder unless --no-doc."""
    if a.doc is None and a.write_docs:
        a.doc = DOC
    if a.no_doc:
        a.doc = None


# ---- docs/benchmarks.md sections ------------------------------------------------------------------------
def markers(name: str):
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def publish(name: str, text: str, args) -> bool:
    """Print a benchmark's report, write it to <results>/<name>-<date>-<time>.md (unless --no-doc) and, when
    asked (args.doc), into its section of that markdown file; True when it wrote the section."""
    print(text)
    if args.no_doc:
        return False
    results = Path(getattr(args, "results", RESULTS))
    results.mkdir(parents=True, exist_ok=True)
    kind = "quick" if getattr(args, "quick", False) else "full"
    out = results / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{kind}.md"
    out.write_text(text.rstrip() + "\n")
    print(f"wrote {out}")
    if args.doc:
        write_section(name, text, args.doc)
        print(f"wrote {args.doc}")
        return True
    return False


def write_section(name: str, body: str, path: Path = DOC) -> None:
    """Replace the text between this benchmark's markers in `path` (appending them if absent); other
    sections are untouched. An exclusive lock serialises concurrent writers; the file is replaced atomically."""
    start, end = markers(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        block = f"{start}\n{body.rstrip()}\n{end}"
        pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    with contextlib.suppress(OSError):
        os.unlink(str(path) + ".lock")


def table(header: list, rows: list) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def goal_line(text: str, met: bool | None, figures: str) -> str:
    mark = "n/a" if met is None else ("**met**" if met else "**not met**")
    return f"- {text}: {mark} ({figures})"


def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant digits, thousands separated when large."""
    if x is None:
        return "n/a"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


# ---- processes and ports ----------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**overrides) -> dict:
    """os.environ with the repo on PYTHONPATH, plus overrides (a value of None removes the variable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@contextlib.contextmanager
def subprocess_server(args: list, *, env=None, log_path=None, cwd=None):
    """Run `args` as a child process for the duration of the block; always terminate (then kill) it."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(args, env=env or clean_env(), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd)
    try:
        yield proc
    finally:
        stop_process(proc)
        if log_path:
            out.close()


def stop_process(proc, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: the child is gone when this returns."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks (which stop the child servers) run."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def python() -> str:
    return sys.executable
