"""Invariant 2: a stream's outputs are bit-identical whatever shares its batch, its order, the thread count."""
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream.backends import cpu as cpu_backend
from models import random_model, step_ragged_interleaved

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))


def alone(model, xs_by_id):
    """Each stream run alone, one sample per call, in a fresh Streams."""
    out = {}
    for sid, xs in xs_by_id.items():
        s = ls.Streams(model, threads=1)
        out[sid] = np.stack([s.step(sid, x) for x in xs])
    return out


@pytest.mark.parametrize("P", [0, 4])
def test_interleaved_step_many_with_repeats_is_bit_identical(P):
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=5, H=19, L=2, P=P, O=3)
    n_streams, n_samples = 40, 1500
    ids = [f"s{k}" if k % 2 else k for k in range(n_streams)]  # str and int ids mixed
    order = rng.integers(0, n_streams, n_samples)
    X = rng.normal(0, 1, (n_samples, 5)).astype(np.float32)
    xs_by_id = {ids[k]: X[order == k] for k in range(n_streams)}
    expected = alone(model, xs_by_id)

    streams = ls.Streams(model)
    got = {i: [] for i in ids}
    pos = 0
    while pos < n_samples:  # random batch sizes, repeated ids inside a batch
        n = int(rng.integers(1, 200))
        batch_ids = [ids[k] for k in order[pos:pos + n]]
        Y = streams.step_many(batch_ids, X[pos:pos + n])
        for i, y in zip(batch_ids, Y):
            got[i].append(y)
        pos += n
    for i in ids:
        if len(expected[i]):
            assert np.array_equal(np.stack(got[i]), expected[i]), f"stream {i!r}, seed={SEED}"


def test_ragged_step_batch_is_bit_identical():
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=24, L=3, O=2)
    seqs = {k: rng.normal(0, 1, (int(rng.integers(1, 60)), 3)).astype(np.float32) for k in range(30)}
    expected = alone(model, seqs)
    got = step_ragged_interleaved(ls.Streams(model), seqs, rng)
    for k in seqs:
        assert np.array_equal(got[k], expected[k]), f"stream {k}, seed={SEED}"


@pytest.mark.parametrize("H, P, L, dtype", [(97, 0, 2, "float32"), (70, 13, 1, "float32"), (33, 0, 2, "float64")])
def test_one_stream_path_equals_tile_path(H, P, L, dtype):
    """Streams.step on a known stream runs the one-stream kernel; step_many runs the tiled one. Same bits, with
    gate columns split into blocks (4H > 256), a projection, input widths that are not multiples of 8, and
    several samples per call."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=11, H=H, L=L, P=P, O=5, dtype=dtype)
    X = rng.normal(0, 1, (40, 3, 11)).astype(dtype)
    one, tiled = ls.Streams(model), ls.Streams(model)
    tiled.step_many(["other", "s"], X[0, :2])  # "s" shares a tile with another stream
    one.step("s", X[0, 1])                     # a new stream: this first call goes the general way
    for t in range(1, 40):
        y_one = one.step("s", X[t]) if t % 2 else one.step("s", X[t, 0])
        rows = X[t] if t % 2 else X[t, :1]
        y_tiled = tiled.step_segments(["other", "s"], [1, len(rows)], np.concatenate([X[t, :1], rows]))[1:]
        assert np.array_equal(np.atleast_2d(y_one), y_tiled), f"t={t}, seed={SEED}"
    a, b = one.get_state("s"), tiled.get_state("s")
    assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps == 80, f"seed={SEED}"


def test_parallel_kernel_equals_serial(monkeypatch):
    """Large batches take the parallel kernel; outputs equal the serial kernel's bit for bit."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=8, H=32, L=2, O=4)
    X = rng.normal(0, 1, (10, 500, 8)).astype(np.float32)
    ids = list(range(500))
    results = []
    for threads, min_macs in [(1, 10**12), (2, 1), (2, 10**12)]:
        monkeypatch.setattr(cpu_backend, "PARALLEL_MIN_MACS", min_macs)
        s = ls.Streams(model, threads=min(threads, backends_threads()))
        results.append(np.stack([s.step_many(ids, X[t]) for t in range(10)]))
    for r in results[1:]:
        assert np.array_equal(r, results[0]), f"seed={SEED}"


