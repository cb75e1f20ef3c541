"""The CPU backend's adaptive choice between its serial and parallel kernels (backends.py, ADAPT_*): each size
class of calls tries both, then takes the faster, gives every ADAPT_PROBE-th call to the other, and follows
a change of which is faster; outputs never depend on the choice. Time is a fake clock advanced by the kernel
that ran, at a cost per row the test sets, so nothing here depends on this machine's speed."""
import os
import secrets

import numba
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream import backends
from models import random_model

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))
pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")


class Timed:
    """Stands in for kernels/cpu.py: runs the real kernel and advances a fake clock by cost[kernel] per row."""

    def __init__(self, k):
        self._k, self.now, self.cost, self.ran = k, 0.0, {"serial": 1.0, "parallel": 1.0}, []

    def __getattr__(self, name):
        return getattr(self._k, name)

    def _run(self, which, fn, *args):
        fn(*args)
        self.now += self.cost[which] * args[6].shape[0]  # x: (rows, I)
        self.ran.append(which)

    def step_ragged(self, *args):
        self._run("serial", self._k.step_ragged, *args)

    def step_ragged_parallel(self, *args):
        self._run("parallel", self._k.step_ragged_parallel, *args)


def timed_streams(model, monkeypatch, min_rows=8):
    monkeypatch.setattr(backends, "PARALLEL_MIN_MACS", (min_rows * model.macs_per_step,) * 2)
    s = ls.Streams(model, threads=2)
    b = s._backend
    b._k = fake = Timed(b._k)
    b._timer = lambda: fake.now
    assert b.parallel_min_rows == min_rows
    return s, b, fake


def test_takes_the_faster_kernel_probes_the_other_and_follows_a_change(monkeypatch):
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=8, L=1, O=2)
    s, b, fake = timed_streams(model, monkeypatch)
    ids = list(range(12))  # 12 rows: size class 0 (8..15 rows)
    fake.cost = {"serial": 1.0, "parallel": 1.1}  # close: probed every ADAPT_PROBE-th call
    for _ in range(64):
        s.step_many(ids, rng.normal(size=(12, 3)).astype(np.float32))
    first = 2 * backends.ADAPT_FIRST
    assert fake.ran[:first] == ["parallel", "serial"] * backends.ADAPT_FIRST  # both, in turn
    rest = fake.ran[first:]
    probes = [k for k in range(first + 1, 65) if k % backends.ADAPT_PROBE == 0]
    assert [i + first + 1 for i, r in enumerate(rest) if r == "parallel"] == probes  # only the probes
    (choice,) = b.kernel_choice()
    assert choice["uses"] == "serial" and choice["calls"] == 64 and choice["rows"] == 8
    assert choice["serial_ns_per_row"] == pytest.approx(1e9) and choice["parallel_ns_per_row"] == pytest.approx(1.1e9)
    assert s.stats()["kernel_choice"] == [choice]

    fake.cost = {"serial": 1.25, "parallel": 1.1}  # the machine changed: parallel is faster now
    fake.ran.clear()
    for _ in range(200):
        s.step_many(ids, rng.normal(size=(12, 3)).astype(np.float32))
    window = 2 * backends.ADAPT_PROBE  # any such run of calls holds exactly two probes
    assert fake.ran[-window:].count("serial") == 2
    assert b.kernel_choice()[0]["uses"] == "parallel"


