"""Streams.replace_model: a weights update keeps every stream's state (in memory and cold) and steps it with the
new weights from its next step, bit for bit as a fresh Streams of the new model given the same state; other
sizes are refused (each difference named) unless reset=True, which drops every stream."""
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream.coldstore import ColdStore
from lstm_stream.errors import ModelError
from lstm_stream.replacing import shape_changes
from models import random_model

I, H, L, O = 3, 7, 2, 4


def pair(seed, **b):
    """Models A and B of the same sizes with different random weights (B's options from `b`)."""
    rng = np.random.default_rng(seed)
    a = random_model(rng, I=I, H=H, L=L, O=O)
    return a, random_model(rng, I=I, H=H, L=L, O=O, **b)


def continued(a, b, xs_a, xs_b, ids):
    """The reference: each stream stepped under A, its state moved into a fresh Streams of B, stepped there."""
    sa, sb = ls.Streams(a), ls.Streams(b)
    ya = sa.step_batch(ids, xs_a)
    for i in ids:
        sb.set_state(i, sa.get_state(i))
    return ya, sb.step_batch(ids, xs_b), sb


@pytest.mark.parametrize("b_options", [{}, {"peepholes": True}, {"head_activation": "sigmoid"}],
                         ids=["weights", "peepholes", "head"])
def test_a_replaced_model_continues_every_stream_bit_for_bit(b_options):
    a, b = pair(1, **b_options)
    rng = np.random.default_rng(2)
    ids = ["s0", "s1", 7, "s3"]
    xs_a = [rng.standard_normal((k + 2, I)).astype(np.float32) for k in range(len(ids))]
    xs_b = [rng.standard_normal((5 - k, I)).astype(np.float32) for k in range(len(ids))]
    ya_ref, yb_ref, sb = continued(a, b, xs_a, xs_b, ids)
    s = ls.Streams(a)
    ya = s.step_batch(ids, xs_a)
    steps = {i: s.stream_info(i)["steps"] for i in ids}
    assert s.replace_model(b) == len(ids)
    assert s.model is b and len(s) == len(ids)
    assert {i: s.stream_info(i)["steps"] for i in ids} == steps
    yb = s.step_batch(ids, xs_b)
    for got, want in zip(ya + yb, ya_ref + yb_ref):
        assert np.array_equal(got, want)
    for i in ids:  # one-stream path, after the batch path
        x = rng.standard_normal(I).astype(np.float32)
        assert np.array_equal(s.step(i, x), sb.step(i, x))
        assert np.array_equal(s.get_state(i).h, sb.get_state(i).h)


def test_receipts_survive_a_replacement():
    a, b = pair(3)
    s = ls.Streams(a)
    x = np.ones((2, I), np.float32)
    y = s.step("r", x)
    s.remember("r", 2, y)
    s.replace_model(b)
    assert np.array_equal(s.receipt("r", 2, 2), y)  # a resend is answered with what was replied (A's)
    assert s.sequence("r") == (2, 2)


def test_other_sizes_are_refused_naming_each_difference_and_nothing_changes():
    a, _ = pair(4)
    big = random_model(np.random.default_rng(5), I=I, H=H + 1, L=L, O=O + 1, dtype="float64")
    s = ls.Streams(a)
    s.step("k", np.ones(I, np.float32))
    before = s.get_state("k")
    with pytest.raises(ModelError) as e:
        s.replace_model(big)
    for text in (f"hidden_size {H} -> {H + 1}", f"state_size {H} -> {H + 1}", f"output_size {O} -> {O + 1}",
                 "dtype 'float32' -> 'float64'", "reset=True"):
        assert text in str(e.value)
    assert "input_size 3" not in str(e.value) and "num_layers 2" not in str(e.value)
    assert s.model is a and np.array_equal(s.get_state("k").h, before.h)
    with pytest.raises(ModelError, match="needs an LSTMModel"):
        s.replace_model("model.npz")
    assert shape_changes(a, a) == []


def test_reset_drops_every_stream_and_takes_other_sizes(tmp_path):
    a, _ = pair(6)
    big = random_model(np.random.default_rng(7), I=I + 1, H=H + 2, L=1, O=2, dtype="float64")
    cold = ColdStore(tmp_path / "cold.sqlite3")
    s = ls.Streams(a, cold=cold)
    for i in range(5):
        s.step(i, np.full(I, 0.1 * i, np.float32))
    s.evict([0, 1])
    assert s.replace_model(big, reset=True) == 3
    assert len(s) == 0 and s.cold.count() == 0 and cold.fingerprint == big.fingerprint
    assert not s.is_cold(0)
    x = np.random.default_rng(8).standard_normal((3, I + 1))
    assert np.array_equal(s.step(0, x), ls.Streams(big).step(0, x))
    assert s.get_state(0).h.shape == (1, H + 2)


def test_a_cold_stream_comes_back_and_continues_under_the_new_weights(tmp_path):
    a, b = pair(9)
    rng = np.random.default_rng(10)
    xs_a = [rng.standard_normal((4, I)).astype(np.float32) for _ in range(3)]
    xs_b = [rng.standard_normal((3, I)).astype(np.float32) for _ in range(3)]
    ids = ["c0", "c1", "c2"]
    _, yb_ref, _ = continued(a, b, xs_a, xs_b, ids)
    cold = ColdStore(tmp_path / "cold.sqlite3")
    s = ls.Streams(a, cold=cold)
    s.step_batch(ids, xs_a)
    s.evict(["c0", "c2"])
    s.replace_model(b)
    assert cold.fingerprint == b.fingerprint and len(s) == 1
    yb = s.step_batch(ids, xs_b)  # c0 and c2 thaw, then step with B
    for got, want in zip(yb, yb_ref):
        assert np.array_equal(got, want)
    cold.close()
    reopened = ls.Streams(b, cold=ColdStore(tmp_path / "cold.sqlite3"))  # the file is bound to B now
    assert reopened.cold.fingerprint == b.fingerprint


def test_adopt_model_is_for_an_empty_streams_only():
    a, b = pair(11)
    s = ls.Streams(a)
    s.adopt_model(b)
    assert s.model is b
    s.step("x", np.ones(I, np.float32))
    with pytest.raises(ModelError, match="empty Streams"):
        s.adopt_model(a)
