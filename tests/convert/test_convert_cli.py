"""`lstm-stream convert` and `lstm-stream inspect` from a shell (subprocesses), and a converted model served by a
real daemon answering as the source framework does."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from daemons import ROOT

import lstm_stream as ls
from models import random_model


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def onnx_file(tmp_path):
    pytest.importorskip("onnx", reason="needs onnx (pip install '.[test]')")
    import onnx
    from onnx_graphs import lstm_graph
    proto = lstm_graph(np.random.default_rng(4), sizes=((3, 8), (8, 8)), head="matmul", activation="Softmax")
    path = tmp_path / "pump.onnx"
    onnx.save(proto, path)
    return path, proto


def test_convert_onnx_then_inspect(tmp_path, onnx_file):
    src, _ = onnx_file
    out = tmp_path / "pump.npz"
    r = cli("convert", src, "-o", out)
    assert r.returncode == 0, r.stderr
    model = ls.load_model(out)
    assert model.fingerprint == ls.LSTMModel.from_onnx(src, name="pump").fingerprint
    assert model.fingerprint in r.stdout and model.head_activation == "softmax"
    r = cli("inspect", out)
    assert r.returncode == 0, r.stderr
    assert model.fingerprint in r.stdout and "2 LSTM layer(s) of hidden 8" in r.stdout and "head softmax" in r.stdout
    assert "weight_ih_l1     (32, 8)" in r.stdout
    d = json.loads(cli("inspect", out, "--json").stdout)
    assert d["fingerprint"] == model.fingerprint and d["tensors"]["head.weight"] == [4, 8]
    assert d["state_bytes_per_stream"] == model.state_bytes and d["num_layers"] == 2
    r = cli("convert", src, "-o", out)  # exists: refused without --force
    assert r.returncode == 2 and "--force" in r.stderr
    r = cli("convert", src, "-o", out, "--force", "--dtype", "float64", "--name", "p64")
    assert r.returncode == 0 and ls.load_model(out).dtype == "float64" and ls.load_model(out).name == "p64"


def test_converted_model_served_by_the_daemon(tmp_path, onnx_file, daemon):
    """The daemon serving the converted file steps a stream as onnxruntime runs the whole sequence."""
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install '.[test]')")
    from onnx_graphs import ort_run
    src, proto = onnx_file
    out = tmp_path / "served.npz"
    assert cli("convert", src, "-o", out).returncode == 0
    X = np.random.default_rng(5).normal(0, 1, (3, 3)).astype(np.float32)
    want = ort_run(proto, {"x": X[:, None]})[:, 0]  # (T, 1, O) for one sequence
    d = daemon("--model", out)
    r = cli("step", "--connect", d.endpoint, "pump-7", "--json", json.dumps(X.tolist()))
    assert r.returncode == 0, r.stderr
    assert np.max(np.abs(np.array(json.loads(r.stdout)) - want)) < 1e-5


def test_convert_arrays_npz(tmp_path):
    model = random_model(np.random.default_rng(6), I=4, H=8, L=2, O=3, head_activation="softmax")
    src = tmp_path / "weights.npz"
    np.savez(src, **model.tensors())  # bare PyTorch-named arrays: no head activation in them
    out = tmp_path / "m.npz"
    r = cli("convert", src, "-o", out, "--head-activation", "softmax", "--name", "model")
    assert r.returncode == 0, r.stderr
    assert ls.load_model(out).fingerprint == model.fingerprint
    r = cli("convert", out, "-o", tmp_path / "again.npz", "--head-activation", "sigmoid")
    assert r.returncode == 2 and "only with a file of bare arrays" in r.stderr
    r = cli("convert", out, "-o", tmp_path / "renamed.npz", "--name", "pump-v2", "--dtype", "float64")
    renamed = ls.load_model(tmp_path / "renamed.npz")
    assert r.returncode == 0 and renamed.name == "pump-v2" and renamed.dtype == "float64"
    assert cli("convert", out, "-o", tmp_path / "same.npz").returncode == 0
    assert ls.load_model(tmp_path / "same.npz").fingerprint == model.fingerprint  # its stored name kept


def test_convert_torch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = torch.nn.LSTM(3, 6, 2, bias=False), torch.nn.Linear(6, 2)

    torch.manual_seed(0)
    net = Net()
    src = tmp_path / "net.pt"
    torch.save(net.state_dict(), src)
    out = tmp_path / "net.npz"
    r = cli("convert", src, "-o", out, "--head-activation", "sigmoid", "--name", "model")
    assert r.returncode == 0, r.stderr
    want = ls.LSTMModel.from_torch(net.rnn, net.out, head_activation="sigmoid")
    assert ls.load_model(out).fingerprint == want.fingerprint


@pytest.mark.parametrize("name, args, words", [
    ("model.h5", (), "cannot tell the format of"),
    ("missing.onnx", (), "does not exist"),
    ("x.onnx", ("--head-activation", "sigmoid"), "--head-activation is for arrays"),
])
def test_convert_refusals(tmp_path, name, args, words):
    src = tmp_path / name
    if name != "missing.onnx":
        src.write_bytes(b"\x00")
    r = cli("convert", src, "-o", tmp_path / "out.npz", *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.npz").exists()


def test_convert_names_the_refused_node(tmp_path, onnx_file):
    import onnx
    src, proto = onnx_file
    proto.graph.node[0].op_type = "GRU"
    onnx.save(proto, src)
    r = cli("convert", src, "-o", tmp_path / "out.npz")
    assert r.returncode == 2 and "GRU node 'lstm0': a GRU is not an LSTM" in r.stderr
    r = cli("convert", src, "-o", tmp_path / "out.txt")
    assert r.returncode == 2 and "ending in .npz" in r.stderr


def test_inspect_refuses_a_non_model(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    r = cli("inspect", bad)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_the_cli_imports_no_framework():
    code = ("import sys, engine.cli; print(sorted(m for m in ('onnx', 'onnxruntime', 'keras', 'torch') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_convert_keras_file_without_keras_backend_set(tmp_path):
    """`convert` picks a Keras backend itself (torch here) when KERAS_BACKEND is unset and TensorFlow absent."""
    pytest.importorskip("torch", reason="Keras runs on its torch backend here")
    code = ("import os, warnings; os.environ['KERAS_BACKEND'] = 'torch'; warnings.simplefilter('ignore'); "
            "import keras; m = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(5), "
            "keras.layers.Dense(2, activation='sigmoid')]); m.save(os.environ['OUT'])")
    src = tmp_path / "k.keras"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "OUT": str(src)})
    if r.returncode != 0 and "No module named 'keras'" in r.stderr:
        pytest.skip("needs keras 3 (pip install '.[test]')")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "k.npz"
    r = subprocess.run([sys.executable, "-m", "engine.cli", "convert", src, "-o", out], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    model = ls.load_model(out)
    assert (model.hidden_size, model.output_size, model.head_activation) == (5, 2, "sigmoid")
