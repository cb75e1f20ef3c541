"""The decoder fuzzed in-process: any payload decodes to a Request or to a ProtocolError with a documented code
(nothing else escapes), within the documented memory bound; valid requests and step replies round-trip."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from . import properties as F
from . import strategies as S


@settings(max_examples=400)
@given(case=S.message())
def test_any_payload_decodes_or_gets_a_documented_error(case):
    F.decode_only(case)


@settings(max_examples=80)
@given(data=st.one_of(F.adversarial(), S.message().map(lambda c: c.data)))
def test_decoding_stays_within_the_documented_memory_bound(data):
    F.decode_memory(data)


@settings(max_examples=200)
@given(request=S.valid_request())
def test_valid_requests_round_trip_bit_for_bit(request):
    F.round_trip(*request)


@settings(max_examples=60)
@given(rid=st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=128)), shape=st.lists(st.integers(0, 6), min_size=1, max_size=2),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99))
def test_step_replies_from_the_template_are_the_maps_encoding(rid, shape, dtype, seed):
    F.reply_template(rid, np.random.default_rng(seed).normal(size=shape).astype(dtype))
