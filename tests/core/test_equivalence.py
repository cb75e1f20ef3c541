"""Streaming equals offline: our kernels against PyTorch's nn.LSTM and the float64 reference.

Tolerance (float32): 5e-6 absolute on outputs of unit scale. One step of our kernel differs from exact
arithmetic by float32 rounding of K-term dot products (~1e-7) plus the rational tanh/sigmoid (<4e-7); with
weights in the contractive regime (PyTorch's init, up to 3x) these errors do not compound over time, and the
measured maximum over 10,000 steps is ~4e-7. 5e-6 leaves a margin for fresh seeds. Large weights make the
recurrence chaotic (any two float32 implementations, PyTorch's included, drift apart); those are checked one
step at a time from random states instead (test_one_step_large_weights). A few seeds at scale 2..3 (mostly
H=1 with a forget bias near 3) keep a long memory that amplifies rounding so that PyTorch's own float32 LSTM
drifts 1e-6..6e-5 from the float64 reference: there the bound is 10x PyTorch's own error against that
reference (the model's conditioning, measured by an independent float32 implementation).
"""
import os
import secrets

import numpy as np
import pytest

import lstm_stream as ls
from models import random_model, torch_lstm, torch_offline
from reference import reference_run

torch = pytest.importorskip("torch")
ATOL = 5e-6


@pytest.fixture
def seed():
    """A fresh seed per test (set LSTM_TEST_SEED to replay one); it is in every failure message."""
    return int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))


CONFIGS = [  # I, H, L, P, O, head activation, T
    (1, 1, 1, 0, 1, "none", 10_000),
    (8, 64, 1, 0, 3, "softmax", 10_000),
    (3, 17, 2, 5, 4, "sigmoid", 10_000),
    (13, 93, 3, 31, 0, "none", 10_000),
    (5, 128, 3, 0, 2, "none", 10_000),
    (64, 256, 1, 0, 7, "softmax", 3_000),
    (33, 256, 2, 100, 5, "none", 1_000),
]


@pytest.mark.parametrize("I,H,L,P,O,act,T", CONFIGS)
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_streaming_equals_torch_offline(I, H, L, P, O, act, T, scale, seed):
    lstm, head, model = torch_lstm(seed, I, H, L, P, O, head_activation=act, scale=scale)
    xs = np.random.default_rng(seed).normal(0, 1.5, (T, I)).astype(np.float32)
    offline = torch_offline(lstm, head, xs, act)
    streams = ls.Streams(model)
    one_by_one = np.stack([streams.step("s", x) for x in xs])
    err = np.abs(one_by_one - offline).max()
    if err >= ATOL:  # rare (~1 seed in 300, H=1 at scale 3): is it the model's conditioning? See below.
        ref = reference_run(model, xs)[0]
        torch_err, our_err = np.abs(offline - ref).max(), np.abs(one_by_one - ref).max()
        assert our_err < 10 * torch_err, (
            f"seed={seed}: max |ours - torch| = {err:.3g} over {T} steps; against the float64 reference "
            f"ours is {our_err:.3g} off and PyTorch's float32 {torch_err:.3g}")
    assert streams.stream_info("s")["steps"] == T
    # The same sequence in one call is bit-identical to T calls of one step.
    whole = ls.Streams(model).step("s", xs)
    assert np.array_equal(whole, one_by_one), f"seed={seed}"


@pytest.mark.parametrize("I,H,L,P,O,act,T", [c for c in CONFIGS if c[1] <= 128])
def test_streaming_equals_float64_reference(I, H, L, P, O, act, T, seed):
    """Over T steps, as close to the float64 reference as ATOL, or as PyTorch's float32 LSTM allows.

    Most seeds are contractive at scale 2 and both float32 implementations stay within ~3e-7 of the
    reference. A few (mostly H=1, where one recurrent weight up to 2 meets a forget bias near 2) keep a long
    memory that amplifies every step's rounding: PyTorch's own float32 LSTM is then 1e-6..1e-5 off (seed
    1959252020: 6.4e-6). The model's conditioning, measured by that independent float32 run, sets the bound
    there: at most 10x PyTorch's error (measured ratios 0.9..7.6 over 40 seeds; ours adds the rational
    tanh/sigmoid's ~3e-7 per step to the same amplification)."""
    lstm, head, model = torch_lstm(seed, I, H, L, P, O, head_activation=act, scale=2.0)
    xs = np.random.default_rng(seed + 1).normal(0, 1.0, (T, I)).astype(np.float32)
    ref, h_ref, c_ref = reference_run(model, xs)
    torch_err = np.abs(torch_offline(lstm, head, xs, act) - ref).max()
    tol = max(ATOL, 10 * torch_err)
    streams = ls.Streams(model)
    ys = streams.step(7, xs)
    err = np.abs(ys - ref).max()
    assert err < tol, f"seed={seed}: max |ours - float64| = {err:.3g}, PyTorch float32's = {torch_err:.3g}"
    state = streams.get_state(7)
    assert np.abs(state.h - h_ref).max() < tol and np.abs(state.c - c_ref).max() < 10 * tol, f"seed={seed}"


