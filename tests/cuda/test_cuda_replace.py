"""Streams.replace_model on the CUDA backend: the state slab stays on the device, the new weights (and, with
peepholes, a new packed layout and shared-memory geometry) step it from the next call, bit for bit as a fresh
CUDA Streams of the new model given the same state. Small sizes (the simulator interprets every thread)."""
import numpy as np

import lstm_stream as ls
from models import random_model


def test_a_replaced_model_continues_every_stream_bit_for_bit_on_cuda(seed):
    rng = np.random.default_rng(seed)
    a = random_model(rng, I=3, H=5, L=2, O=3)
    b = random_model(rng, I=3, H=5, L=2, O=3, peepholes=True, head_activation="sigmoid")
    ids = ["a", "b", 3]
    xs_a = [rng.standard_normal((k + 1, 3)).astype(np.float32) for k in range(3)]
    xs_b = [rng.standard_normal((3 - k, 3)).astype(np.float32) for k in range(3)]
    s = ls.Streams(a, backend="cuda")
    ref_a, ref_b = ls.Streams(a, backend="cuda"), ls.Streams(b, backend="cuda")
    assert all(np.array_equal(g, w) for g, w in zip(s.step_batch(ids, xs_a), ref_a.step_batch(ids, xs_a)))
    for i in ids:
        ref_b.set_state(i, ref_a.get_state(i))
    s.replace_model(b)
    for g, w in zip(s.step_batch(ids, xs_b), ref_b.step_batch(ids, xs_b)):
        assert np.array_equal(g, w)
    x = rng.standard_normal(3).astype(np.float32)
    assert np.array_equal(s.step("a", x), ref_b.step("a", x))
    assert np.array_equal(s.get_state(3).c, ref_b.get_state(3).c)


def test_an_evicted_stream_comes_back_under_the_new_weights_on_cuda(seed, tmp_path):
    from lstm_stream.coldstore import ColdStore
    rng = np.random.default_rng(seed)
    a, b = (random_model(rng, I=3, H=5, L=1, O=2) for _ in range(2))
    x1, x2 = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    s = ls.Streams(a, backend="cuda", cold=ColdStore(tmp_path / "cold.sqlite3"))
    s.step("e", x1)
    s.evict(["e"])
    s.replace_model(b)
    ref = ls.Streams(a, backend="cuda")
    ref.step("e", x1)
    ref.replace_model(b)
    assert np.array_equal(s.step("e", x2), ref.step("e", x2))
