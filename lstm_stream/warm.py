"""Compile (or load from the cache) every kernel that serving uses, before serving: in parallel when cold.

    from lstm_stream import warm
    warm.warm_up("float32", progress=print)   # seconds cold (first run after an install), ~0.1 s warm
    python -m lstm_stream.warm                # the same from a shell (what `lstm-stream warm` runs)

Numba compiles a function the first time it is called with new argument types, and a cold compile of the step
kernels takes seconds; "ready" must mean that no request pays for it. The compiled code depends on the model's
dtype (and on the CPU), not on its sizes, so each group below drives the public API of a scratch Streams over
a tiny random model of that dtype through every path serving takes: one stream and many, int and str ids,
ragged and repeated, shared out over threads, state reads and writes, drops, eviction, a snapshot and its
restore, forecast for autoregressive models. Whatever runs after that finds its code compiled.

Cold (no marker file for this dtype and CPU in jitcache.cache_dir()), the groups after the first are
compiled at the same time by child processes into the shared cache (`python -m lstm_stream.warm --group`),
the first one here; then every group runs here, loading what the children compiled. Numba compiles one
function at a time per process, so processes are the way to use several cores. A failed child costs nothing
but time: its group then compiles here.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import jitcache

# Each group compiles code no other group needs (so that groups in different processes do not compile the same
# functions twice); the heaviest first, as it compiles in this process while child processes take the others.
GROUPS = ("many", "ids", "one")
DESCRIPTIONS = {"many": "the many-stream kernel (batches, shared out over threads)",
                "one": "the one-stream kernel",
                "ids": "the id tables"}


def tiny_model(dtype: str, autoregressive: bool = False, seed: int = 0):
    """A 2-layer random LSTMModel with a softmax head of this dtype (O == I when autoregressive)."""
    from .model import LSTMModel
    rng = np.random.default_rng(seed)
    I, H = 3, 4
    t = {}
    for layer, k in enumerate((I, H)):
        t.update({f"weight_ih_l{layer}": rng.normal(0, 0.5, (4 * H, k)), f"weight_hh_l{layer}":
                  rng.normal(0, 0.5, (4 * H, H)), f"bias_ih_l{layer}": rng.normal(0, 0.1, 4 * H),
                  f"bias_hh_l{layer}": rng.normal(0, 0.1, 4 * H)})
    O = I if autoregressive else 2
    t.update({"head.weight": rng.normal(0, 0.5, (O, H)), "head.bias": rng.normal(0, 0.1, O)})
    return LSTMModel.from_arrays(t, dtype=dtype, head_activation="none" if autoregressive else "softmax",
                                 name="warm-up")


def _rows(model, n, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, model.input_size)).astype(model.dtype)


def _many(model):
    """step_ragged (serial, and shared out over the worker threads: the same compiled function)."""
    from .backends import CPUBackend
    b = CPUBackend(model, 80, threads=min(2, os.cpu_count() or 1))
    b.run(np.arange(70, dtype=np.int64), np.arange(71, dtype=np.int64), _rows(model, 70))


def _one(model):
    """step_one (and forecast for autoregressive models), on the backend alone."""
    from .backends import CPUBackend
    b = CPUBackend(model, 2, threads=1)
    x = _rows(model, 2)
    b._one_entry(x, np.empty((2, model.output_size), model.dtype))
    if model.autoregressive:
        b.forecast(0, 2)


def _ids(model):
    """The id indexes (lstm_stream/ids/), step accounting and the NaN/Inf check, on a store alone."""
    from .ids import warm_up
    from .kernels.cpu import all_finite
    from .store import StateStore, distinct
    warm_up()
    all_finite(_rows(model, 2))
    st = StateStore(initial_capacity=2)
    slots = st.add_many(list(range(40)), 0.0)                     # int ids: bulk insert, table growth
    st.add(1000, 0.0)
    st.lookup(list(range(40)))
    st.known_slots(np.arange(40))
    st.get_slot(3)
    st.account(slots, np.arange(41, dtype=np.int64), 1.0)
    st.remove(5)
    distinct(slots[::-1].copy())
    distinct(slots[::-1].copy(), st.marks)


def _serving(model):
    """Every path serving takes, through the public API: whatever the groups did not compile compiles here."""
    from .streams import Streams
    s = Streams(model, threads=1, initial_capacity=2, idle_ttl=3600.0)
    x = _rows(model, 3)
    for sid in ("a", 7):
        s.step(sid, x[0])                                         # new stream
        s.step(sid, x[0])                                         # one sample
        s.step(sid, x)                                            # several rows
    many = [f"s{k}" for k in range(40)]
    for _ in range(3):                                            # new, known, known again (cached lists)
        s.step_many(many, _rows(model, 40))
        s.step_many(many[:3], _rows(model, 3))
    s.step_many(many[:3] + [1, 2], _rows(model, 5))               # str and int ids mixed
    s.step_batch(["a", 8], [x, x[0]])
    s.unknown(["nobody", "s1"])
    st = s.get_state("a")
    s.set_state("b", st)
    s.set_state(9, {"h": st.h, "c": st.c})
    s.copy("a", "c")
    s.reset("c")
    if model.autoregressive:
        s.forecast("a", 2)
    for sid in many[:30]:                                         # dropped ids: table deletes, then compaction
        s.drop(sid)
    s.step_many([f"t{k}" for k in range(40)], _rows(model, 40))
    s.ids()
    with tempfile.TemporaryDirectory() as d:                      # snapshot and restore: ids in bulk
        path = os.path.join(d, "warm.lstmsnap")
        s.save_snapshot(path)
        Streams.load_snapshot(path, model)
    s.evict_idle(now=time.time() + 7200.0)


RUN = {"many": _many, "one": _one, "ids": _ids, "serving": _serving}


def _marker(dtype: str, autoregressive: bool, group: str):
    """The file that says this group's kernels are in the cache for this dtype and CPU (the cache directory
    itself is keyed on the sources and the compiler versions)."""
    from numba.core.registry import cpu_target
    cpu = hashlib.sha256(repr(cpu_target.target_context.codegen().magic_tuple()).encode()).hexdigest()[:12]
    return jitcache.cache_dir() / f"warm-{group}-{dtype}{'-ar' if autoregressive else ''}-{cpu}.done"


def _mark(dtype: str, autoregressive: bool, *groups) -> None:
    for group in groups:
        _marker(dtype, autoregressive, group).write_text(f"{time.ctime()}\n")


def is_warm(dtype: str = "float32", autoregressive: bool = False) -> bool:
    """Whether every kernel serving uses for this dtype is in the cache (a warm_up completed with this cache,
    Numba and CPU)."""
    return all(_marker(dtype, autoregressive, g).exists() for g in GROUPS)


class _Background:
    """The one-stream kernel of one dtype, being compiled by a child process after warm_up returned."""

    def __init__(self, proc, dtype, autoregressive, say):
        self.proc, self.dtype, self.autoregressive, self.say = proc, dtype, autoregressive, say


_deferred: dict = {}  # dtype -> _Background, while its one-stream kernel compiles in the background


def deferred(dtype) -> bool:
    """True while the one-stream kernel of this dtype compiles in the background (warm_up(defer=True)): until
    then the CPU backend steps single streams with the many-stream kernel, which gives the same bits."""
    return dtype in _deferred


def finish_background(wait: bool = False) -> bool:
    """Load what background compiles have finished (or, with wait, all of them) into this process; True once
    nothing is left in the background. Call it now and then (the daemon does, between turns)."""
    for dtype, bg in list(_deferred.items()):
        if bg.proc is not None and bg.proc.poll() is None and not wait:
            continue
        failed = bg.proc is not None and bg.proc.wait() != 0
        t = time.perf_counter()
        del _deferred[dtype]
        RUN["one"](tiny_model(dtype, bg.autoregressive))  # loads what the child compiled (compiles if it failed)
        _mark(dtype, bg.autoregressive, "one")
        bg.say(f"{'compiled' if failed else 'loaded'} {DESCRIPTIONS['one']} in {time.perf_counter() - t:.2f} s, "
               f"compiled in the background: single streams take it from now on")
    return not _deferred


def cancel_background() -> None:
    """Stop the background compiles (at shutdown): the next start compiles what they had not finished."""
    for bg in _deferred.values():
        if bg.proc is not None and bg.proc.poll() is None:
            bg.proc.terminate()
            try:
                bg.proc.wait(5)
            except subprocess.TimeoutExpired:
                bg.proc.kill()
                bg.proc.wait()
    _deferred.clear()


def warm_up(dtype: str = "float32", autoregressive: bool = False, *, workers: int | None = None,
            progress=None, defer: bool = False) -> dict:
    """Compile or load every kernel serving uses for models of this dtype. Cold, the id tables and the
    one-stream kernel compile in up to `workers` child processes (default: the CPUs there are, minus this
    one) while this process compiles the many-stream kernel. With defer (and a child to do it, and a model that
    is not autoregressive: forecast has no other kernel), warm_up returns without waiting for the one-stream
    kernel: until finish_background() loads it, single streams are stepped by the many-stream kernel, with
    the same bits (deferred()). progress(message) is called as each stage
    starts and ends. Returns {'cold': bool, 'seconds': {group: s}, 'total': s, 'deferred': bool}."""
    say = progress or (lambda message: None)
    t0 = time.perf_counter()
    cold = {g for g in GROUPS if not _marker(dtype, autoregressive, g).exists()}
    if workers is None:
        workers = max((os.cpu_count() or 1) - 1, 0)
    children = {}  # group -> the child process compiling it
    rest = [g for g in GROUPS[1:] if g in cold]
    if workers and rest:
        shares = [tuple(rest)] if workers == 1 and not defer else [(g,) for g in rest][:workers]
        for share in shares:
            proc = _spawn(share, dtype, autoregressive)
            children.update({g: proc for g in share})
            say(f"compiling {' and '.join(DESCRIPTIONS[g] for g in share)} in a child process (pid {proc.pid})")
    background = defer and "one" in cold and workers > 0 and not autoregressive  # (forecast needs _one)
    seconds, model = {}, tiny_model(dtype, autoregressive)
    stages = [g for g in GROUPS if not (background and g == "one")] + ["serving"]
    if background:
        _deferred[dtype] = _Background(children.get("one"), dtype, autoregressive, say)
    for k, group in enumerate(stages):
        proc = children.get(group)
        if proc is not None and proc.poll() is None:
            say(f"waiting for the child process compiling {DESCRIPTIONS[group]}")
            proc.wait()
        what = DESCRIPTIONS.get(group, "every other path serving takes")
        verb = "loading" if group in children or not cold else "compiling"  # (a child compiled it)
        say(f"{verb} {what} ({k + 1}/{len(stages)})")
        t = time.perf_counter()
        RUN[group](model)
        seconds[group] = time.perf_counter() - t
        say(f"{verb} {what}: done in {seconds[group]:.2f} s ({k + 1}/{len(stages)})")
        if group in GROUPS:
            _mark(dtype, autoregressive, group)
        if background and group == "ids" and _deferred[dtype].proc is None:  # one child: it takes "one" now
            _deferred[dtype].proc = _spawn(("one",), dtype, autoregressive)
            say(f"compiling {DESCRIPTIONS['one']} in the background (pid {_deferred[dtype].proc.pid}); until "
                f"then single streams take the many-stream kernel (the same bits)")
    if not background:
        for proc in set(children.values()):
            proc.wait()
    return {"cold": bool(cold), "seconds": seconds, "total": time.perf_counter() - t0, "deferred": background}


def _spawn(groups, dtype, autoregressive):
    cmd = [sys.executable, "-m", "lstm_stream.warm", "--dtype", dtype, "--group", *groups]
    if autoregressive:
        cmd.append("--autoregressive")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so that a checkout works too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lstm_stream.warm", description="compile every kernel serving "
                                 "uses into the cache (" + str(jitcache.cache_dir()) + ")")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "float64"))
    ap.add_argument("--autoregressive", action="store_true", help="also forecast (models with O == I)")
    ap.add_argument("--group", nargs="+", choices=GROUPS, help=argparse.SUPPRESS)  # a child's share
    a = ap.parse_args(argv)
    if a.group:
        model = tiny_model(a.dtype[0], a.autoregressive)
        for group in a.group:
            RUN[group](model)
        return 0
    for dtype in a.dtype:
        r = warm_up(dtype, a.autoregressive, progress=lambda m: print(m, flush=True))
        print(f"{dtype}: {'compiled' if r['cold'] else 'already compiled; loaded'} in {r['total']:.1f} s; "
              f"cache {jitcache.cache_dir()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
