"""Streams.step's one-stream fast path (CPUBackend.one_stepper) and what it hands to the general path: both give
the same bits, refuse the same inputs, and survive the slabs growing under it."""
import os
import secrets

import numpy as np
import pytest
from models import random_model

import lstm_stream as ls

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))


@pytest.fixture
def setup():
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=6, H=21, L=2, O=3)
    return rng, model


def test_every_input_form_gives_the_fast_paths_bits(setup):
    """A known stream stepped with lists, float64, ints, strided views or (T, I) blocks (general path) gives
    exactly what float32 C-ordered arrays (fast path) give."""
    rng, model = setup
    X = rng.normal(0, 1, (12, 6)).astype(np.float32)
    fast, other = ls.Streams(model), ls.Streams(model)
    wide = np.zeros((12, 12), np.float32)
    wide[:, ::2] = X
    forms = [lambda t: X[t].tolist(), lambda t: X[t].astype(np.float64), lambda t: wide[t, ::2],
             lambda t: X[t:t + 1].tolist(), lambda t: np.asfortranarray(X[t:t + 1])]
    for t in range(12):
        a = fast.step("s", X[t].copy())
        b = other.step("s", forms[t % len(forms)](t))
        assert np.array_equal(np.atleast_2d(a), np.atleast_2d(b)), f"t={t}, seed={SEED}"
    ints = rng.integers(-3, 3, (2, 6))
    assert np.array_equal(fast.step("s", ints.astype(np.float32)), other.step("s", ints))
    assert fast.stream_info("s")["steps"] == other.stream_info("s")["steps"] == 14


def test_bad_inputs_on_a_known_stream_change_nothing(setup):
    rng, model = setup
    s = ls.Streams(model)
    s.step(7, rng.normal(0, 1, 6).astype(np.float32))
    before = s.get_state(7)
    bad_rows = rng.normal(0, 1, (3, 6)).astype(np.float32)
    bad_rows[2, 4] = np.inf
    nan = np.full(6, np.nan, np.float32)
    for x, msg in [(nan, "NaN or Inf"), (bad_rows, "NaN or Inf"), (np.zeros(5, np.float32), r"shape \(5,\)"),
                   (np.zeros((0, 6), np.float32), r"shape \(0, 6\)"), (np.zeros((2, 3, 6), np.float32), "shape"),
                   ("abc", "dtype")]:
        with pytest.raises(ls.InputError, match=msg):
            s.step(7, x)
    after = s.get_state(7)
    assert np.array_equal(before.h, after.h) and np.array_equal(before.c, after.c)
    assert after.steps == before.steps == 1 and after.last_seen == before.last_seen
    for bad_id in (7.0, True, np.float32(7)):  # hash like 7, but are not ids
        with pytest.raises(ls.InputError, match="stream id must be a str or an int"):
            s.step(bad_id, np.zeros(6, np.float32))


def test_fast_path_follows_the_slabs_when_they_grow(setup):
    """Growth replaces the state slabs and the store's arrays; a stream stepped before and after (with
    hundreds of streams created in between) matches a store that never grew."""
    rng, model = setup
    X = rng.normal(0, 1, (4, 6)).astype(np.float32)
    small, big = ls.Streams(model, initial_capacity=2), ls.Streams(model, initial_capacity=1024)
    for s in (small, big):
        s.step("a", X[0])
        s.step("a", X[1])
    cap = small.stats()["capacity"]
    small.step_many(list(range(500)), rng.normal(0, 1, (500, 6)).astype(np.float32))
    assert small.stats()["capacity"] > cap
    for t in (2, 3):
        assert np.array_equal(small.step("a", X[t]), big.step("a", X[t])), f"seed={SEED}"
    assert small.stream_info("a")["steps"] == 4
    assert small.stream_info("a")["last_seen"] >= small.stream_info(0)["last_seen"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite_finds_every_non_finite_value(dtype):
    """kernels.cpu.all_finite (the daemon's one NaN/Inf check per turn, and the fast path's): every position,
    NaN and both infinities, the largest finite values, empty and non-contiguous arrays."""
    from lstm_stream.kernels.cpu import all_finite
    rng = np.random.default_rng(SEED)
    X = rng.normal(0, 1, (37, 9)).astype(dtype)
    assert all_finite(X) and all_finite(X[:, ::2]) and all_finite(X.T) and all_finite(X[:0])
    big = X.copy()
    big[3, 4], big[5, 6] = np.finfo(dtype).max, -np.finfo(dtype).max
    assert all_finite(big)
    for bad in (np.nan, np.inf, -np.inf):
        for pos in [(0, 0), (36, 8), tuple(rng.integers(0, (37, 9)))]:
            Y = X.copy()
            Y[pos] = bad
            assert not all_finite(Y) and not all_finite(Y.T), (bad, pos)
        Y = X.copy()
        Y[7, 2] = bad  # a column the strided view skips, and one it keeps
        assert all_finite(Y[:, 1::2]) and not all_finite(Y[:, ::2])
