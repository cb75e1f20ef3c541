"""Weights updates in-process (EngineCore.reload, the `reload` op, and a start's recovery through open_state):
queued requests are each served by one version, in serving order; the weights store, the RELOAD log record and
the snapshot header let a start restore and replay across updates bit for bit; a start whose state reached
other weights than its --model refuses, or with --model-update keep applies the file as an update; other sizes
are refused, and with reset every stream is dropped, loudly."""
import logging

import numpy as np
import pytest

import lstm_stream as ls
from engine.config import EngineConfig, ServeConfig, StreamsConfig
from engine.core import EngineCore
from engine.startup import open_state
from engine.weights import WeightsStore
from lstm_stream import protocol as P
from lstm_stream import steplog, warm
from lstm_stream.errors import ModelError
from lstm_stream.steplog import LogCorruptError
from models import random_model

I, H, O = 3, 6, 2


@pytest.fixture
def models(tmp_path):
    """{name: (path, model)}: a and b of the same sizes, big of other sizes."""
    rng = np.random.default_rng(31)
    out = {}
    for name, kw in (("a", {}), ("b", {"peepholes": True}), ("big", {"H": H + 2})):
        m = random_model(rng, **{"I": I, "H": H, "L": 2, "O": O, **kw})
        m.save(tmp_path / f"{name}.npz")
        out[name] = (str(tmp_path / f"{name}.npz"), m)
    return out


def call(core, op, **fields):
    return core.call({"v": 1, "id": 1, "op": op, **fields})


def start(tmp_path, model_path, streams_options=None, **options):
    """open_state for --model model_path --snapshot-dir tmp_path/state, then an EngineCore over it."""
    serve = ServeConfig(model=model_path, snapshot_dir=str(tmp_path / "state"), **options)
    streams, snapshots, journal = open_state(serve, StreamsConfig(threads=1, **(streams_options or {})))
    warm.finish_background(wait=True)  # a kernel open_state left compiling in a child process
    return EngineCore(streams, EngineConfig(), snapshots=snapshots, journal=journal, model_path=model_path)


def stop(core):
    if core.journal is not None:
        core.journal.close()


def offline(models, plan):
    """A Streams stepped through plan: ("a" | "b", {id: xs}) or ("switch", name); the reference."""
    s = ls.Streams(models["a"][1])
    for what, arg in plan:
        if what == "switch":
            s.replace_model(models[arg][1])
        else:
            for i, xs in arg.items():
                s.step(i, xs)
    return s


def same_state(core, ref, ids):
    for i in ids:
        got, want = core.streams.get_state(i), ref.get_state(i)
        assert got.steps == want.steps and np.array_equal(got.h, want.h) and np.array_equal(got.c, want.c), i


def test_requests_queued_before_a_reload_are_served_by_the_old_weights_after_it_by_the_new(models):
    a, b = models["a"][1], models["b"][1]
    core = EngineCore(ls.Streams(a), EngineConfig(), model_path=models["b"][0])
    x = np.random.default_rng(1).standard_normal((3, I)).astype(np.float32)
    reqs = [{"op": "step", "stream": "s", "x": x[0]}, {"op": "step_many", "streams": ["s", "t"], "x": x[1:]},
            {"op": "reload"}, {"op": "step", "stream": "s", "x": x[2]}, {"op": "step", "stream": "t", "x": x[0]}]
    for k, r in enumerate(reqs):
        core.submit("one-client", P.parse_request({"v": 1, "id": k, **r}))
    out = [r.as_map() for _, r in core.step()]
    assert all(r["ok"] for r in out), out
    assert out[2]["fingerprint"] == b.fingerprint and out[2]["previous"] == a.fingerprint
    assert out[2]["streams"] == 2
    ref = ls.Streams(a)
    assert np.array_equal(out[0]["y"], ref.step("s", x[0]))
    assert np.array_equal(out[1]["y"], ref.step_many(["s", "t"], x[1:]))
    ref.replace_model(b)
    assert np.array_equal(out[3]["y"], ref.step("s", x[2]))
    assert np.array_equal(out[4]["y"], ref.step("t", x[0]))
    info = call(core, "info")
    assert info["fingerprint"] == b.fingerprint and info["counters"]["reloads"] == 1
    again = call(core, "reload")  # the same file again: nothing to do
    assert again["ok"] and again["changed"] is False and core.metrics["reloads"] == 1


