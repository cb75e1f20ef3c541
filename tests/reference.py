"""The oracle: a float64 numpy LSTM written for clarity, not speed (PyTorch's equations, gates i f g o)."""
import numpy as np


def sigmoid(x):
    # exp(-x) overflows to inf below x = -709 (a peephole gate on a large cell reaches it): 1 / inf = 0 is the
    # right float64 answer there, so the overflow is not an error
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def reference_run(model, xs, h0=None, c0=None):
    """Run `model` over xs (T, I) from state (h0 (L, P), c0 (L, H)) or zeros; returns (ys (T, O), h, c)."""
    L, H, P = model.num_layers, model.hidden_size, model.state_size
    h = np.zeros((L, P)) if h0 is None else np.array(h0, np.float64)
    c = np.zeros((L, H)) if c0 is None else np.array(c0, np.float64)
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    bound = getattr(model, "clip", None)  # ONNX's clip: every gate's input clamped to [-clip, clip]
    clip = (lambda v: v) if bound is None else (lambda v: np.clip(v, -bound, bound))  # noqa: E731
    ys = []
    for x in np.asarray(xs, np.float64):
        inp = x
        for l, layer in enumerate(model.layers):
            gates = f64(layer.w_ih) @ inp + f64(layer.b_ih) + f64(layer.w_hh) @ h[l] + f64(layer.b_hh)
            i, f, g, o = np.split(gates, 4)
            if layer.w_ph is not None:  # peepholes (Gers & Schmidhuber 2000): i, f see c, o sees c'
                p_i, p_f, p_o = f64(layer.w_ph)
                i, f = i + p_i * c[l], f + p_f * c[l]
            i, f, g = clip(i), clip(f), clip(g)
            c[l] = sigmoid(f) * c[l] + sigmoid(i) * np.tanh(g)
            if layer.w_ph is not None:
                o = o + p_o * c[l]
            hl = sigmoid(clip(o)) * np.tanh(c[l])  # (the cell itself is not clipped before tanh: onnxruntime)
            h[l] = hl if layer.w_hr is None else f64(layer.w_hr) @ hl
            inp = h[l]
        ys.append(head(model, inp))
    return np.array(ys), h, c


def head(model, h_last):
    """The model's output for the top layer's h."""
    if model.head_w is None:
        return h_last.copy()
    z = np.asarray(model.head_w, np.float64) @ h_last + np.asarray(model.head_b, np.float64)
    if model.head_activation == "sigmoid":
        return sigmoid(z)
    if model.head_activation == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    return z
