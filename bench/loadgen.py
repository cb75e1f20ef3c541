"""A lean load generator speaking the daemon's wire format over one DEALER socket.

Requests are encoded once up front (a pool), so the generator's own cost per message is a send, a receive
and one msgpack decode of the reply (to check it succeeded): the same for every server it is pointed at.
"""
from __future__ import annotations

import time

import msgpack
import numpy as np
import zmq

from .servers import wire_array

REPLY_TIMEOUT_S = 10.0  # a server that stops answering fails the benchmark instead of hanging it


class ServerFailed(RuntimeError):
    """The server answered with an error, or not at all."""


def step_pool(n_streams: int, I: int, *, per_message: int = 1, seed: int = 0, prefix: str = "s") -> list:
    """Encoded requests: one `step` per stream (per_message == 1) or `step_many` messages of per_message
    streams each, covering n_streams stream ids."""
    rng = np.random.default_rng(seed)
    pool = []
    if per_message == 1:
        for k in range(n_streams):
            x = rng.standard_normal(I, dtype=np.float32)
            pool.append(msgpack.packb({"v": 1, "id": k, "op": "step", "stream": f"{prefix}{k}",
                                       "x": wire_array(x)}))
        return pool
    for m in range(max(1, n_streams // per_message)):
        ids = [f"{prefix}{m * per_message + j}" for j in range(per_message)]
        x = rng.standard_normal((per_message, I), dtype=np.float32)
        pool.append(msgpack.packb({"v": 1, "id": m, "op": "step_many", "streams": ids, "x": wire_array(x)}))
    return pool


class LoadGen:
    """One DEALER connected to `endpoint`; latency() and throughput() against it."""

    def __init__(self, endpoint: str, ctx: zmq.Context, curve=None):
        self.endpoint = endpoint
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        if curve is not None:  # (server public, client public, client secret), z85: clients/keys.py
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self.sock.connect(endpoint)

    def close(self):
        self.sock.close(0)

    def _recv(self) -> bytes:
        if not self.sock.poll(REPLY_TIMEOUT_S * 1000):
            raise ServerFailed(f"no reply from {self.endpoint} within {REPLY_TIMEOUT_S} s")
        return self.sock.recv()

    @staticmethod
    def _check(data: bytes) -> None:
        rep = msgpack.unpackb(data)
        if rep.get("ok") is not True:
            raise ServerFailed(f"server answered an error: {rep.get('error')}")

    def wait_ready(self, timeout: float, proc=None) -> None:
        """Send pings until one is answered; fail if `proc` exits or `timeout` passes."""
        ping = msgpack.packb({"v": 1, "id": -1, "op": "ping"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServerFailed(f"server for {self.endpoint} exited with status {proc.returncode}")
            self.sock.send(ping)
            if self.sock.poll(200):
                self.sock.recv()
                self.drain(0.05)
                return
        raise ServerFailed(f"{self.endpoint} did not answer a ping within {timeout} s")

    def drain(self, quiet_s: float) -> None:
        """Discard replies until none arrives for quiet_s (stale answers to earlier pings or windows)."""
        while self.sock.poll(quiet_s * 1000):
            self.sock.recv()

    def latency(self, pool: list, count: int) -> list:
        """Seconds of each of `count` round trips with one request in flight."""
        out = []
        send, recv, check, clock = self.sock.send, self._recv, self._check, time.perf_counter_ns
        for k in range(count):
            t0 = clock()
            send(pool[k % len(pool)])
            data = recv()
            out.append((clock() - t0) * 1e-9)
            check(data)
        return out

    def throughput(self, pool: list, window: int, duration: float) -> float:
        """Replies per second with up to `window` requests in flight for `duration` seconds. The replies
        still in flight at the end are then collected (not counted), leaving the socket clean."""
        sock, check = self.sock, self._check
        sent = got = inflight = 0
        n = len(pool)
        t0 = time.perf_counter()
        t_end = t0 + duration
        while True:
            while inflight < window:
                sock.send(pool[sent % n])
                sent += 1
                inflight += 1
            data = self._recv()
            while True:
                if got % 64 == 0:
                    check(data)
                got += 1
                inflight -= 1
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            now = time.perf_counter()
            if now >= t_end:
                break
        rate = got / (now - t0)
        for _ in range(inflight):
            check(self._recv())
        return rate

    def batches(self, pool: list, size: int, duration: float) -> float:
        """Replies per second sending `size` requests, then waiting for all their replies, again and again
        for `duration` seconds: a pipeline's pattern with no client work, the ceiling of any pipeline."""
        sock, check, n, sent = self.sock, self._check, len(pool), 0
        t0 = time.perf_counter()
        t_end = t0 + duration
        while True:
            for _ in range(size):
                sock.send(pool[sent % n])
                sent += 1
            for k in range(size):
                data = self._recv()
                if k % 64 == 0:
                    check(data)
            now = time.perf_counter()
            if now >= t_end:
                return sent / (now - t0)