def test_bad_reloads_are_refused_with_clear_codes_and_change_nothing(models, tmp_path):
    a = models["a"][1]
    core = EngineCore(ls.Streams(a), EngineConfig())
    core.streams.step("k", np.ones(I, np.float32))
    before = core.streams.get_state("k")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = [({}, P.UNSUPPORTED, "without --model"),
             ({"path": str(tmp_path / "nope.npz")}, P.BAD_MODEL, "does not exist"),
             ({"path": str(tmp_path / "junk.npz")}, P.BAD_MODEL, "not an .npz"),
             ({"path": 7}, P.BAD_REQUEST, "must be a str"),
             ({"path": models["big"][0]}, P.BAD_MODEL, f"hidden_size {H} -> {H + 2}")]
    for fields, code, text in cases:
        r = call(core, "reload", **fields)
        assert not r["ok"] and r["error"]["code"] == code and text in r["error"]["message"], (fields, r)
    assert core.streams.model is a and core.metrics["reloads"] == 0
    assert np.array_equal(core.streams.get_state("k").h, before.h)


def test_a_reset_reload_drops_every_stream_loudly(models, caplog):
    core = EngineCore(ls.Streams(models["a"][1]), EngineConfig())
    for i in range(4):
        core.streams.step(i, np.ones(I, np.float32))
    with caplog.at_level(logging.WARNING, logger="lstm_stream.engine"):
        r = call(core, "reload", path=models["big"][0], reset=True)
    assert r["ok"] and r["reset"] is True and r["streams"] == 4 and len(core.streams) == 0
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING and "WITH RESET" in rec.getMessage()]
    message = warned[0].getMessage()
    assert "4 in memory" in message and f"hidden_size {H} -> {H + 2}" in message
    y = call(core, "step", stream="n", x=np.ones(I, np.float32))
    assert np.array_equal(y["y"], ls.Streams(models["big"][1]).step("n", np.ones(I, np.float32)))


def test_recovery_replays_across_reloads_bit_for_bit(models, tmp_path):
    """Steps under a, snapshot, steps, reload to b, steps, (killed: no shutdown snapshot), a start with b's file
    restores a's snapshot with a from the weights store and switches at the record."""
    rng = np.random.default_rng(2)
    xs = [{i: rng.standard_normal((2, I)).astype(np.float32) for i in ("p", "q", 5)} for _ in range(3)]
    core = start(tmp_path, models["a"][0])
    for i, x in xs[0].items():
        call(core, "step", stream=i, x=x)
    call(core, "snapshot")
    for i, x in xs[1].items():
        call(core, "step", stream=i, x=x[:1])
    assert call(core, "reload", path=models["b"][0])["ok"]
    for i, x in xs[2].items():
        call(core, "step", stream=i, x=x)
    core.journal.sync()
    stop(core)  # no shutdown snapshot: the log holds everything after the first one
    store = WeightsStore(tmp_path / "state")
    assert store.fingerprints() == {models["a"][1].fingerprint, models["b"][1].fingerprint}
    newest = steplog.segments(tmp_path / "state" / "log")[-1][1]  # started at the reload, under b
    with open(newest, "rb") as f:
        assert steplog.read_header(newest, f.read())[0]["fingerprint"] == models["b"][1].fingerprint
    ref = offline(models, [("a", xs[0]), ("a", {i: x[:1] for i, x in xs[1].items()}), ("switch", "b"), ("b", xs[2])])
    core = start(tmp_path, models["b"][0])
    assert core.streams.model.fingerprint == models["b"][1].fingerprint
    same_state(core, ref, ["p", "q", 5])
    call(core, "snapshot")  # a snapshot under b, and the log continues
    stop(core)
    core = start(tmp_path, models["b"][0])
    same_state(core, ref, ["p", "q", 5])
    stop(core)


