"""LSTMModel.from_onnx against ONNX's own runtimes: a model stepped one sample at a time through Streams equals
onnxruntime's and onnx.reference's whole-sequence output (float32 tolerance), over 200 steps with random
weights and inputs, for graphs exported by torch.onnx.export and built by hand; and what is refused, and why."""
import warnings

import numpy as np
import pytest

import lstm_stream as ls

onnx = pytest.importorskip("onnx", reason="the ONNX importer's tests need onnx (pip install '.[test]')")
pytest.importorskip("onnxruntime", reason="the ONNX importer's tests need onnxruntime (pip install '.[test]')")
from onnx import helper  # noqa: E402
from onnx_graphs import lstm_graph, ort_run, reference_run  # noqa: E402

T = 200
ATOL = 2e-5  # float32 kernels against float32 runtimes, 200 steps at unit-scale weights


def streamed(model, X, state=None):
    """Each sequence of X (N, T, I) stepped one sample at a time through its own stream -> (N, T, O)."""
    s = ls.Streams(model)
    if state is not None:
        for n, (h, c) in enumerate(state):
            s.set_state(n, (h, c))
    return np.stack([np.stack([s.step(n, x) for x in xs]) for n, xs in enumerate(X)])


def check(got, want, atol=ATOL):
    err = float(np.max(np.abs(got - want)))
    assert err < atol, f"largest difference {err:.3g} >= {atol}"


# ---- exported by torch.onnx.export ---------------------------------------------------------------------
@pytest.mark.parametrize("batch_first, layers, last, activation", [
    (True, 2, False, "sigmoid"), (False, 1, True, "softmax"), (True, 1, True, "none"), (False, 3, False, "none")])
def test_torch_export(tmp_path, batch_first, layers, last, activation):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(4, 16, layers, batch_first=batch_first), nn.Linear(16, 3)

        def forward(self, x):
            y = self.lstm(x)[0]
            if last:
                y = y[:, -1] if batch_first else y[-1]
            y = self.head(y)
            return {"sigmoid": torch.sigmoid, "softmax": lambda z: torch.softmax(z, -1)}.get(activation,
                                                                                          lambda z: z)(y)

    torch.manual_seed(layers)
    net = Net().eval()
    X = np.random.default_rng(1).normal(0, 1, (2, T, 4)).astype(np.float32)  # (batch, time, features)
    xin = X if batch_first else X.transpose(1, 0, 2)
    path = tmp_path / "net.onnx"
    axes = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
    # dynamo=False: the TorchScript exporter; the newer one needs onnxscript
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and warns about batch_first
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(xin[:, :5] if batch_first else xin[:5]),), str(path),
                          dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": axes})
    model = ls.LSTMModel.from_onnx(path)
    assert (model.num_layers, model.hidden_size, model.output_size) == (layers, 16, 3)
    assert model.head_activation == activation
    got = streamed(model, X)
    want = ort_run(onnx.load(path), {"x": xin})
    with torch.no_grad():
        want_torch = net(torch.from_numpy(xin)).numpy()
    if last:
        check(got[:, -1], want)
        check(got[:, -1], want_torch)
    else:
        check(got, want if batch_first else want.transpose(1, 0, 2))


def runners(layout, dtype):
    """onnxruntime (which runs neither layout=1 nor float64 LSTM nodes) and onnx.reference."""
    return (reference_run,) if layout == 1 or dtype == np.float64 else (ort_run, reference_run)


