"""Import a Keras 3 model of LSTM layers (+ a Dense head) as LSTMModel tensors: LSTMModel.from_keras.

What is read: the model's layers in order (Sequential or functional; nested models are flattened): one or more
`LSTM` layers (tanh / sigmoid, forward; every one but the last with return_sequences=True), then optionally one
`Dense` (linear, sigmoid or softmax) and an `Activation` or `Softmax` layer. Dropout-like layers are identity
at inference and skipped. Anything else is refused with a ModelError naming the layer.

Keras' LSTMCell holds kernel (I, 4H), recurrent_kernel (H, 4H) and one bias (4H,), gates in order (i, f, c, o):
the same order as PyTorch's (i, f, g, o) with g = Keras' c, so the mapping is a transpose (KERAS_GATES names
it); the bias becomes bias_ih with bias_hh zero. unit_forget_bias only sets the initial bias: the trained
values are read as they are. A model whose last LSTM has return_sequences=False outputs the last step only;
lstm-stream gives that step's output at every step, which is the same thing for the sequence seen so far.

Before returning, the importer runs the Keras model on a short random batch and compares it with the imported
model's first output (convert/verify.py); stateful models are not run (that would change their carried state).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from ..errors import ModelError

KERAS_GATES = (0, 1, 2, 3)  # our (i, f, g, o) from Keras' (i, f, c, o): the same order
_IGNORED = ("InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
            "ActivityRegularization")
_HEAD_ACTIVATIONS = {"linear": "none", "sigmoid": "sigmoid", "softmax": "softmax"}
SUPPORTED = ("expected LSTM layers (activation='tanh', recurrent_activation='sigmoid', forward), then optionally "
             "one Dense layer (linear, sigmoid or softmax) and an Activation/Softmax layer; Dropout is skipped")
_REFUSED = {
    "GRU": "a GRU is not an LSTM; lstm-stream runs LSTM layers only",
    "SimpleRNN": "a SimpleRNN is not an LSTM; lstm-stream runs LSTM layers only",
    "Bidirectional": "a bidirectional layer reads the sequence from its end, which a stream never has",
    "ConvLSTM1D": "a convolutional LSTM is not a dense LSTM layer", "ConvLSTM2D": "a convolutional LSTM is not a "
    "dense LSTM layer", "Masking": "masking skips time steps, which a stream stepped sample by sample cannot",
    "MultiHeadAttention": "attention needs the whole sequence at once, which a stream never has",
    "Attention": "attention needs the whole sequence at once, which a stream never has",
}
_VERIFY_T, _VERIFY_B = 6, 2


def import_keras(model_or_path, *, dtype=None, name="model", check=True):
    """The LSTMModel of a Keras model or .keras file (module doc); check=True compares it with the Keras
    model's own output on a short random batch first. dtype None: the LSTM kernels' dtype."""
    from ..model import LSTMModel
    keras_model = load_keras(model_or_path)
    tensors, activation, weights_dtype, stateful = tensors_from_keras(keras_model)
    model = LSTMModel.from_arrays(tensors, head_activation=activation, dtype=dtype or weights_dtype, name=name)
    if check and not stateful:
        verify(model, keras_model)
    return model


def load_keras(model_or_path):
    """A Keras model, or one loaded from a .keras file. Without KERAS_BACKEND set (and keras not yet imported),
    the backend is torch or jax if installed and TensorFlow is not: reading weights needs no particular one."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not path.endswith(".keras"):
            raise ModelError(f"{path!r} is not a .keras file; expected a model saved by Keras 3's model.save("
                             "'NAME.keras') (for an .h5 file, load it with Keras and pass the model)")
        if not os.path.exists(path):
            raise ModelError(f"Keras file {path!r} does not exist")
    _choose_backend()
    try:
        import keras
    except ImportError as e:
        raise ModelError(f"from_keras needs Keras 3 and a backend ({e}); pip install 'lstm-stream[keras]'") from None
    if isinstance(model_or_path, (str, os.PathLike)):
        try:
            return keras.saving.load_model(os.fspath(model_or_path), compile=False)
        except Exception as e:
            raise ModelError(f"cannot load {os.fspath(model_or_path)!r} as a Keras model ({type(e).__name__}: "
                             f"{e})") from None
    if not isinstance(model_or_path, keras.Model):
        raise ModelError(f"from_keras takes a keras.Model or a .keras path, got {type(model_or_path).__name__}")
    return model_or_path


def _choose_backend():
    import sys
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ or importlib.util.find_spec("tensorflow"):
        return
    for backend in ("torch", "jax"):
        if importlib.util.find_spec(backend):
            os.environ["KERAS_BACKEND"] = backend
            return


def _flat_layers(model):
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def _describe(layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _np(variable):
    """A Keras variable or tensor as a numpy array. Keras' own conversion goes through np.array(tensor), which
    numpy 2 warns about for torch tensors (no `copy` keyword in their __array__): that warning is Keras', and
    silenced here."""
    import warnings

    import keras
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword",
                                DeprecationWarning)
        return np.array(keras.ops.convert_to_numpy(getattr(variable, "value", variable)))