def test_a_start_with_other_weights_than_the_state_reached_refuses_or_keeps(models, tmp_path, caplog):
    core = start(tmp_path, models["a"][0])
    call(core, "step", stream="s", x=np.ones((3, I), np.float32))
    call(core, "reload", path=models["b"][0])
    call(core, "step", stream="s", x=np.ones(I, np.float32))
    core.journal.sync()
    stop(core)
    a_fp, b_fp = models["a"][1].fingerprint, models["b"][1].fingerprint
    with pytest.raises(ModelError) as e:  # started again with a's file: the state is at b
        start(tmp_path, models["a"][0])
    assert b_fp in str(e.value) and a_fp in str(e.value) and "--model-update keep" in str(e.value)
    with pytest.raises(ModelError, match="--model-update keep: .*hidden_size"):
        start(tmp_path, models["big"][0], model_update="keep")
    with caplog.at_level(logging.INFO, logger="lstm_stream.engine"):
        core = start(tmp_path, models["a"][0], model_update="keep")
    assert core.streams.model.fingerprint == a_fp
    assert any("--model-update keep" in r.getMessage() for r in caplog.records)
    ref = offline(models, [("a", {"s": np.ones((3, I), np.float32)}), ("switch", "b"),
                           ("b", {"s": np.ones((1, I), np.float32)}), ("switch", "a")])
    same_state(core, ref, ["s"])
    stop(core)
    core = start(tmp_path, models["a"][0])  # the keep was logged: a plain start now continues under a
    same_state(core, ref, ["s"])
    stop(core)


def test_weights_not_in_the_store_are_refused_as_before(models, tmp_path):
    core = start(tmp_path, models["a"][0])
    call(core, "step", stream="s", x=np.ones(I, np.float32))
    core.journal.sync()
    stop(core)
    with pytest.raises(LogCorruptError, match="written for model"):
        start(tmp_path, models["b"][0], model_update="keep")  # a never went to the weights store


def test_recovery_replays_a_reset_reload(models, tmp_path):
    core = start(tmp_path, models["a"][0])
    call(core, "step", stream="old", x=np.ones((2, I), np.float32))
    call(core, "snapshot")
    assert call(core, "reload", path=models["big"][0], reset=True)["ok"]
    x = np.random.default_rng(3).standard_normal((2, I)).astype(np.float32)
    call(core, "step", stream="new", x=x)
    core.journal.sync()
    stop(core)
    core = start(tmp_path, models["big"][0])
    assert core.streams.ids() == ["new"]
    ref = ls.Streams(models["big"][1])
    ref.step("new", x)
    same_state(core, ref, ["new"])
    stop(core)


@pytest.mark.parametrize("reset", [False, True], ids=["kept", "reset"])
def test_recovery_across_a_reload_with_evicted_streams(models, tmp_path, reset):
    """A stream evicted before the update thaws under the new weights (or, after a reset, starts anew), live and
    in the replay, which reads the cold versions the snapshot knew."""
    cold = {"idle_ttl": 3600.0}
    new = "big" if reset else "b"
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((2, I)).astype(np.float32), rng.standard_normal((3, I)).astype(np.float32)
    x3 = rng.standard_normal((2, models[new][1].input_size)).astype(np.float32)
    core = start(tmp_path, models["a"][0], cold)
    for i in ("x", "y"):
        call(core, "step", stream=i, x=x1)
    call(core, "step", stream="x", x=x2)
    core.streams.evict(["x"])  # as idle eviction does (not logged): x is in no snapshot, only cold
    call(core, "snapshot")
    assert call(core, "reload", path=models[new][0], reset=reset)["ok"]
    assert core.streams.cold.fingerprint == models[new][1].fingerprint
    call(core, "step", stream="x", x=x3)  # thaws (kept) or is new (reset)
    live = core.streams.get_state("x")
    core.journal.sync()
    stop(core)
    ref = ls.Streams(models["a"][1])
    if not reset:
        ref.step("x", x1)
        ref.step("x", x2)
    ref.replace_model(models[new][1], reset=reset)
    ref.step("x", x3)
    assert np.array_equal(live.h, ref.get_state("x").h) and live.steps == ref.get_state("x").steps
    core = start(tmp_path, models[new][0], cold)
    same_state(core, ref, ["x"])
    assert ("y" in core.streams.ids()) is not reset
    stop(core)


def test_reload_file_is_the_entry_point_for_a_signal(models):
    """What SIGHUP or a file watch calls on the loop between turns: the --model file again, or another."""
    (a_path, a), (b_path, b) = models["a"], models["b"]
    core = EngineCore(ls.Streams(a), EngineConfig(), model_path=a_path)
    core.streams.step("s", np.ones(I, np.float32))
    assert core.reload_file(b_path)["fingerprint"] == b.fingerprint
    out = core.reload_file()
    assert out["fingerprint"] == a.fingerprint and out["previous"] == b.fingerprint and out["streams"] == 1
    with pytest.raises(ModelError, match="no model file to reload"):
        EngineCore(ls.Streams(a), EngineConfig()).reload_file()


