"""Streams created by a batch (Streams._slots_creating: one lookup and one StateStore.add_many for all the new
ids of a step_many) against its slow twin, each new id created alone (Streams._slot_or_new, as before): the
same slots (freed slots reused in the same order), the same bits out, the same state, counters and receipts."""
import os
import secrets

import numpy as np
import pytest
from models import random_model

import lstm_stream as ls

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))


def one_by_one(streams):
    """The slow twin: streams whose new ids are created one at a time, in order (the code before the batch)."""
    streams._slots_creating = lambda ids, now: np.array([streams._slot_or_new(i, now) for i in ids], np.int64)
    return streams


def assert_same(a, b, ids):
    assert a.created == b.created and len(a) == len(b)
    for i in ids:
        if i not in a:
            assert i not in b, i
            continue
        assert a._store.slot(i) == b._store.slot(i), f"{i!r}, seed={SEED}"
        x, y = a.get_state(i), b.get_state(i)
        assert np.array_equal(x.h, y.h) and np.array_equal(x.c, y.c), f"{i!r}, seed={SEED}"
        assert (x.steps, x.last_seen) == (y.steps, y.last_seen), i
        assert a.sequence(i) == b.sequence(i), i
        seq = a.sequence(i)[1]
        for rows in (1, 2):
            ra, rb = a.receipt(i, seq, rows), b.receipt(i, seq, rows)
            assert (ra is None and rb is None) or np.array_equal(ra, rb), i


@pytest.mark.parametrize("kind", ["str", "int", "mixed"])
def test_a_batch_creates_the_streams_one_by_one_creation_would(kind):
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=4, H=9, L=2, O=3)
    clock = [1000.0]
    fast = ls.Streams(model, clock=lambda: clock[0])
    slow = one_by_one(ls.Streams(model, clock=lambda: clock[0]))

    def make(k):
        return f"dev-{k}" if kind == "str" or (kind == "mixed" and k % 2) else k
    seen = []
    for turn in range(12):
        clock[0] += 1.5
        known = [seen[j] for j in rng.integers(0, len(seen), rng.integers(0, 6))] if seen else []
        fresh = [make(int(k)) for k in rng.integers(0, 400, rng.integers(1, 40))]  # repeats, and ids seen
        ids = rng.permutation(np.array(known + fresh + fresh[:3], dtype=object)).tolist()
        X = rng.normal(0, 1, (len(ids), 4)).astype(np.float32)
        a, b = fast.step_many(ids, X), slow.step_many(ids, X)
        assert np.array_equal(a, b), f"turn {turn}, seed={SEED}"
        seen = list(dict.fromkeys(seen + ids))
        if turn % 3 == 2:  # free some slots: the next new streams reuse them, in the same order on both
            for i in rng.permutation(np.array(seen, dtype=object))[:rng.integers(1, 8)].tolist():
                fast.drop(i)
                slow.drop(i)
                seen.remove(i)
        k = int(rng.integers(0, len(ids)))  # a receipt (one or two rows), as a sequenced step leaves (the
        Y = a[k:k + 1] if turn % 2 else np.concatenate([a[k:k + 1]] * 2)  # drops above recycle such slots)
        if ids[k] in seen:  # (not one just dropped)
            for s in (fast, slow):
                s.remember(ids[k], s.sequence(ids[k])[0], Y)
    assert_same(fast, slow, seen + [make(k) for k in range(400)])


def test_new_streams_in_a_batch_start_from_zero_in_recycled_slots():
    """A batch's new streams take the slots drops freed and start from zero there, as a stream created alone
    does."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=5, L=1, O=2)
    s = ls.Streams(model)
    s.step_many([f"old-{k}" for k in range(6)], rng.normal(0, 1, (6, 3)))
    old_slots = {s._store.slot(f"old-{k}") for k in range(6)}
    for k in range(6):
        s.drop(f"old-{k}")
    x = rng.normal(0, 1, (1, 3)).astype(np.float32)
    ys = s.step_many([f"new-{k}" for k in range(6)], np.repeat(x, 6, axis=0))
    assert {s._store.slot(f"new-{k}") for k in range(6)} == old_slots
    alone = ls.Streams(model).step("fresh", x[0])
    assert all(np.array_equal(y, alone) for y in ys), f"seed={SEED}"
    assert all(s.get_state(f"new-{k}").steps == 1 for k in range(6))