def tensors_from_keras(model):
    """(PyTorch-named tensors, head_activation, dtype, whether any LSTM is stateful) of a Keras model."""
    tensors, lstms, head, activation, stateful = {}, [], None, None, False
    for layer in _flat_layers(model):
        kind, d = type(layer).__name__, _describe(layer)
        if kind == "TimeDistributed" and type(layer.layer).__name__ == "Dense":
            layer, kind = layer.layer, "Dense"  # Dense on every step, as Dense on a sequence is
        if kind in _IGNORED:
            continue
        if kind in _REFUSED:
            raise ModelError(f"{d}: {_REFUSED[kind]}; {SUPPORTED}")
        if kind == "LSTM":
            if head is not None or activation is not None:
                raise ModelError(f"{d} comes after the head; {SUPPORTED}")
            if lstms and not lstms[-1].return_sequences:
                raise ModelError(f"{_describe(lstms[-1])} has return_sequences=False but {d} follows it; stacked "
                                 "LSTM layers must pass on every step (return_sequences=True)")
            stateful |= _lstm(layer, len(lstms), tensors)
            lstms.append(layer)
        elif kind == "Dense" and lstms and head is None and activation is None:
            act = _activation_name(layer.activation)
            if act not in _HEAD_ACTIVATIONS:
                raise ModelError(f"{d} has activation {act!r}; expected linear, sigmoid or softmax")
            if getattr(layer, "quantization_mode", None):
                raise ModelError(f"{d} is quantized ({layer.quantization_mode}); expected float weights")
            W = _np(layer.kernel)  # (P, O); with LoRA, the merged kernel
            tensors["head.weight"] = W.T.copy()
            tensors["head.bias"] = _np(layer.bias) if layer.use_bias else np.zeros(W.shape[1], W.dtype)
            head, activation = layer, _HEAD_ACTIVATIONS[act] if act != "linear" else None
        elif kind in ("Activation", "Softmax") and lstms and activation is None:
            act = "softmax" if kind == "Softmax" else _activation_name(layer.activation)
            if kind == "Softmax" and layer.axis not in (-1, 2):
                raise ModelError(f"{d} normalises over axis {layer.axis}; expected the feature axis (-1)")
            if act not in _HEAD_ACTIVATIONS:
                raise ModelError(f"{d} is {act!r}; expected linear, sigmoid or softmax")
            if act != "linear":
                if head is None:  # straight on h: an identity head
                    P = tensors["weight_hh_l0"].shape[1]
                    tensors["head.weight"], tensors["head.bias"] = np.eye(P), np.zeros(P)
                activation = _HEAD_ACTIVATIONS[act]
        else:
            where = "before any LSTM layer" if not lstms else "after the head" if head is not None else "here"
            raise ModelError(f"{d} is not supported {where}; {SUPPORTED}")
    if not lstms:
        raise ModelError(f"the Keras model {model.name!r} has no LSTM layer; {SUPPORTED}")
    units = [ly.units for ly in lstms]
    if len(set(units)) > 1:
        raise ModelError(f"the LSTM layers have units {units}; expected one size for every layer (as nn.LSTM "
                         "has): lstm-stream's layers share it")
    dtype = "float64" if tensors["weight_ih_l0"].dtype == np.float64 else "float32"
    return tensors, activation or "none", dtype, stateful


def _activation_name(fn) -> str:
    import keras
    return keras.activations.serialize(fn) if callable(fn) else str(fn)


def _lstm(layer, l, tensors) -> bool:
    """Check one LSTM layer, put its weights in as layer l; returns whether it is stateful."""
    d = _describe(layer)
    act, rec = _activation_name(layer.cell.activation), _activation_name(layer.cell.recurrent_activation)
    if act != "tanh" or rec != "sigmoid":
        raise ModelError(f"{d} has activation={act!r}, recurrent_activation={rec!r}; the kernels compute the "
                         "standard LSTM: expected activation='tanh', recurrent_activation='sigmoid'")
    if layer.go_backwards:
        raise ModelError(f"{d} has go_backwards=True: it reads the sequence from its end, which a stream never "
                         "has; expected go_backwards=False")
    cell = layer.cell
    W, R = _np(cell.kernel), _np(cell.recurrent_kernel)  # (I, 4H), (H, 4H), gates (i, f, c, o)
    H = R.shape[0]
    b = _np(cell.bias) if cell.use_bias else np.zeros(4 * H, W.dtype)
    order = lambda m: m.reshape(4, H, *m.shape[1:])[list(KERAS_GATES)].reshape(m.shape)  # noqa: E731
    tensors[f"weight_ih_l{l}"] = order(W.T)
    tensors[f"weight_hh_l{l}"] = order(R.T)
    tensors[f"bias_ih_l{l}"] = order(b)
    tensors[f"bias_hh_l{l}"] = np.zeros(4 * H, W.dtype)
    return bool(layer.stateful)


def verify(model, keras_model, *, seed=0):
    """Run the Keras model on a random batch and compare with `model`; ModelError if they differ."""
    import keras

    from .verify import forward
    X = np.random.default_rng(seed).normal(0, 1, (_VERIFY_B, _VERIFY_T, model.input_size))
    x_dtype = keras_model.inputs[0].dtype if getattr(keras_model, "inputs", None) else model.dtype
    try:
        out = keras_model(keras.ops.convert_to_tensor(X.astype(x_dtype)), training=False)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        got = _np(out[0] if isinstance(out, (list, tuple)) else out)  # the first output, as ONNX's
    except Exception as e:
        raise ModelError(f"could not run the Keras model to check the import ({type(e).__name__}: {e})") from None
    want = forward(model, X)
    if got.ndim == 2:  # the last LSTM has return_sequences=False
        want = want[:, -1]
    if got.shape != want.shape or np.max(np.abs(got - want)) > 1e-3 * (1 + np.max(np.abs(want))):
        err = f"shape {got.shape}, expected {want.shape}" if got.shape != want.shape else \
            f"largest difference {np.max(np.abs(got - want)):.3g}"
        raise ModelError(f"the imported model does not reproduce the Keras model's output ({err}); the model "
                         f"holds something the importer did not understand. {SUPPORTED}")
