"""Cold store benchmark: what evicting idle streams to SQLite costs (lstm_stream/coldstore.py, tiering.py).

    python -m bench.coldstore [--dir DIR] [--streams N]

Model I=8, H=64, 1 layer, float32 (512 B of state per stream, as in docs/operations.md's Memory). Prints, on
the file system of DIR (default: a temporary directory under /tmp):
  - eviction of 1000 streams (one put, one transaction) under WAL+FULL (the daemon's), WAL+NORMAL (not
    durable: a power loss may roll the last commits back) and DELETE+FULL (a rollback journal);
  - disk bytes per evicted stream (file + WAL after a checkpoint, over N streams);
  - a step to an id not in memory: brand new without a cold store, brand new with a non-empty cold store (one
    lookup that finds nothing), and a cold stream coming back (a thaw: lookup, decode, slot, import);
  - a step to a known stream with and without the cold store (it must not differ);
  - count(), prune() after a snapshot, at N cold streams.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import lstm_stream as ls
from lstm_stream.coldstore import ColdStore

I, H, O = 8, 64, 4


def model():
    from tests.models import random_model
    return random_model(np.random.default_rng(0), I=I, H=H, L=1, O=O, head_activation="none")


def best(f, repeat=5):
    """The best of `repeat` timings of f() in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def eviction(m, d, journal, sync, n=1000, rounds=5):
    cold = ColdStore(os.path.join(d, f"ev-{journal}-{sync}.sqlite3"), synchronous=sync)
    cold._db.execute(f"PRAGMA journal_mode={journal}")
    s = ls.Streams(m, cold=cold)
    X = np.ones((n, I), np.float32)
    times = []
    for r in range(rounds):
        ids = list(range(r * n, (r + 1) * n))
        s.step_many(ids, X)
        t0 = time.perf_counter()
        s.evict(ids)
        times.append(time.perf_counter() - t0)
    cold.close()
    return min(times), float(np.median(times))


def per_request(m, d, n):
    x = np.ones(I, np.float32)
    cold = ColdStore(os.path.join(d, "req.sqlite3"))
    s, plain = ls.Streams(m, cold=cold), ls.Streams(m)
    s.step_many(list(range(n)), np.ones((n, I), np.float32))
    for k in range(0, n, 10_000):
        s.evict(list(range(k, min(n, k + 10_000))))
    cold._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(cold.path)
    out = {"bytes per stream": size / n}
    k = 1000
    fresh = iter(range(10**9, 10**9 + 10**6))
    out["new id, no cold store (us)"] = 1e6 * best(lambda: [plain.step(next(fresh), x) for _ in range(k)]) / k
    out["new id, cold store of N (us)"] = 1e6 * best(lambda: [s.step(next(fresh), x) for _ in range(k)]) / k
    cold_ids = iter(range(n))
    out["thaw: step a cold id (us)"] = 1e6 * best(lambda: [s.step(next(cold_ids), x) for _ in range(k)]) / k
    out["known id, no cold store (us)"] = 1e6 * best(lambda: [plain.step(0, x) for _ in range(10 * k)]) / (10 * k)
    out["known id, cold store (us)"] = 1e6 * best(lambda: [s.step(0, x) for _ in range(10 * k)]) / (10 * k)
    out["count() (ms)"] = 1e3 * best(cold.count, 3)
    t0 = time.perf_counter()
    cold.prune(cold.next_lsn, s)  # full: every id, as at start
    out["prune, full (ms)"] = 1e3 * (time.perf_counter() - t0)
    s.step_many(list(range(10**6, 10**6 + k)), np.ones((k, I), np.float32))
    s.evict(list(range(10**6, 10**6 + k)))
    for i in range(n - k, n):
        s.step(i, x)
    t0 = time.perf_counter()
    cold.prune(cold.next_lsn, s, full=False)  # a snapshot's: the ids put or thawed since the last prune
    out[f"prune after {k} evictions and {k} thaws (ms)"] = 1e3 * (time.perf_counter() - t0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.coldstore")
    p.add_argument("--dir", help="where the SQLite files go (default: a temporary directory under /tmp)")
    p.add_argument("--streams", type=int, default=100_000, help="cold streams for the size and lookup figures")
    args = p.parse_args(argv)
    m = model()
    with tempfile.TemporaryDirectory(dir=args.dir or "/tmp") as d:
        for journal, sync in (("WAL", "FULL"), ("WAL", "NORMAL"), ("DELETE", "FULL")):
            lo, med = eviction(m, d, journal, sync)
            print(f"evict 1000 streams, {journal}+{sync}: best {1e3 * lo:.1f} ms, median {1e3 * med:.1f} ms")
        for k, v in per_request(m, d, args.streams).items():
            print(f"{k.replace('N', str(args.streams))}: {v:.2f}")


if __name__ == "__main__":
    main()
