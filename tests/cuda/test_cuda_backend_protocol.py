"""The CUDA backend implements the Backend protocol in full (as the CPU one: tests/core/test_backends.py)."""
import numpy as np
from backend_contract import signature_problems
from models import random_model

from lstm_stream.backends import Backend, make_backend
from lstm_stream.backends.cuda import CUDABackend


def test_cuda_backend_implements_the_protocol():
    assert signature_problems(CUDABackend) == []
    model = random_model(np.random.default_rng(0), I=3, H=5, L=1, O=3)
    backend = make_backend("cuda", model, 4)
    assert isinstance(backend, Backend)
    backend.warm_up()  # compiles every kernel on a GPU; nothing under the simulator
