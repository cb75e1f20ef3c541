"""An ONNX graph as the ONNX importer reads it: who produces each tensor, which tensors are constants (folded),
which are known to be zero, and what each axis of the sequence tensor means as it passes through the glue that
exporters put around LSTM nodes (Transpose, Squeeze, Unsqueeze, Reshape, Gather/Slice of the last step).

Axis labels: "T" time, "B" batch, "F" features (always last by the time a head reads them), "1" a size-1 axis
(ONNX's num_directions, or one that an Unsqueeze added). A path of glue that would mix two axes is refused.
Imports onnx only when an OnnxGraph is built (the importer's caller asked for ONNX).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

# Ops that only move the sequence tensor's axes or pass it through unchanged (inference mode).
GLUE_OPS = ("Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast", "Dropout", "Flatten")
# Ops the importer understands somewhere in a graph (constants, shape arithmetic, the LSTM, the head).
KNOWN_OPS = frozenset(GLUE_OPS + (
    "LSTM", "Constant", "ConstantOfShape", "Shape", "Gather", "Slice", "Concat", "Expand", "Tile", "Range",
    "MatMul", "Add", "Gemm", "Sigmoid", "Softmax", "Mul", "Sub", "Div", "Equal", "Where", "Size", "Max", "Min"))
INT64_BIG = 2**31 - 1  # a Slice end at or beyond this means "to the end"


class OnnxGraph:
    """Lookups over one ModelProto's main graph: producer(name), const(name), is_zero(name), node names."""

    def __init__(self, proto):
        import onnx
        from onnx import numpy_helper
        self.onnx, self.proto, self.graph = onnx, proto, proto.graph
        self._numpy_helper = numpy_helper
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.producer = {}
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
        self._consts = {}

    @staticmethod
    def describe(node) -> str:
        """How an error names a node: its op and its name (or its first output when it has no name)."""
        return f"{node.op_type} node {node.name or node.output[0]!r}"

    def attrs(self, node) -> dict:
        """The node's attributes as Python values (str for strings)."""
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode() for s in v]
            out[a.name] = v
        return out

    def opset(self) -> int:
        """The default domain's opset version."""
        for o in self.proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                return o.version
        return 1

    # ---- constants -------------------------------------------------------------------------------------
    def const(self, name):
        """The value of tensor `name` as a numpy array if it does not depend on any graph input (initializers,
        Constant nodes, and any computation over them, folded by onnx.reference), else None."""
        if not name:
            return None
        if name not in self._consts:
            self._consts[name] = self._fold(name)
        return self._consts[name]

    def _fold(self, name):
        if name in self.initializers:
            return self._numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None:
            return None  # a graph input
        if node.op_type == "Constant":
            return self._constant_node(node)
        if not all(self.const(i) is not None for i in node.input if i):
            return None
        from onnx import helper
        from onnx.reference import ReferenceEvaluator
        feeds = {i: self.const(i) for i in node.input if i}
        inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for i, v in feeds.items()]
        outputs = [helper.make_value_info(o, self.onnx.TypeProto()) for o in node.output if o]
        g = helper.make_graph([node], "fold", inputs, outputs)
        m = helper.make_model(g, opset_imports=list(self.proto.opset_import))
        try:
            values = ReferenceEvaluator(m).run(None, feeds)
        except Exception as e:
            raise ModelError(f"{self.describe(node)}: cannot compute its constant output ({e})") from None
        return np.asarray(values[[o for o in node.output if o].index(name)])

    def _constant_node(self, node):
        a = self.attrs(node)
        if "value" in a:
            return self._numpy_helper.to_array(a["value"])
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in a:
                return np.asarray(a[key], dtype)
        raise ModelError(f"{self.describe(node)}: a Constant with attributes {sorted(a)}; expected value, "
                         "value_float(s) or value_int(s)")

    def is_zero(self, name) -> bool | None:
        """True if tensor `name` is all zeros whatever the inputs' sizes (a folded constant, ConstantOfShape
        of 0, or a slice/reshape/expand of such), False if it is a non-zero constant, None if it depends on
        a graph input's values (a state fed at run time)."""
        v = self.const(name)
        if v is not None:
            return not np.any(v)
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "ConstantOfShape":
            value = self.attrs(node).get("value")
            return value is None or not np.any(self._numpy_helper.to_array(value))
        if node.op_type in GLUE_OPS + ("Slice", "Gather", "Expand", "Tile"):
            return self.is_zero(node.input[0])
        if node.op_type == "Concat":
            parts = [self.is_zero(i) for i in node.input]
            return None if None in parts else all(parts)
        return None

    def int_input(self, node, index, attr=None):
        """An int list given as the attribute `attr` (older opsets) or as the constant input `index`."""
        a = self.attrs(node)
        if attr is not None and attr in a:
            return list(a[attr])
        if len(node.input) > index and node.input[index]:
            v = self.const(node.input[index])
            if v is None:
                raise ModelError(f"{self.describe(node)}: its input {node.input[index]!r} is computed at run "
                                 "time; expected a constant")
            return [int(x) for x in np.ravel(v)]
        return None

    # ---- axis labels --------------------------------------------------------------------------------------
    def relabel(self, node, labels: tuple, sizes: dict) -> tuple:
        """The labels of a glue node's output given its data input's labels; sizes maps "F" to the feature
        count. ModelError naming the node if it would mix axes."""
        op, a, rank = node.op_type, self.attrs(node), len(labels)
        if op in ("Identity", "Cast", "Dropout"):
            if op == "Cast" and a.get("to") not in (1, 10, 11):  # FLOAT, FLOAT16, DOUBLE
                raise ModelError(f"{self.describe(node)} casts to a non-float type; expected float")
            return labels
        if op == "Transpose":
            perm = a.get("perm", list(range(rank))[::-1])
            return tuple(labels[p] for p in perm)
        if op == "Squeeze":
            axes = self.int_input(node, 1, "axes")
            if axes is None:
                return tuple(x for x in labels if x != "1")
            axes = {ax % rank for ax in axes}
            for ax in axes:
                if labels[ax] not in ("1", "B"):
                    raise ModelError(f"{self.describe(node)} squeezes the {_AXIS[labels[ax]]} axis; expected "
                                     "to squeeze only size-1 axes")
            return tuple(x for k, x in enumerate(labels) if k not in axes)
        if op == "Unsqueeze":
            axes = self.int_input(node, 1, "axes")
            out = list(labels)
            for ax in sorted(ax % (rank + len(axes)) for ax in axes):
                out.insert(ax, "1")
            return tuple(out)
        if op == "Flatten":
            axis = a.get("axis", 1) % max(rank, 1)
            left, right = [x for x in labels[:axis] if x != "1"], [x for x in labels[axis:] if x != "1"]
            if len(left) > 1 or len(right) > 1:
                raise ModelError(f"{self.describe(node)} merges the axes {labels}; expected only size-1 axes "
                                 "to be merged")
            return (left[0] if left else "1", right[0] if right else "1")
        if op == "Reshape":
            return self._reshape(node, labels, sizes)
        raise ModelError(f"{self.describe(node)} is not glue the importer understands")

    def _reshape(self, node, labels, sizes):
        shape = self.int_input(node, 1)
        if shape is None:
            raise ModelError(f"{self.describe(node)} has no shape input")
        real = [x for x in labels if x != "1"]
        out, k = [], 0
        for j, d in enumerate(shape):
            if d == 0 and not self.attrs(node).get("allowzero", 0):
                lab = labels[j]
                if lab != "1":
                    if k >= len(real) or real[k] != lab:
                        break
                    k += 1
                out.append(lab)
            elif d == 1:
                out.append("1")
            else:
                if k >= len(real) or (real[k] == "F" and d not in (-1, sizes["F"])):
                    break
                out.append(real[k])
                k += 1
        else:
            if k == len(real):
                return tuple(out)
        raise ModelError(f"{self.describe(node)} reshapes axes {labels} to {shape}, which mixes the time, batch "
                         "and feature axes; expected a reshape that only adds or removes size-1 axes")


_AXIS = {"T": "time", "B": "batch", "F": "feature", "1": "size-1"}
