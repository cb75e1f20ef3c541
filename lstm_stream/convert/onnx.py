"""Import an ONNX graph of LSTM nodes (+ a linear head) as LSTMModel tensors: LSTMModel.from_onnx.

What is read: the graph's first output, walked back to the graph input. On that path: one or more `LSTM`
nodes (forward direction, layout 0 or 1, default activations, optional B and peepholes P, clip (one threshold
for every node), sequence_lens ignored, zero or run-time initial states) joined by the glue exporters emit (Transpose, Squeeze, Unsqueeze,
Reshape, Identity), then optionally the last step (Gather/Slice of index -1, or the node's Y_h output), a head (MatMul [+ Add] or
Gemm) and a Sigmoid or Softmax. Everything else is refused with a ModelError naming the node.

ONNX's gates are stacked (i, o, f, c) in W [1, 4H, I], R [1, 4H, H] and B [1, 8H] (= Wb then Rb); lstm-stream
uses PyTorch's (i, f, g, o) with g = ONNX's c: block k of ours is block ONNX_GATES[k] of theirs. Peepholes P
[1, 3H] are (p_i, p_o, p_f); ours (p_i, p_f, p_o): ONNX_PEEPHOLES.

Before returning, the importer runs the graph through onnx.reference on a short random batch and compares it
with the imported model (convert/verify.py), so glue it read wrongly is an error, never a silently wrong model.
(onnx.reference ignores clip: a graph with clip is checked without it; clip is onnxruntime's, in the tests.)
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ModelError
from .onnx_graph import GLUE_OPS, INT64_BIG, KNOWN_OPS, OnnxGraph

ONNX_GATES = (0, 2, 3, 1)  # our (i, f, g, o) from ONNX's (i, o, f, c)
ONNX_PEEPHOLES = (0, 2, 1)  # our peepholes (p_i, p_f, p_o) from ONNX's P = (p_i, p_o, p_f)
_REFUSED = {
    "GRU": "a GRU is not an LSTM; lstm-stream runs LSTM layers only",
    "RNN": "a plain RNN is not an LSTM; lstm-stream runs LSTM layers only",
    "Attention": "attention needs the whole sequence at once, which a stream never has",
    "MultiHeadAttention": "attention needs the whole sequence at once, which a stream never has",
    "Loop": "control flow (Loop/Scan/If) cannot be mapped onto fixed LSTM layers",
    "Scan": "control flow (Loop/Scan/If) cannot be mapped onto fixed LSTM layers",
    "If": "control flow (Loop/Scan/If) cannot be mapped onto fixed LSTM layers",
}
SUPPORTED = ("expected LSTM nodes (forward, default activations) joined by Transpose/Squeeze/Unsqueeze/Reshape, "
             "then optionally the last step (Gather/Slice), a MatMul (+ Add) or Gemm head, and Sigmoid or Softmax")
_VERIFY_T, _VERIFY_B = 6, 2


def load_proto(model_or_path):
    """A ModelProto from a path (str or os.PathLike) or a ModelProto; ModelError naming the file otherwise."""
    import onnx
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ModelError(f"from_onnx takes a path or an onnx.ModelProto, got {type(model_or_path).__name__}")
    try:
        return onnx.load(os.fspath(model_or_path))
    except FileNotFoundError:
        raise ModelError(f"ONNX file {str(model_or_path)!r} does not exist") from None
    except Exception as e:
        raise ModelError(f"cannot read {str(model_or_path)!r} as an ONNX model ({type(e).__name__}: {e})") from None


def import_onnx(model_or_path, *, dtype=None, name="model", check=True):
    """The LSTMModel of an ONNX LSTM graph (module doc); with check=True (the default) compared with
    onnx.reference's run of the graph first. dtype None: float64 if the graph's weights are, else float32."""
    from ..model import LSTMModel
    try:
        tensors, activation, weights_dtype, g, info = tensors_from_onnx(model_or_path)
    except RecursionError:  # constants folded, or zeros traced, through a cycle or thousands of nodes
        raise ModelError("the ONNX graph's constants depend on themselves (a cycle) or on thousands of nodes in "
                         "a row; expected a valid (acyclic) ONNX graph") from None
    model = LSTMModel.from_arrays(tensors, head_activation=activation, dtype=dtype or weights_dtype, name=name,
                                  clip=info["clip"])
    if check:
        verify(model, g, info)
    return model


def tensors_from_onnx(model_or_path):
    """(PyTorch-named tensors, head_activation, dtype, OnnxGraph, what verify needs) of an ONNX graph."""
    proto = load_proto(model_or_path)
    g = OnnxGraph(proto)
    _check_ops(g)
    if not g.graph.output:
        raise ModelError("the ONNX graph has no outputs")
    out_name = g.graph.output[0].name
    head_path, last_lstm, out_index = _walk_back(g, out_name, head=True)
    chain = [(last_lstm, out_index, head_path)]
    for _ in range(len(g.graph.node)):  # bounded: a malformed graph with a cycle must not loop forever
        glue, prev, index = _walk_back(g, chain[-1][0].input[0], head=False)
        chain[-1] = chain[-1] + (glue,)
        if prev is None:
            break
        if index != 0:
            raise ModelError(f"{g.describe(chain[-1][0])} reads output {index} of {g.describe(prev)}; expected "
                             "stacked LSTM nodes to read the previous node's Y (output 0)")
        chain.append((prev, 0, None))
    else:
        raise ModelError("the graph's LSTM nodes feed each other in a cycle; expected a graph without cycles")
    chain.reverse()  # bottom layer first: (node, output used, path after it (top only), glue before it)
    lstms = [n for n in g.graph.node if n.op_type == "LSTM"]
    if len(lstms) != len(chain):
        stray = next(n for n in lstms if all(n is not c[0] for c in chain))
        raise ModelError(f"{g.describe(stray)} is not on the path from the graph input to output {out_name!r}; "
                         "expected one chain of stacked LSTM nodes")

    tensors, sizes, layers = {}, {}, []
    for l, (node, _, _, _) in enumerate(chain):
        layers.append(_lstm_layer(g, node, l, tensors))
    if any(k.startswith("peephole_l") for k in tensors):  # peepholes on some nodes: zeros on the others
        for l, ly in enumerate(layers):
            tensors.setdefault(f"peephole_l{l}", np.zeros((3, ly["H"]), ly["dtype"]))
    if len({ly["clip"] for ly in layers}) > 1:
        raise ModelError(f"the stacked LSTM nodes have clip {[ly['clip'] for ly in layers]} (in order: "
                         f"{', '.join(g.describe(c[0]) for c in chain)}); expected the same clip (or none) on "
                         "every node: lstm-stream's layers share one clip threshold")
    if len({ly["H"] for ly in layers}) > 1:
        raise ModelError(f"the stacked LSTM nodes have hidden sizes {[ly['H'] for ly in layers]}; expected one "
                         "hidden size for every layer (as nn.LSTM has): lstm-stream's layers share it")
    x_name, x_labels, batch1 = _input_labels(g, chain, layers)
    labels = None
    for l, (node, _, _, glue) in enumerate(chain):
        if l > 0:
            sizes["F"] = layers[l - 1]["H"]
            labels = _lstm_out_labels(layers[l - 1]["layout"], 0)
            for n in glue:
                labels = g.relabel(n, labels, sizes)
            _expect_x(g, node, labels, layers[l]["layout"])
    top = layers[-1]
    labels, last, activation = _head(g, chain[-1][2], _lstm_out_labels(top["layout"], chain[-1][1]),
                                     chain[-1][1] == 1, top["H"], tensors)
    dtype = "float64" if layers[0]["dtype"] == np.float64 else "float32"
    info = dict(x_name=x_name, x_labels=x_labels, out_name=out_name, out_labels=labels, last=last,
                batch1=batch1 or "B" not in labels, clip=layers[0]["clip"])
    return tensors, activation, dtype, g, info


def _check_ops(g):
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(f"{g.describe(node)} is from domain {node.domain!r}; {SUPPORTED} (standard domain)")
        if node.op_type in _REFUSED:
            raise ModelError(f"{g.describe(node)}: {_REFUSED[node.op_type]}; {SUPPORTED}")
        if node.op_type not in KNOWN_OPS:
            raise ModelError(f"{g.describe(node)}: op {node.op_type} is not supported; {SUPPORTED}")


def _walk_back(g, name, *, head):
    """From tensor `name` back to an LSTM node's output or a graph input: (nodes on the way, in forward order;
    the LSTM node or None; its output index)."""
    path = []
    for _ in range(len(g.graph.node) + 1):  # bounded, as the graph may hold a cycle
        node = g.producer.get(name)
        if node is None:
            if name in g.inputs:
                if head:
                    raise ModelError(f"output {name!r} does not depend on any LSTM node; {SUPPORTED}")
                return path[::-1], None, None
            raise ModelError(f"tensor {name!r} is a constant where the sequence was expected; {SUPPORTED}")
        if node.op_type == "LSTM":
            return path[::-1], node, list(node.output).index(name)
        if not head and node.op_type not in GLUE_OPS:
            raise ModelError(f"{g.describe(node)} is on the path into an LSTM node; expected only "
                             f"{'/'.join(GLUE_OPS)} there")
        path.append(node)
        data = [i for i in node.input[:1 if node.op_type in GLUE_OPS + ("Gather", "Slice") else None]
                if i and g.const(i) is None]
        if len(data) != 1:
            raise ModelError(f"{g.describe(node)} combines {len(data)} computed inputs; {SUPPORTED}")
        name = data[0]
    raise ModelError(f"tensor {name!r} depends on itself (a cycle); expected a graph without cycles")


def _lstm_layer(g, node, l, tensors) -> dict:
    """Check one LSTM node and put its weights, in our gate order, into tensors as layer l."""
    d, a = g.describe(node), g.attrs(node)
    direction = a.get("direction", "forward")
    if direction != "forward":
        raise ModelError(f"{d} has direction={direction!r}: it reads the sequence from its end, which a stream "
                         "never has; expected direction='forward'")
    acts = a.get("activations")
    if acts is not None and [s.lower() for s in acts] != ["sigmoid", "tanh", "tanh"]:
        raise ModelError(f"{d} has activations {acts}; the kernels compute the standard LSTM, expected the "
                         "default activations [Sigmoid, Tanh, Tanh]")
    clip = a.get("clip")
    if clip is not None and not (0 < clip < float("inf")):
        raise ModelError(f"{d} has clip={clip}; expected a positive threshold (or no clip attribute)")
    if a.get("input_forget", 0):
        raise ModelError(f"{d} has input_forget=1 (forget gate = 1 - input gate), which the kernels do not "
                         "compute; expected input_forget=0")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        raise ModelError(f"{d} has layout={layout}; expected 0 or 1")
    W, R = g.const(node.input[1]), g.const(node.input[2])
    if W is None or R is None:
        raise ModelError(f"{d}: its weights W and R are computed at run time; expected constants (initializers)")
    if W.ndim != 3 or W.shape[0] != 1 or W.shape[1] % 4 or R.shape != (1, W.shape[1], W.shape[1] // 4):
        raise ModelError(f"{d}: W has shape {W.shape} and R {R.shape}; expected [1, 4H, I] and [1, 4H, H]")
    H = W.shape[1] // 4
    if a.get("hidden_size", H) != H:
        raise ModelError(f"{d}: hidden_size={a['hidden_size']} but W has {W.shape[1]} = 4 x {H} rows")
    if W.dtype.kind != "f":
        raise ModelError(f"{d}: W has dtype {W.dtype}; expected floating-point weights")
    inputs = list(node.input) + [""] * (8 - len(node.input))
    Bv = g.const(inputs[3]) if inputs[3] else np.zeros((1, 8 * H), W.dtype)
    if Bv is None or Bv.shape != (1, 8 * H):
        raise ModelError(f"{d}: B is {'computed at run time' if Bv is None else f'of shape {Bv.shape}'}; "
                         f"expected a constant of shape [1, {8 * H}]")
    peep = None
    if inputs[7] and g.is_zero(inputs[7]) is not True:
        peep = g.const(inputs[7])
        if peep is None or peep.shape != (1, 3 * H):
            raise ModelError(f"{d}: P is {'computed at run time' if peep is None else f'of shape {peep.shape}'}; "
                             f"expected a constant of shape [1, {3 * H}]")
    for k, what in ((5, "initial_h"), (6, "initial_c")):  # zero, or a graph input: a stream's state
        if inputs[k] and g.is_zero(inputs[k]) is False:
            raise ModelError(f"{d} has a non-zero constant {what}: lstm-stream starts every new stream at zero "
                             f"state; expected no {what}, zeros, or a graph input (a stream's state, set with "
                             "Streams.set_state(id, (h, c)))")
    perm = lambda m: m.reshape(4, H, *m.shape[1:])[list(ONNX_GATES)].reshape(m.shape)  # noqa: E731
    tensors[f"weight_ih_l{l}"] = perm(W[0])
    tensors[f"weight_hh_l{l}"] = perm(R[0])
    tensors[f"bias_ih_l{l}"] = perm(Bv[0, :4 * H])
    tensors[f"bias_hh_l{l}"] = perm(Bv[0, 4 * H:])
    if peep is not None:  # ONNX's P is (p_i, p_o, p_f); ours (p_i, p_f, p_o)
        tensors[f"peephole_l{l}"] = peep[0].reshape(3, H)[list(ONNX_PEEPHOLES)]
    return {"H": H, "I": W.shape[2], "layout": layout, "dtype": W.dtype, "clip": clip}


def _lstm_out_labels(layout, index):
    if index == 2:
        raise ModelError("the graph's output is an LSTM node's cell state Y_c; lstm-stream outputs h (Y or Y_h) "
                         "or the head's value")
    if index == 0:
        return ("T", "1", "B", "F") if layout == 0 else ("B", "T", "1", "F")
    return ("1", "B", "F") if layout == 0 else ("B", "1", "F")


def _expect_x(g, node, labels, layout):
    want = ("T", "B", "F") if layout == 0 else ("B", "T", "F")
    if len(labels) != 3 or any(x != w and not (w == "B" and x == "1") for x, w in zip(labels, want)):
        names = {"T": "time", "B": "batch", "F": "features", "1": "1"}
        raise ModelError(f"{g.describe(node)} (layout={layout}) reads X with axes "
                         f"({', '.join(names[x] for x in labels)}); expected "
                         f"({', '.join(names[x] for x in want)})")


def _input_labels(g, chain, layers):
    """(graph input name, its axis labels, whether the glue drops the batch axis): the labelling of the input
    whose path through the glue gives the first LSTM node the axes its layout needs."""
    node, _, _, glue = chain[0]
    x_name = glue[0].input[0] if glue else node.input[0]
    vi = next(i for i in g.graph.input if i.name == x_name)
    ranks = [len(vi.type.tensor_type.shape.dim)] if vi.type.tensor_type.HasField("shape") else [3, 2]
    import itertools
    for rank in ranks:
        base = ("T", "B", "F") if rank == 3 else ("T", "F") if rank == 2 else None
        if base is None:
            break
        for cand in itertools.permutations(base):
            labels, sizes = cand, {"F": layers[0]["I"]}
            try:
                for n in glue:
                    labels = g.relabel(n, labels, sizes)
                _expect_x(g, node, labels, layers[0]["layout"])
            except ModelError:
                continue
            return x_name, cand, "B" not in labels
    raise ModelError(f"cannot tell the time, batch and feature axes of graph input {x_name!r} on its way into "
                     f"{g.describe(node)}; expected a 3-D input (2-D without batch) and only axis-moving glue")


def _head(g, path, labels, last, P, tensors):
    """Read the nodes after the top LSTM: (output labels, whether the last step is selected, activation)."""
    stage, activation, sizes = 0, "none", {"F": P}
    for node in path:
        op, d = node.op_type, g.describe(node)
        if op in GLUE_OPS:
            labels = g.relabel(node, labels, sizes)
        elif op in ("Gather", "Slice") and stage == 0:
            labels, last = _select_last(g, node, labels, last)
        elif op in ("MatMul", "Gemm") and stage == 0 and labels[-1] == "F":
            tensors["head.weight"], tensors["head.bias"] = _linear(g, node, labels, sizes["F"])
            sizes["F"], stage = tensors["head.weight"].shape[0], 1 if op == "MatMul" else 2
        elif op == "Add" and stage == 1:
            b = g.const(next(i for i in node.input if g.const(i) is not None))
            O = sizes["F"]
            if b.size != O or (b.ndim and b.shape[-1] != O):
                raise ModelError(f"{d} adds a bias of shape {b.shape}; expected ({O},)")
            tensors["head.bias"] = tensors["head.bias"] + b.reshape(O).astype(tensors["head.bias"].dtype)
            stage = 2
        elif op in ("Sigmoid", "Softmax") and stage < 3:
            if op == "Softmax":
                _softmax_axis(g, node, labels)
            if stage == 0:  # an activation straight on h: an identity head
                tensors["head.weight"], tensors["head.bias"] = np.eye(P), np.zeros(P)
            activation, stage = op.lower(), 3
        else:
            raise ModelError(f"{d} is on the path from the top LSTM node to the output and is not understood "
                             f"there; {SUPPORTED}")
    if "F" not in labels or any(x != "1" for x in labels[labels.index("F") + 1:]):
        raise ModelError(f"the output has axes {labels}; expected the features last")
    return labels, last, activation


def _select_last(g, node, labels, last):
    """A Gather or Slice of the last time step (index -1), or a no-op on a size-1 axis."""
    d, rank = g.describe(node), len(labels)
    if node.op_type == "Gather":
        axis = g.attrs(node).get("axis", 0) % rank
        idx = g.const(node.input[1])
        flat = [int(v) for v in np.ravel(idx)]
        ok = (labels[axis] == "T" and flat == [-1]) or (labels[axis] == "1" and flat in ([0], [-1]))
        if not ok:
            raise ModelError(f"{d} takes indices {flat} of the {labels[axis]} axis; expected only the last time "
                             "step (index -1)")
        kept = ("1",) if idx.ndim else ()  # a 1-element index keeps the axis with size 1; a scalar drops it
        return labels[:axis] + kept + labels[axis + 1:], last or labels[axis] == "T"
    starts = g.int_input(node, 1, "starts")
    ends = g.int_input(node, 2, "ends")
    axes = g.int_input(node, 3, "axes") or list(range(len(starts)))
    steps = g.int_input(node, 4) or [1] * len(starts)
    out = list(labels)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= rank
        if st != 1 or (out[ax] == "T" and not (s == -1 and e >= INT64_BIG)) or \
                (out[ax] == "1" and s not in (0, -1)) or out[ax] in ("B", "F"):
            raise ModelError(f"{d} slices the {out[ax]} axis [{s}:{e}:{st}]; expected only the last time step "
                             "([-1:])")
        if out[ax] == "T":
            out[ax], last = "1", True
    return tuple(out), last


def _linear(g, node, labels, F):
    """(weight (O, F), bias (O,)) of a MatMul (bias 0 until an Add) or a Gemm."""
    d = g.describe(node)
    if node.op_type == "MatMul":
        W = g.const(node.input[1])
        if W is None or W.ndim != 2 or W.shape[0] != F:
            raise ModelError(f"{d}: the head's weight is {None if W is None else W.shape}; expected a constant "
                             f"({F}, output_size) on the right")
        return W.T.copy(), np.zeros(W.shape[1], W.dtype)
    a = g.attrs(node)
    if a.get("transA", 0) or len(labels) != 2:
        raise ModelError(f"{d}: expected a Gemm with transA=0 over a 2-D (batch, features) input")
    W, C = g.const(node.input[1]), g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if W is None or W.ndim != 2:
        raise ModelError(f"{d}: its B input must be a constant 2-D weight")
    W = (W if a.get("transB", 0) else W.T) * a.get("alpha", 1.0)
    if W.shape[1] != F:
        raise ModelError(f"{d}: the head's weight maps {W.shape[1]} features; the LSTM gives {F}")
    O = W.shape[0]
    bias = np.zeros(O, W.dtype) if C is None else np.broadcast_to(C, (1, O)).reshape(O) * a.get("beta", 1.0)
    return W, bias


def _softmax_axis(g, node, labels):
    rank = len(labels)
    axis = g.attrs(node).get("axis", -1 if g.opset() >= 13 else 1) % rank
    if any(x != "1" for x in labels[axis:-1]) or labels[-1] != "F" and axis != rank - 1:
        raise ModelError(f"{g.describe(node)} normalises over axis {axis} of {labels}; expected the feature axis")


def verify(model, g, info, *, seed=0):
    """Run the graph through onnx.reference on a random batch and compare with `model`; ModelError if they
    differ (the graph computes something the import did not capture)."""
    from onnx.reference import ReferenceEvaluator

    from .verify import forward
    proto = g.proto
    if model.clip is not None:  # onnx.reference ignores clip: check the reading of the graph without it (the
        # clip itself is the kernels', tested against onnxruntime)
        proto = type(proto)()
        proto.CopyFrom(g.proto)
        for node in proto.graph.node:
            if node.op_type == "LSTM":
                kept = [at for at in node.attribute if at.name != "clip"]
                del node.attribute[:]
                node.attribute.extend(kept)
        model = type(model).from_arrays(model.tensors(), head_activation=model.head_activation, dtype=model.dtype)
    rng = np.random.default_rng(seed)
    B = 1 if info["batch1"] else _VERIFY_B
    T, I = _VERIFY_T, model.input_size
    X = rng.normal(0, 1, (B, T, I))
    sizes = {"T": T, "B": B, "F": I}
    x_labels = info["x_labels"]
    xt = np.transpose(X, ["BTF".index(x) for x in x_labels if x in "BTF"] if "B" in x_labels
                      else [0] + [1 + "TF".index(x) for x in x_labels])
    xt = xt.reshape([sizes[x] for x in x_labels])
    feeds = {}
    for vi in g.graph.input:
        if vi.name in g.initializers:
            continue
        elem = vi.type.tensor_type.elem_type
        dtype = g.onnx.helper.tensor_dtype_to_np_dtype(elem)
        if vi.name == info["x_name"]:
            feeds[vi.name] = xt.astype(dtype)
        else:  # a run-time initial state: zeros, as a new stream starts
            shape = [d.dim_value if d.dim_value > 0 else B for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.zeros(shape, dtype)
    try:
        got = ReferenceEvaluator(proto).run([info["out_name"]], feeds)[0]
    except Exception as e:
        raise ModelError(f"onnx.reference could not run the graph to check the import ({type(e).__name__}: "
                         f"{e})") from None
    want = forward(model, X)  # (B, T, O)
    if info["last"]:
        want = want[:, -1:]
    keep = [x for x in info["out_labels"] if x != "1"]
    axes = {"B": 0, "T": 1, "F": 2}
    if "B" not in keep:
        want = want[0:1]
    want = np.transpose(want, [axes[x] for x in keep] + [axes[x] for x in "BTF" if x not in keep])
    shape = [{"T": T, "B": B, "F": model.output_size, "1": 1}[x] for x in info["out_labels"]]
    want = want.reshape(shape) if got.shape == tuple(shape) else None
    if want is None or np.max(np.abs(got - want)) > 1e-3 * (1 + np.max(np.abs(want))):
        err = (f"shape {got.shape}, expected {tuple(shape)}" if want is None
               else f"largest difference {np.max(np.abs(got - want)):.3g}")
        raise ModelError(f"the imported model does not reproduce the graph's output {info['out_name']!r} "
                         f"({err}); the graph holds something the importer did not understand. {SUPPORTED}")
