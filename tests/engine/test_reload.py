"""Weights updates against real daemons (loopback ipc, bounded loops): a reload under load serves every request
with exactly one version and loses none; a restart after a reload continues every stream bit for bit; kill -9
after a reload replays the log across the reload record; a start with other weights than the state reached is
refused (exit 2) or, with --model-update keep, continues; other sizes are refused, and with reset accepted
loudly. Every comparison is against offline Streams runs, bit for bit."""
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import lstm_stream as ls
from clients import BadRequest, Client
from daemons import ROOT
from models import random_model

I, H, O = 4, 9, 3
STREAMS = [f"s{k}" for k in range(4)]


@pytest.fixture
def models(tmp_path):
    """{name: (path, model)}: a and b the same sizes (b with peepholes and a sigmoid head), big other sizes."""
    rng = np.random.default_rng(20)
    out = {}
    for name, kw in (("a", {}), ("b", {"peepholes": True, "head_activation": "sigmoid"}), ("big", {"H": H + 3})):
        m = random_model(rng, **{"I": I, "H": H, "L": 2, "O": O, **kw})
        m.save(tmp_path / f"{name}.npz")
        out[name] = (tmp_path / f"{name}.npz", m)
    return out


def switch_point(a, b, xs, ys):
    """The k such that ys (n, O) is xs (n, I) stepped k times under a then under b from a's state (each reply
    from exactly one version, the switch once); AssertionError if there is none. Also returns the reference
    Streams (stream "r") after every step."""
    ref = ls.Streams(a)
    k = 0
    while k < len(xs):
        before = ref.get_state("r") if "r" in ref else None
        if not np.array_equal(ref.step("r", xs[k]), ys[k]):
            break
        k += 1
    if k < len(xs):
        ref = ls.Streams(b)
        if before is not None:
            ref.set_state("r", before)
        for t in range(k, len(xs)):
            assert np.array_equal(ref.step("r", xs[t]), ys[t]), f"reply {t} is from neither version (switch at {k})"
    return k, ref


class Stepper:
    """A thread that steps every stream of STREAMS one sample per request, a pipeline of one request per
    stream at a time, recording each reply, until stopped (bounded by the prepared inputs)."""

    def __init__(self, endpoint, xs):
        self.endpoint, self.xs = endpoint, xs  # xs (streams, n, I)
        self.done = 0          # rounds whose replies all came back
        self.ys = [[] for _ in STREAMS]
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with Client(self.endpoint, timeout=20) as c:
            while not self.stop.is_set() and self.done < self.xs.shape[1]:
                p = c.pipeline()
                for k, s in enumerate(STREAMS):
                    p.step(s, self.xs[k, self.done])
                try:
                    results = p.execute()
                except Exception as e:
                    self.errors.append(e)
                    return
                for k, y in enumerate(results):
                    self.ys[k].append(y)
                self.done += 1