def test_parallel_kernel_only_for_enough_work(monkeypatch):
    """Serial or shared out by the call's multiply-adds against the cost of waking the worker threads;
    warm_up compiles the kernels without stepping anything."""
    if backends_threads() < 2:
        pytest.skip("needs 2 CPUs")
    model = random_model(np.random.default_rng(0), I=8, H=64, L=1, O=4)  # 4*64*(8+64) = 18,432 per row
    for min_macs, min_rows in [(cpu_backend.PARALLEL_MIN_MACS, -(-cpu_backend.PARALLEL_MIN_MACS // 18_432)),
                               (1_000_000, 55), (8_000_000, 435)]:
        monkeypatch.setattr(cpu_backend, "PARALLEL_MIN_MACS", min_macs)
        b = cpu_backend.CPUBackend(model, 8, threads=2)
        assert b.parallel_min_rows == min_rows, min_macs
        assert not b.goes_parallel(100, min_rows - 1) and b.goes_parallel(100, min_rows)
        assert not b.goes_parallel(2 * b._tile - 1, 10**6)  # fewer tiles than threads: nothing to split
        assert not cpu_backend.CPUBackend(model, 8, threads=1).goes_parallel(100, 10**6)
    s = ls.Streams(model, threads=2)
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    y = s.step("a", x)
    before = s.get_state("a")
    s.warm_up()
    after = s.get_state("a")
    assert len(s) == 1 and np.array_equal(before.h, after.h) and np.array_equal(before.c, after.c)
    assert np.array_equal(ls.Streams(model, threads=2).step("a", x), y)


def test_stream_order_and_state_layout_do_not_change_outputs():
    """150 streams (5 tiles, their state rows prefetched a tile ahead) stepped over 20 calls, in a new random
    order each call and created in another order, against the same streams in slot order: bit-identical."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=6, H=40, L=2, P=0, O=3)
    ids = [f"s{k}" for k in range(150)]
    X = rng.normal(0, 1, (20, 150, 6)).astype(np.float32)
    a, b = ls.Streams(model, threads=1), ls.Streams(model, threads=1)
    for t in range(20):
        ya = a.step_many(ids, X[t])
        perm = rng.permutation(150)
        yb = b.step_many([ids[k] for k in perm], X[t][perm])
        assert np.array_equal(yb, ya[perm]), f"call {t}, seed={SEED}"


def backends_threads():
    return os.cpu_count() or 1


SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import lstm_stream as ls
from models import random_model
rng = np.random.default_rng({seed})
model = random_model(rng, I=8, H=48, L=2, O=4)
s = ls.Streams(model, threads={threads})
X = rng.normal(0, 1, (5, 2000, 8)).astype(np.float32)
out = np.stack([s.step_many(list(range(2000)), X[t]) for t in range(5)])
sys.stdout.write(out.tobytes().hex())
"""


def test_thread_count_does_not_change_outputs():
    """threads=1 vs 2 (as many as there are CPUs) in separate processes: identical bytes."""
    tests = os.path.dirname(os.path.dirname(__file__))
    outs = []
    for threads in (1, min(2, backends_threads())):
        r = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, seed=SEED, threads=threads)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1], f"seed={SEED}"


def test_step_segments_equals_step_batch_and_validates():
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=40, L=1, O=2)
    ids = [1, "b", 1, 7, "b", 1]
    lengths = [2, 1, 3, 1, 4, 1]
    X = rng.normal(0, 1, (sum(lengths), 3)).astype(np.float32)
    a, b = ls.Streams(model), ls.Streams(model)
    Y = a.step_segments(ids, lengths, X)
    parts = np.split(X, np.cumsum(lengths)[:-1])
    assert np.array_equal(Y, np.concatenate(b.step_batch(ids, parts))), f"seed={SEED}"
    assert a.stream_info(1)["steps"] == 6 and a.stream_info("b")["steps"] == 5
    for bad, msg in [([1, 1, 1], "lengths must be 6 integers"), ([2, 1, 3, 1, 4, 0], ">= 1"),
                     ([2, 1, 3, 1, 4, 2], "add up to 13 rows but X has 12")]:
        with pytest.raises(ls.InputError, match=msg):
            a.step_segments(ids, bad, X)
    assert a.stream_info(1)["steps"] == 6


