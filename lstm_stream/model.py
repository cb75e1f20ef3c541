"""LSTMModel: validated weights of a stacked LSTM (+ optional projection and head), .npz I/O, fingerprint.

Math follows PyTorch's nn.LSTM, gates in order (i, f, g, o):
    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                         h' = o * tanh(c')      (h' = W_hr h' with proj_size)
    y  = act(W_head h'_last + b_head)          act in {none, sigmoid, softmax}; no head: y = h'_last
Optional peephole connections (Gers & Schmidhuber 2000; ONNX's P), per layer p = (p_i, p_f, p_o), each (H,):
    i and f add p_i * c and p_f * c (the previous cell), o adds p_o * c' (the new cell).
Optional clip (ONNX's LSTM attribute, as onnxruntime computes it): each gate's input, sums, bias and peephole
term included, is clamped to [-clip, clip] before its activation (i, f, g and o; not the cell before h's tanh).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError

FORMAT_VERSION = 1
HEAD_ACTIVATIONS = ("none", "sigmoid", "softmax")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class LayerWeights:
    """One LSTM layer, PyTorch's tensor names and shapes (H hidden, P = proj_size or H, I_l layer input)."""

    w_ih: np.ndarray  # (4H, I_l)
    w_hh: np.ndarray  # (4H, P)
    b_ih: np.ndarray  # (4H,)
    b_hh: np.ndarray  # (4H,)
    w_hr: np.ndarray | None = None  # (P, H) only with proj_size
    w_ph: np.ndarray | None = None  # (3, H) peepholes (p_i, p_f, p_o), only with peephole connections