def test_torch_export_with_state_inputs(tmp_path):
    """nn.LSTM called with (h0, c0) exports them as graph inputs, sliced per layer: a stream given (h0, c0)
    with set_state continues as onnxruntime runs the graph from them."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(3, 6, 2, batch_first=True), nn.Linear(6, 2)

        def forward(self, x, h0, c0):
            y, (h, c) = self.lstm(x, (h0, c0))
            return self.head(y), h, c

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (2, T, 3)).astype(np.float32)
    H0, C0 = (rng.normal(0, 1, (2, 2, 6)).astype(np.float32) for _ in range(2))  # (layers, batch, hidden)
    path = tmp_path / "state.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), tuple(torch.from_numpy(a[:, :5] if a is X else a) for a in (X, H0, C0)),
                          str(path), dynamo=False, input_names=["x", "h0", "c0"], output_names=["y", "h", "c"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "h0": {1: "b"}, "c0": {1: "b"}})
    model = ls.LSTMModel.from_onnx(path)
    got = streamed(model, X, [(H0[:, b], C0[:, b]) for b in range(2)])
    check(got, ort_run(onnx.load(path), {"x": X, "h0": H0, "c0": C0}))


# ---- built by hand -------------------------------------------------------------------------------------
CASES = {  # name: lstm_graph keyword arguments
    "layout1-nobias-gemm-softmax": dict(layout=1, bias=False, head="gemm", activation="Softmax"),
    "stacked-matmul-sigmoid": dict(sizes=((3, 8), (8, 8), (8, 8)), head="matmul", activation="Sigmoid"),
    "stacked-layout1-Y_h": dict(sizes=((3, 7), (7, 7)), layout=1, head=None, output="Y_h"),
    "float64-explicit-activations": dict(dtype=np.float64, attrs={"activations": ["Sigmoid", "Tanh", "Tanh"],
                                                                  "direction": "forward"}),
    "zero-peepholes": dict(peephole=lambda rng, H: np.zeros((1, 3 * H))),
    "peepholes-stacked-gemm": dict(sizes=((3, 8), (8, 8)), head="gemm", activation="Sigmoid",
                                   peephole=lambda rng, H: rng.normal(0, 0.5, (1, 3 * H))),
    "peepholes-layout1-float64": dict(layout=1, dtype=np.float64,
                                      peephole=lambda rng, H: rng.normal(0, 0.5, (1, 3 * H))),
    "opset11": dict(opset=11, sizes=((3, 8), (8, 8)), head="gemm", activation="Softmax"),
}


@pytest.mark.parametrize("name", CASES)
def test_hand_built(name):
    kw = CASES[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    proto = lstm_graph(rng, **kw)
    model = ls.LSTMModel.from_onnx(proto)
    dtype = kw.get("dtype", np.float32)
    assert model.dtype == np.dtype(dtype).name
    X = rng.normal(0, 1, (2, T, kw.get("sizes", ((3,),))[0][0])).astype(dtype)
    xin = X if kw.get("layout", 0) == 1 else X.transpose(1, 0, 2)
    got = streamed(model, X)
    for run in runners(kw.get("layout", 0), dtype):
        want = run(proto, {"x": xin})
        if kw.get("head") == "gemm" or kw.get("output") == "Y_h":  # the last step: (batch, O)
            check(got[:, -1], want)
        else:
            check(got, want if kw.get("layout", 0) == 1 else want.transpose(1, 0, 2))


@pytest.mark.parametrize("layout", [0, 1])
def test_initial_state_inputs_are_a_streams_state(layout):
    """initial_h/initial_c fed at run time are what lstm-stream keeps per stream: a stream given them with
    set_state continues as the graph does from them."""
    rng = np.random.default_rng(7 + layout)
    sizes = ((3, 8), (8, 8))
    proto = lstm_graph(rng, sizes, layout=layout, head="matmul", activation="Sigmoid", state="input")
    model = ls.LSTMModel.from_onnx(proto)
    N = 2
    X = rng.normal(0, 1, (N, T, 3)).astype(np.float32)
    h0 = [rng.normal(0, 0.5, (N, H)).astype(np.float32) for _, H in sizes]
    c0 = [rng.normal(0, 2, (N, H)).astype(np.float32) for _, H in sizes]
    shape = (lambda a: a[None]) if layout == 0 else (lambda a: a[:, None])
    feeds = {"x": X.transpose(1, 0, 2) if layout == 0 else X}
    for l in range(len(sizes)):
        feeds[f"h0_{l}"], feeds[f"c0_{l}"] = shape(h0[l]), shape(c0[l])
    state = [(np.stack([h[n] for h in h0]), np.stack([c[n] for c in c0])) for n in range(N)]
    got = streamed(model, X, state)
    for run in runners(layout, np.float32):
        want = run(proto, feeds)
        check(got, want.transpose(1, 0, 2) if layout == 0 else want)
    zero = streamed(model, X)  # the state mattered: from zero state the outputs differ at first
    assert np.max(np.abs(zero[:, 0] - got[:, 0])) > 1e-3


def test_peephole_order_is_mapped():
    """ONNX's P is (p_i, p_o, p_f); ours (p_i, p_f, p_o)."""
    proto = lstm_graph(np.random.default_rng(3), ((3, 4),), head=None,
                       peephole=lambda rng, H: rng.normal(0, 1, (1, 3 * H)))
    P = onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "P0"))[0]
    p_i, p_o, p_f = np.split(P, 3)
    np.testing.assert_array_equal(ls.LSTMModel.from_onnx(proto).layers[0].w_ph, np.stack([p_i, p_f, p_o]))
    assert "peephole_l0" not in ls.LSTMModel.from_onnx(lstm_graph(np.random.default_rng(3), ((3, 4),), head=None,
                                                                  peephole=lambda rng, H: np.zeros((1, 12))
                                                                  )).tensors()