@pytest.mark.parametrize("least_tiles", [1, 3, 1000])
def test_parallel_kernel_shares_out_every_stream_once(least_tiles):
    """step_ragged called at once from 3 threads with a shared counter (each thread takes pieces, large first,
    then smaller): 300 streams in random slot order with 1 to 5 rows each, whatever the smallest piece, end
    bit-identical to one serial call, outputs and states, so each was stepped exactly once."""
    import threading

    from lstm_stream.kernels import cpu

    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=7, H=29, L=2, P=0, O=3)
    n, cap = 300, 400
    slots = rng.permutation(cap)[:n].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 6, n))]).astype(np.int64)
    x = rng.normal(0, 1, (offsets[-1], 7)).astype(np.float32)
    runs = []
    for parallel in (False, True):
        b = cpu_backend.CPUBackend(model, cap, threads=1)
        b.h[:] = rng.normal(0, 1, b.h.shape) if not runs else runs[0][1]
        b.c[:] = rng.normal(0, 1, b.c.shape) if not runs else runs[0][2]
        h0, c0 = b.h.copy(), b.c.copy()
        y = np.empty((offsets[-1], 3), np.float32)
        args = (b.wbuf, b.meta, b.h, b.c, slots, offsets, x, y)
        if parallel:
            scratch = np.zeros((3, b._scratch.shape[1]), np.float32)  # 3 workers, whatever the CPU count
            b._grab[0] = 0
            threads = [threading.Thread(target=cpu.step_ragged, args=args + (scratch[w], b._grab,
                                                                              least_tiles * b._tile, 6))
                       for w in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert b._grab[0] == n
        else:
            cpu.step_ragged(*args, b._scratch[0], b._grab, 1, 1)
        runs.append((y, h0, c0, b.h.copy(), b.c.copy()))
    (y0, _, _, h0, c0), (y1, _, _, h1, c1) = runs
    assert np.array_equal(y1, y0) and np.array_equal(h1, h0) and np.array_equal(c1, c0), f"seed={SEED}"
    untouched = np.setdiff1d(np.arange(cap), slots)
    assert np.array_equal(h1[untouched], runs[1][1][untouched]), f"seed={SEED}"


def test_worker_threads_end_with_their_backend():
    """The backend's worker threads start at its first shared call and end when it is collected."""
    import gc
    import threading

    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=4, H=8, L=1, O=2)
    names = lambda: {t for t in threading.enumerate() if t.name.startswith("lstm-stream-kernel")}  # noqa
    before = names()
    s = ls.Streams(model, threads=2)
    s._backend.parallel_min_rows = 1
    s.step_many(list(range(64)), rng.normal(0, 1, (64, 4)).astype(np.float32))
    new = names() - before
    assert len(new) == 1
    del s
    gc.collect()
    for t in new:
        t.join(timeout=5)
        assert not t.is_alive()


def test_take_hands_out_shrinking_whole_pieces():
    """_take alone (one thread): contiguous pieces covering [0, n) once, each a multiple of `least` but the
    last, a 1/parts share of what is left, then (n, n)."""
    from numba import njit

    from lstm_stream.kernels.cpu import _take

    @njit
    def pieces(n, least, parts):
        grab = np.zeros(1, np.int64)
        out = []
        while True:
            lo, hi = _take(grab, n, least, parts)
            if lo >= n:
                return out, lo, hi
            out.append((lo, hi))

    for n, least, parts in [(4096, 30, 4), (100, 30, 4), (7, 30, 4), (1000, 1, 8)]:
        got, lo, hi = pieces(n, least, parts)
        assert (lo, hi) == (n, n)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
        sizes = [b - a for a, b in got]
        assert all(s % least == 0 for s in sizes[:-1])
        assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # shrinking (the last may be a rest)
        left = n
        for s in sizes[:-1]:
            assert s == max(least, left // parts // least * least)
            left -= s


def test_single_streams_while_the_one_stream_kernel_compiles_in_the_background(monkeypatch):
    """While warm.deferred() (the daemon's first seconds after a cold start), Streams.step takes the
    many-stream kernel; before, during and after, a stream's outputs and state are bit-identical to one that
    always took the one-stream kernel, NaN/Inf is refused with nothing changed either way."""
    from lstm_stream import warm

    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=6, H=70, L=2, P=9, O=4)
    X = rng.normal(0, 1, (30, 3, 6)).astype(np.float32)
    ref, mixed = ls.Streams(model, threads=1), ls.Streams(model, threads=1)
    ref.step("s", X[0])  # the one-stream kernel compiled (or loaded) here, before any deferral
    mixed.step("s", X[0])
    for t in range(1, 30):
        deferring = 10 <= t < 20
        if deferring:
            monkeypatch.setitem(warm._deferred, model.dtype, None)
            mixed._backend._one = None  # as a backend that was made while deferring
        else:
            monkeypatch.delitem(warm._deferred, model.dtype, raising=False)
        assert warm.deferred(model.dtype) == deferring
        x = X[t] if t % 2 else X[t, 0]
        assert np.array_equal(mixed.step("s", x), ref.step("s", x)), f"t={t}, seed={SEED}"
        if t == 15:
            with pytest.raises(ls.InputError, match="NaN or Inf"):
                mixed.step("s", np.full(6, np.nan, np.float32))
    a, b = mixed.get_state("s"), ref.get_state("s")
    assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps == 3 + 15 * 3 + 14