@dataclass(frozen=True, eq=False)
class LSTMModel:
    """A validated LSTM: `layers` (bottom first), optional linear head, dtype float32 or float64."""

    layers: tuple
    head_w: np.ndarray | None = None  # (O, P)
    head_b: np.ndarray | None = None  # (O,)
    head_activation: str = "none"
    dtype: str = "float32"
    name: str = "model"
    clip: float | None = None  # the gates' inputs clamped to [-clip, clip] (ONNX's clip), or None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        _validate(self)

    def __repr__(self):
        """One line: name, sizes, head, dtype and fingerprint (never the weights)."""
        head = None if self.head_w is None else ("linear" if self.head_activation == "none" else self.head_activation)
        return (f"LSTMModel(name={self.name!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, proj_size={self.proj_size}, output_size={self.output_size}, "
                f"head={head!r}, dtype={self.dtype!r}{'' if self.clip is None else f', clip={self.clip!r}'}, "
                f"fingerprint={self.fingerprint!r})")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """I: features per sample."""
        return self.layers[0].w_ih.shape[1]

    @property
    def hidden_size(self) -> int:
        """H: units per LSTM layer."""
        return self.layers[0].w_ih.shape[0] // 4

    @property
    def num_layers(self) -> int:
        """L: stacked LSTM layers."""
        return len(self.layers)

    @property
    def proj_size(self) -> int:
        """PyTorch's proj_size: 0 when the layers have no projection."""
        w_hr = self.layers[0].w_hr
        return 0 if w_hr is None else w_hr.shape[0]

    @property
    def peepholes(self) -> bool:
        """Whether the layers have peephole connections (tensors peephole_l{l})."""
        return self.layers[0].w_ph is not None

    @property
    def state_size(self) -> int:
        """Width of h (proj_size, or hidden_size without projection)."""
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:
        """O: values per output (the head's size, or P without a head)."""
        return self.state_size if self.head_w is None else self.head_w.shape[0]

    @property
    def autoregressive(self) -> bool:
        """True when an output can be fed back as the next input (forecast needs it)."""
        return self.output_size == self.input_size

    @property
    def macs_per_step(self) -> int:
        """Multiply-adds of the LSTM layers in one stream-step: the sum over layers of 4H(I_l + P) (the gate
        sums, which dominate); the projection and head are not counted."""
        return sum(4 * self.hidden_size * (layer.w_ih.shape[1] + self.state_size) for layer in self.layers)

    @property
    def state_bytes(self) -> int:
        """Bytes of h and c for one stream."""
        return np.dtype(self.dtype).itemsize * self.num_layers * (self.state_size + self.hidden_size)

    def config(self) -> dict:
        """Plain dict of the model's shape and options (JSON-safe). "peepholes" appears only when the model has
        them, so that every other model's fingerprint is what it was before they existed (and a reader that
        predates them refuses such a file: its fingerprint does not match)."""
        out = {
            "format_version": FORMAT_VERSION, "name": self.name, "dtype": self.dtype,
            "input_size": self.input_size, "hidden_size": self.hidden_size,
            "num_layers": self.num_layers, "proj_size": self.proj_size,
            "output_size": self.output_size, "head": self.head_w is not None,
            "head_activation": self.head_activation,
        }
        if self.peepholes:
            out["peepholes"] = True
        if self.clip is not None:  # (likewise: every model without it keeps its fingerprint)
            out["clip"] = self.clip
        return out

    def tensors(self) -> dict:
        """All weights by name, PyTorch naming (weight_ih_l0, ..., head.weight)."""
        out = {}
        for l, layer in enumerate(self.layers):
            out[f"weight_ih_l{l}"] = layer.w_ih
            out[f"weight_hh_l{l}"] = layer.w_hh
            out[f"bias_ih_l{l}"] = layer.b_ih
            out[f"bias_hh_l{l}"] = layer.b_hh
            if layer.w_hr is not None:
                out[f"weight_hr_l{l}"] = layer.w_hr
            if layer.w_ph is not None:
                out[f"peephole_l{l}"] = layer.w_ph
        if self.head_w is not None:
            out["head.weight"] = self.head_w
            out["head.bias"] = self.head_b
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the config and every weight's bytes: identifies a model."""
        if "fingerprint" not in self._cache:
            h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
            for name, arr in self.tensors().items():
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
            self._cache["fingerprint"] = h.hexdigest()[:16]
        return self._cache["fingerprint"]

    def packed(self, block=None):
        """(wbuf, meta): the kernels' fused, flat weight layout, gate columns in blocks of `block` (see
        kernels/layout.py; None = one block, the CUDA layout)."""
        key = ("packed", block)
        if key not in self._cache:
            from .kernels.layout import pack
            self._cache[key] = pack(self, block)
        return self._cache[key]

    def astype(self, dtype: str) -> "LSTMModel":
        """The same model with weights cast to dtype ('float32' or 'float64')."""
        cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
        layers = tuple(LayerWeights(*(cast(getattr(ly, n)) for n in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr",
                                                                          "w_ph")))
                       for ly in self.layers)
        return LSTMModel(layers, cast(self.head_w), cast(self.head_b), self.head_activation, dtype, self.name,
                         self.clip)

    # ---- constructors and I/O ------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, tensors: dict, *, head_activation="none", dtype=None, name="model", clip=None):
        """Build from a dict of PyTorch-named arrays: the public way in from any framework (docs/models.md).

        For each layer l (0 = bottom), H hidden units, P = proj_size or H, I_l = input_size (l = 0) or P:
            weight_ih_l{l} (4H, I_l)   weight_hh_l{l} (4H, P)   bias_ih_l{l} (4H,)   bias_hh_l{l} (4H,)
            weight_hr_l{l} (P, H)      only with a projection (every layer or none)
            peephole_l{l}  (3, H)      only with peephole connections (every layer or none): rows p_i, p_f,
                                       p_o; i and f add p * c (the previous cell), o adds p_o * c' (the new)
        the four gates stacked in rows in the order (i, f, g, o): input, forget, cell candidate (tanh), output;
        a framework with one bias per gate gives it as bias_ih and zeros as bias_hh. Optional head:
            head.weight (O, P)   head.bias (O,)    y = head_activation(head.weight @ h + head.bias)
        head_activation "none", "sigmoid" or "softmax" (needs a head). dtype: "float32" or "float64" (None: float64
        if weight_ih_l0 is, else float32). clip: a positive number, each gate's input (sums, bias and peephole
        term) clamped to [-clip, clip] before its activation (ONNX's clip), or None. ModelError naming the
        tensor if a shape, dtype or value is wrong."""
        n = 0
        while f"weight_ih_l{n}" in tensors:
            n += 1
        if n == 0:
            raise ModelError("no LSTM layers found: expected tensors named weight_ih_l0, weight_hh_l0, ...")
        if dtype is None:
            dtype = "float64" if np.asarray(tensors["weight_ih_l0"]).dtype == np.float64 else "float32"
        _check_dtype_name(dtype)

        def get(key, required=True):
            if key not in tensors:
                if required:
                    raise ModelError(f"missing tensor {key!r}")
                return None
            return _as_float(key, tensors[key], dtype)

        layers = tuple(LayerWeights(get(f"weight_ih_l{l}"), get(f"weight_hh_l{l}"), get(f"bias_ih_l{l}"),
                                    get(f"bias_hh_l{l}"), get(f"weight_hr_l{l}", required=False),
                                    get(f"peephole_l{l}", required=False))
                       for l in range(n))
        head_w, head_b = get("head.weight", False), get("head.bias", False)
        if (head_w is None) != (head_b is None):
            raise ModelError("head needs both 'head.weight' (O, P) and 'head.bias' (O,)")
        return cls(layers, head_w, head_b, head_activation, dtype, name, clip)

    @classmethod
    def from_torch(cls, lstm, head=None, *, head_activation="none", dtype="float32", name="model"):
        """Import an nn.LSTM or nn.LSTMCell (+ optional nn.Linear head). Imports torch only here."""
        from .convert.torch import tensors_from_torch
        return cls.from_arrays(tensors_from_torch(lstm, head), head_activation=head_activation,
                               dtype=dtype, name=name)

    @classmethod
    def from_onnx(cls, model_or_path, *, dtype=None, name="model", check=True) -> "LSTMModel":
        """Import an ONNX graph of LSTM nodes (+ MatMul/Add or Gemm head, Sigmoid/Softmax) from a path or an
        onnx.ModelProto (lstm_stream/convert/onnx.py; docs/models.md). Imports onnx only here. check=True runs
        the graph through onnx.reference once and refuses the import if the model does not reproduce it."""
        from .convert.onnx import import_onnx
        return import_onnx(model_or_path, dtype=dtype, name=name, check=check)

    @classmethod
    def from_keras(cls, model_or_path, *, dtype=None, name="model", check=True) -> "LSTMModel":
        """Import a Keras 3 model of LSTM layers (+ Dense head) or a .keras file (lstm_stream/convert/keras.py;
        docs/models.md). Imports keras only here. check=True runs the Keras model once on a short random batch
        and refuses the import if the model does not reproduce it."""
        from .convert.keras import import_keras
        return import_keras(model_or_path, dtype=dtype, name=name, check=check)

    def save(self, path) -> None:
        """Write weights and versioned config to an .npz file."""
        arrays = {k: np.ascontiguousarray(v) for k, v in self.tensors().items()}
        meta = dict(self.config(), fingerprint=self.fingerprint)
        arrays["__config__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "LSTMModel":
        """Read a model written by save(); validates everything, checks the stored fingerprint. ModelError
        naming the file if it is missing, unreadable, or not such a model."""
        arrays = _read_npz(path)
        if "__config__" not in arrays:
            raise ModelError(f"model file {str(path)!r} is an .npz with no '__config__' entry: not an "
                             f"lstm-stream model; {_EXPECTED_FILE}")
        try:
            meta = json.loads(arrays.pop("__config__").tobytes().decode())
        except ValueError as e:
            raise ModelError(f"{path}: '__config__' is not valid JSON ({e})") from e
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelError(f"{path}: model format version {version!r}, this lstm-stream reads {FORMAT_VERSION}")
        model = cls.from_arrays(arrays, head_activation=meta.get("head_activation", "none"),
                                dtype=meta.get("dtype", "float32"), name=meta.get("name", "model"),
                                clip=meta.get("clip"))
        if meta.get("fingerprint") not in (None, model.fingerprint):
            raise ModelError(f"{path}: stored fingerprint {meta['fingerprint']} does not match the weights "
                             f"({model.fingerprint}); the file is corrupted")
        return model


def load_model(path) -> LSTMModel:
    """Load an LSTMModel from an .npz file written by LSTMModel.save."""
    return LSTMModel.load(path)


_EXPECTED_FILE = "expected an .npz file written by LSTMModel.save"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (the second: an empty one)


def _read_npz(path) -> dict:
    """Every array of the .npz at path; ModelError naming the file and what was wrong otherwise."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ModelError(f"model file {str(path)!r} does not exist; {_EXPECTED_FILE}") from None
    except OSError as e:
        raise ModelError(f"cannot read model file {str(path)!r} ({e.strerror or e}); {_EXPECTED_FILE}") from None
    if magic not in _ZIP_MAGIC:  # np.load would try pickle and advise allow_pickle=True
        raise ModelError(f"model file {str(path)!r} is not an .npz (zip) file; {_EXPECTED_FILE}")
    arrays, k = {}, None
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                arrays[k] = z[k]
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise ModelError(f"model file {str(path)!r} is not a readable .npz ({e}); {_EXPECTED_FILE}") from None
        raise ModelError(f"model file {str(path)!r}: entry {k!r} holds Python objects (pickled), which "
                         f"lstm-stream never loads; {_EXPECTED_FILE}") from None
    except Exception as e:  # a damaged or truncated zip
        raise ModelError(f"model file {str(path)!r} is not a readable .npz ({type(e).__name__}: {e}); "
                         f"{_EXPECTED_FILE}") from None
    return arrays


# ---- validation -----------------------------------------------------------------------------------
def _check_dtype_name(dtype):
    if dtype not in DTYPES:
        raise ModelError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def _as_float(key, value, dtype):
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ModelError(f"tensor {key!r} has dtype {arr.dtype}; expected a real floating-point array")
    return np.ascontiguousarray(arr, dtype=dtype)


def _expect(name, arr, shape, dtype):
    if not isinstance(arr, np.ndarray):
        raise ModelError(f"tensor {name!r} is {type(arr).__name__}; expected a numpy array of shape {shape}")
    if arr.shape != shape:
        raise ModelError(f"tensor {name!r} has shape {arr.shape}; expected {shape}")
    if arr.dtype != np.dtype(dtype):
        raise ModelError(f"tensor {name!r} has dtype {arr.dtype}; expected {dtype}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ModelError(f"tensor {name!r} has {bad} non-finite value(s) (NaN or Inf); expected finite weights")


def _validate(m: LSTMModel):
    _check_dtype_name(m.dtype)
    if m.head_activation not in HEAD_ACTIVATIONS:
        raise ModelError(f"head_activation must be one of {HEAD_ACTIVATIONS}, got {m.head_activation!r}")
    if not m.layers:
        raise ModelError("a model needs at least one LSTM layer")
    if m.clip is not None and (isinstance(m.clip, bool) or not isinstance(m.clip, (int, float))
                               or not (0 < m.clip < float("inf"))):
        raise ModelError(f"clip must be a positive finite number (the gates' inputs are clamped to [-clip, "
                         f"clip]) or None, got {m.clip!r}")
    if m.clip is not None and type(m.clip) is not float:
        object.__setattr__(m, "clip", float(m.clip))
    first = m.layers[0]
    if not isinstance(first.w_ih, np.ndarray) or first.w_ih.ndim != 2 or first.w_ih.shape[0] % 4 \
            or first.w_ih.shape[0] == 0 or first.w_ih.shape[1] == 0:
        shape = getattr(first.w_ih, "shape", None)
        raise ModelError(f"tensor 'weight_ih_l0' has shape {shape}; expected (4*hidden_size, input_size) "
                         "with both sizes >= 1")
    H, I = first.w_ih.shape[0] // 4, first.w_ih.shape[1]
    P = H if first.w_hr is None else (first.w_hr.shape[0] if first.w_hr.ndim == 2 else -1)
    if first.w_hr is not None and not 0 < P < H:
        raise ModelError(f"tensor 'weight_hr_l0' has shape {first.w_hr.shape}; expected (proj_size, {H}) "
                         f"with 0 < proj_size < hidden_size")
    for l, layer in enumerate(m.layers):
        _expect(f"weight_ih_l{l}", layer.w_ih, (4 * H, I if l == 0 else P), m.dtype)
        _expect(f"weight_hh_l{l}", layer.w_hh, (4 * H, P), m.dtype)
        _expect(f"bias_ih_l{l}", layer.b_ih, (4 * H,), m.dtype)
        _expect(f"bias_hh_l{l}", layer.b_hh, (4 * H,), m.dtype)
        if (layer.w_hr is None) != (first.w_hr is None):
            raise ModelError(f"layer {l}: every layer must have weight_hr (projection) or none must")
        if layer.w_hr is not None:
            _expect(f"weight_hr_l{l}", layer.w_hr, (P, H), m.dtype)
        if (layer.w_ph is None) != (first.w_ph is None):
            raise ModelError(f"layer {l}: every layer must have peephole weights or none must")
        if layer.w_ph is not None:
            _expect(f"peephole_l{l}", layer.w_ph, (3, H), m.dtype)
    if m.head_w is not None:
        if not isinstance(m.head_w, np.ndarray) or m.head_w.ndim != 2 or m.head_w.shape[0] == 0:
            raise ModelError(f"tensor 'head.weight' has shape {getattr(m.head_w, 'shape', None)}; "
                             f"expected (output_size, {P}) with output_size >= 1")
        _expect("head.weight", m.head_w, (m.head_w.shape[0], P), m.dtype)
        _expect("head.bias", m.head_b, (m.head_w.shape[0],), m.dtype)
    elif m.head_activation != "none":
        raise ModelError(f"head_activation {m.head_activation!r} needs a head (head.weight, head.bias)")
