"""Any model file to an LSTMModel, chosen by its suffix (what `lstm-stream convert` and `inspect` read):

    .onnx        LSTMModel.from_onnx
    .keras       LSTMModel.from_keras
    .npz         an lstm-stream model (LSTMModel.save), or PyTorch-named arrays for LSTMModel.from_arrays
    .pt, .pth    a PyTorch state_dict of an nn.LSTM (+ one nn.Linear), read with torch.load(weights_only=True)
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..errors import ModelError

SUFFIXES = (".onnx", ".keras", ".npz", ".pt", ".pth")
_EXPECTED = ("expected .onnx (an ONNX graph), .keras (a Keras 3 model), .npz (an lstm-stream model or "
             "PyTorch-named arrays) or .pt/.pth (a PyTorch state_dict)")
_LSTM_NAME = re.compile(r"^(.*?)((weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+))$")


def load_any(path, *, dtype=None, name=None, head_activation=None, check=True):
    """The LSTMModel in `path` (module doc). head_activation applies to arrays and state_dicts only (ONNX and
    Keras models say theirs); name defaults to the file's stem."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ModelError(f"cannot tell the format of {path!r} from its suffix {suffix!r}; {_EXPECTED}")
    if not os.path.exists(path):
        raise ModelError(f"model file {path!r} does not exist")
    given_name, name = name, name or os.path.splitext(os.path.basename(path))[0] or "model"
    from ..model import LSTMModel
    if suffix in (".onnx", ".keras"):
        if head_activation is not None:
            raise ModelError(f"--head-activation is for arrays and state_dicts; {path!r} says its own head's "
                             "activation (Sigmoid/Softmax nodes or the Dense layer's activation)")
        load = LSTMModel.from_onnx if suffix == ".onnx" else LSTMModel.from_keras
        return load(path, dtype=dtype, name=name, check=check)
    if suffix == ".npz":
        arrays = _npz_arrays(path)
        if "__config__" in arrays:  # an lstm-stream model file
            if head_activation is not None:
                raise ModelError(f"{path!r} is an lstm-stream model, whose head activation is fixed; expected "
                                 "--head-activation only with a file of bare arrays")
            model = LSTMModel.load(path)  # keeps its stored name unless one is given
            if dtype is not None and dtype != model.dtype:
                model = model.astype(dtype)
            if given_name and given_name != model.name:
                model = LSTMModel(model.layers, model.head_w, model.head_b, model.head_activation, model.dtype,
                                  given_name, model.clip)
            return model
        return LSTMModel.from_arrays(arrays, head_activation=head_activation or "none", dtype=dtype, name=name)
    return LSTMModel.from_arrays(_state_dict_arrays(path), head_activation=head_activation or "none",
                                 dtype=dtype or "float32", name=name)


def _npz_arrays(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ModelError(f"{path!r} is not a readable .npz of arrays ({type(e).__name__}: {e})") from None


def _state_dict_arrays(path) -> dict:
    """PyTorch-named arrays from a state_dict: the LSTM's tensors under any one prefix ('lstm.' or none), and
    a head if one other module has a 2-D 'weight' (and a 'bias')."""
    try:
        import torch
    except ImportError:
        raise ModelError(f"reading {path!r} needs torch (pip install torch)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read {path!r} as a PyTorch state_dict ({type(e).__name__}: {e}); expected "
                         "torch.save(module.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path!r} holds a {type(state).__name__}, not a state_dict of tensors; expected "
                         "torch.save(module.state_dict(), path)")
    arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
    prefixes = {m.group(1) for m in map(_LSTM_NAME.match, arrays) if m}
    if len(prefixes) != 1:
        raise ModelError(f"{path!r}: found LSTM tensors under {sorted(prefixes) or 'no'} module prefix(es) "
                         f"among {sorted(arrays)}; expected one nn.LSTM (weight_ih_l0, ...)")
    prefix = prefixes.pop()
    out = {m.group(2): arrays[k] for k in arrays if (m := _LSTM_NAME.match(k)) and m.group(1) == prefix}
    for key in list(out):
        if key.startswith("weight_ih_l"):
            l = key[len("weight_ih_l"):]
            for b in ("bias_ih_l", "bias_hh_l"):  # bias=False: zero biases, as from_torch does
                out.setdefault(b + l, np.zeros(out[key].shape[0], out[key].dtype))
    rest = {k: v for k, v in arrays.items() if not (k.startswith(prefix) and _LSTM_NAME.match(k))}
    heads = [k[:-len("weight")] for k, v in rest.items() if k.endswith("weight") and v.ndim == 2]
    if len(heads) > 1:
        raise ModelError(f"{path!r}: several possible heads {heads}; expected at most one nn.Linear beside the "
                         "nn.LSTM")
    if heads:
        w = rest[heads[0] + "weight"]
        out["head.weight"] = w
        out["head.bias"] = rest.get(heads[0] + "bias", np.zeros(w.shape[0], w.dtype))
    return out
