"""Random models for tests: torch modules with fresh seeds, converted to LSTMModel; and a settable clock."""
import numpy as np

import lstm_stream as ls


def torch_lstm(seed, I, H, L=1, P=0, O=None, *, head_activation="none", scale=1.0, batch_first=True):
    """(lstm, head or None, LSTMModel) with PyTorch's init scaled by `scale` (scale <= ~4 stays contractive)."""
    import torch

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, L, proj_size=P, batch_first=batch_first)
    head = torch.nn.Linear(P or H, O) if O else None
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(scale)
    model = ls.LSTMModel.from_torch(lstm, head, head_activation=head_activation if head else "none")
    return lstm, head, model


def torch_offline(lstm, head, xs, head_activation="none"):
    """One offline nn.LSTM call over the whole sequence xs (T, I) -> (T, O) as float32 numpy."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.asarray(xs, np.float32))
        x = x[None] if lstm.batch_first else x[:, None]
        out = lstm(x)[0]
        out = out[0] if lstm.batch_first else out[:, 0]
        if head is not None:
            out = head(out)
            if head_activation == "sigmoid":
                out = torch.sigmoid(out)
            elif head_activation == "softmax":
                out = torch.softmax(out, -1)
    return out.numpy()


def random_model(rng, I=5, H=12, L=2, P=0, O=3, head_activation="softmax", dtype="float32", scale=0.5,
                 peepholes=False):
    """An LSTMModel with weights drawn from rng (no torch needed); peepholes: with peephole connections."""
    t = {}
    for l in range(L):
        Il = I if l == 0 else (P or H)
        t[f"weight_ih_l{l}"] = rng.normal(0, scale, (4 * H, Il))
        t[f"weight_hh_l{l}"] = rng.normal(0, scale, (4 * H, P or H))
        t[f"bias_ih_l{l}"] = rng.normal(0, scale, 4 * H)
        t[f"bias_hh_l{l}"] = rng.normal(0, scale, 4 * H)
        if P:
            t[f"weight_hr_l{l}"] = rng.normal(0, scale, (P, H))
        if peepholes:
            t[f"peephole_l{l}"] = rng.normal(0, scale, (3, H))
    if O:
        t["head.weight"] = rng.normal(0, scale, (O, P or H))
        t["head.bias"] = rng.normal(0, scale, O)
    else:
        head_activation = "none"
    return ls.LSTMModel.from_arrays(t, head_activation=head_activation, dtype=dtype)


def stepped_alone_and_tiled(model, xs, rng, spread):
    """(outputs, final state) of `xs` stepped one sample per call (the one-stream path), once the tiled path
    (9 streams a call, stream 4 fed xs, the others rng.normal(0, spread)) has given the same bits."""
    one = ls.Streams(model)
    ys = np.stack([one.step("a", x) for x in xs])
    many = ls.Streams(model)
    X = rng.normal(0, spread, (len(xs), 9, xs.shape[1])).astype(xs.dtype)
    X[:, 4] = xs
    tiled = np.stack([many.step_many(list(range(9)), X[t]) for t in range(len(xs))])
    assert np.array_equal(tiled[:, 4], ys)
    return ys, one.get_state("a")


def step_ragged_interleaved(streams, seqs, rng, max_chunk=5):
    """Feed every sequence of seqs {id: (T, I)} through streams.step_batch in random interleaved chunks of 1
    to max_chunk rows (one-row chunks sent as (I,), longer as (T, I)); returns {id: outputs (T, O)}."""
    cursor, got = {k: 0 for k in seqs}, {k: [] for k in seqs}
    while any(cursor[k] < len(seqs[k]) for k in seqs):
        ids, xs = [], []
        for k in rng.permutation(list(seqs)).tolist():
            if cursor[k] < len(seqs[k]):
                chunk = seqs[k][cursor[k]:cursor[k] + int(rng.integers(1, max_chunk + 1))]
                cursor[k] += len(chunk)
                ids.append(k)
                xs.append(chunk if len(chunk) > 1 else chunk[0])
        for k, y in zip(ids, streams.step_batch(ids, xs)):
            got[k].append(np.atleast_2d(y))
    return {k: np.concatenate(v) for k, v in got.items()}


class Clock:
    """A clock for Streams(clock=...) and the engine that stands still until a test sets .t."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t
