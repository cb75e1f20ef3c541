"""engine/hugepages.py: huge pages split by a forked snapshot's copy-on-write are merged back, contents untouched.

The merge itself needs Linux with transparent huge pages and MADV_COLLAPSE (6.1+); where the kernel lacks
them, the tests of the merge are skipped with the reason Merger reports, and the rest still run.
"""
import os
import re
import time

import numpy as np
import pytest

import lstm_stream as ls
from engine import hugepages
from engine.hugepages import HUGE_PAGE, Merger, huge_ranges
from engine.persistence import Snapshots
from engine.snapshot_jobs import fork_available
from models import random_model


def huge_bytes_of(a: np.ndarray) -> int:
    """AnonHugePages of the mappings that overlap `a`'s buffer (/proc/self/smaps), in bytes: numpy's madvise
    splits an allocation's mapping at the first huge page."""
    start = a.__array_interface__["data"][0]
    end, inside, total = start + a.nbytes, False, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m[1], 16) < end and start < int(m[2], 16)
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1]) * 1024
    return total


def split_by_a_fork(a: np.ndarray) -> None:
    """Fork a child that waits, write every page of `a` meanwhile (copy-on-write splits its huge pages), end it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.read(r, 1)
        os._exit(0)
    try:
        a.reshape(-1)[::4096 // a.itemsize] += 1
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


def test_huge_ranges_are_the_whole_huge_pages_inside_each_buffer_merged_and_sorted():
    a = np.zeros(5 * HUGE_PAGE, np.uint8)
    b = np.zeros(HUGE_PAGE // 2, np.uint8)  # smaller than one huge page: nothing whole inside
    start = a.__array_interface__["data"][0]
    first, end = -(-start // HUGE_PAGE) * HUGE_PAGE, (start + a.nbytes) // HUGE_PAGE * HUGE_PAGE
    assert huge_ranges([a, b]) == [(first, end - first)]
    assert huge_ranges([a[HUGE_PAGE:], a]) == [(first, end - first)]  # a view inside: one range
    assert huge_ranges([b]) == []


def test_a_merge_not_worth_it_is_not_started():
    merger = Merger()
    assert merger.start([np.zeros(HUGE_PAGE, np.uint8)]) is False
    assert merger.runs == 0 and not merger.running


def merge_or_skip(arrays) -> Merger:
    merger = Merger()
    if merger.why_not is not None:
        pytest.skip(f"no merging here: {merger.why_not}")
    assert merger.start(arrays)
    merger.join(60)
    assert not merger.running
    if merger.why_not is not None:
        pytest.skip(f"no merging here: {merger.why_not}")
    return merger


def test_merging_after_a_fork_brings_the_huge_pages_back_and_keeps_every_byte():
    rng = np.random.default_rng(7)
    a = rng.standard_normal(96 * HUGE_PAGE // 4).astype(np.float32)  # 192 MiB, every page touched
    if huge_bytes_of(a) == 0:
        pytest.skip("this system gave the array no huge pages (transparent huge pages off for it)")
    split_by_a_fork(a)
    split = huge_bytes_of(a)
    assert split < a.nbytes // 2, "the writes during the fork should have split most huge pages"
    before = a.copy()
    merger = merge_or_skip([a])
    if merger.failed_bytes:
        pytest.skip(f"the kernel had no free huge pages for {merger.failed_bytes} bytes")
    whole = huge_ranges([a])[0][1]
    assert merger.runs == 1 and merger.merged_bytes == whole
    assert huge_bytes_of(a) >= whole > split
    assert np.array_equal(a, before)


def test_snapshots_merge_after_each_forked_write(tmp_path, monkeypatch):
    if not fork_available():
        pytest.skip("no forked snapshots here")
    monkeypatch.setattr(hugepages, "MIN_BYTES", HUGE_PAGE)
    rng = np.random.default_rng(3)
    streams = ls.Streams(random_model(rng, I=3, H=64, L=1, O=2))
    ids = [f"s{k}" for k in range(20_000)]  # 20,000 x 512 B of state: 10 MB, five huge pages at least
    streams.step_many(ids, rng.standard_normal((len(ids), 3)).astype(np.float32))
    snaps = Snapshots(streams, tmp_path, method="fork")
    assert snaps.status()["huge_pages"]["runs"] == 0
    for k in range(2):
        snaps.start("test")
        streams.step_many(ids, rng.standard_normal((len(ids), 3)).astype(np.float32))  # while the child writes
        live_ids, live = streams.export_all()
        assert snaps.wait() is not None
        merger = snaps.huge_pages
        if merger.why_not is not None:
            pytest.skip(f"no merging here: {merger.why_not}")
        merger.join(60)
        status = snaps.status()["huge_pages"]
        assert status["runs"] == k + 1 and status["merged_bytes"] + status["failed_bytes"] > 0
        after_ids, after = streams.export_all()  # the merge moved pages, not bytes
        assert after_ids == live_ids and all(np.array_equal(after[n], live[n]) for n in live)


def test_threaded_writes_and_merging_off_have_no_merger(tmp_path):
    streams = ls.Streams(random_model(np.random.default_rng(1), I=2, H=4, L=1, O=1))
    assert Snapshots(streams, tmp_path, method="thread").status()["huge_pages"] is None
    assert Snapshots(streams, tmp_path, method="fork", merge_huge_pages=False).huge_pages is None


@pytest.mark.skipif(not fork_available(), reason="fork writes need Linux")
def test_info_shows_the_merging_of_a_daemon_that_writes_forked_snapshots(daemon, served_models, tmp_path):
    from clients import Client
    path, _ = served_models["ar"]
    d = daemon("--model", path, "--snapshot-dir", tmp_path / "state", "--snapshot-every", "50ms")
    with Client(d.endpoint, timeout=10) as c:
        c.step("a", np.ones(4))
        deadline = time.monotonic() + 30
        while c.info()["snapshot"]["last"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        snap = c.info()["snapshot"]
    assert snap["method"] == "fork" and snap["last"] is not None
    merging = snap["huge_pages"]
    assert set(merging) == {"available", "why_not", "runs", "merged_bytes", "failed_bytes", "seconds", "running"}
    assert merging["available"] == (Merger().why_not is None) and merging["runs"] == 0  # (too little state)


def test_huge_pages_leave_turns_the_merging_off(daemon, served_models, tmp_path):
    from clients import Client
    path, _ = served_models["ar"]
    d = daemon("--model", path, "--snapshot-dir", tmp_path / "state", "--huge-pages", "leave")
    with Client(d.endpoint, timeout=10) as c:
        assert c.info()["snapshot"]["huge_pages"] is None
