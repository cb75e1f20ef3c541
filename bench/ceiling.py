"""The daemon's loop with nothing but the kernel: what its socket and its kernel allow, whatever the request path.

    python -m bench.ceiling --bind tcp://127.0.0.1:5555 --model model.npz [--per-message 100]

A ROUTER loop shaped like engine/server.py's: poll (without sleeping while requests are queued or for the
daemon's default 200 µs after a turn), read every ready message (two receives and the RCVMORE look each),
serve them in turns that stop once they hold 1,024 samples (the daemon's --max-turn-samples), each turn one
kernel call (CPUBackend.run on one thread) over as many streams of a 10,000-stream slab as its messages name,
then one pre-encoded reply per message. What it leaves out is exactly the daemon's request path: no decode,
no admission or queues, no planning, no reply built or encoded, no bookkeeping. bench.wire times it under the
daemon's load: the ratio the daemon would reach if that path cost nothing, the ceiling for the 0.8× goal.

It reads no message: it takes each to hold `--per-message` streams, steps the k-th message it serves over
the slab's streams k*per_message onwards (wrapping), which is how the daemon's slots of a step_pool's streams
lie (made in the pool's order), and answers each with a success.
"""
from __future__ import annotations

import argparse
import collections
import time

import msgpack
import numpy as np
import zmq

STREAMS = 10_000       # the slab's streams (bench.wire's pool of 100 streams per message covers as many)
TURN_SAMPLES = 1024    # a turn takes no more messages once it holds this many samples (--max-turn-samples)
SPIN_S = 200e-6        # polls without sleeping this long after a turn (--spin-us)


def serve(bind: str, model, per_message: int) -> None:
    import lstm_stream as ls
    from .servers import wire_array

    backend = ls.Streams(model, threads=1, initial_capacity=STREAMS)._backend
    order = np.arange(STREAMS, dtype=np.int64)
    offsets = np.arange(TURN_SAMPLES + per_message + 1, dtype=np.int64)
    X = np.random.default_rng(0).standard_normal((TURN_SAMPLES + per_message, model.input_size)).astype(
        model.dtype)
    reply = msgpack.packb({"v": 1, "id": 0, "ok": True, "y": wire_array(
        np.zeros((per_message, model.output_size), np.float32))})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(bind)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    nb, more, rcvmore = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.RCVMORE)
    pending: collections.deque = collections.deque()
    position, spin_until = 0, 0.0  # position: the slab's first stream of the next message served
    while True:
        events = dict(poller.poll(0 if pending or time.monotonic() < spin_until else 100))
        if sock in events:
            while True:
                try:
                    frames = [sock.recv(nb), sock.recv(nb)]
                except zmq.Again:
                    break
                while sock.getsockopt(rcvmore):
                    frames.append(sock.recv(nb))
                pending.append(frames[0])
        if not pending:
            continue
        turn = []
        while pending and len(turn) * per_message < TURN_SAMPLES:
            turn.append(pending.popleft())
        n = len(turn) * per_message
        # position stays below STREAMS: numpy's wrap subtracts the size until an index fits, so its cost grows
        # with the index (a counter left to grow made this loop ten times slower within a minute)
        slots = order.take(np.arange(position, position + n), mode="wrap")
        position = (position + n) % STREAMS
        backend.run(slots, offsets[:n + 1], X[:n])
        for ident in turn:
            sock.send(ident, more)
            sock.send(reply, nb)
        spin_until = time.monotonic() + SPIN_S


def main(argv=None) -> int:
    from . import common
    import lstm_stream as ls
    ap = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.splitlines()[0])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--model", required=True, help="an .npz model (LSTMModel.save)")
    ap.add_argument("--per-message", type=int, default=100, help="streams each message holds")
    args = ap.parse_args(argv)
    common.exit_on_sigterm()
    serve(args.bind, ls.LSTMModel.load(args.model), args.per_message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
