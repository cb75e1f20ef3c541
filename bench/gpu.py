"""GPU benchmark: lstm-stream's CUDA backend against PyTorch's cuDNN LSTM stepped one timestep at a time.

    python bench/gpu.py                 # on a GPU machine: check, then time; table printed last
    python bench/gpu.py --sim           # no GPU: numba's CUDA simulator at tiny sizes (checks the script)

First it checks correctness on the device (CUDA vs CPU on a random model, ragged interleaved batches;
bit-identical isolation; fused vs wide path; ours vs cuDNN) and stops if anything is off. Then, per hidden
size H, it times (medians over --repeats):
  latency   one stream, one step: Streams.step (the Python API) and backend.run_one (what the engine calls)
  throughput B streams x one step: backend.run over B slots (host inputs in, outputs out), B = 1 .. 65,536
Each figure has a wall-clock time (perf_counter, includes the host->device->host copies) and a device time
(CUDA events around the kernel launch(es) only). PyTorch: nn.LSTM(I, H) + Linear(H, O) + softmax, cuDNN,
batch B, seq_len 1, state kept on the device; wall includes the pinned input copy in and the output copy
out, device time the LSTM and head only. Configurations whose first step exceeds --budget seconds are
skipped and marked so (the H=1024 x 65,536 case of a one-block-per-tile kernel can be slow).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sim", action="store_true", help="run under the CUDA simulator at tiny sizes")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden sizes (default 64 256 1024; sim: 4 8)")
    p.add_argument("--streams", type=int, nargs="+", help="batch sizes (default 1 16 256 4096 65536)")
    p.add_argument("--inputs", type=int, default=16, help="input size I (default 16)")
    p.add_argument("--outputs", type=int, default=4, help="head outputs O, softmax (default 4)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per figure (default 20; sim 2)")
    p.add_argument("--budget", type=float, default=2.0, help="skip a config whose first step takes longer (s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sim:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is imported
        args.hidden = args.hidden or [4, 8]
        args.streams = args.streams or [1, 4, 16]
        args.repeats = min(args.repeats, 2)
        args.budget = max(args.budget, 60.0)
    args.hidden = args.hidden or [64, 256, 1024]
    args.streams = args.streams or [1, 16, 256, 4096, 65536]
    return args


# ---- models and timers ------------------------------------------------------------------------------------
def make_models(I, H, O, seed, device):
    """(torch LSTM, torch head, LSTMModel) with the same weights; torch modules on `device`."""
    import torch
    import lstm_stream as ls
    torch.manual_seed(seed)
    lstm, head = torch.nn.LSTM(I, H), torch.nn.Linear(H, O)
    model = ls.LSTMModel.from_torch(lstm, head, head_activation="softmax")
    return lstm.to(device).eval(), head.to(device).eval(), model


class Clock:
    """Device time between two points on a stream: CUDA events (numba or torch), medians in µs."""

    def __init__(self, kind, stream=None):
        self.kind, self.stream = kind, stream
        if kind == "numba":
            from numba import cuda
            try:
                self.a, self.b = cuda.event(timing=True), cuda.event(timing=True)
            except TypeError:  # the simulator's events take no arguments (and time nothing)
                self.a, self.b = cuda.event(), cuda.event()
        elif kind == "torch":
            import torch
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.kind == "numba":
            self.a.record(self.stream)
        elif self.kind == "torch":
            self.a.record()

    def stop(self) -> float:
        """µs since start (NaN where there is no device clock, e.g. the simulator or torch on CPU)."""
        if self.kind == "numba":
            self.b.record(self.stream)
            self.b.synchronize()
            ms = self.a.elapsed_time(self.b)
            return float("nan") if ms < 0 else ms * 1e3
        if self.kind == "torch":
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b) * 1e3
        return float("nan")


def median_us(fn, repeats, budget):
    """(median wall µs, median device µs) of fn() -> device µs; None when the first call exceeds budget s."""
    t0 = time.perf_counter()
    fn()  # warm-up (and compile)
    if time.perf_counter() - t0 > budget:
        return None
    walls, devs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        devs.append(fn())
        walls.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(walls), statistics.median(devs)


# ---- correctness on the device ------------------------------------------------------------------------------
def check(args, torch_device):
    """Assertions on the device; returns a list of 'name: ok' lines (raises AssertionError on a failure)."""
    import numpy as np
    import torch
    import lstm_stream as ls
    from lstm_stream.backends import cuda as cuda_backend
    H = 8 if args.sim else 64
    rng = np.random.default_rng(args.seed)
    lstm, head, model = make_models(args.inputs, H, args.outputs, args.seed, torch_device)
    n, T = (6, 3) if args.sim else (300, 40)
    X = rng.normal(0, 1, (T, n, args.inputs)).astype(np.float32)
    cpu, gpu = ls.Streams(model), ls.Streams(model, backend="cuda")
    assert gpu.backend == "cuda"
    ids = list(range(n))
    worst = 0.0
    for t in range(T):
        order = [int(i) for i in rng.permutation(ids)]
        a, b = cpu.step_many(order, X[t][order]), gpu.step_many(order, X[t][order])
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst < 5e-6, f"CPU vs CUDA: max |diff| {worst:.3g} >= 5e-6"
    lines = [f"CPU vs CUDA, {n} streams x {T} steps, shuffled batches: max |diff| {worst:.2g} (< 5e-6)"]
    for sid in (0, n // 2, n - 1):  # a stream alone equals the same stream in the crowd, bit for bit
        alone = ls.Streams(model, backend="cuda").step(sid, X[:, sid])
        crowd = ls.Streams(model, backend="cuda")
        got = np.stack([crowd.step_many(ids, X[t])[sid] for t in range(T)])
        assert np.array_equal(alone, got), f"stream {sid}: alone != in a batch of {n}"
    lines.append("isolation: alone == in a full batch, bit-identical")
    orig = cuda_backend.CUDABackend._wide
    cuda_backend.CUDABackend._wide = lambda self, n_streams: True
    try:
        wide = ls.Streams(model, backend="cuda")
        yw = np.stack([wide.step_many(ids, X[t]) for t in range(T)])
    finally:
        cuda_backend.CUDABackend._wide = orig
    fused = ls.Streams(model, backend="cuda")
    yf = np.stack([fused.step_many(ids, X[t]) for t in range(T)])
    assert np.array_equal(yw, yf), "wide path != fused path"
    lines.append("wide path == fused path, bit-identical")
    with torch.no_grad():
        out = lstm(torch.from_numpy(X).to(torch_device))[0]
        ref = torch.softmax(head(out), -1).cpu().numpy()
    err = float(np.abs(yf - ref).max())
    assert err < 5e-5, f"ours vs torch ({torch_device}): max |diff| {err:.3g}"
    lines.append(f"ours vs torch nn.LSTM on {torch_device}: max |diff| {err:.2g} (< 5e-5, TF32 off)")
    return lines


# ---- timing -------------------------------------------------------------------------------------------------
def time_ours(model, B, args, rng):
    """(latency or throughput) figures of backend.run over B fresh slots: (wall µs, device µs) or None."""
    import numpy as np
    import lstm_stream as ls
    streams = ls.Streams(model, backend="cuda", initial_capacity=max(B, 1))
    be = streams._backend  # the engine calls the backend with a plan; Streams' per-id Python is not timed
    slots = np.arange(B, dtype=np.int64)
    offsets = np.arange(B + 1, dtype=np.int64)
    x = rng.normal(0, 1, (B, args.inputs)).astype(np.float32)
    clock = Clock("numba", be.stream)

    def device_only():  # the kernel launch(es) alone, inputs already on the device
        clock.start()
        if be._wide(B):
            be._run_wide(B, 1)
        else:
            be._kernels.launch("step_kernel", be.grid(B), be.threads, be.stream, be.shared_bytes,
                               (be.wbuf, be.meta, be.state, be._plan_d, be._x_d, be._y_d))
        return clock.stop()

    def step():
        be.run(slots, offsets, x, 1)
        return device_only()  # the plan and inputs of this batch are on the device now

    r = median_us(step, args.repeats, args.budget)
    if r is None:
        return None
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        be.run(slots, offsets, x, 1)
        walls.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(walls), r[1], be


def time_torch(lstm, head, B, args, device):
    """cuDNN nn.LSTM + head over a batch of B, one timestep per call: (wall µs, device µs) or None."""
    import torch
    I, H = args.inputs, lstm.hidden_size
    x_host = torch.randn(1, B, I)
    if device == "cuda":
        x_host = x_host.pin_memory()
    h = torch.zeros(1, B, H, device=device)
    c = torch.zeros(1, B, H, device=device)
    clock = Clock("torch" if device == "cuda" else "none")
    state = {"h": h, "c": c}

    @torch.no_grad()
    def step():
        x = x_host.to(device, non_blocking=True)
        clock.start()
        out, (state["h"], state["c"]) = lstm(x, (state["h"], state["c"]))
        y = torch.softmax(head(out[0]), -1)
        us = clock.stop()
        y.cpu()
        return us

    return median_us(step, args.repeats, args.budget)


def fmt(v):
    return "-" if v is None or v != v else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    import lstm_stream as ls
    from lstm_stream.backends import cuda_available
    if not cuda_available():
        sys.exit("no usable GPU for numba.cuda (run with --sim to try the script under the simulator)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # fp32 on both sides: a like-for-like comparison
    torch.backends.cuda.matmul.allow_tf32 = False
    from numba import cuda
    gpu_name = "simulator" if args.sim else cuda.get_current_device().name
    gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else gpu_name
    print(f"device: {gpu_name}; torch {torch.__version__} on {device}; I={args.inputs}, O={args.outputs} softmax, "
          f"float32, medians of {args.repeats}")
    for line in check(args, device):
        print("check ok:", line)
    rng = np.random.default_rng(args.seed)
    rows = []
    for H in args.hidden:
        lstm, head, model = make_models(args.inputs, H, args.outputs, args.seed, device)
        s = ls.Streams(model, backend="cuda")
        x1 = rng.normal(0, 1, args.inputs).astype(np.float32)
        api = median_us(lambda: (s.step("lat", x1), float("nan"))[1], args.repeats, args.budget)
        rows.append((H, "latency: Streams.step", 1, api and api[0], None, None, None))
        for B in args.streams:
            ours = time_ours(model, B, args, rng)
            theirs = time_torch(lstm, head, B, args, device)
            path = "-" if ours is None else ("wide" if ours[2]._wide(B) else
                                              "fused+smem" if ours[2].staged else "fused")
            rows.append((H, f"batch ({path})", B, ours and ours[0], ours and ours[1],
                         theirs and theirs[0], theirs and theirs[1]))
            print(f"  H={H} B={B}: ours {fmt(ours and ours[0])} µs wall, torch {fmt(theirs and theirs[0])} µs wall",
                  flush=True)
    print_table(rows)


def print_table(rows):
    """The results, last: per-step µs (wall, device) and streams x steps per second."""
    head = (f"{'H':>5} {'what':<24} {'streams':>8} | {'ours wall µs':>12} {'ours dev µs':>11} {'ours steps/s':>13}"
            f" | {'torch wall µs':>13} {'torch dev µs':>12} {'torch steps/s':>13}")
    print("\n" + head + "\n" + "-" * len(head))
    for H, what, B, ow, od, tw, td in rows:
        rate = lambda us: None if us is None else B / us * 1e6  # noqa: E731
        print(f"{H:>5} {what:<24} {B:>8,} | {fmt(ow):>12} {fmt(od):>11} {fmt(rate(ow)):>13}"
              f" | {fmt(tw):>13} {fmt(td):>12} {fmt(rate(tw)):>13}")
    print("wall: host inputs in, outputs out, synchronised; dev: CUDA events around the kernels only; "
          "'-': skipped (over --budget) or not measured")


if __name__ == "__main__":
    main()
