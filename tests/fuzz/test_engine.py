"""The engine in-process (EngineCore behind WireCore) fuzzed in mixed turns and one request at a time: every
reply by the spec, an error reply changes no stream, and witness streams stepped alongside stay bit-exact."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from . import properties as F
from . import strategies as S
from .harness import make_model


@pytest.fixture(scope="module")
def model():
    return make_model()


@settings(max_examples=40)
@given(cases=st.lists(S.message(), min_size=1, max_size=10), batched=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzzed_turns_get_replies_by_the_spec_and_leave_the_witnesses_bit_exact(model, cases, batched, seed):
    F.engine_in_process(model, cases, batched, seed)


def test_the_witnesses_twin_agrees_with_the_reference(model):
    """The offline twin the witnesses are checked against is itself right (tests/reference.py, float64)."""
    from .harness import Witnesses
    w = Witnesses(model, tag="ref", seed=5)
    for _ in range(20):
        w.step_messages()
    w.check_reference(model)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_keys")


@settings(max_examples=40)
@given(cases=st.lists(S.message(), min_size=1, max_size=10), batched=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzzed_requests_of_a_namespaced_step_key_get_replies_by_the_spec(model, keys, cases, batched, seed):
    """The same through access control (engine/access.py): the fuzz as a step key under --namespaces (its ids
    rewritten, ops it may not make refused as forbidden), the witnesses as an admin key."""
    F.engine_in_process(model, cases, batched, seed, keys=keys / str(seed))
