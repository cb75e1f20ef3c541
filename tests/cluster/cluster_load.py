"""Helpers of the Ray cluster tests: a local Ray for one module, deterministic inputs, an offline reference,
and a load thread stepping streams exactly-once through a ClusterClient."""
import os
import threading
import time
from pathlib import Path

import numpy as np

import lstm_stream as ls
from clients import ClientError, ClusterClient

ROOT = Path(__file__).resolve().parents[2]
I = 4
DEADLINE = 240.0  # seconds for a restarted shard to serve again (a loaded 2-core CI machine; usually ~10 s)


def start_ray():
    """A local Ray for this module: 2 CPUs, no dashboard, a small object store; workers import this checkout."""
    import ray
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if "LSTM_STREAM_CACHE_DIR" in os.environ:
        env["LSTM_STREAM_CACHE_DIR"] = os.environ["LSTM_STREAM_CACHE_DIR"]
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": env})


def inputs_of(k: int, n: int) -> np.ndarray:
    """Stream k's n-th sample: fixed by (k, n), so that an offline run can replay it."""
    return np.random.default_rng((k, n)).normal(size=I).astype(np.float32)


def offline(model, k: int, steps: int):
    """(outputs (steps, O), final state) of stream k stepped through its first `steps` samples, one at a time."""
    s = ls.Streams(model, threads=1)
    ys = np.stack([s.step(k, inputs_of(k, n)) for n in range(steps)])
    return ys, s.get_state(k)


class Load:
    """A thread stepping streams 0..n-1 round robin with an exactly-once ClusterClient (resent through a shard's
    restart with the same seq), keeping each acknowledged output, until stopped."""

    def __init__(self, m, n: int, base: int):
        self.m, self.n, self.base = m, n, base
        self.acked = [[] for _ in range(n)]
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with ClusterClient(self.m, timeout=2.0, retries=int(DEADLINE / 2), exactly_once=True) as c:
                k = 0
                while not self.stop.is_set():
                    y = c.step(self.base + k, inputs_of(self.base + k, len(self.acked[k])))
                    self.acked[k].append(y)
                    k = (k + 1) % self.n
        except ClientError as e:
            self.error = e

    @property
    def total(self) -> int:
        return sum(map(len, self.acked))

    def wait_for(self, total: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while self.total < total and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.error is None and self.total >= total, (self.error, self.total, total)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive() and self.error is None, self.error
