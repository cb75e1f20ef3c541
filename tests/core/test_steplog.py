"""The step log's file format: framing, checksums, torn tails of every length, corruption before the tail."""
import os
from pathlib import Path

import numpy as np
import pytest

from lstm_stream import steplog
from lstm_stream.steplog import LogCorruptError, SegmentWriter, scan


def _write(directory, first, payloads, fingerprint="f00d"):
    w = SegmentWriter(directory, first, fingerprint, "float32")
    for k, p in enumerate(payloads):
        w.write(steplog.frame(first + k, p))
    w.close()
    return w.path


def _payloads(rng, n):
    return [rng.bytes(int(rng.integers(1, 300))) for _ in range(n)]


def test_records_come_back_in_order_across_segments(tmp_path):
    rng = np.random.default_rng(1)
    a, b = _payloads(rng, 7), _payloads(rng, 5)
    _write(tmp_path, 1, a)
    _write(tmp_path, 8, b)
    found = scan(tmp_path)
    assert [lsn for lsn, _ in found.records] == list(range(1, 13))
    assert [p for _, p in found.records] == a + b
    assert found.tail is None and found.last_lsn == 12
    assert [lsn for lsn, _ in scan(tmp_path, after=9).records] == [10, 11, 12]


def test_a_torn_tail_of_every_length_is_dropped_and_nothing_before_it(tmp_path):
    rng = np.random.default_rng(2)
    payloads = _payloads(rng, 4)
    path = _write(tmp_path, 1, payloads)
    whole = Path(path).read_bytes()
    last = len(steplog.frame(4, payloads[3]))
    good = len(whole) - last
    for cut in range(good + 1, len(whole)):  # every prefix of the last record
        Path(path).write_bytes(whole[:cut])
        found = scan(tmp_path)
        assert [p for _, p in found.records] == payloads[:3], cut
        assert found.tail == (path, good, cut)
    steplog.cut_tail(found.tail)
    assert os.path.getsize(path) == good and scan(tmp_path).tail is None


def test_a_tail_of_zeros_is_torn_not_corrupt(tmp_path):
    path = _write(tmp_path, 1, [b"abc", b"defg"])
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)  # a file extended, never written (a crash on some file systems)
    found = scan(tmp_path)
    assert len(found.records) == 2 and found.tail == (path, size, size + 4096)


def test_a_segment_torn_in_its_header_is_the_tail(tmp_path):
    _write(tmp_path, 1, [b"one", b"two"])
    path = _write(tmp_path, 3, [])
    data = Path(path).read_bytes()
    for cut in (0, 5, len(data) - 1):
        Path(path).write_bytes(data[:cut])
        found = scan(tmp_path)
        assert [lsn for lsn, _ in found.records] == [1, 2] and found.tail[0] == path and found.tail[1] == 0


@pytest.mark.parametrize("where", ["payload", "length", "lsn"])
def test_a_corrupted_middle_record_refuses_with_its_offset(tmp_path, where):
    rng = np.random.default_rng(3)
    payloads = _payloads(rng, 6)
    path = _write(tmp_path, 1, payloads)
    data = bytearray(Path(path).read_bytes())
    start = len(data) - sum(len(steplog.frame(k + 1, p)) for k, p in enumerate(payloads)) + \
        len(steplog.frame(1, payloads[0]))  # the second record
    data[start + {"payload": 20, "length": 1, "lsn": 6}[where]] ^= 0x40
    Path(path).write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match=rf"byte offset {start} \(after lsn 1\).*truncate -s {start}"):
        scan(tmp_path)


def test_corruption_in_an_older_segment_refuses_even_at_its_end(tmp_path):
    first = _write(tmp_path, 1, [b"a" * 50, b"b" * 50])
    _write(tmp_path, 3, [b"c"])
    data = bytearray(Path(first).read_bytes())
    data[-3] ^= 1
    Path(first).write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match="corrupted"):
        scan(tmp_path)


def test_another_models_log_and_a_missing_segment_refuse(tmp_path):
    _write(tmp_path, 1, [b"a"], fingerprint="aaaa")
    with pytest.raises(LogCorruptError, match="model aaaa, not the loaded model bbbb"):
        scan(tmp_path, fingerprint="bbbb")
    _write(tmp_path, 5, [b"e"], fingerprint="aaaa")
    with pytest.raises(LogCorruptError, match="segment is missing"):
        scan(tmp_path)


def test_a_failed_write_leaves_no_partial_record(tmp_path):
    w = SegmentWriter(tmp_path, 1, "f", "float32")
    w.write(steplog.frame(1, b"good"))
    size = w.size
    os.close(w.fd)  # every later write fails (EBADF), as a disk error would
    with pytest.raises(OSError):
        w.write(steplog.frame(2, b"never"))
    assert w.size == size and os.path.getsize(w.path) == size
    w._fd = -1
    assert [p for _, p in scan(tmp_path).records] == [b"good"]