def wait_for(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_reload_under_load_then_restart_continues(daemon, models, tmp_path):
    (a_path, a), (b_path, b) = models["a"], models["b"]
    state = tmp_path / "state"
    d = daemon("--model", a_path, "--snapshot-dir", state)
    xs = np.random.default_rng(21).standard_normal((len(STREAMS), 400, I)).astype(np.float32)
    load = Stepper(d.endpoint, xs)
    load.thread.start()
    with Client(d.endpoint, timeout=20) as admin:
        wait_for(lambda: load.done >= 30)
        r = admin.reload(b_path)
        assert r["fingerprint"] == b.fingerprint and r["previous"] == a.fingerprint and r["changed"]
        at = load.done
        wait_for(lambda: load.done >= at + 30 or not load.thread.is_alive())
        load.stop.set()
        load.thread.join(30)
        assert not load.errors and load.done >= at + 30
        info = admin.info()
        assert info["fingerprint"] == b.fingerprint and info["counters"]["reloads"] == 1
        refs = {}
        for k, s in enumerate(STREAMS):  # every reply from one version; the switch within the reload's reply
            n = load.done
            switch, refs[s] = switch_point(a, b, xs[k, :n], np.array(load.ys[k]))
            assert 30 <= switch <= at + 1, (s, switch, at)
            st = admin.get_state(s)
            assert st.steps == n and np.array_equal(st.h, refs[s].get_state("r").h)
    assert d.stop() == 0  # SIGTERM: the shutdown snapshot, under b
    d = daemon("--model", b_path, "--snapshot-dir", state, endpoint=d.endpoint)
    x = np.random.default_rng(22).standard_normal((3, I)).astype(np.float32)
    with Client(d.endpoint, timeout=20) as c:
        for s in STREAMS:
            assert np.array_equal(c.step(s, x), refs[s].step("r", x))
    # the shutdown snapshot under b covers everything: a, which nothing needs any more, left the weights store
    assert sorted(p.name for p in (state / "weights").iterdir()) == [f"{b.fingerprint}.npz"]


def test_kill_9_after_a_reload_replays_across_it(daemon, models, tmp_path):
    (a_path, a), (b_path, b) = models["a"], models["b"]
    state = tmp_path / "state"
    args = ("--snapshot-dir", state, "--fsync", "always")
    d = daemon("--model", a_path, *args)
    rng = np.random.default_rng(23)
    x1, x2, x3 = (rng.standard_normal((len(STREAMS), 3, I)).astype(np.float32) for _ in range(3))
    ref = ls.Streams(a)
    with Client(d.endpoint, timeout=20) as c:
        for k, s in enumerate(STREAMS):
            assert np.array_equal(c.step(s, x1[k]), ref.step(s, x1[k]))
        c.snapshot()  # under a: the replay starts from it, with a from the weights store
        for k, s in enumerate(STREAMS):
            c.step(s, x2[k])
            ref.step(s, x2[k])
        c.reload(b_path)
        ref.replace_model(b)
        for k, s in enumerate(STREAMS[:3]):
            assert np.array_equal(c.step(s, x3[k]), ref.step(s, x3[k]))
    d.stop(signal.SIGKILL)
    refused = daemon("--model", a_path, *args, endpoint=d.endpoint, wait=False)  # the file is not what it reached
    assert refused.wait_exit() == 2
    assert b.fingerprint in refused.log() and "--model-update keep" in refused.log()
    d = daemon("--model", b_path, *args, endpoint=d.endpoint)
    assert "switched the weights to" in d.log()
    with Client(d.endpoint, timeout=20) as c:
        for s in STREAMS:
            got, want = c.get_state(s), ref.get_state(s)
            assert got.steps == want.steps and np.array_equal(got.h, want.h) and np.array_equal(got.c, want.c), s
        x = np.ones(I, np.float32)
        assert np.array_equal(c.step("s3", x), ref.step("s3", x))  # s3 had no step under b yet
    d.stop(signal.SIGKILL)
    d = daemon("--model", a_path, *args, "--model-update", "keep", endpoint=d.endpoint)  # back to a, kept
    ref.replace_model(a)
    with Client(d.endpoint, timeout=20) as c:
        assert c.info()["fingerprint"] == a.fingerprint
        for s in STREAMS:
            assert np.array_equal(c.step(s, x), ref.step(s, x))


def test_other_sizes_are_refused_and_reset_is_loud(daemon, models, tmp_path):
    (a_path, a), (big_path, big) = models["a"], models["big"]
    d = daemon("--model", a_path, "--snapshot-dir", tmp_path / "state")
    with Client(d.endpoint, timeout=20) as c:
        for s in STREAMS:
            c.step(s, np.ones(I, np.float32))
        with pytest.raises(BadRequest) as e:
            c.reload(big_path)
        assert e.value.code == "bad_model" and f"hidden_size {H} -> {H + 3}" in e.value.message
        assert c.info()["fingerprint"] == a.fingerprint and c.get_state("s0").steps == 1
        r = c.reload(big_path, reset=True)
        assert r["reset"] and r["streams"] == len(STREAMS) and r["fingerprint"] == big.fingerprint
        assert c.info()["streams"] == 0
        x = np.ones(I, np.float32)
        assert np.array_equal(c.step("s0", x), ls.Streams(big).step("s0", x))
    wait_for(lambda: "WITH RESET" in d.log(), 10)
    line = next(ln for ln in d.log().splitlines() if "WITH RESET" in ln)
    assert "WARNING" in line and f"{len(STREAMS)} in memory" in line
    cli = [sys.executable, "-m", "engine.cli", "reload", "--connect", d.endpoint]
    r = subprocess.run(cli + [str(a_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "hidden_size" in r.stderr  # big -> a: other sizes again
    r = subprocess.run(cli + [str(a_path), "--reset"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)["fingerprint"] == a.fingerprint
