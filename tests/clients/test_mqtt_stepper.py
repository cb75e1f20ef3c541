"""The bridge's stepper (clients/mqtt/stepper.py) and its state file (progress.py) against a real daemon, no
broker: which number a message is stepped with, and that a redelivery is answered from the daemon's receipt,
also by a new bridge process that reads the state file. A "crash" is a stepper dropped without acknowledging:
what a process wrote to the file is what the kernel keeps when it is killed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clients import Client
from clients.mqtt.payload import Sample
from clients.mqtt.progress import Progress, StateFileError
from clients.mqtt.stepper import Stepper

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)  # the default model takes 6 inputs


@pytest.fixture
def served(daemon):
    d = daemon()
    with Client(d.endpoint, timeout=5) as c:
        yield c


def step(stepper, stream, t, mid, dup=False):
    (o,) = stepper.step([Sample(stream, X[t], None)], [mid], [dup])
    return o


OPENED: list = []


@pytest.fixture(autouse=True)
def close_files():
    """Close every state file at the end (a dropped stepper stands for a killed process: it wrote nothing more
    than what it had flushed, and closing writes nothing)."""
    yield
    while OPENED:
        OPENED.pop().close()


def progress(path, client_id="bridge-1"):
    p = Progress(path, broker="mqtt://127.0.0.1:1883", client_id=client_id)
    OPENED.append(p)
    return p


def test_a_redelivery_is_answered_from_the_receipt_and_a_new_message_is_stepped(served):
    s = Stepper(served, sequenced=False)
    first = step(s, "a", 0, mid=5)
    assert (first.kind, first.seq, first.duplicate) == ("ok", 1, False)
    again = step(s, "a", 0, mid=5, dup=True)  # the broker delivers it again (DUP, same packet id)
    assert (again.kind, again.seq, again.duplicate) == ("ok", 1, True)
    np.testing.assert_array_equal(again.y, first.y)
    s.forget(5)  # packet id 5 now carries a new message
    assert (step(s, "a", 1, mid=5).seq, served.seq("a")) == (2, 2)


def test_the_state_file_carries_the_memory_across_a_crash(served, tmp_path):
    path = tmp_path / "bridge.state"
    s1 = Stepper(served, sequenced=False, progress=progress(path))
    step(s1, "a", 0, mid=1)
    first = step(s1, "a", 1, mid=2)  # stepped, then the bridge dies before its PUBACK
    del s1
    s2 = Stepper(served, sequenced=False, progress=progress(path))
    again = step(s2, "a", 1, mid=2, dup=True)
    assert (again.seq, again.duplicate, served.seq("a")) == (2, True, 2)
    np.testing.assert_array_equal(again.y, first.y)
    s3 = Stepper(served, sequenced=False)  # without the file the same redelivery is stepped again
    assert (step(s3, "a", 1, mid=2, dup=True).seq, served.seq("a")) == (3, 3)


def test_a_forgotten_packet_id_stays_forgotten_after_a_crash(served, tmp_path):
    path = tmp_path / "bridge.state"
    s1 = Stepper(served, sequenced=False, progress=progress(path))
    step(s1, "a", 0, mid=9)
    s1.forget(9)  # a new message came with packet id 9, and the bridge died before stepping it
    s2 = Stepper(served, sequenced=False, progress=progress(path))
    o = step(s2, "a", 1, mid=9, dup=True)  # its redelivery is a new sample, not the old one's resend
    assert (o.kind, o.seq, o.duplicate, served.seq("a")) == ("ok", 2, False, 2)


def test_a_state_file_of_another_bridge_or_boot_is_not_used(served, tmp_path, caplog):
    path = tmp_path / "bridge.state"
    step(Stepper(served, sequenced=False, progress=progress(path)), "a", 0, mid=4)
    assert progress(path, client_id="bridge-2").load() == {}
    assert "not this bridge's" in caplog.text
    step(Stepper(served, sequenced=False, progress=progress(path)), "a", 1, mid=6)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    path.write_text("\n".join([json.dumps(dict(header, boot="another boot")), *lines[1:]]) + "\n")
    assert progress(path).load() == {}
    assert "before the machine restarted" in caplog.text


def test_a_torn_last_line_is_tolerated_and_garbage_is_refused(served, tmp_path):
    path = tmp_path / "bridge.state"
    step(Stepper(served, sequenced=False, progress=progress(path)), "a", 0, mid=3)
    text = path.read_text()
    path.write_text(text + '["S", 4, "a"')  # the process died while writing
    assert progress(path).load() == {3: ("a", 1)}
    path.write_text(text + 'nonsense\n["F", 3]\n')
    with pytest.raises(StateFileError, match="line 3: unreadable record"):
        progress(path).load()
    path.write_text("hello\n")
    with pytest.raises(StateFileError, match="not a bridge's state file"):
        progress(path).load()


def test_sequenced_numbers_stale_gap_and_duplicate(served):
    s = Stepper(served, sequenced=True)

    def seq_step(t, n, stepper=s):
        (o,) = stepper.step([Sample("b", X[t], n)], [None], [False])
        return o
    assert (seq_step(0, 1).kind, seq_step(1, 2).kind) == ("ok", "ok")
    assert seq_step(1, 2).duplicate  # a resend of the last step
    assert seq_step(0, 1).kind == "stale"  # stepped before, not the last: not applied again
    gap = seq_step(2, 5)
    assert gap.kind == "rejected" and "skips samples" in gap.error and "next is 3" in gap.error
    applied = seq_step(2, 5, Stepper(served, sequenced=True, on_gap="apply"))
    assert (applied.kind, applied.seq, served.seq("b")) == ("ok", 3, 3)
