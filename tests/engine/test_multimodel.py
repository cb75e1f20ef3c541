"""Several models in one daemon (engine/multimodel.py): `serve --model NAME=PATH` repeated and `--model-dir`;
a request names its model; streams are keyed by (model, id); info lists the models; each model's state lives
in its own directory and survives a restart. Real daemons on ipc://, stopped at teardown."""
import os
import signal

import numpy as np
import pytest

from clients import Client
from clients.errors import ServerError, UnknownModel

from models import random_model


@pytest.fixture
def two_models(tmp_path, seed):
    """(dir, {"pump": model 3 -> 2, "fan": model 5 -> 4}) saved as dir/NAME.npz: different sizes on purpose."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "models"
    d.mkdir()
    models = {"pump": random_model(rng, I=3, H=7, L=1, O=2, head_activation="softmax"),
              "fan": random_model(rng, I=5, H=9, L=2, O=4, head_activation="none")}
    for name, m in models.items():
        m.save(d / f"{name}.npz")
    return d, models


@pytest.fixture
def seed():
    return int(os.environ.get("LSTM_TEST_SEED", np.random.SeedSequence().entropy % 2**31))


def offline(model, xs):
    import lstm_stream as ls
    return ls.Streams(model).step(0, xs)


def test_requests_name_their_model_and_streams_are_apart(daemon, two_models, seed):
    d, models = two_models
    dm = daemon("--model", f"pump={d / 'pump.npz'}", "--model", f"fan={d / 'fan.npz'}", "--default-model", "pump")
    rng = np.random.default_rng(seed)
    xp = rng.normal(0, 1, (6, 3)).astype(np.float32)
    xf = rng.normal(0, 1, (6, 5)).astype(np.float32)
    with Client(dm.endpoint, model="pump") as pump, Client(dm.endpoint, model="fan") as fan, \
            Client(dm.endpoint) as default:
        yp = np.stack([pump.step("s", x) for x in xp])          # the same id in both models: two streams
        yf = np.stack([fan.step("s", x) for x in xf])
        assert np.array_equal(yp, offline(models["pump"], xp)), f"seed={seed}"
        assert np.array_equal(yf, offline(models["fan"], xf)), f"seed={seed}"
        assert default.get_state("s").steps == 6                 # the default model is pump
        with pytest.raises(ServerError) as e:                    # fan's input size sent to pump
            pump.step("s", xf[0])
        assert e.value.code == "bad_input"
        info = default.info()
        assert info["name"] == "pump"
        assert set(info["models"]) == {"pump", "fan"} and info["models"]["pump"]["default"]
        assert info["models"]["fan"]["input_size"] == 5 and info["models"]["fan"]["streams"] == 1
        assert fan.info()["name"] == "fan" and fan.info()["model"]["input_size"] == 5
        with Client(dm.endpoint, model="nope") as nope:
            with pytest.raises(ServerError) as e:
                nope.step("s", xp[0])
        assert e.value.code == "unknown_model" and "pump" in str(e.value) and "fan" in str(e.value)
        assert isinstance(e.value, UnknownModel) and sorted(e.value.models) == ["fan", "pump"]


def test_without_a_default_a_request_must_name_its_model(daemon, two_models):
    d, _ = two_models
    dm = daemon("--model-dir", str(d))
    with Client(dm.endpoint) as c:
        with pytest.raises(ServerError) as e:
            c.step("s", np.ones(3, np.float32))
        assert e.value.code == "unknown_model" and "fan" in str(e.value)
        c.ping()  # ping needs no model
    with Client(dm.endpoint, model="fan") as c:
        assert c.step("s", np.ones(5, np.float32)).shape == (4,)


def test_one_unnamed_model_refuses_another_name(daemon, served_models):
    path, _ = served_models["cls"]
    dm = daemon("--model", str(path))
    with Client(dm.endpoint, model="cls") as c:  # an unnamed model answers to its file's stem
        assert c.step("s", np.ones(4, np.float32)).shape == (3,)
        assert c.info()["name"] == "cls"
    with Client(dm.endpoint, model="other") as c:
        with pytest.raises(ServerError) as e:
            c.step("s", np.ones(4, np.float32))
        assert e.value.code == "unknown_model"


def test_each_model_keeps_its_state_across_a_restart(daemon, two_models, tmp_path, seed):
    d, models = two_models
    state = tmp_path / "state"
    args = ("--model", f"pump={d / 'pump.npz'}", "--model", f"fan={d / 'fan.npz'}", "--snapshot-dir", str(state))
    rng = np.random.default_rng(seed)
    xp = rng.normal(0, 1, (8, 3)).astype(np.float32)
    xf = rng.normal(0, 1, (8, 5)).astype(np.float32)
    dm = daemon(*args)
    with Client(dm.endpoint, model="pump") as pump, Client(dm.endpoint, model="fan") as fan:
        for k in range(4):
            pump.step("a", xp[k])
            fan.step("a", xf[k])
    dm.stop(signal.SIGKILL)  # nothing but the step log holds these steps
    assert (state / "models" / "pump").is_dir() and (state / "models" / "fan").is_dir()
    dm = daemon(*args)
    with Client(dm.endpoint, model="pump") as pump, Client(dm.endpoint, model="fan") as fan:
        yp = np.stack([pump.step("a", x) for x in xp[4:]])
        yf = np.stack([fan.step("a", x) for x in xf[4:]])
        assert pump.get_state("a").steps == 8 and fan.get_state("a").steps == 8
    assert np.array_equal(yp, offline(models["pump"], xp)[4:]), f"seed={seed}"
    assert np.array_equal(yf, offline(models["fan"], xf)[4:]), f"seed={seed}"


def test_a_snapshot_request_writes_its_own_models_file(daemon, two_models, tmp_path):
    """`snapshot` requests to two models at once, each written in the background by its model's core and
    answered once durable: each file holds that model's streams only."""
    from lstm_stream.snapshot import read_snapshot
    d, models = two_models
    state = tmp_path / "state"
    dm = daemon("--model", f"pump={d / 'pump.npz'}", "--model", f"fan={d / 'fan.npz'}", "--snapshot-dir", str(state))
    with Client(dm.endpoint, model="pump") as pump, Client(dm.endpoint, model="fan") as fan:
        pump.step("p", np.ones(3, np.float32))
        fan.step_many({"f1": np.ones(5, np.float32), "f2": np.ones(5, np.float32)})
        with pump.pipeline() as both_pump, fan.pipeline() as both_fan:
            both_pump.snapshot()
            both_fan.snapshot()
        (p,), (f,) = both_pump.results, both_fan.results
    assert (p["streams"], f["streams"]) == (1, 2) and p["reason"] == f["reason"] == "request"
    assert read_snapshot(p["path"], fingerprint=models["pump"].fingerprint)["ids"] == ["p"]
    assert sorted(read_snapshot(f["path"], fingerprint=models["fan"].fingerprint)["ids"]) == ["f1", "f2"]
    assert dm.stop() == 0


