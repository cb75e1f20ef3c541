"""An ONNX graph of an lstm-stream model built with onnx.helper: one LSTM node per layer (W, R, B,
initial_h, initial_c as graph inputs for the states), then MatMul + Add for the head.

Graph inputs:  x (1, N, I), h0_l, c0_l (1, N, H) for each layer l      (N is a symbolic batch size)
Graph outputs: y (N, O) [head] or (N, H), h1_l, c1_l (1, N, H) for each layer: feed them back as h0, c0.
ONNX orders gates (i, o, f, c); PyTorch and lstm-stream (i, f, g, o): the blocks are permuted here.
"""
from __future__ import annotations

import numpy as np

# PyTorch block k of [i | f | g | o] goes to ONNX position: i, o, f, c(=g)
_TO_ONNX = (0, 3, 1, 2)
OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime >= 1.10


def _iofc(w: np.ndarray, H: int) -> np.ndarray:
    """Reorder the 4 gate blocks (rows of H) from PyTorch's (i, f, g, o) to ONNX's (i, o, f, c)."""
    blocks = [w[k * H:(k + 1) * H] for k in range(4)]
    return np.concatenate([blocks[k] for k in _TO_ONNX], axis=0)


def build_model(model):
    """onnx.ModelProto computing one step of `model` (an lstm_stream.LSTMModel without projection)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if model.proj_size:
        raise ValueError("the ONNX LSTM operator has no projection (proj_size); not supported here")
    H, I, L = model.hidden_size, model.input_size, model.num_layers
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f32, [1, "N", I])]
    outputs, nodes, inits = [], [], []
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    layer_in = "x"
    for l, ly in enumerate(model.layers):
        w = _iofc(ly.w_ih.astype(np.float32), H)[None]
        r = _iofc(ly.w_hh.astype(np.float32), H)[None]
        b = np.concatenate([_iofc(ly.b_ih.astype(np.float32), H), _iofc(ly.b_hh.astype(np.float32), H)])[None]
        inits += [numpy_helper.from_array(w, f"W{l}"), numpy_helper.from_array(r, f"R{l}"),
                  numpy_helper.from_array(b, f"B{l}")]
        inputs += [helper.make_tensor_value_info(f"h0_{l}", f32, [1, "N", H]),
                   helper.make_tensor_value_info(f"c0_{l}", f32, [1, "N", H])]
        outputs += [helper.make_tensor_value_info(f"h1_{l}", f32, [1, "N", H]),
                    helper.make_tensor_value_info(f"c1_{l}", f32, [1, "N", H])]
        # inputs: X, W, R, B, sequence_lens (omitted), initial_h, initial_c; outputs: Y, Y_h, Y_c
        nodes.append(helper.make_node("LSTM", [layer_in, f"W{l}", f"R{l}", f"B{l}", "", f"h0_{l}", f"c0_{l}"],
                                      [f"Y{l}", f"h1_{l}", f"c1_{l}"], hidden_size=H, name=f"lstm{l}"))
        if l + 1 < L:  # Y (1, 1, N, H) -> (1, N, H): the next layer's input sequence
            nodes.append(helper.make_node("Squeeze", [f"Y{l}", "axis1"], [f"X{l + 1}"]))
            layer_in = f"X{l + 1}"
    last = f"h1_{L - 1}"
    if model.head_w is not None:
        O = model.output_size
        inits += [numpy_helper.from_array(np.ascontiguousarray(model.head_w.T, np.float32), "headW"),
                  numpy_helper.from_array(model.head_b.astype(np.float32), "headb")]
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        nodes += [helper.make_node("Squeeze", [last, "axis0"], ["hlast"]),
                  helper.make_node("MatMul", ["hlast", "headW"], ["z"]),
                  helper.make_node("Add", ["z", "headb"], ["y"] if model.head_activation == "none" else ["za"])]
        if model.head_activation == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", ["za"], ["y"]))
        elif model.head_activation == "softmax":
            nodes.append(helper.make_node("Softmax", ["za"], ["y"], axis=-1))
    else:
        O = H
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        nodes.append(helper.make_node("Squeeze", [last, "axis0"], ["y"]))
    outputs.insert(0, helper.make_tensor_value_info("y", f32, ["N", O]))
    graph = helper.make_graph(nodes, "lstm_stream_step", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lstm-stream bench")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def session(model, threads: int):
    """An onnxruntime InferenceSession of build_model(model) on `threads` intra-op threads (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between calls (the other contenders wait passively too; see bench/kernel.py).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(build_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
