"""LSTMModel.from_keras against Keras' own predict (KERAS_BACKEND=torch, no TensorFlow): a model stepped one
sample at a time through Streams equals Keras' whole-sequence output over 200 steps with random weights; and
what is refused, and why."""
import os
import warnings

import numpy as np
import pytest

import lstm_stream as ls

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; torch is the test extra's backend
pytest.importorskip("torch", reason="Keras' tests run on its torch backend (pip install '.[test]' torch==2.13.0)")
keras = pytest.importorskip("keras", reason="the Keras importer's tests need keras 3 (pip install '.[test]')")
from keras import layers  # noqa: E402

T = 200
ATOL = 2e-5


def randomise(model, seed, scale=0.4):
    """Every weight of the model redrawn from N(0, scale): biases non-zero, no initialiser's structure."""
    rng = np.random.default_rng(seed)
    for w in model.weights:  # not set_weights/get_weights: their numpy conversion warns under numpy 2
        w.assign(rng.normal(0, scale, tuple(w.shape)).astype(w.dtype))
    return model


def values(layer):
    return [numpy(w) for w in layer.weights]


class keras_numpy_warning(warnings.catch_warnings):
    """Silences the warning numpy 2 gives when Keras converts a torch tensor with np.array (Keras', not ours)."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword",
                                DeprecationWarning)


def numpy(x):
    with keras_numpy_warning():
        return np.array(keras.ops.convert_to_numpy(getattr(x, "value", x)))


def streamed(model, X):
    s = ls.Streams(model)
    return np.stack([np.stack([s.step(n, x) for x in xs]) for n, xs in enumerate(X)])


def check(model, keras_model, X, atol=ATOL):
    got = streamed(model, X)
    with keras_numpy_warning():
        want = keras_model.predict(X, verbose=0, batch_size=len(X))
    if isinstance(want, list):
        want = want[0]
    if want.ndim == 2:  # return_sequences=False: the last step
        got = got[:, -1]
    err = float(np.max(np.abs(got - want)))
    assert err < atol, f"largest difference {err:.3g} >= {atol}"


def sequential_two_layers_softmax():
    return keras.Sequential([keras.Input((None, 4)), layers.LSTM(16, return_sequences=True), layers.Dropout(0.3),
                             layers.LSTM(16), layers.Dense(3, activation="softmax")])


def functional_per_step_sigmoid():
    x = keras.Input((None, 5))
    y = layers.LSTM(12, return_sequences=True, use_bias=False, unit_forget_bias=False)(x)
    return keras.Model(x, layers.Dense(2, activation="sigmoid")(y))


def linear_then_activation():
    x = keras.Input((None, 3))
    y = layers.LSTM(8, return_sequences=True, unit_forget_bias=True, dropout=0.2, recurrent_dropout=0.2)(x)
    y = layers.TimeDistributed(layers.Dense(4))(y)
    return keras.Model(x, layers.Activation("softmax")(y))


def no_head():
    return keras.Sequential([keras.Input((None, 2)), layers.LSTM(6, return_sequences=True), layers.LSTM(6)])


def nested():
    inner = keras.Sequential([keras.Input((None, 3)), layers.LSTM(7, return_sequences=True)])
    x = keras.Input((None, 3))
    return keras.Model(x, layers.Dense(1)(inner(x)))


def return_state_outputs():
    """Several outputs (the head's, then h and c): the first is the one imported."""
    x = keras.Input((None, 3))
    y, h, c = layers.LSTM(6, return_sequences=True, return_state=True)(x)
    return keras.Model(x, [layers.Dense(2, activation="softmax")(y), h, c])


BUILDERS = {f.__name__: f for f in (sequential_two_layers_softmax, functional_per_step_sigmoid,
                                    linear_then_activation, no_head, nested, return_state_outputs)}


@pytest.mark.parametrize("name", BUILDERS)
def test_matches_keras(name):
    keras_model = randomise(BUILDERS[name](), seed=len(name))
    model = ls.LSTMModel.from_keras(keras_model)
    I = keras_model.inputs[0].shape[-1]
    X = np.random.default_rng(1).normal(0, 1, (2, T, I)).astype(np.float32)
    check(model, keras_model, X)


def test_activation_and_head_read():
    model = ls.LSTMModel.from_keras(randomise(sequential_two_layers_softmax(), 0))
    assert (model.num_layers, model.hidden_size, model.output_size, model.head_activation) == (2, 16, 3, "softmax")
    assert ls.LSTMModel.from_keras(randomise(no_head(), 0)).head_w is None


def test_keras_file(tmp_path):
    keras_model = randomise(sequential_two_layers_softmax(), 5)
    path = tmp_path / "m.keras"
    with keras_numpy_warning():
        keras_model.save(path)
    model = ls.LSTMModel.from_keras(path)
    assert model.fingerprint == ls.LSTMModel.from_keras(keras_model).fingerprint
    check(model, keras_model, np.random.default_rng(2).normal(0, 1, (2, T, 4)).astype(np.float32))


def test_float64():
    """A float64 model imports as float64 and steps as the float64 reference does (to rounding); Keras' torch
    backend itself computes part of its LSTM in float32 (1e-7 from that reference), hence 1e-6 against it."""
    from lstm_stream.convert.verify import forward
    x = keras.Input((None, 3), dtype="float64")
    y = layers.LSTM(9, return_sequences=True, dtype="float64")(x)
    keras_model = randomise(keras.Model(x, layers.Dense(2, dtype="float64")(y)), 3)
    model = ls.LSTMModel.from_keras(keras_model)
    assert model.dtype == "float64"
    X = np.random.default_rng(3).normal(0, 1, (2, T, 3))
    check(model, keras_model, X, atol=1e-6)
    assert np.max(np.abs(streamed(model, X) - forward(model, X))) < 1e-12


def test_gate_order_and_bias_mapping():
    """Keras' kernel (I, 4H) in (i, f, c, o) is our weight_ih (4H, I) in (i, f, g, o): transposed, in order;
    its one bias is bias_ih, bias_hh is zero."""
    keras_model = randomise(keras.Sequential([keras.Input((None, 3)), layers.LSTM(4)]), 9)
    kernel, recurrent, bias = values(keras_model.layers[0])
    model = ls.LSTMModel.from_keras(keras_model)
    np.testing.assert_array_equal(model.layers[0].w_ih, kernel.T)
    np.testing.assert_array_equal(model.layers[0].w_hh, recurrent.T)
    np.testing.assert_array_equal(model.layers[0].b_ih, bias)
    assert not model.layers[0].b_hh.any()


def test_stateful_imports_its_weights():
    """stateful=True only carries state between Keras calls, which is what a stream does anyway: the weights
    import as they are (the carried state does not; a new stream starts at zero)."""
    keras_model = randomise(keras.Sequential([keras.Input(batch_shape=(2, None, 3)),
                                              layers.LSTM(4, stateful=True)]), 4)
    kernel = values(keras_model.layers[0])[0]
    np.testing.assert_array_equal(ls.LSTMModel.from_keras(keras_model).layers[0].w_ih, kernel.T)


REFUSED = {
    "GRU": (lambda: [layers.GRU(4)], "layer 'gru' (GRU): a GRU is not an LSTM"),
    "Bidirectional": (lambda: [layers.Bidirectional(layers.LSTM(4))], "(Bidirectional): a bidirectional layer"),
    "relu": (lambda: [layers.LSTM(4, activation="relu")], "activation='relu'"),
    "hard_sigmoid": (lambda: [layers.LSTM(4, recurrent_activation="hard_sigmoid")],
                     "recurrent_activation='hard_sigmoid'"),
    "go_backwards": (lambda: [layers.LSTM(4, go_backwards=True)], "go_backwards=True"),
    "relu head": (lambda: [layers.LSTM(4), layers.Dense(2, activation="relu")], "activation 'relu'"),
    "two Dense": (lambda: [layers.LSTM(4), layers.Dense(3), layers.Dense(2)],
                  "(Dense) is not supported after the head"),
    "Conv1D first": (lambda: [layers.Conv1D(4, 2), layers.LSTM(4)], "(Conv1D) is not supported before any LSTM"),
    "units": (lambda: [layers.LSTM(4, return_sequences=True), layers.LSTM(5)], "units [4, 5]"),
    "no LSTM": (lambda: [layers.Dense(4)], "is not supported before any LSTM"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_with_the_layer_named(name):
    build, words = REFUSED[name]
    keras_model = keras.Sequential([keras.Input((None, 3)), *build()])
    with pytest.raises(ls.ModelError, match="expected") as e:
        ls.LSTMModel.from_keras(keras_model)
    assert words in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(ls.ModelError, match="does not exist"):
        ls.LSTMModel.from_keras(tmp_path / "missing.keras")
    with pytest.raises(ls.ModelError, match="is not a .keras file"):
        ls.LSTMModel.from_keras(tmp_path / "model.h5")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ls.ModelError, match="cannot load .* as a Keras model"):
        ls.LSTMModel.from_keras(bad)
    with pytest.raises(ls.ModelError, match="takes a keras.Model or a .keras path, got dict"):
        ls.LSTMModel.from_keras({})