@pytest.mark.parametrize("kw", [dict(), dict(peephole=lambda rng, H: rng.normal(0, 0.5, (1, 3 * H))),
                                dict(sizes=((3, 8), (8, 8)), head="gemm", activation="Softmax")],
                         ids=["plain", "peepholes", "stacked-gemm"])
def test_clip_against_onnxruntime(kw):
    """clip clamps each gate's input to [-clip, clip] before its activation, as onnxruntime computes it (onnx's
    reference evaluator ignores clip): weights large enough that it binds, so the outputs differ without it."""
    rng = np.random.default_rng(11)
    proto = lstm_graph(rng, **kw, scale=1.5, attrs={"clip": 1.25})  # (every LSTM node of a stacked graph)
    model = ls.LSTMModel.from_onnx(proto)
    assert model.clip == 1.25 and "clip=1.25" in repr(model)
    X = rng.normal(0, 1.5, (2, T, 3)).astype(np.float32)
    want = ort_run(proto, {"x": X.transpose(1, 0, 2)})
    got = streamed(model, X)
    check(got[:, -1] if kw.get("head") == "gemm" else got, want if kw.get("head") == "gemm" else
          want.transpose(1, 0, 2))
    unclipped = ls.LSTMModel.from_arrays(model.tensors(), head_activation=model.head_activation)
    assert np.max(np.abs(streamed(unclipped, X) - got)) > 1e-2  # the clip binds


def test_gate_order_is_mapped():
    """Our block k is ONNX block (i, o, f, c)[k] for (i, f, g, o): checked on the arrays themselves."""
    rng = np.random.default_rng(3)
    proto = lstm_graph(rng, ((3, 4),), head=None)
    W = onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "W0"))[0]
    i, o, f, c = np.split(W, 4)
    model = ls.LSTMModel.from_onnx(proto)
    np.testing.assert_array_equal(model.layers[0].w_ih, np.concatenate([i, f, c, o]))


# ---- refused -----------------------------------------------------------------------------------------------
def _with_node(proto, index, **changes):
    node = proto.graph.node[index]
    for key, value in changes.items():
        if key == "op_type":
            node.op_type = value
        else:
            node.attribute.append(helper.make_attribute(key, value))
    return proto


