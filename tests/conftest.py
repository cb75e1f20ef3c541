"""Shared test configuration: one hypothesis profile (no deadline; derandomized in CI)."""
import os

from hypothesis import settings

settings.register_profile("lstm", deadline=None, derandomize=bool(os.environ.get("CI")), max_examples=60)
settings.load_profile("lstm")


# ---- daemon and client tests (tests/engine, tests/clients): real daemons on loopback, always stopped ----
import pytest  # noqa: E402


@pytest.fixture
def daemon(tmp_path):
    """Start real daemons: daemon("--model", path, ...) -> daemons.Daemon on a fresh ipc:// endpoint (or pass
    endpoint=daemon.endpoint("tcp")); every one is stopped (SIGTERM, then SIGKILL) at teardown."""
    from daemons import DaemonFactory
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def served_models(tmp_path_factory):
    """Saved models for daemon tests: {'ar': (path, model) autoregressive 4 -> 4, 'cls': (path, model) 4 -> 3}."""
    import numpy as np
    from models import random_model
    d = tmp_path_factory.mktemp("served_models")
    out = {}
    for name, seed, O, act in (("ar", 11, 4, "none"), ("cls", 12, 3, "softmax")):
        model = random_model(np.random.default_rng(seed), I=4, H=16, L=2, O=O, head_activation=act)
        model.save(d / f"{name}.npz")
        out[name] = (d / f"{name}.npz", model)
    return out