def test_bad_model_options_refuse_to_start(daemon, two_models, served_models):
    d, _ = two_models
    path, _ = served_models["cls"]
    for args, words in ((("--model", str(path), "--model", f"fan={d / 'fan.npz'}"), "needs a name"),
                        (("--model", f"a={path}", "--model", f"a={d / 'fan.npz'}"), "given twice"),
                        (("--model", f"a={path}", "--default-model", "b"), "not a model served here")):
        dm = daemon(*args, wait=False)
        assert dm.wait_exit() == 2
        assert words in dm.log(), dm.log()


def test_metrics_label_each_models_series(daemon, two_models, tmp_path):
    """The real endpoint of a two-model daemon: each model's families once, every sample labelled `model`."""
    pytest.importorskip("prometheus_client")
    from test_metrics import free_port, scrape
    d, models = two_models
    port = free_port()
    dm = daemon("--model", f"pump={d / 'pump.npz'}", "--model", f"fan={d / 'fan.npz'}", "--metrics-port", port,
                "--snapshot-dir", tmp_path / "state")
    with Client(dm.endpoint, model="pump") as pump, Client(dm.endpoint, model="fan") as fan:
        for k in range(3):
            pump.step(f"p{k}", np.ones(3, np.float32))
        fan.step("f", np.ones(5, np.float32))
        with Client(dm.endpoint, model="nope") as nope, pytest.raises(UnknownModel):
            nope.ping()
    got = scrape(port)
    assert got["lstm_stream_samples_total", (("model", "pump"),)] == 3
    assert got["lstm_stream_samples_total", (("model", "fan"),)] == 1
    assert got["lstm_stream_streams", (("model", "pump"),)] == 3
    assert got["lstm_stream_streams", (("model", "fan"),)] == 1
    build = {dict(labels)["model"]: dict(labels)["model_fingerprint"] for (name, labels) in got
             if name == "lstm_stream_build_info"}
    assert build == {name: m.fingerprint for name, m in models.items()}
    assert ("lstm_stream_turn_seconds_count", ()) in got  # the loop's histograms: the daemon's, unlabelled
    assert any(name == "lstm_stream_replies_total" and dict(labels).get("code") == "unknown_model"
               for name, labels in got)


