"""Hand-built ONNX LSTM graphs (onnx.helper) and runners for them (onnxruntime, onnx.reference), for the tests."""
import numpy as np


def lstm_graph(rng, sizes=((3, 8),), *, layout=0, bias=True, head="matmul", activation=None, O=4,
               state="none", dtype=np.float32, attrs=None, peephole=None, output="Y", scale=0.5, opset=17):
    """A ModelProto: LSTM nodes of (input, hidden) `sizes` stacked with a Squeeze between them (layout 0) or a
    Squeeze of axis 2 (layout 1); then head "matmul" (MatMul + Add), "gemm" (last step, Gemm transB=1) or None;
    activation "Sigmoid"/"Softmax"/None. state: "none", "input" (graph inputs h0_l/c0_l) or "const" (a non-zero
    initializer). output "Y" (every step) or "Y_h" (the last step)."""
    from onnx import TensorProto, helper, numpy_helper
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    inits, nodes, inputs = [], [], []
    x_shape = ["T", "N", sizes[0][0]] if layout == 0 else ["N", "T", sizes[0][0]]
    inputs.append(helper.make_tensor_value_info("x", elem, x_shape))

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def squeeze(name, inp, axes):
        if opset < 13:
            return helper.make_node("Squeeze", [inp], [name], name=name, axes=axes)
        return helper.make_node("Squeeze", [inp, ints(f"{name}_axes", axes)], [name], name=name)

    seq = "x"
    for l, (I, H) in enumerate(sizes):
        ins = [seq, const(f"W{l}", rng.normal(0, scale, (1, 4 * H, I))),
               const(f"R{l}", rng.normal(0, scale, (1, 4 * H, H))),
               const(f"B{l}", rng.normal(0, scale, (1, 8 * H))) if bias else "", ""]
        if state == "input":
            shape = [1, "N", H] if layout == 0 else ["N", 1, H]
            inputs += [helper.make_tensor_value_info(f"{s}0_{l}", elem, shape) for s in "hc"]
            ins += [f"h0_{l}", f"c0_{l}"]
        elif state == "const":
            ins += [const(f"h0_{l}", rng.normal(0, 1, (1, 1, H))), ""]
        else:
            ins += ["", ""]
        if peephole is not None:
            ins.append(const(f"P{l}", peephole(rng, H)))
        nodes.append(helper.make_node("LSTM", ins, [f"Y{l}", f"Yh{l}", f"Yc{l}"], name=f"lstm{l}", hidden_size=H,
                                      **({"layout": layout} if opset >= 14 else {}), **(attrs or {})))
        nodes.append(squeeze(f"S{l}", f"Y{l}", [1 if layout == 0 else 2]))
        seq = f"S{l}"
    H = sizes[-1][1]
    if output == "Y_h":  # [1, N, H] (layout 0) or [N, 1, H]: squeeze the directions axis
        nodes.append(squeeze("last", f"Yh{len(sizes) - 1}", [0 if layout == 0 else 1]))
        seq = "last"
    if head == "matmul":
        nodes += [helper.make_node("MatMul", [seq, const("Wo", rng.normal(0, 1, (H, O)))], ["mm"], name="head_mm"),
                  helper.make_node("Add", [const("bo", rng.normal(0, 1, O)), "mm"], ["z"], name="head_add")]
        seq = "z"
    elif head == "gemm":  # on the last step: Gather index -1 of the time axis
        nodes.append(helper.make_node("Gather", [seq, ints("minus1", -1)], ["lastT"], name="last_step",
                                      axis=0 if layout == 0 else 1))
        nodes.append(helper.make_node("Gemm", ["lastT", const("Wg", rng.normal(0, 1, (O, H))),
                                               const("bg", rng.normal(0, 1, O))], ["z"], name="head_gemm",
                                      transB=1, alpha=0.5))
        seq = "z"
    if activation:
        nodes.append(helper.make_node(activation, [seq], ["out"], name="act"))
        seq = "out"
    nodes.append(helper.make_node("Identity", [seq], ["y"], name="y"))
    graph = helper.make_graph(nodes, "lstm", inputs, [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_run(proto, feeds):
    """The graph's first output by onnxruntime (one thread, CPU)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def reference_run(proto, feeds):
    """The graph's first output by onnx.reference.ReferenceEvaluator."""
    from onnx.reference import ReferenceEvaluator
    # its sigmoid is 1 / (1 + exp(-x)): below x = -88 (float32) exp overflows to inf and the gate is 0, the
    # right value; a peephole on a large cell gets there (CI, the seed of hash('peepholes-stacked-gemm'))
    with np.errstate(over="ignore"):
        return ReferenceEvaluator(proto).run(None, feeds)[0]
