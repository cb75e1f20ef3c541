"""The kernel benchmark's contenders: one step of N streams, each contender keeping the streams' states.

Every contender is built from the same torch weights and offers run(X) -> Y: X (N, I) float32 numpy, one
sample per stream, Y (N, O) float32 numpy; states carry over from call to call (passed in and out where the
library is stateless). crosscheck() steps them all side by side and compares their outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Contender names, in table and plot order.
STEP = "lstm-stream Streams.step"
STEP_MANY = "lstm-stream Streams.step_many"
KERNEL = "lstm-stream kernel (raw)"
TORCH_CELL = "torch nn.LSTMCell"
TORCH_LSTM = "torch nn.LSTM (seq_len=1)"
ORT = "onnxruntime LSTM"
ALL = (STEP, STEP_MANY, KERNEL, TORCH_CELL, TORCH_LSTM, ORT)
# Not a contender of the main sweep: a path lstm-stream does not offer, timed last against step_many
# (bench.kernel's invariant_cost) because it changes process-wide BLAS threading.
BLAS = "BLAS gates + lstm-stream cell (not bit-stable)"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Spec:
    """One benchmark shape: input size I, hidden H, layers L, head outputs O."""

    I: int
    H: int
    L: int = 1
    O: int = 4

    @property
    def label(self) -> str:
        return f"I={self.I} H={self.H}" + (f" L={self.L}" if self.L > 1 else "")

    def flops_per_stream(self) -> int:
        """2·4H·(I_l + H) per layer (the gate matmul; activations and head not counted)."""
        return sum(2 * 4 * self.H * ((self.I if l == 0 else self.H) + self.H) for l in range(self.L))


def torch_modules(spec: Spec, seed: int = 0):
    """(nn.LSTM, nn.Linear head, LSTMModel) sharing one set of weights."""
    import torch

    import lstm_stream as ls

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(spec.I, spec.H, spec.L).eval()
    head = torch.nn.Linear(spec.H, spec.O).eval()
    return lstm, head, ls.LSTMModel.from_torch(lstm, head)


# ---- lstm-stream --------------------------------------------------------------------------------------
class StreamsStep:
    """Public API, one stream per call: Streams.step(id, x). With N > 1 (cross-check only) it loops."""

    def __init__(self, model, n, threads):
        import lstm_stream as ls
        self.s, self.ids = ls.Streams(model, threads=threads), list(range(n))

    def run(self, X):
        if len(self.ids) == 1:  # what is timed: one call, X (1, I) as a one-sample sequence -> (1, O)
            return self.s.step(0, X)
        return np.stack([self.s.step(i, X[k]) for k, i in enumerate(self.ids)])


class StreamsStepMany:
    """Public API, one sample for each of N streams: Streams.step_many(ids, X)."""

    def __init__(self, model, n, threads):
        import lstm_stream as ls
        self.s, self.ids = ls.Streams(model, threads=threads, initial_capacity=max(64, n)), list(range(n))

    def run(self, X):
        return self.s.step_many(self.ids, X)


class RawKernel:
    """The kernel that the API's call runs, on preallocated arrays: what it costs without the API. One stream:
    step_one, as Streams.step runs it. N streams: step_ragged, shared out over the backend's worker threads
    whenever a call has work enough for it (CPUBackend.goes_parallel), as Streams.step_many does."""

    def __init__(self, model, n, threads):
        import lstm_stream as ls
        from lstm_stream.kernels import cpu

        # The CPU backend's own arrays: its weight layout, cache-line-aligned slabs, scratch and work counter.
        b = ls.Streams(model, threads=threads, initial_capacity=max(64, n))._backend
        self.wbuf, self.meta, self.h, self.c = b.wbuf, b.meta, b.h, b.c
        self.slots, self.offsets = np.arange(n, dtype=np.int64), np.arange(n + 1, dtype=np.int64)
        self.y = np.empty((n, model.output_size), np.float32)
        if n == 1:
            scr, one = b._scratch0, cpu.step_one
            self.fn = lambda w, m, h, c, slots, offsets, x, y: one(w, m, h, c, 0, x, y, scr)
        elif b.goes_parallel(n, n):
            piece = b.piece(n, n)
            self.fn = lambda w, m, h, c, slots, offsets, x, y: b._run_shared(slots, offsets, x, y, piece)
        else:
            scr, grab, k = b._scratch[0], b._grab, cpu.step_ragged
            self.fn = lambda *a: k(*a, scr, grab, 1, 1)

    def run(self, X):
        self.fn(self.wbuf, self.meta, self.h, self.c, self.slots, self.offsets, X, self.y)
        return self.y


class BlasStep:
    """What invariant 2 costs: the batch's gate sums as one float32 BLAS product per layer ([x, h] @ W with
    numpy's BLAS, limited to the same threads), then lstm-stream's own cell and head (Numba) per stream. A
    BLAS splits and orders each sum by the matrix shape, so a stream's bits would depend on what shares its
    batch; lstm-stream does not offer this path, it is measured to show the price of not taking it."""

    def __init__(self, model, n, threads):
        from threadpoolctl import threadpool_limits

        import lstm_stream as ls

        if model.proj_size:
            raise ValueError("the BLAS contender covers models without projection")
        self._limits = threadpool_limits(limits=threads, user_api="blas")  # for this measurement
        b = ls.Streams(model, threads=1)._backend
        self.wbuf, self.meta = b.wbuf, b.meta  # for the cell and head of lstm-stream's kernel
        H, self.L = model.hidden_size, model.num_layers
        self.W = [np.ascontiguousarray(np.concatenate([layer.w_ih.T, layer.w_hh.T]), np.float32)
                  for layer in model.layers]
        self.b = [np.asarray(layer.b_ih + layer.b_hh, np.float32) for layer in model.layers]
        self.XH = [np.empty((n, w.shape[0]), np.float32) for w in self.W]
        self.G = np.empty((n, 4 * H), np.float32)
        self.h = np.zeros((n, self.L, H), np.float32)  # the kernel's slab layout (stream, layer, unit)
        self.c = np.zeros((n, self.L, H), np.float32)
        self.hr = np.empty((1, H), np.float32)
        self.y = np.empty((n, model.output_size), np.float32)

    def run(self, X):
        inp = X
        for l in range(self.L):
            xh, n_in = self.XH[l], inp.shape[1]
            xh[:, :n_in] = inp
            xh[:, n_in:] = self.h[:, l]
            np.matmul(xh, self.W[l], out=self.G)
            _blas_cells(self.wbuf, self.meta, self.G, self.b[l], self.c, self.h, self.hr, self.y, l,
                        l == self.L - 1)
            inp = self.h[:, l]
        return self.y


def _blas_cells(*args):
    """Compiled on first use (so that importing this module does not load Numba)."""
    global _blas_cells
    from numba import njit

    from lstm_stream.kernels.cpu import _cell, _head

    @njit(error_model="numpy", fastmath={"contract"})
    def cells(wbuf, meta, G, bias, c, h, hr, y, l, last):
        for s in range(G.shape[0]):
            for j in range(G.shape[1]):
                G[s, j] += bias[j]
            _cell(wbuf, meta, G, hr, s, c, h, s, l, -1)
            if last:
                _head(wbuf, meta, h, s, y, s)

    _blas_cells = cells
    return cells(*args)


# ---- torch -----------------------------------------------------------------------------------------------
class TorchCell:
    """A stack of nn.LSTMCell (weights copied from the nn.LSTM) + head; states passed in and out."""

    def __init__(self, lstm, head, n):
        import torch

        self.torch, self.head, self.cells = torch, head, []
        for l in range(lstm.num_layers):
            cell = torch.nn.LSTMCell(lstm.input_size if l == 0 else lstm.hidden_size, lstm.hidden_size).eval()
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(lstm, f"{name}_l{l}"))
            self.cells.append(cell)
        self.state = [(torch.zeros(n, lstm.hidden_size), torch.zeros(n, lstm.hidden_size)) for _ in self.cells]

    def run(self, X):
        with self.torch.inference_mode():
            inp = self.torch.from_numpy(X)
            for l, cell in enumerate(self.cells):
                h, c = cell(inp, self.state[l])
                self.state[l] = (h, c)
                inp = h
            return self.head(inp).numpy()


class TorchLSTM:
    """nn.LSTM called on a length-1 sequence with (h0, c0) passed in and (h1, c1) kept for the next call."""

    def __init__(self, lstm, head, n):
        import torch

        self.torch, self.lstm, self.head = torch, lstm, head
        z = torch.zeros(lstm.num_layers, n, lstm.hidden_size)
        self.state = (z, z.clone())

    def run(self, X):
        with self.torch.inference_mode():
            out, self.state = self.lstm(self.torch.from_numpy(X)[None], self.state)
            return self.head(out[0]).numpy()


# ---- onnxruntime -----------------------------------------------------------------------------------------
class OrtLSTM:
    """An ONNX LSTM graph in onnxruntime; states fed back from the previous call's outputs."""

    def __init__(self, model, n, threads):
        from .onnx_lstm import session

        self.sess = session(model, threads)
        self.L, H = model.num_layers, model.hidden_size
        self.feeds = {}
        for l in range(self.L):
            self.feeds[f"h0_{l}"] = np.zeros((1, n, H), np.float32)
            self.feeds[f"c0_{l}"] = np.zeros((1, n, H), np.float32)
        self.out_names = ["y"] + [f"{k}1_{l}" for l in range(self.L) for k in "hc"]

    def run(self, X):
        self.feeds["x"] = X[None]
        outs = self.sess.run(self.out_names, self.feeds)
        for k, name in enumerate(self.out_names[1:], start=1):
            self.feeds[name.replace("1_", "0_")] = outs[k]
        return outs[0]


