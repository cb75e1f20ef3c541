"""Peephole connections (Gers & Schmidhuber 2000) on the CPU kernels: streaming equals the float64 reference
(tests/reference.py, which adds p_i c and p_f c to i and f, and p_o c' to o), the one-stream and tiled paths
give the same bits, zero peepholes give the bits of a model without them, and the model's checks and file."""
import numpy as np
import pytest

import lstm_stream as ls
from models import random_model, stepped_alone_and_tiled
from reference import reference_run

ATOL32, ATOL64 = 5e-6, 1e-12

CONFIGS = [  # I, H, L, P, O, head activation, dtype
    (3, 6, 2, 0, 3, "softmax", "float32"),
    (4, 17, 1, 5, 2, "sigmoid", "float32"),
    (5, 40, 3, 0, 0, "none", "float64"),
    (8, 200, 1, 0, 3, "none", "float32"),  # 4H = 800: several column blocks on the CPU
    (2, 9, 2, 4, 1, "none", "float64"),
]


@pytest.mark.parametrize("I,H,L,P,O,act,dtype", CONFIGS)
def test_streaming_equals_reference(I, H, L, P, O, act, dtype):
    rng = np.random.default_rng(I * 100 + H)
    scale = min(0.6, 2.5 / np.sqrt(I + H))  # contractive: larger weights make any two implementations drift apart
    model = random_model(rng, I, H, L, P, O, head_activation=act, dtype=dtype, scale=scale, peepholes=True)
    assert model.peepholes and model.config()["peepholes"] is True
    T = 1000
    xs = rng.normal(0, 1, (T, I)).astype(dtype)
    ref, h_ref, c_ref = reference_run(model, xs)
    tol = ATOL32 if dtype == "float32" else ATOL64
    ys, s = stepped_alone_and_tiled(model, xs, rng, 1)  # the one-stream path; the tiled path: the same bits
    assert np.abs(ys - ref).max() < tol
    # A forget peephole that feeds back lets a unit integrate (|c| in the hundreds): there f is exactly 1.0 in
    # float32 but 1 - 1e-8.. in float64, so over 1000 steps the two c drift apart by ~T * 1e-8 relative, while
    # h = o tanh(c) (saturated) agrees. c is compared relative to its size, with that allowance in float32.
    rel = (np.abs(s.c - c_ref) / (1 + np.abs(c_ref))).max()
    assert np.abs(s.h - h_ref).max() < tol and rel < (T * 2e-7 if dtype == "float32" else 10 * tol)


def test_a_reference_without_the_peepholes_differs():
    """The peepholes are used: the same weights without them give other outputs."""
    rng = np.random.default_rng(1)
    model = random_model(rng, 3, 8, 2, 0, 2, peepholes=True, scale=0.8)
    xs = rng.normal(0, 1, (50, 3)).astype(np.float32)
    bare = ls.LSTMModel.from_arrays({k: v for k, v in model.tensors().items() if not k.startswith("peephole")},
                                    head_activation=model.head_activation)
    assert np.abs(ls.Streams(model).step(0, xs) - ls.Streams(bare).step(0, xs)).max() > 1e-2


def test_zero_peepholes_compute_what_none_do():
    """Within rounding, not bit for bit: _cell_peep is compiled on its own, and LLVM may fuse its multiply-adds
    differently from _cell's (each model's outputs are still the same bits whatever shares its batch)."""
    rng = np.random.default_rng(2)
    bare = random_model(rng, 4, 12, 2, 0, 3)
    t = dict(bare.tensors(), **{f"peephole_l{l}": np.zeros((3, 12), np.float32) for l in range(2)})
    zero = ls.LSTMModel.from_arrays(t, head_activation=bare.head_activation)
    X = rng.normal(0, 1, (40, 5, 4)).astype(np.float32)
    a, b = ls.Streams(bare), ls.Streams(zero)
    for x in X:
        assert np.abs(a.step_many(list(range(5)), x) - b.step_many(list(range(5)), x)).max() < 1e-6
    assert zero.fingerprint != bare.fingerprint


def test_models_without_peepholes_keep_their_config_and_fingerprint():
    """config() gains "peepholes" only for a model that has them: every existing file keeps its fingerprint."""
    model = random_model(np.random.default_rng(3))
    assert "peepholes" not in model.config() and not model.peepholes
    assert not any(k.startswith("peephole") for k in model.tensors())


def test_save_load_and_checks(tmp_path):
    model = random_model(np.random.default_rng(4), peepholes=True)
    model.save(tmp_path / "p.npz")
    back = ls.load_model(tmp_path / "p.npz")
    assert back.fingerprint == model.fingerprint and back.peepholes
    np.testing.assert_array_equal(back.layers[1].w_ph, model.layers[1].w_ph)
    t = model.tensors()
    with pytest.raises(ls.ModelError, match="tensor 'peephole_l0' has shape \\(12,\\); expected \\(3, 12\\)"):
        ls.LSTMModel.from_arrays(dict(t, peephole_l0=np.zeros(12)))
    with pytest.raises(ls.ModelError, match="layer 1: every layer must have peephole weights or none must"):
        ls.LSTMModel.from_arrays({k: v for k, v in t.items() if k != "peephole_l1"})
    assert model.astype("float64").layers[0].w_ph.dtype == np.float64
