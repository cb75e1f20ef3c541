"""The embedded default model and its held-out replay set (BasicMotions activity recognition).

The model predicts, at every sample of a smartwatch stream (3-axis accelerometer + gyroscope, 10 Hz), which of
four activities the wearer is doing. Accuracy is measured two ways over the held-out recordings:
    per-step: the argmax output at every sample of every recording vs the recording's label (N*T samples)
    final:    the argmax output at the last sample of each recording vs its label (N recordings)
Both are stored as exact counts (correct/total), so "streaming equals offline" is checked with `==`.
Source, licence and how to retrain: lstm_stream/data/README.md and scripts/train_default_model.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ModelError

MODEL_FILE = "default_model.npz"
REPLAY_FILE = "default_replay.npz"


@dataclass(frozen=True)
class Accuracy:
    """Exact accuracy counts: per-step (every sample) and final (last sample of each recording)."""

    per_step_correct: int
    per_step_total: int
    final_correct: int
    final_total: int

    @property
    def per_step(self) -> float:
        """Fraction of all samples whose prediction equals the recording's label."""
        return self.per_step_correct / self.per_step_total

    @property
    def final(self) -> float:
        """Fraction of recordings whose last-sample prediction equals the label."""
        return self.final_correct / self.final_total

    def as_dict(self) -> dict:
        """The four counts as a JSON-safe dict."""
        return {"per_step_correct": self.per_step_correct, "per_step_total": self.per_step_total,
                "final_correct": self.final_correct, "final_total": self.final_total}

    def __str__(self):
        return (f"per-step {self.per_step:.2%} ({self.per_step_correct}/{self.per_step_total} samples), "
                f"final {self.final:.2%} ({self.final_correct}/{self.final_total} recordings)")


@dataclass(frozen=True)
class Replay:
    """Held-out recordings to replay as live streams: X (N, T, C) float32 raw sensor values, labels (N,)."""

    X: np.ndarray
    labels: np.ndarray
    index: np.ndarray  # (N,) each recording's case number in the source split (the replay order mixes classes)
    class_names: tuple
    channel_names: tuple
    sample_rate_hz: float
    source: str
    licence: str
    model_fingerprint: str
    expected: Accuracy | None  # documented offline accuracy of the default model on these recordings

    def subset(self, n: int) -> "Replay":
        """The first n recordings; `expected` (documented for the whole set) is None unless n is all of them."""
        if not 1 <= n <= len(self.X):
            raise ValueError(f"subset size must be in 1..{len(self.X)}, got {n}")
        expected = self.expected if n == len(self.X) else None
        return Replay(self.X[:n], self.labels[:n], self.index[:n], self.class_names, self.channel_names,
                      self.sample_rate_hz, self.source, self.licence, self.model_fingerprint, expected)


def _data_path(name: str) -> Path:
    path = Path(str(resources.files("lstm_stream").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the package was installed without its data files; "
                                "reinstall lstm-stream, or rerun scripts/train_default_model.py from a checkout")
    return path


def default_model_path() -> Path:
    """Path of the shipped default model (.npz), as `lstm-stream serve` loads it without --model."""
    return _data_path(MODEL_FILE)


def load_default_model():
    """The shipped default LSTMModel (BasicMotions activity recognition, 6 inputs -> 4 class probabilities)."""
    from .model import load_model
    return load_model(default_model_path())


def load_replay(path=None) -> Replay:
    """The shipped held-out replay set (or one written by save_replay at path)."""
    path = default_model_path().with_name(REPLAY_FILE) if path is None else Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            X, labels, index = z["X"], z["labels"], z["index"]
            meta = json.loads(z["meta"].tobytes().decode())
    except (KeyError, ValueError, OSError) as e:
        raise ModelError(f"{path}: not a readable replay file with X, labels, index and meta ({e})") from e
    return Replay(X, labels, index, tuple(meta["class_names"]), tuple(meta["channel_names"]),
                  float(meta["sample_rate_hz"]), meta["source"], meta["licence"], meta["model_fingerprint"],
                  Accuracy(**meta["accuracy"]))


def save_replay(path, X, labels, meta: dict, index=None) -> None:
    """Write a replay file: X (N, T, C) float32, labels (N,), source case numbers index (N,), meta (JSON)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    index = np.arange(len(X)) if index is None else np.ascontiguousarray(index, dtype=np.int64)
    if X.ndim != 3 or labels.shape != (X.shape[0],) or index.shape != labels.shape:
        raise ValueError(f"expected X (N, T, C), labels (N,) and index (N,), got {X.shape}, {labels.shape} "
                         f"and {index.shape}")
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, X=X, labels=labels, index=index, meta=blob)


def accuracy(predictions, labels) -> Accuracy:
    """Exact counts from predicted classes (N, T) against one label per recording (N,)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 2 or labels.shape != (predictions.shape[0],):
        raise ValueError(f"expected predictions (N, T) and labels (N,), got {predictions.shape} and {labels.shape}")
    hits = predictions == labels[:, None]
    return Accuracy(int(hits.sum()), int(hits.size), int(hits[:, -1].sum()), int(len(labels)))


def offline_outputs(model, X, *, backend="cpu") -> np.ndarray:
    """Outputs (N, T, O) of model over each recording X[n] (T, C), each as its own stream from a zero state."""
    from .streams import Streams
    X = np.asarray(X)
    streams = Streams(model, backend=backend)
    return np.stack([streams.step(f"recording-{n}", X[n]) for n in range(len(X))])


def evaluate_offline(model=None, replay: Replay | None = None) -> Accuracy:
    """Accuracy of model (default: the shipped one) on replay (default: the shipped held-out set)."""
    model = load_default_model() if model is None else model
    replay = load_replay() if replay is None else replay
    return accuracy(offline_outputs(model, replay.X).argmax(axis=-1), replay.labels)