def available(name: str) -> bool:
    """Whether a contender's library can be imported here (ORT and onnx are the bench extra)."""
    if name == ORT:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
    if name == BLAS:
        try:
            import threadpoolctl  # noqa: F401
        except ImportError:
            return False
    return True


def make(name, spec_modules, n: int, threads: int):
    """A fresh contender (zero states) for n streams; spec_modules = torch_modules(spec)."""
    lstm, head, model = spec_modules
    if name == STEP:
        return StreamsStep(model, n, threads)
    if name == STEP_MANY:
        return StreamsStepMany(model, n, threads)
    if name == KERNEL:
        return RawKernel(model, n, threads)
    if name == TORCH_CELL:
        return TorchCell(lstm, head, n)
    if name == TORCH_LSTM:
        return TorchLSTM(lstm, head, n)
    if name == ORT:
        return OrtLSTM(model, n, threads)
    if name == BLAS:
        return BlasStep(model, n, threads)
    raise ValueError(f"unknown contender {name!r}; expected one of {ALL}")


def crosscheck(spec: Spec, n: int = 3, steps: int = 4, threads: int = 1, seed: int = 0,
               names=ALL, tol: float = TOLERANCE) -> float:
    """Step every available contender over the same inputs from zero state; raise AssertionError when any
    output differs from the raw kernel's by more than tol. Returns the largest difference seen."""
    import torch

    torch.set_num_threads(threads)
    mods = torch_modules(spec, seed)
    names = [KERNEL] + [x for x in names if x != KERNEL and available(x)]
    runs = {x: make(x, mods, n, threads) for x in names}
    rng = np.random.default_rng(seed + 1)
    worst = 0.0
    for t in range(steps):
        X = rng.standard_normal((n, spec.I), dtype=np.float32)
        ref = runs[KERNEL].run(X).copy()
        for x in names[1:]:
            got = np.asarray(runs[x].run(X))
            if got.shape != ref.shape:
                raise AssertionError(f"{spec.label}: {x} returned shape {got.shape}, expected {ref.shape}")
            err = float(np.max(np.abs(got - ref)))
            worst = max(worst, err)
            if not err <= tol:
                raise AssertionError(f"{spec.label}, {n} streams, step {t}: {x} differs from {KERNEL} by "
                                     f"{err:.3g} (> {tol:g})")
    return worst
