"""clip (ONNX's LSTM attribute, as onnxruntime computes it: each gate's input, bias and peephole term included,
clamped to [-clip, clip] before its activation; the cell is not clipped before h's tanh) on the CPU kernels:
streaming equals the float64 reference (tests/reference.py) over long sequences where the clip binds, with
and without peepholes; the one-stream, sequence and tiled paths give the same bits; the model's checks, file
and fingerprint. (Against onnxruntime itself: tests/convert/test_onnx.py.)"""
import numpy as np
import pytest

import lstm_stream as ls
from models import random_model, stepped_alone_and_tiled
from reference import reference_run

ATOL32, ATOL64 = 5e-6, 1e-12


def clipped(model, clip):
    return ls.LSTMModel.from_arrays(model.tensors(), head_activation=model.head_activation, dtype=model.dtype,
                                    clip=clip)


@pytest.mark.parametrize("I,H,L,P,O,act,dtype,peep", [
    (3, 6, 2, 0, 3, "softmax", "float32", False),
    (4, 17, 1, 5, 2, "sigmoid", "float32", True),
    (5, 40, 3, 0, 0, "none", "float64", True),
    (8, 200, 1, 0, 3, "none", "float32", False),  # several column blocks on the CPU
    (2, 9, 2, 4, 1, "none", "float64", False),
])
def test_streaming_equals_reference(I, H, L, P, O, act, dtype, peep):
    rng = np.random.default_rng(I * 100 + H)
    model = clipped(random_model(rng, I, H, L, P, O, head_activation=act, dtype=dtype, scale=1.5 / np.sqrt(I + H),
                                 peepholes=peep), 0.5)
    T = 1000
    xs = rng.normal(0, 2, (T, I)).astype(dtype)
    ref, h_ref, c_ref = reference_run(model, xs)
    tol = ATOL32 if dtype == "float32" else ATOL64
    ys, s = stepped_alone_and_tiled(model, xs, rng, 2)  # the one-stream path; the tiled path: the same bits
    assert np.abs(ys - ref).max() < tol
    assert np.abs(s.h - h_ref).max() < tol and np.abs(s.c - c_ref).max() < 10 * tol * (1 + np.abs(c_ref).max())
    assert np.array_equal(ls.Streams(model).step("b", xs), ys)  # the sequence path: the same bits
    # the clip binds: without it the same weights give other outputs
    free = ls.Streams(clipped(model, None)).step("a", xs)
    assert np.abs(free - ys).max() > 1e-3


def test_a_clip_that_never_binds_changes_nothing():
    """With a threshold above every gate input the outputs are those of the model without it, bit for bit when
    both take the peephole cell (clamping to [-big, big] is exact), within rounding otherwise."""
    rng = np.random.default_rng(5)
    model = random_model(rng, 3, 8, 2, 0, 2, peepholes=True, scale=0.3)
    xs = rng.normal(0, 0.5, (200, 3)).astype(np.float32)
    assert np.array_equal(ls.Streams(clipped(model, 1e6)).step(0, xs), ls.Streams(model).step(0, xs))
    bare = random_model(rng, 3, 8, 2, 0, 2, scale=0.3)
    a, b = ls.Streams(clipped(bare, 1e6)).step(0, xs), ls.Streams(bare).step(0, xs)
    assert np.abs(a - b).max() < 1e-6


def test_the_model_keeps_its_clip(tmp_path):
    rng = np.random.default_rng(6)
    bare = random_model(rng)
    model = clipped(bare, 3)
    assert model.clip == 3.0 and type(model.clip) is float and model.config()["clip"] == 3.0
    assert "clip" not in bare.config() and bare.clip is None  # every model without it keeps its fingerprint
    assert model.fingerprint != bare.fingerprint != clipped(bare, 2.5).fingerprint
    model.save(tmp_path / "c.npz")
    back = ls.load_model(tmp_path / "c.npz")
    assert back.clip == 3.0 and back.fingerprint == model.fingerprint
    assert model.astype("float64").clip == 3.0 and "clip=3.0" in repr(model)
    for bad in (0, -1.0, float("inf"), float("nan"), "3", True):
        with pytest.raises(ls.ModelError, match="clip must be a positive finite number"):
            clipped(bare, bad)