REFUSED = {
    "reverse": (lambda r: lstm_graph(r, attrs={"direction": "reverse"}), "direction='reverse'"),
    "bidirectional": (lambda r: lstm_graph(r, attrs={"direction": "bidirectional"}), "direction='bidirectional'"),
    "input_forget": (lambda r: lstm_graph(r, attrs={"input_forget": 1}), "input_forget=1"),
    "activations": (lambda r: lstm_graph(r, attrs={"activations": ["Sigmoid", "Relu", "Tanh"]}),
                    "default activations"),
    "clip per node": (lambda r: _with_node(_with_node(lstm_graph(r, sizes=((3, 8), (8, 8))), 0, clip=3.0), 2,
                                           clip=2.0), "clip [3.0, 2.0]"),
    "clip negative": (lambda r: lstm_graph(r, attrs={"clip": -1.0}), "clip=-1.0"),
    "peephole shape": (lambda r: lstm_graph(r, peephole=lambda rng, H: rng.normal(0, 1, (1, 2 * H))),
                       "expected a constant of shape [1, 24]"),
    "const initial_h": (lambda r: lstm_graph(r, state="const"), "non-zero constant initial_h"),
    "hidden sizes": (lambda r: lstm_graph(r, sizes=((3, 8), (8, 6))), "hidden sizes [8, 6]"),
    "GRU": (lambda r: _with_node(lstm_graph(r), 0, op_type="GRU"), "GRU node 'lstm0': a GRU is not an LSTM"),
    "Relu head": (lambda r: _with_node(lstm_graph(r, activation="Sigmoid"), 4, op_type="Relu"),
                  "Relu node 'act': op Relu is not supported"),
    "Tanh head": (lambda r: _with_node(lstm_graph(r, activation="Sigmoid"), 4, op_type="Tanh"),
                  "Tanh node 'act': op Tanh is not supported"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_with_the_node_named(name):
    build, words = REFUSED[name]
    proto = build(np.random.default_rng(0))
    with pytest.raises(ls.ModelError, match="expected|supported") as e:
        ls.LSTMModel.from_onnx(proto)
    assert words in str(e.value)
    if name not in ("GRU", "Relu head", "Tanh head", "hidden sizes"):
        assert "LSTM node 'lstm0'" in str(e.value)


def test_first_step_is_not_the_last():
    proto = lstm_graph(np.random.default_rng(0), head="gemm")
    gather = next(n for n in proto.graph.node if n.name == "last_step")
    idx = next(t for t in proto.graph.initializer if t.name == "minus1")
    idx.CopyFrom(onnx.numpy_helper.from_array(np.asarray(0, np.int64), "minus1"))
    with pytest.raises(ls.ModelError, match="Gather node 'last_step' takes indices \\[0\\] of the T axis"):
        ls.LSTMModel.from_onnx(proto)
    assert gather.op_type == "Gather"


def test_cell_state_output_refused():
    proto = lstm_graph(np.random.default_rng(0), head=None)
    proto.graph.node[-1].input[0] = "Yc0"
    with pytest.raises(ls.ModelError, match="cell state Y_c"):
        ls.LSTMModel.from_onnx(proto)


def test_a_graph_the_walk_misreads_is_caught_by_the_check():
    """A Reshape to [2, -1, H] after the LSTM looks like it keeps (time, batch, features) to the axis walk, but
    it regroups the rows: the import's run through onnx.reference catches it; check=False skips that run."""
    proto = lstm_graph(np.random.default_rng(0), head="matmul")
    mm = next(n for n in proto.graph.node if n.name == "head_mm")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([2, -1, 8], np.int64), "shape"))
    proto.graph.node.insert(list(proto.graph.node).index(mm),
                            helper.make_node("Reshape", [mm.input[0], "shape"], ["regrouped"], name="regroup"))
    mm.input[0] = "regrouped"
    with pytest.raises(ls.ModelError, match="does not reproduce the graph's output 'y'"):
        ls.LSTMModel.from_onnx(proto)
    assert ls.LSTMModel.from_onnx(proto, check=False).hidden_size == 8


def test_sub_in_the_head_is_refused():
    proto = lstm_graph(np.random.default_rng(0), head="matmul")
    next(n for n in proto.graph.node if n.name == "head_add").op_type = "Sub"
    with pytest.raises(ls.ModelError, match="Sub node 'head_add' is on the path from the top LSTM node"):
        ls.LSTMModel.from_onnx(proto)


def test_a_cycle_is_refused_not_followed_forever():
    proto = lstm_graph(np.random.default_rng(0), head=None)
    proto.graph.node[-1].input[0] = "y"  # the output's Identity reads itself
    with pytest.raises(ls.ModelError, match="cycle"):
        ls.LSTMModel.from_onnx(proto)
    proto = lstm_graph(np.random.default_rng(0), head="matmul")
    mm = next(n for n in proto.graph.node if n.name == "head_mm")
    mm.input[1] = "Wc"  # the head's weight: a constant computed from itself
    proto.graph.node.append(helper.make_node("Identity", ["Wc"], ["Wc"], name="loop"))
    with pytest.raises(ls.ModelError, match="a cycle"):
        ls.LSTMModel.from_onnx(proto)


@pytest.mark.parametrize("arg, words", [("missing.onnx", "does not exist"), (b"x", "takes a path")])
def test_bad_sources(tmp_path, arg, words):
    with pytest.raises(ls.ModelError, match=words):
        ls.LSTMModel.from_onnx(tmp_path / arg if isinstance(arg, str) else arg)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ls.ModelError, match="cannot read .* as an ONNX model"):
        ls.LSTMModel.from_onnx(bad)
