"""The CPU backend implements the Backend protocol in full, and Streams uses its backend through it alone."""
import numpy as np
from backend_contract import METHODS, ProtocolOnly, signature_problems
from models import random_model

import lstm_stream as ls
from lstm_stream.backends import Backend, CPUBackend, make_backend


def test_cpu_backend_implements_the_protocol():
    assert METHODS == ["copy_slot", "forecast", "gather", "grow", "host_arrays", "read", "replace_model", "run",
                       "run_one", "scatter", "warm_up", "write", "zero"]
    assert signature_problems(CPUBackend) == []
    model = random_model(np.random.default_rng(0), I=3, H=5, L=1, O=3)
    assert isinstance(make_backend("cpu", model, 4), Backend)


def test_streams_uses_its_backend_through_the_protocol(tmp_path):
    """Every Streams operation that reaches the backend, on a backend that exposes the protocol alone, gives
    what it gives on the backend itself."""
    rng = np.random.default_rng(1)
    model = random_model(rng, I=3, H=5, L=2, O=3, head_activation="none")  # O == I: forecast works
    other = random_model(rng, I=3, H=5, L=2, O=3, head_activation="none", peepholes=True)
    x, x5 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    plain, seen = ls.Streams(model, initial_capacity=2), ls.Streams(model, initial_capacity=2)
    seen._backend = proxy = ProtocolOnly(seen._backend)
    outs = []
    for k, s in enumerate((plain, seen)):
        s.warm_up()
        out = [s.step("a", x), s.step_many(["a", "b", "c"], x[:3])]      # one stream; many (the slabs grow)
        out += s.step_batch(["b", "d"], [x[:2], x[:1]])
        s.copy("a", "e")
        s.reset("b")
        s.set_state("c", s.get_state("a"))
        out += [s.forecast("e", 3), s.get_state("c").h]
        s.save_snapshot(tmp_path / f"{k}.snap")
        out += [a.copy() for a in s.hot_arrays()[:2]]                     # the slabs h and c, as a fork sees them
        s.drop("d")
        s.restore_snapshot(tmp_path / f"{k}.snap")
        out.append(s.step_many(["a", "b", "c", "d", "e"], x5))
        s.replace_model(other)                                            # new weights, same slabs
        out.append(s.step_many(["a", "b"], x[:2]))
        outs.append(out)
    assert set(METHODS) <= proxy.used, set(METHODS) - proxy.used
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
