"""A live daemon (a real `lstm-stream serve` on loopback, step log on, `--fsync always`) fuzzed over ZeroMQ: every
reply by the spec, witness streams stepped alongside stay bit-exact, the daemon answers ping after each batch;
and after the fuzz, a kill -9 and a restart give back every stream bit for bit (the step log replayed)."""
import signal

import pytest
from daemons import Daemon, DaemonFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from . import properties as F
from . import strategies as S
from .harness import DaemonTarget, live_args, make_model


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(daemon, target, model): one daemon for the module, the pool's streams created."""
    tmp = tmp_path_factory.mktemp("fuzz_daemon")
    model = make_model()
    model.save(tmp / "model.npz")
    factory = DaemonFactory(tmp)
    try:
        daemon = factory(*live_args(tmp / "model.npz", tmp / "snap"))
        target = DaemonTarget(daemon.endpoint, model)
        try:
            target.seed_pool()
            yield daemon, target, model
        finally:
            target.close()
    finally:
        factory.close()


@settings(max_examples=50)
@given(cases=st.lists(S.message(), min_size=1, max_size=12), batched=st.booleans(),
       seed=st.integers(0, 2**16))
def test_a_live_daemon_answers_every_fuzzed_message_by_the_spec(live, cases, batched, seed):
    _, target, model = live
    F.live_daemon(target, model, cases, batched, seed)


def test_after_the_fuzz_a_restart_gives_back_every_stream_bit_for_bit(live):
    """Whatever the fuzz got applied was logged before its reply (--fsync always): killed and restarted, the
    daemon replays its log to the same state, stream for stream."""
    daemon, target, _ = live
    before = target.dump()
    assert len(before) >= len(S.POOL)
    daemon.stop(signal.SIGKILL)
    again = Daemon(daemon.endpoint, daemon.args, daemon.log_path).start()
    try:
        assert target.dump() == before
    finally:
        again.stop()
