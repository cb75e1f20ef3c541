"""Crashes against real daemons on loopback: kill -9 under load loses nothing acknowledged under --fsync always,
every stream equals an offline run of exactly the steps the daemon reports; resends with sequence numbers are
applied once across a crash; a full disk refuses steps and applies nothing. Bounded loops, real processes."""
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lstm_stream as ls
from clients import Client, ClientError, LogFailed

I = 4
STREAMS = 16
MAX_STEPS = 20_000  # inputs prepared per stream (a round sends a few hundred to a few thousand: pipelines of
# STREAMS steps go out merged as one step_many, so a fast disk's fsyncs let a round's 0.6 s send thousands)


class Load:
    """A thread that steps every stream with sequence numbers, in pipelines, until stopped or the daemon dies.
    acked[k]: the highest seq of stream k whose reply came; sent[k]: the highest seq sent."""

    def __init__(self, endpoint, inputs, start):
        self.endpoint, self.inputs = endpoint, inputs
        self.sent, self.acked = list(start), list(start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with Client(self.endpoint, timeout=2, retries=0) as c:
            while not self.stop.is_set() and max(self.acked) < len(self.inputs[0]):  # (inputs left to send)
                p = c.pipeline()
                for k in range(STREAMS):
                    n = self.acked[k]
                    p.step(f"s{k}", self.inputs[k, n], seq=n + 1)
                    self.sent[k] = max(self.sent[k], n + 1)
                try:
                    p.execute()
                except ClientError:
                    pass
                for k, r in enumerate(p.results or []):
                    if isinstance(r, np.ndarray):
                        self.acked[k] += 1
                    elif not isinstance(r, LogFailed):
                        return  # the daemon is gone (Timeout) or refused: stop sending


def _check_against_offline(c, ref, model, inputs, counts):
    """Every stream on the daemon equals the reference stepped through exactly the steps the daemon reports."""
    for k in range(STREAMS):
        have = ref.stream_info(f"s{k}")["steps"] if f"s{k}" in ref else 0
        if counts[k] > have:
            ref.step(f"s{k}", inputs[k, have:counts[k]])
        if counts[k]:
            got, want = c.get_state(f"s{k}"), ref.get_state(f"s{k}")
            assert got.steps == want.steps and np.array_equal(got.h, want.h) and np.array_equal(got.c, want.c), k


@pytest.mark.parametrize("snapshots", [False, True], ids=["log-only", "with-snapshots-and-rotation"])
def test_kill_9_under_load_loses_no_acknowledged_step(daemon, served_models, tmp_path, snapshots):
    path, model = served_models["cls"]
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    chaos = random.Random(int(rng.integers(2**31)))
    inputs = rng.standard_normal((STREAMS, MAX_STEPS, I)).astype(np.float32)
    state, endpoint = tmp_path / "state", daemon.endpoint()
    args = ["--model", path, "--snapshot-dir", state, "--fsync", "always"]
    if snapshots:  # kills also land during snapshot writes and log rotations (4 KiB segments)
        args += ["--snapshot-every", "150ms", "--log-segment", "4KiB"]
    ref = ls.Streams(model)
    acked = [0] * STREAMS
    rounds = 20 if not snapshots else 10
    total_acked = 0
    for _ in range(rounds):
        d = daemon(*args, endpoint=endpoint)
        with Client(endpoint, timeout=10) as c:
            counts = [c.seq(f"s{k}") for k in range(STREAMS)]
            assert all(n >= a for n, a in zip(counts, acked)), (counts, acked)  # nothing acknowledged lost
            _check_against_offline(c, ref, model, inputs, counts)
        load = Load(endpoint, inputs, counts)
        load.thread.start()
        time.sleep(chaos.uniform(0.05, 0.6))
        d.stop(signal.SIGKILL)
        load.stop.set()
        load.thread.join(30)
        assert all(a <= s for a, s in zip(load.acked, load.sent))
        total_acked += sum(a - n for a, n in zip(load.acked, counts))
        acked = load.acked
    d = daemon(*args, endpoint=endpoint)
    with Client(endpoint, timeout=10) as c:
        counts = [c.seq(f"s{k}") for k in range(STREAMS)]
        assert all(a <= n <= s for a, n, s in zip(acked, counts, load.sent))  # applied: acked, maybe the unacked
        _check_against_offline(c, ref, model, inputs, counts)
    assert total_acked > 20 * rounds  # the load did run between kills


def test_a_client_with_sequence_numbers_applies_each_step_once_across_crashes(daemon, served_models, tmp_path):
    path, model = served_models["cls"]
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    xs = rng.standard_normal((300, I)).astype(np.float32)
    state, endpoint = tmp_path / "state", daemon.endpoint()
    args = ["--model", path, "--snapshot-dir", state, "--fsync", "always"]
    d = daemon(*args, endpoint=endpoint)
    ys, failures = [], []

    def stepper():
        with Client(endpoint, timeout=1.0, retries=60, exactly_once=True) as c:
            try:
                for x in xs:
                    ys.append(c.step("pump", x))
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(e)

    t = threading.Thread(target=stepper, daemon=True)
    t.start()
    for _ in range(3):  # crash it three times while the client steps; it resends what had no reply
        deadline = time.monotonic() + 30
        start = len(ys)
        while len(ys) < start + 20 and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.01)
        d.stop(signal.SIGKILL)
        d = daemon(*args, endpoint=endpoint)
    t.join(120)
    assert not failures and len(ys) == len(xs)
    ref = ls.Streams(model)
    want = ref.step("pump", xs)
    assert np.array_equal(np.stack(ys), want)  # every output as if never interrupted: each step applied once
    with Client(endpoint) as c:
        got = c.get_state("pump")
    assert got.steps == len(xs) and np.array_equal(got.h, ref.get_state("pump").h)


