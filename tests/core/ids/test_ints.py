"""The int-id hash table (lstm_stream/ids/ints.py) against a dict, and the store's id handling built on it."""
import os
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstm_stream as ls
from lstm_stream.ids import ints as T
from lstm_stream.store import StateStore, distinct
from models import random_model

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))
KEYS = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-40, 40),
                 st.integers(0, 40).map(lambda k: k * 1024),          # same low bits: one probe run
                 st.sampled_from([-2**63, 2**63 - 1, 0, -1]))


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), KEYS), max_size=300), log_cap=st.integers(4, 7))
def test_table_matches_a_dict(ops, log_cap):
    """Inserts and deletes in any order (deletes shifting probe runs back) keep every lookup right."""
    cap = 2 ** log_cap
    kv, d = T.new_table(cap), {}
    for n, (ins, key) in enumerate(ops):
        if ins and key not in d and len(d) < cap // 2:
            T.insert(kv, key, n)
            d[key] = n
        else:
            assert T.delete(kv, key) == d.pop(key, -1)
        for k in list(d)[:8] + [key]:
            assert T.find(kv, k) == d.get(k, -1)
    keys = np.array([k for _, k in ops] or [0], np.int64)
    out = np.empty(len(keys), np.int64)
    missing = T.find_many(kv, keys, out)
    assert out.tolist() == [d.get(int(k), -1) for k in keys]
    assert missing == sum(1 for k in keys.tolist() if k not in d)
    bigger = T.new_table(cap * 2)
    T.rehash(kv, bigger)
    assert all(T.find(bigger, k) == s for k, s in d.items()) and (bigger[:, 1] >= 0).sum() == len(d)


def test_store_int_and_str_ids_side_by_side():
    rng = np.random.default_rng(SEED)
    store = StateStore(initial_capacity=4)
    ids = ["a", 5, -2**63, 2**63 - 1, "b", 0, np.int64(9), np.uint8(200)]
    slots = [store.add(i, 1.0) for i in ids]
    assert slots == list(range(8)) and store.capacity >= 8
    assert store.ids() == ["a", 5, -2**63, 2**63 - 1, "b", 0, 9, 200]  # numpy ints stored as int
    for bad in (5.0, True, 2**63, -2**63 - 1, None, [5]):
        assert bad not in store and store.get_slot(bad) is None
        with pytest.raises(ls.UnknownStreamError):
            store.slot(bad)
    assert store.slot(np.int32(5)) == 1 and np.int64(5) in store
    assert store.lookup([5, 0, 77]).tolist() == [1, 5, -1]
    assert store.lookup(["b", "zz"]).tolist() == [4, -1]
    assert store.lookup(["a", 2**63 - 1, 2**64]).tolist() == [0, 3, -1]  # mixed, and beyond int64
    assert store.lookup([5, 1.0]) is None
    for not_ids in ([5, True], [5, 0, False], [True, 5], [5, 1.0]):  # a bool or a float among int ids
        assert store.lookup(not_ids) is None and store.known_slots(not_ids) is None, not_ids
    assert store.known_slots([5, 0]).tolist() == [1, 5] and store.known_slots([5, 77]) is None
    with pytest.raises(ls.InputError, match="already exists"):
        store.add(5, 1.0)
    for i in rng.permutation(8):  # remove in random order: freed slots are reused, lookups stay right
        store.remove(store.ids()[0] if i % 2 else store.ids()[-1])
        rest = store.ids()
        assert store.lookup(rest).tolist() == [store.slot(i) for i in rest]
    assert len(store) == 0 and store.ids() == [] and store.add(12345, 2.0) in range(8)


def test_str_subclass_ids_are_plain_str():
    class Name(str):
        pass

    s = ls.Streams(random_model(np.random.default_rng(SEED), I=3, H=4, L=1, O=2))
    x = np.ones(3, np.float32)
    a = s.step(Name("pump"), x)
    assert s.ids() == ["pump"] and type(s.ids()[0]) is str
    b = s.step("pump", x)
    assert s.stream_info("pump")["steps"] == 2 and not np.array_equal(a, b)


def test_int_ids_beyond_int64_are_refused_clearly():
    s = ls.Streams(random_model(np.random.default_rng(SEED), I=3, H=4, L=1, O=2))
    x = np.ones(3, np.float32)
    s.step(2**63 - 1, x)
    s.step(2**63 - 1, x)  # the compiled lookup path, at the edge of int64
    for bad in (2**63, -2**63 - 1):
        with pytest.raises(ls.InputError, match="outside the int64 range"):
            s.step(bad, x)
        with pytest.raises(ls.InputError, match="outside the int64 range"):
            s.step_many([1, bad], np.ones((2, 3), np.float32))
    assert s.ids() == [2**63 - 1] and s.stream_info(2**63 - 1)["steps"] == 2


def test_add_many_equals_adding_one_by_one():
    rng = np.random.default_rng(SEED)
    ids = [f"s{k}" for k in range(30)] + list(rng.integers(-2**63, 2**63 - 1, 30, dtype=np.int64).tolist())
    order = rng.permutation(len(ids))
    ids = [ids[k] for k in order]
    one, many = StateStore(initial_capacity=2), StateStore(initial_capacity=2)
    for store in (one, many):  # some free slots to reuse first
        for k in range(10):
            store.add(f"tmp{k}", 0.0)
        for k in (3, 7, 1):
            store.remove(f"tmp{k}")
    slots_one = [one.add(i, 5.0) for i in ids]
    slots_many = many.add_many(ids, 5.0)
    assert slots_many.tolist() == slots_one
    assert many.ids() == one.ids() and many.lookup(ids).tolist() == slots_one
    assert (many.last_seen[slots_many] == 5.0).all() and len(many) == len(one) == 67
    full = StateStore(max_streams=3)
    with pytest.raises(ls.StoreFullError, match="max_streams=3"):
        full.add_many([1, 2, 3, 4], 0.0)
    assert len(full) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=80))
def test_distinct_agrees_with_a_set(values):
    """distinct(): the increasing fast path and the sorting one agree with set() on any list of slots."""
    a = np.array(values, np.int64)
    assert distinct(a) == (len(set(values)) == len(values))
    marks = np.zeros(61, np.uint8)  # the compiled pass over a store's marks: the same answer, marks left zero
    assert distinct(a, marks) == (len(set(values)) == len(values)) and not marks.any()
    assert distinct(a, np.zeros(30, np.uint8)) == (len(set(values)) == len(values))  # slots past the marks
    inc = np.unique(a)  # increasing and distinct; then one repeat at every place
    assert distinct(inc)
    for k in range(1, len(inc)):
        rep = inc.copy()
        rep[k] = rep[k - 1]
        assert not distinct(rep)