def test_a_much_slower_kernel_is_probed_rarely(monkeypatch):
    """Probing a kernel 3x slower every 16th call would cost 12% of the time: it is probed every 200th."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=8, L=1, O=2)
    s, b, fake = timed_streams(model, monkeypatch)
    fake.cost = {"serial": 3.0, "parallel": 1.0}
    ids, X = list(range(12)), rng.normal(size=(12, 3)).astype(np.float32)
    for _ in range(400):
        s.step_many(ids, X)
    first = 2 * backends.ADAPT_FIRST
    late = [k + 1 for k, r in enumerate(fake.ran) if r == "serial" and k >= first]
    assert late == [200, 400]
    assert b.kernel_choice()[0]["uses"] == "parallel"


def test_one_stalled_call_does_not_move_the_choice(monkeypatch):
    """Parallel 1.5x faster; one parallel call stalls 10x (a host hiccup). Counted at most ADAPT_CLIP times the
    running figure, it leaves parallel the choice; near-equal kernels keep the parallel one (ADAPT_MARGIN)."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=8, L=1, O=2)
    s, b, fake = timed_streams(model, monkeypatch)
    ids, X = list(range(12)), rng.normal(size=(12, 3)).astype(np.float32)
    fake.cost = {"serial": 1.5, "parallel": 1.0}
    for _ in range(10):
        s.step_many(ids, X)
    fake.cost = {"serial": 1.5, "parallel": 10.0}
    s.step_many(ids, X)  # call 11: parallel, stalled
    fake.cost = {"serial": 1.5, "parallel": 1.0}
    fake.ran.clear()
    for _ in range(5):
        s.step_many(ids, X)
    assert fake.ran == ["parallel"] * 5
    fake.cost = {"serial": 0.97, "parallel": 1.0}  # serial 3% faster: within the margin
    for _ in range(300):  # long enough for the probes to bring serial's figure down to 0.97
        s.step_many(ids, X)
    choice = b.kernel_choice()[0]
    assert choice["serial_ns_per_row"] == pytest.approx(0.97e9, rel=0.01)
    assert choice["uses"] == "parallel" and fake.ran[-3:] == ["parallel"] * 3


def test_a_stalled_first_try_does_not_decide(monkeypatch):
    """Parallel 2x faster, but its first call stalls 10x (a cold start, a host hiccup): the first tries count
    by their best, so the calls after them go parallel at once, not after hundreds of rare probes."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=8, L=1, O=2)
    s, b, fake = timed_streams(model, monkeypatch)
    ids, X = list(range(12)), rng.normal(size=(12, 3)).astype(np.float32)
    fake.cost = {"serial": 2.0, "parallel": 20.0}
    s.step_many(ids, X)  # call 1: parallel, stalled
    fake.cost = {"serial": 2.0, "parallel": 1.0}
    for _ in range(2 * backends.ADAPT_FIRST - 1 + 10):
        s.step_many(ids, X)
    first = 2 * backends.ADAPT_FIRST
    assert fake.ran[first:] == ["parallel"] * 10
    choice = b.kernel_choice()[0]
    assert choice["uses"] == "parallel" and choice["parallel_ns_per_row"] == pytest.approx(1e9)


def test_size_classes_learn_apart_and_small_calls_stay_serial(monkeypatch):
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=8, L=1, O=2)
    s, b, fake = timed_streams(model, monkeypatch)
    for _ in range(3):
        s.step_many(list(range(5)), rng.normal(size=(5, 3)).astype(np.float32))  # below 8 rows: serial, untimed
    assert fake.ran == ["serial"] * 3 and b.kernel_choice() == []
    for n in (8, 20, 40, 2000):  # classes 0, 1, 2 and the last one (7: 1024 rows and more)
        s.step_many(list(range(n)), rng.normal(size=(n, 3)).astype(np.float32))
    assert [(c["rows"], c["calls"]) for c in b.kernel_choice()] == [(8, 1), (16, 1), (32, 1), (1024, 1)]


def test_outputs_do_not_depend_on_the_choice(monkeypatch):
    """Whichever kernel each call takes (here the choice flips back and forth), every stream's outputs equal
    a one-thread Streams' bit for bit."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=4, H=12, L=2, O=3)
    s, b, fake = timed_streams(model, monkeypatch)
    ref = ls.Streams(model, threads=1)
    ids = list(range(30))
    for t in range(40):
        fake.cost = {"serial": 1.0 + (t // 10) % 2, "parallel": 1.5}
        X = rng.normal(size=(30, 4)).astype(np.float32)
        assert np.array_equal(s.step_many(ids, X), ref.step_many(ids, X)), f"seed={SEED}, call {t}"
    assert {"serial", "parallel"} <= set(fake.ran)