def test_a_resend_whose_reply_was_lost_gets_the_original_outputs(daemon, served_models):
    import msgpack
    import zmq
    path, model = served_models["cls"]
    d = daemon("--model", path)
    x = np.linspace(-1, 1, I).astype(np.float32)
    ctx = zmq.Context.instance()
    lost = ctx.socket(zmq.DEALER)
    lost.connect(d.endpoint)
    lost.send(msgpack.packb({"v": 1, "id": 1, "op": "step", "stream": "q", "x": x.tolist(), "seq": 1}))
    lost.close(1000)  # gone before reading its reply
    with Client(d.endpoint) as c:
        deadline = time.monotonic() + 10
        while c.seq("q") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        y = c.step("q", x, seq=1)  # the resend: answered, not applied again
        assert c.seq("q") == 1
    assert np.array_equal(y, ls.Streams(model).step("q", x))


def _mount_tmpfs(where, size):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_refuses_steps_applies_nothing_and_recovers(daemon, served_models, tmp_path):
    path, model = served_models["cls"]
    state = tmp_path / "small"
    if not _mount_tmpfs(state, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        d = daemon("--model", path, "--snapshot-dir", state, "--fsync", "always")
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        for size in (65536, 4096, 512, 64, 8, 1):  # fill the file system up to its last byte
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.close(fd)
        x = np.full(I, 0.25, np.float32)
        with Client(d.endpoint, timeout=10) as c:
            refused, applied = 0, 0
            for _ in range(400):  # until the log's next write finds no room
                try:
                    c.step("f", x)
                    applied += 1
                except LogFailed as e:
                    refused += 1
                    assert "nothing was applied" in str(e)
                    break
            assert refused == 1
            assert c.get_state("f").steps == applied  # the refused step changed nothing; reads still work
            info = c.info()["log"]
            assert info["failing"] and info["last_error"]
            filler.unlink()
            time.sleep(1.1)  # the first retry comes after one second
            c.step("f", x)
            assert c.get_state("f").steps == applied + 1 and not c.info()["log"]["failing"]
        d.stop(signal.SIGKILL)
        d = daemon("--model", path, "--snapshot-dir", state, endpoint=d.endpoint)
        with Client(d.endpoint) as c:
            assert c.get_state("f").steps == applied + 1
            ref = ls.Streams(model)
            ref.step("f", np.tile(x, (applied + 1, 1)))
            assert np.array_equal(c.get_state("f").h, ref.get_state("f").h)
        d.stop()
    finally:
        for dd in daemon.daemons:
            dd.stop(signal.SIGKILL)
        subprocess.run(["umount", str(state)], capture_output=True)


def test_a_torn_tail_is_dropped_and_a_corrupt_middle_refuses_the_start(daemon, served_models, tmp_path):
    from lstm_stream import steplog
    path, model = served_models["cls"]
    state, endpoint = tmp_path / "state", daemon.endpoint()
    args = ["--model", path, "--snapshot-dir", state, "--fsync", "always"]
    d = daemon(*args, endpoint=endpoint)
    xs = np.random.default_rng(3).standard_normal((30, I)).astype(np.float32)
    with Client(endpoint) as c:
        for x in xs:
            c.step("t", x)
    d.stop(signal.SIGKILL)
    (_, seg), = [s for s in steplog.segments(state / "log") if os.path.getsize(s[1]) > 200]
    whole = Path(seg).read_bytes()
    with open(seg, "ab") as f:  # a crash in the middle of the next record's write
        f.write(steplog.frame(31, b"x" * 300)[:137])
    d = daemon(*args, endpoint=endpoint)
    assert "ends with a torn record" in d.log()
    with Client(endpoint) as c:
        assert c.get_state("t").steps == 30
    d.stop(signal.SIGKILL)
    data = bytearray(Path(seg).read_bytes())
    middle = len(whole) // 2
    data[middle] ^= 0xFF  # a damaged byte inside an early record; valid records follow it
    Path(seg).write_bytes(bytes(data))
    d = daemon(*args, endpoint=endpoint, wait=False)
    assert d.wait_exit(120) == 2
    assert "is corrupted and valid data follows it" in d.log() and "truncate -s" in d.log()
