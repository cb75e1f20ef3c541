"""A plain numpy forward pass of an LSTMModel over a batch of whole sequences, in float64: what an importer
compares the source framework's own output with before it hands the model back (lstm_stream.convert.onnx)."""
from __future__ import annotations

import numpy as np


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def forward(model, X, h0=None, c0=None) -> np.ndarray:
    """Outputs (B, T, O) of `model` for X (B, T, I), every sequence from state h0 (L, B, P) / c0 (L, B, H), or
    zeros. PyTorch's equations, gates (i, f, g, o), peepholes and clip if the model has them, float64
    throughout."""
    X = np.asarray(X, np.float64)
    B, T, _ = X.shape
    L, H, P = model.num_layers, model.hidden_size, model.state_size
    h = np.zeros((L, B, P)) if h0 is None else np.array(h0, np.float64)
    c = np.zeros((L, B, H)) if c0 is None else np.array(c0, np.float64)
    layers = [{k: None if getattr(ly, k) is None else np.asarray(getattr(ly, k), np.float64)
               for k in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_ph")} for ly in model.layers]
    bound = model.clip  # each gate's input clamped to [-clip, clip] (onnxruntime's clip; not the cell)
    clip = (lambda v: v) if bound is None else (lambda v: np.clip(v, -bound, bound))  # noqa: E731
    out = np.empty((B, T, model.output_size))
    for t in range(T):
        inp = X[:, t]
        for l, w in enumerate(layers):
            z = inp @ w["w_ih"].T + w["b_ih"] + h[l] @ w["w_hh"].T + w["b_hh"]
            i, f, g, o = np.split(z, 4, axis=1)
            if w["w_ph"] is not None:  # peepholes: i and f see the previous cell, o the new one
                i, f = i + w["w_ph"][0] * c[l], f + w["w_ph"][1] * c[l]
            c[l] = _sigmoid(clip(f)) * c[l] + _sigmoid(clip(i)) * np.tanh(clip(g))
            if w["w_ph"] is not None:
                o = o + w["w_ph"][2] * c[l]
            hl = _sigmoid(clip(o)) * np.tanh(c[l])
            h[l] = hl if w["w_hr"] is None else hl @ w["w_hr"].T
            inp = h[l]
        out[:, t] = _head(model, inp)
    return out


def _head(model, h):
    if model.head_w is None:
        return h
    z = h @ np.asarray(model.head_w, np.float64).T + np.asarray(model.head_b, np.float64)
    if model.head_activation == "sigmoid":
        return _sigmoid(z)
    if model.head_activation == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return z