def test_float64_model_matches_reference_tightly(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=6, H=21, L=2, P=9, O=4, head_activation="softmax", dtype="float64", scale=0.25)
    xs = rng.normal(0, 1, (2000, 6))
    ref, _, _ = reference_run(model, xs)
    ys = ls.Streams(model).step("a", xs)
    assert ys.dtype == np.float64
    assert np.abs(ys - ref).max() < 1e-12, f"seed={seed}"


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-13)])
def test_one_step_large_weights(dtype, tol, seed):
    """Saturating gates (weights ~N(0, 2)) from random states: one step matches the reference.

    Here the gate pre-activations are sums of ~40 terms with sum |w u| up to ~150, so their float32 rounding
    alone is ~150 * 6e-8 ~ 1e-5 (PyTorch's float32 LSTM has the same): the bound is 2e-5, and 1e-13 in float64."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=4, H=33, L=2, P=0, O=3, head_activation="sigmoid", dtype=dtype, scale=2.0)
    streams = ls.Streams(model)
    for _ in range(50):
        h0, c0 = rng.normal(0, 1, (2, 33)), rng.normal(0, 3, (2, 33))
        x = rng.normal(0, 3, 4)
        streams.set_state("s", (h0, c0))
        h0, c0 = streams.get_state("s").h, streams.get_state("s").c  # as rounded to dtype
        y = streams.step("s", x.astype(dtype))
        ref, h_ref, c_ref = reference_run(model, x.astype(dtype)[None], h0, c0)
        assert np.abs(y - ref[0]).max() < tol, f"seed={seed}"
        # c is not bounded (|c| reaches ~10 here): its error scales with its magnitude.
        c_err = np.abs(streams.get_state("s").c - c_ref) / (1 + np.abs(c_ref))
        assert c_err.max() < 2 * tol, f"seed={seed}"


def test_batch_first_false_and_lstm_cell(seed):
    lstm, head, model = torch_lstm(seed, 4, 10, 2, 0, 3, batch_first=False, head_activation="sigmoid")
    xs = np.random.default_rng(seed).normal(0, 1, (300, 4)).astype(np.float32)
    assert np.abs(ls.Streams(model).step(1, xs) - torch_offline(lstm, head, xs, "sigmoid")).max() < ATOL

    torch.manual_seed(seed)
    cell = torch.nn.LSTMCell(4, 10)
    cell_model = ls.LSTMModel.from_torch(cell)
    h = c = torch.zeros(1, 10)
    streams = ls.Streams(cell_model)
    with torch.no_grad():
        for x in xs[:200]:
            h, c = cell(torch.from_numpy(x)[None], (h, c))
            y = streams.step("cell", x)
            assert np.abs(y - h[0].numpy()).max() < ATOL, f"seed={seed}"


def test_forecast_feeds_output_back(seed):
    """forecast(h) == stepping a copy with each output as the next input; the stream is untouched."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=3, H=16, L=2, O=3, head_activation="none")
    streams = ls.Streams(model)
    streams.step("a", rng.normal(0, 1, (20, 3)))
    before = streams.get_state("a")
    fc = streams.forecast("a", 25)
    after = streams.get_state("a")
    assert np.array_equal(before.h, after.h) and np.array_equal(before.c, after.c)
    assert after.steps == before.steps == 20
    # Manual roll-out on a copy.
    streams.copy("a", "b")
    y_prev = reference_run(model, np.zeros((0, 3)))[0]  # no steps: empty
    assert y_prev.shape == (0,)
    h_last = streams.get_state("b").h[-1].astype(np.float64)
    x = model.head_w.astype(np.float64) @ h_last + model.head_b
    manual = []
    for _ in range(25):
        x = streams.step("b", x.astype(np.float32))
        manual.append(x)
    assert np.abs(fc - np.array(manual)).max() < ATOL, f"seed={seed}"


def test_forecast_refused_for_non_autoregressive_model(seed):
    model = random_model(np.random.default_rng(seed), I=3, H=8, O=2)
    streams = ls.Streams(model)
    streams.step("a", np.ones(3))
    with pytest.raises(ls.ModelError, match="autoregressive"):
        streams.forecast("a", 5)


@pytest.mark.parametrize("I,H,L,P,O,act", [(8, 64, 1, 0, 3, "softmax"), (5, 97, 2, 0, 2, "none"),
                                           (33, 256, 2, 100, 5, "sigmoid")])
def test_many_streams_per_call_equal_torch_offline(I, H, L, P, O, act, seed):
    """The tiled kernel (step_many: 37 streams per call, so full 6-stream panels and a leftover, in tiles of 30
    and 7) against nn.LSTM run offline on each stream's whole sequence."""
    lstm, head, model = torch_lstm(seed, I, H, L, P, O, head_activation=act, scale=1.5)
    n, T = 37, 200
    xs = np.random.default_rng(seed).normal(0, 1.5, (T, n, I)).astype(np.float32)
    streams = ls.Streams(model, threads=1)
    ids = [f"s{k}" for k in range(n)]
    got = np.stack([streams.step_many(ids, xs[t]) for t in range(T)], axis=1)  # (n, T, O)
    for k in range(0, n, 6):
        err = np.abs(got[k] - torch_offline(lstm, head, xs[:, k], act)).max()
        assert err < ATOL, f"stream {k}, seed={seed}: max |ours - torch| = {err:.3g} over {T} steps"