def test_in_process_several_models(two_models, seed):
    """LocalClient.serving_models: the same notion without a daemon; for_model() names another model."""
    from clients import LocalClient
    _, models = two_models
    rng = np.random.default_rng(seed)
    xp = rng.normal(0, 1, (5, 3)).astype(np.float32)
    xf = rng.normal(0, 1, (5, 5)).astype(np.float32)
    pump = LocalClient.serving_models(models, default="pump")
    fan = pump.for_model("fan")
    assert np.array_equal(np.stack([pump.step("s", x) for x in xp]), offline(models["pump"], xp)), f"seed={seed}"
    assert np.array_equal(np.stack([fan.step("s", x) for x in xf]), offline(models["fan"], xf)), f"seed={seed}"
    with pump.pipeline() as p:  # one turn holding both models' requests: each served by its own
        p.step("t", xp[0])
        p.get_state("s")
    assert p.results[1].steps == 5
    assert set(pump.info()["models"]) == {"pump", "fan"}
    with pytest.raises(UnknownModel):
        pump.for_model("nope").step("s", xp[0])
    with pytest.raises(ValueError, match="not one of the models"):
        LocalClient.serving_models(models, default="nope")


def _continued(model_a, model_b, xs_a, xs_b):
    """Outputs of xs_b for a stream stepped through xs_a under model_a, then continued under model_b."""
    import lstm_stream as ls
    a = ls.Streams(model_a)
    a.step(0, xs_a)
    b = ls.Streams(model_b)
    b.set_state(0, a.get_state(0))
    return b.step(0, xs_b)


def _wait_for(fingerprint, client, name, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.info()["models"][name]["fingerprint"] == fingerprint:
            return
        time.sleep(0.1)
    raise AssertionError(f"model {name} did not reach weights {fingerprint} within {timeout} s")


def test_a_changed_file_in_the_model_dir_is_reloaded_keeping_state(daemon, two_models, tmp_path, seed):
    d, models = two_models
    rng = np.random.default_rng(seed + 1)
    new_fan = random_model(rng, I=5, H=9, L=2, O=4, head_activation="none")
    xs = rng.normal(0, 1, (6, 5)).astype(np.float32)
    dm = daemon("--model-dir", str(d), "--default-model", "fan", "--snapshot-dir", tmp_path / "state")
    with Client(dm.endpoint, model="fan") as fan:
        for x in xs[:3]:
            fan.step("a", x)
        new_fan.save(tmp_path / "fan.npz")
        os.replace(tmp_path / "fan.npz", d / "fan.npz")  # written elsewhere, renamed over the old file
        _wait_for(new_fan.fingerprint, fan, "fan")
        y = np.stack([fan.step("a", x) for x in xs[3:]])
        assert fan.get_state("a").steps == 6
        assert np.array_equal(y, _continued(models["fan"], new_fan, xs[:3], xs[3:])), f"seed={seed}"
        # a file of other sizes: refused and logged, the model keeps its weights
        random_model(rng, I=5, H=4, L=1, O=4).save(tmp_path / "bad.npz")
        os.replace(tmp_path / "bad.npz", d / "fan.npz")
        import time
        deadline = time.monotonic() + 30
        while "weights update from" not in dm.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "model fan: weights update from" in dm.log() and "refused" in dm.log()
        assert fan.info()["models"]["fan"]["fingerprint"] == new_fan.fingerprint
        assert fan.step("a", xs[0]).shape == (4,)
    dm.stop(signal.SIGKILL)  # recovery replays across the reload: the stream continues bit for bit
    new_fan.save(d / "fan.npz")
    dm = daemon("--model-dir", str(d), "--snapshot-dir", tmp_path / "state")
    with Client(dm.endpoint, model="fan") as fan:
        assert fan.get_state("a").steps == 7


def test_sighup_reloads_every_models_file(daemon, two_models, seed):
    d, models = two_models
    rng = np.random.default_rng(seed + 2)
    new_pump = random_model(rng, I=3, H=7, L=1, O=2, head_activation="softmax")
    xs = rng.normal(0, 1, (5, 3)).astype(np.float32)
    dm = daemon("--model", f"pump={d / 'pump.npz'}", "--model", f"fan={d / 'fan.npz'}")
    with Client(dm.endpoint, model="pump") as pump:
        for x in xs[:2]:
            pump.step("a", x)
        new_pump.save(d / "pump.npz")  # --model files are not watched: SIGHUP applies them
        dm.proc.send_signal(signal.SIGHUP)
        _wait_for(new_pump.fingerprint, pump, "pump")
        y = np.stack([pump.step("a", x) for x in xs[2:]])
        assert np.array_equal(y, _continued(models["pump"], new_pump, xs[:2], xs[2:])), f"seed={seed}"
        assert pump.info()["models"]["fan"]["fingerprint"] == models["fan"].fingerprint  # unchanged file
    assert "re-reading the model files" in dm.log() and "model fan:" in dm.log()
