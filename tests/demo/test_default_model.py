"""The shipped default model and replay set: they load, and reproduce the documented held-out accuracy exactly."""
import json

import numpy as np
import pytest
from reference import reference_run

import lstm_stream as ls
from lstm_stream import defaults

DOCUMENTED = defaults.Accuracy(per_step_correct=3617, per_step_total=4000, final_correct=40, final_total=40)


@pytest.fixture(scope="module")
def model():
    return defaults.load_default_model()


@pytest.fixture(scope="module")
def replay():
    return defaults.load_replay()


@pytest.fixture(scope="module")
def outputs(model, replay):
    return defaults.offline_outputs(model, replay.X)


def test_default_model_is_the_documented_small_model(model, replay):
    assert isinstance(model, ls.LSTMModel)
    assert model.name == "basicmotions-activity"
    assert (model.input_size, model.hidden_size, model.num_layers, model.output_size) == (6, 32, 1, 4)
    assert model.head_activation == "softmax" and model.dtype == "float32"
    assert model.fingerprint == replay.model_fingerprint
    assert defaults.default_model_path().stat().st_size < 64_000


def test_replay_set_is_the_heldout_split(replay):
    assert replay.X.shape == (40, 100, 6) and replay.X.dtype == np.float32
    assert replay.labels.dtype == np.int64
    assert np.bincount(replay.labels, minlength=4).tolist() == [10, 10, 10, 10]
    assert replay.class_names == ("standing", "walking", "running", "badminton")
    assert len(replay.channel_names) == 6 and replay.sample_rate_hz == 10.0
    assert "BasicMotions" in replay.source and "BSD-3-Clause" in replay.licence
    assert np.all(np.isfinite(replay.X))
    assert sorted(replay.labels[:4].tolist()) == [0, 1, 2, 3]  # the first recordings mix the activities


def test_replay_set_equals_aeons_test_split(replay):
    aeon_datasets = pytest.importorskip("aeon.datasets")
    X, labels = aeon_datasets.load_basic_motions(split="test")
    assert sorted(replay.index.tolist()) == list(range(40))
    np.testing.assert_array_equal(replay.X, X[replay.index].transpose(0, 2, 1).astype(np.float32))
    assert [replay.class_names[k] for k in replay.labels] == [str(s) for s in labels[replay.index]]


def test_offline_accuracy_equals_documented_figures(replay):
    assert replay.expected == DOCUMENTED
    assert defaults.evaluate_offline() == DOCUMENTED


def test_outputs_are_probabilities(outputs):
    assert outputs.shape == (40, 100, 4)
    np.testing.assert_allclose(outputs.sum(axis=-1), 1.0, atol=1e-5)


def test_streaming_one_sample_at_a_time_gives_the_same_outputs(model, replay, outputs):
    streams = ls.Streams(model)
    ids = [f"r{n}" for n in range(8)]
    for t in range(replay.X.shape[1]):
        y = streams.step_many(ids, replay.X[:8, t])
        np.testing.assert_array_equal(y, outputs[:8, t])


def test_matches_float64_reference(model, replay, outputs):
    for n in (0, 13, 39):
        ys, _, _ = reference_run(model, replay.X[n])
        np.testing.assert_allclose(outputs[n], ys, atol=1e-5)


def test_matches_pytorch_on_replay_data(model, replay, outputs):
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(model.input_size, model.hidden_size, batch_first=True)
    head = torch.nn.Linear(model.hidden_size, model.output_size)
    layer = model.layers[0]
    with torch.no_grad():
        for param, value in ((lstm.weight_ih_l0, layer.w_ih), (lstm.weight_hh_l0, layer.w_hh),
                             (lstm.bias_ih_l0, layer.b_ih), (lstm.bias_hh_l0, layer.b_hh),
                             (head.weight, model.head_w), (head.bias, model.head_b)):
            param.copy_(torch.from_numpy(value))
        probs = torch.softmax(head(lstm(torch.from_numpy(replay.X))[0]), dim=-1).numpy()
    np.testing.assert_allclose(outputs, probs, atol=1e-5)
    assert defaults.accuracy(probs.argmax(axis=-1), replay.labels) == DOCUMENTED


def test_accuracy_counts():
    predictions = np.array([[0, 1, 1], [2, 0, 0]])
    acc = defaults.accuracy(predictions, np.array([1, 2]))
    assert acc == defaults.Accuracy(3, 6, 1, 2)
    assert acc.per_step == 0.5 and acc.final == 0.5
    assert "3/6 samples" in str(acc) and "1/2 recordings" in str(acc)
    with pytest.raises(ValueError, match=r"predictions \(N, T\)"):
        defaults.accuracy(np.zeros(3), np.zeros(3))


def test_replay_round_trip_and_subset(tmp_path, replay):
    meta = {"class_names": ["a", "b"], "channel_names": ["x"], "sample_rate_hz": 5.0, "source": "s",
            "licence": "l", "model_fingerprint": "f", "accuracy": DOCUMENTED.as_dict()}
    path = tmp_path / "r.npz"
    defaults.save_replay(path, np.ones((3, 4, 1)), np.array([0, 1, 1]), meta)
    r = defaults.load_replay(path)
    assert r.X.dtype == np.float32 and r.X.shape == (3, 4, 1) and r.class_names == ("a", "b")
    assert r.index.tolist() == [0, 1, 2]
    assert r.subset(2).X.shape == (2, 4, 1) and r.subset(2).index.tolist() == [0, 1]
    assert replay.subset(40).expected == DOCUMENTED and replay.subset(39).expected is None
    with pytest.raises(ValueError, match="subset size"):
        replay.subset(41)


def test_unreadable_replay_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((1, 1, 1)), meta=np.frombuffer(json.dumps({}).encode(), np.uint8))
    with pytest.raises(ls.ModelError, match="not a readable replay file"):
        defaults.load_replay(path)
