"""LSTMModel: validation with clear messages, .npz round trip, fingerprint, lazy imports."""
import json
import subprocess
import sys

import numpy as np
import pytest

import lstm_stream as ls
from models import random_model


def tensors(rng=None, I=3, H=4, L=2, P=0, O=2):
    m = random_model(rng or np.random.default_rng(0), I=I, H=H, L=L, P=P, O=O)
    return {k: v.copy() for k, v in m.tensors().items()}


@pytest.mark.parametrize("key,value,msg", [
    ("weight_hh_l0", np.zeros((16, 5)), r"'weight_hh_l0' has shape \(16, 5\); expected \(16, 4\)"),
    ("bias_ih_l1", np.zeros(15), r"'bias_ih_l1' has shape \(15,\); expected \(16,\)"),
    ("weight_ih_l0", np.zeros((15, 3)), r"'weight_ih_l0' has shape \(15, 3\); expected \(4\*hidden_size"),
    ("head.weight", np.zeros((2, 3)), r"'head.weight' has shape \(2, 3\); expected \(2, 4\)"),
    ("weight_ih_l1", np.full((16, 4), np.nan), r"'weight_ih_l1' has 64 non-finite"),
    ("bias_hh_l0", np.array(["a"] * 16), r"'bias_hh_l0' has dtype <U1; expected a real floating-point"),
])
def test_invalid_weights_name_the_tensor(key, value, msg):
    t = tensors()
    t[key] = value
    with pytest.raises(ls.ModelError, match=msg):
        ls.LSTMModel.from_arrays(t, head_activation="softmax")


def test_other_validation_errors():
    t = tensors()
    del t["bias_hh_l1"]
    with pytest.raises(ls.ModelError, match="missing tensor 'bias_hh_l1'"):
        ls.LSTMModel.from_arrays(t)
    with pytest.raises(ls.ModelError, match="no LSTM layers"):
        ls.LSTMModel.from_arrays({})
    with pytest.raises(ls.ModelError, match="head_activation must be one of"):
        ls.LSTMModel.from_arrays(tensors(), head_activation="relu")
    with pytest.raises(ls.ModelError, match="dtype must be one of"):
        ls.LSTMModel.from_arrays(tensors(), dtype="float16")
    t = tensors()
    del t["head.bias"]
    with pytest.raises(ls.ModelError, match="needs both"):
        ls.LSTMModel.from_arrays(t)


def test_save_load_roundtrip_and_fingerprint(tmp_path):
    rng = np.random.default_rng(1)
    m = random_model(rng, I=3, H=7, L=2, P=3, O=5, head_activation="sigmoid")
    m.save(tmp_path / "m.npz")
    m2 = ls.load_model(tmp_path / "m.npz")
    assert m2.fingerprint == m.fingerprint and m2.config() == m.config()
    assert all(np.array_equal(a, m2.tensors()[k]) for k, a in m.tensors().items())
    t = m.tensors()
    t = {k: v.copy() for k, v in t.items()}
    t["bias_hh_l0"][0] += 1e-6
    assert ls.LSTMModel.from_arrays(t, head_activation="sigmoid").fingerprint != m.fingerprint
    assert m.astype("float64").fingerprint != m.fingerprint


def test_load_rejects_bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ls.ModelError, match=r"is not an \.npz \(zip\) file"):
        ls.load_model(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ls.ModelError, match="no '__config__'"):
        ls.load_model(tmp_path / "plain.npz")
    m = random_model(np.random.default_rng(2))
    arrays = {k: v for k, v in m.tensors().items()}
    arrays["weight_ih_l0"] = arrays["weight_ih_l0"] + 1
    cfg = dict(m.config(), fingerprint=m.fingerprint)
    arrays["__config__"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(ls.ModelError, match="does not match the weights"):
        ls.load_model(tmp_path / "tampered.npz")
    cfg["format_version"] = 99
    arrays["__config__"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ls.ModelError, match="format version 99"):
        ls.load_model(tmp_path / "future.npz")


def test_load_names_the_file_and_what_is_expected(tmp_path):
    """Anything but a saved model (text, random bytes, no file, a directory, pickled objects, another .npz) is a
    ModelError naming the file and the expected format, never numpy's advice to allow pickle."""
    (tmp_path / "some.txt").write_text("weights: 1 2 3\n")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    np.savez(tmp_path / "objects.npz", a=np.array([None, 1], dtype=object))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    np.save(tmp_path / "one.npy", np.zeros(3))
    cases = {"some.txt": "is not an .npz (zip) file", "random.bin": "is not an .npz (zip) file",
             "missing.npz": "does not exist", ".": "cannot read model file", "objects.npz": "holds Python objects",
             "other.npz": "not an lstm-stream model", "one.npy": "is not an .npz (zip) file"}
    for name, what in cases.items():
        with pytest.raises(ls.ModelError) as e:
            ls.load_model(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and what in msg, msg
        assert "expected an .npz file written by LSTMModel.save" in msg and "allow_pickle" not in msg, msg


def test_repr_is_one_short_line():
    m = random_model(np.random.default_rng(4), I=6, H=64, L=1, O=4, head_activation="softmax")
    text = repr(m)
    assert text == str(m) and "\n" not in text and len(text) < 250, text
    assert text == (f"LSTMModel(name='model', input_size=6, hidden_size=64, num_layers=1, proj_size=0, output_size=4, "
                    f"head='softmax', dtype='float32', fingerprint='{m.fingerprint}')")
    m = random_model(np.random.default_rng(4), I=3, H=8, L=2, P=3, O=0)
    assert "proj_size=3" in repr(m) and "head=None" in repr(m) and "\n" not in repr(m)


def test_from_torch_rejects_unsupported():
    torch = pytest.importorskip("torch")
    with pytest.raises(ls.ModelError, match="bidirectional"):
        ls.LSTMModel.from_torch(torch.nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ls.ModelError, match="expected torch.nn.LSTM"):
        ls.LSTMModel.from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(ls.ModelError, match="head must be a torch.nn.Linear"):
        ls.LSTMModel.from_torch(torch.nn.LSTM(3, 4), head=torch.nn.ReLU())
    no_bias = ls.LSTMModel.from_torch(torch.nn.LSTM(3, 4, bias=False))
    assert not no_bias.layers[0].b_ih.any()


def test_sizes_and_state_bytes():
    m = random_model(np.random.default_rng(3), I=8, H=64, L=1, O=0)
    assert (m.input_size, m.hidden_size, m.state_size, m.output_size) == (8, 64, 64, 64)
    assert m.state_bytes == 2 * 64 * 4  # h and c, float32
    assert m.macs_per_step == 4 * 64 * (8 + 64)
    m = random_model(np.random.default_rng(3), I=5, H=12, L=3, P=7, O=2)  # layers above see P inputs
    assert m.macs_per_step == 4 * 12 * (5 + 7) + 2 * 4 * 12 * (7 + 7)


def test_import_is_lazy():
    """`import lstm_stream` and building a model load neither numba nor torch."""
    code = ("import sys, numpy as np, lstm_stream as ls\n"
            "t = {'weight_ih_l0': np.ones((8, 3)), 'weight_hh_l0': np.ones((8, 2)),"
            " 'bias_ih_l0': np.ones(8), 'bias_hh_l0': np.ones(8)}\n"
            "m = ls.LSTMModel.from_arrays(t); m.fingerprint\n"
            "print('numba' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
