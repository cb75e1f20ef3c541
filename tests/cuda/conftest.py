"""CUDA backend tests: on a real GPU, or without one under numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported (NUMBA_ENABLE_CUDASIM=1), and in a
shared pytest process other tests may import it first, so CI runs these as their own process:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda

In a run where numba-cuda is missing, or there is neither a GPU nor the simulator, they skip with that hint.
Sizes are small under the simulator (it interprets every thread in Python) and larger on a real device.
"""
import os
import secrets

import pytest


def _usable():
    try:
        from numba import cuda
    except ImportError:
        return False, "numba-cuda is not installed (pip install '.[cuda]')"
    if cuda.is_available():
        return True, ""
    return False, "no usable GPU and the CUDA simulator is off: run NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda"


USABLE, WHY = _usable()


def pytest_collection_modifyitems(config, items):
    if USABLE:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=WHY))


@pytest.fixture
def seed():
    """A fresh seed per test (set LSTM_TEST_SEED to replay one); it is in every failure message."""
    return int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))