@pytest.mark.parametrize("step_log", ["on", "off"])
def test_the_weights_store_keeps_only_what_a_start_may_need(models, tmp_path, step_log):
    """A durable snapshot deletes the versions that neither it, nor a log record after it, nor the model served
    need; a kill after further updates still recovers bit for bit from what is left."""
    a, b = models["a"][1], models["b"][1]
    c = random_model(np.random.default_rng(32), I=I, H=H, L=2, O=O)
    c.save(tmp_path / "c.npz")
    models = {**models, "c": (str(tmp_path / "c.npz"), c)}
    store = WeightsStore(tmp_path / "state")
    rng = np.random.default_rng(6)
    xs = [{i: rng.standard_normal((2, I)).astype(np.float32) for i in ("p", 9)} for _ in range(4)]
    core = start(tmp_path, models["a"][0], step_log=step_log)
    for i, x in xs[0].items():
        call(core, "step", stream=i, x=x)
    call(core, "snapshot")
    assert store.fingerprints() == set()  # nothing was updated yet
    assert call(core, "reload", path=models["b"][0])["ok"]
    for i, x in xs[1].items():
        call(core, "step", stream=i, x=x)
    assert store.fingerprints() == {a.fingerprint, b.fingerprint}
    call(core, "snapshot")  # under b: nothing after it steps with a
    assert store.fingerprints() == {b.fingerprint}
    assert call(core, "reload", path=models["c"][0])["ok"]
    for i, x in xs[2].items():
        call(core, "step", stream=i, x=x)
    assert call(core, "reload", path=models["a"][0])["ok"]  # a again: stored again
    for i, x in xs[3].items():
        call(core, "step", stream=i, x=x)
    if step_log == "on":  # (without a log, each update is followed by a snapshot in the background, which prunes)
        assert store.fingerprints() == {a.fingerprint, b.fingerprint, c.fingerprint}
    ref = offline(models, [("a", xs[0]), ("switch", "b"), ("b", xs[1]), ("switch", "c"), ("c", xs[2]),
                           ("switch", "a"), ("a", xs[3])])
    if step_log == "on":  # killed: the snapshot under b, then the log's updates to c and a
        core.journal.sync()
        stop(core)
        core = start(tmp_path, models["a"][0], step_log=step_log)
        same_state(core, ref, ["p", 9])
        assert store.fingerprints() == {a.fingerprint, b.fingerprint, c.fingerprint}
    call(core, "snapshot")  # under a: only a is needed now
    assert store.fingerprints() == {a.fingerprint}
    stop(core)
    core = start(tmp_path, models["a"][0], step_log=step_log)
    same_state(core, ref, ["p", 9])
    stop(core)


def test_an_update_logged_but_not_applied_stops_the_log_and_a_start_applies_it(models, tmp_path, monkeypatch):
    """The RELOAD record is written, then the swap fails (here the cold store cannot be written): nothing more
    is applied or acknowledged (log_failed), and a start replays the update where the log has it."""
    import sqlite3
    cold = {"idle_ttl": 3600.0}
    rng = np.random.default_rng(8)
    x1, x2 = rng.standard_normal((2, I)).astype(np.float32), rng.standard_normal((1, I)).astype(np.float32)
    core = start(tmp_path, models["a"][0], cold)
    call(core, "step", stream="s", x=x1)

    def broken(fingerprint):
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(core.streams.cold, "rebind", broken)
    r = call(core, "reload", path=models["b"][0])
    assert not r["ok"] and r["error"]["code"] == P.LOG_FAILED and "could not be applied" in r["error"]["message"]
    assert core.journal.fatal is not None
    refused = call(core, "step", stream="s", x=x2)
    assert not refused["ok"] and refused["error"]["code"] == P.LOG_FAILED
    core.journal.sync()
    stop(core)
    monkeypatch.undo()
    core = start(tmp_path, models["b"][0], cold)
    assert core.streams.model.fingerprint == models["b"][1].fingerprint
    same_state(core, offline(models, [("a", {"s": x1}), ("switch", "b")]), ["s"])
    stop(core)
