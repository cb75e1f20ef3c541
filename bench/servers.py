"""The servers lstm-stream's daemon is compared with, run as child processes by bench.server:

    python -m bench.servers echo  --bind tcp://127.0.0.1:PORT                  # the floor
    python -m bench.servers naive --bind tcp://127.0.0.1:PORT --model M.npz    # what a user would write

Both speak the daemon's wire format (lstm_stream.protocol: msgpack maps, arrays as {dtype, shape, data}) on a
ROUTER socket, one message at a time. echo decodes each request and answers with its input as the output:
the cost of ZeroMQ + msgpack and nothing else. naive keeps {stream id: (h, c)} torch tensors in a dict and runs
nn.LSTMCell (+ head) per message, the server one writes in an afternoon. Both exit on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import signal
import sys

import msgpack
import numpy as np
import zmq


def wire_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"dtype": "float32", "shape": list(a.shape), "data": a.tobytes()}


def from_wire(m: dict) -> np.ndarray:
    return np.frombuffer(m["data"], dtype=np.dtype(m["dtype"]).newbyteorder("<")).reshape(m["shape"])


def ok(rid, **fields) -> bytes:
    return msgpack.packb({"v": 1, "id": rid, "ok": True, **fields})


def error(rid, message) -> bytes:
    return msgpack.packb({"v": 1, "id": rid, "ok": False, "error": {"code": "bad_request", "message": message}})


def echo_handler():
    def handle(req):
        return ok(req.get("id"), y=req.get("x"))
    return handle


def naive_handler(model_path: str, threads: int):
    """A per-message nn.LSTMCell server; states in a dict of torch tensors (single-layer models)."""
    import torch

    from lstm_stream.model import load_model

    torch.set_num_threads(threads)
    m = load_model(model_path)
    if m.num_layers != 1 or m.proj_size:
        raise SystemExit("the naive server handles one LSTM layer without projection")
    cell = torch.nn.LSTMCell(m.input_size, m.hidden_size).eval()
    head = torch.nn.Linear(m.hidden_size, m.output_size).eval()
    with torch.no_grad():
        layer = m.layers[0]
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(cell, name.replace("w_", "weight_").replace("b_", "bias_")).copy_(
                torch.from_numpy(getattr(layer, name)))
        head.weight.copy_(torch.from_numpy(m.head_w))
        head.bias.copy_(torch.from_numpy(m.head_b))
    states = {}
    zero = torch.zeros(1, m.hidden_size)

    def handle(req):
        rid, op = req.get("id"), req.get("op")
        if op == "ping":
            return ok(rid)
        with torch.inference_mode():
            if op == "step":
                x = torch.from_numpy(from_wire(req["x"]).reshape(1, -1).astype(np.float32))
                h, c = cell(x, states.get(req["stream"], (zero, zero)))
                states[req["stream"]] = (h, c)
                return ok(rid, y=wire_array(head(h)[0].numpy()))
            if op == "step_many":  # the batched variant such a user would add: stack, one call, split
                ids = req["streams"]
                x = torch.from_numpy(from_wire(req["x"]).astype(np.float32))
                hc = [states.get(i, (zero, zero)) for i in ids]
                h, c = cell(x, (torch.cat([s[0] for s in hc]), torch.cat([s[1] for s in hc])))
                for k, i in enumerate(ids):
                    states[i] = (h[k:k + 1], c[k:k + 1])
                return ok(rid, y=wire_array(head(h).numpy()))
        return error(rid, f"unknown op {op!r}")
    return handle


def serve(bind: str, handle) -> None:
    """ROUTER loop: one message at a time, [identity, payload] frames, until SIGTERM/SIGINT."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(bind)
    try:
        while not stop:
            if not sock.poll(100):
                continue
            ident, body = _frames(sock)
            try:
                reply = handle(msgpack.unpackb(body))
            except Exception as e:  # a benchmark server: answer the error, keep serving
                reply = error(None, f"{type(e).__name__}: {e}")
            sock.send_multipart([ident, reply])
    finally:
        sock.close(0)
        ctx.term()


def _frames(sock):
    frames = sock.recv_multipart()
    return frames[0], frames[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="benchmark servers: echo (the floor) and naive (torch)")
    ap.add_argument("kind", choices=("echo", "naive"))
    ap.add_argument("--bind", required=True)
    ap.add_argument("--model", help="model .npz (naive)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (naive)")
    a = ap.parse_args(argv)
    serve(a.bind, echo_handler() if a.kind == "echo" else naive_handler(a.model, a.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
