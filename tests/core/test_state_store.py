"""Property tests of the state store through Streams: insert, drop, slot reuse, growth, eviction, full store,
and bad inputs that must raise a clear error and leave every stream unchanged."""
import os
import secrets

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import lstm_stream as ls
from models import Clock, random_model

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))

MODEL = random_model(np.random.default_rng(11), I=3, H=5, L=2, O=2)
MAX = 12
IDS = st.one_of(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(-3, 12))
SAMPLES = st.lists(st.floats(-5, 5, width=32), min_size=3, max_size=3)


class StoreMachine(RuleBasedStateMachine):
    """The store under test vs one private single-stream Streams per id (isolation makes them equal)."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.streams = ls.Streams(MODEL, max_streams=MAX, idle_ttl=10.0, initial_capacity=2, clock=self.clock)
        self.solo = {}      # id -> Streams holding just that stream
        self.seen = {}      # id -> last time stepped/created

    def _solo(self, i):
        s = ls.Streams(MODEL)
        s.set_state(i, (np.zeros((2, 5)), np.zeros((2, 5))))
        return s

    @rule(i=IDS, x=SAMPLES)
    def step(self, i, x):
        if i not in self.solo and len(self.solo) >= MAX:
            with pytest.raises(ls.StoreFullError, match="max_streams"):
                self.streams.step(i, x)
            return
        y = self.streams.step(i, x)
        self.solo.setdefault(i, self._solo(i))
        assert np.array_equal(y, self.solo[i].step(i, x))
        self.seen[i] = self.clock.t

    @rule(i=IDS)
    def drop(self, i):
        if i in self.solo:
            self.streams.drop(i)
            del self.solo[i], self.seen[i]
        else:
            with pytest.raises(ls.UnknownStreamError, match="unknown stream"):
                self.streams.drop(i)

    @rule(i=IDS)
    def reset(self, i):
        if i in self.solo:
            self.streams.reset(i)
            self.solo[i] = self._solo(i)
        else:
            with pytest.raises(ls.UnknownStreamError):
                self.streams.reset(i)

    @precondition(lambda self: self.solo)
    @rule(data=st.data(), dst=IDS)
    def copy(self, data, dst):
        src = data.draw(st.sampled_from(sorted(self.solo, key=str)))
        if dst not in self.solo and len(self.solo) >= MAX:
            with pytest.raises(ls.StoreFullError):
                self.streams.copy(src, dst)
            return
        self.streams.copy(src, dst)
        st_ = self.solo[src].get_state(src)
        s = ls.Streams(MODEL)
        s.set_state(dst, st_)
        self.solo[dst] = s
        self.seen.setdefault(dst, self.clock.t)

    @rule(dt=st.floats(0, 8))
    def advance_clock_and_evict(self, dt):
        self.clock.t += dt
        evicted = self.streams.evict_idle()
        expect = {i for i, t in self.seen.items() if t < self.clock.t - 10.0}
        assert set(evicted) == expect
        for i in expect:
            del self.solo[i], self.seen[i]

    @rule(i=IDS, bad=st.sampled_from(["nan", "inf", "shape", "dtype", "empty", "3d"]))
    def bad_input_changes_nothing(self, i, bad):
        x = {"nan": [0, np.nan, 1], "inf": [np.inf, 0, 0], "shape": [1.0, 2.0], "dtype": ["a", "b", "c"],
             "empty": np.zeros((0, 3)), "3d": np.zeros((1, 1, 3))}[bad]
        before = {j: self.streams.get_state(j) for j in self.streams.ids()}
        with pytest.raises(ls.InputError, match="expected"):
            self.streams.step(i, x)
        with pytest.raises(ls.InputError, match="expected"):
            self.streams.step_many([i, "zz"], np.array([x, x], dtype=object) if bad == "dtype" else [x, x])
        assert set(self.streams.ids()) == set(before)
        for j, s in before.items():
            now = self.streams.get_state(j)
            assert np.array_equal(now.h, s.h) and np.array_equal(now.c, s.c) and now.steps == s.steps

    @invariant()
    def same_streams_and_states(self):
        assert len(self.streams) == len(self.solo)
        assert set(self.streams.ids()) == set(self.solo)
        for i, solo in self.solo.items():
            a, b = self.streams.get_state(i), solo.get_state(i)
            assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps

    @invariant()
    def slots_unique_and_within_capacity(self):
        store = self.streams._store
        slots = [s for _, s in store.items()]
        assert len(slots) == len(set(slots)) and all(0 <= s < store.capacity for s in slots)
        assert store.capacity <= MAX


TestStoreMachine = StoreMachine.TestCase


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=80))
def test_slots_are_reused_and_growth_keeps_state(ops):
    """Adding/dropping in any order: dropped slots are reused before the store grows; states survive growth."""
    streams = ls.Streams(MODEL, initial_capacity=1)
    marks = {}
    for add, i in ops:
        if add and i not in streams:
            streams.set_state(i, (np.full((2, 5), i + 0.5), np.full((2, 5), -i)))
            marks[i] = i
        elif not add and i in streams:
            streams.drop(i)
            del marks[i]
        used = len(marks)
        assert streams._store.capacity <= 2 * max(streams._store._high, 1)  # grows only by doubling
        assert streams._store._high == used + len(streams._store._free)  # high-water = used + free
    for i in marks:
        assert np.all(streams.get_state(i).h == np.float32(i + 0.5))
        assert np.all(streams.get_state(i).c == -i)


@pytest.mark.parametrize("bad_id,msg", [(1.5, "str or an int"), (None, "str or an int"), (True, "str or an int"),
                                        ("", "non-empty"), ("x" * 300, "at most 256"), (2**70, "int64")])
def test_bad_ids_are_refused(bad_id, msg):
    streams = ls.Streams(MODEL)
    with pytest.raises(ls.InputError, match=msg):
        streams.step(bad_id, [1, 2, 3])
    assert len(streams) == 0


def test_unknown_stream_errors_name_the_id():
    streams = ls.Streams(MODEL)
    for call in (lambda: streams.get_state("ghost"), lambda: streams.reset("ghost"),
                 lambda: streams.copy("ghost", "x"), lambda: streams.stream_info("ghost")):
        with pytest.raises(ls.UnknownStreamError, match="unknown stream 'ghost'"):
            call()
    assert len(streams) == 0


@pytest.mark.parametrize("state,msg", [
    ((np.zeros((2, 4)), np.zeros((2, 5))), "'h' has shape"),
    ((np.zeros((2, 5)), np.full((2, 5), np.nan)), "NaN"),
    ({"h": np.zeros((2, 5))}, "missing \\['c'\\]"),
    ({"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": -1}, "from 0 to 2\\*\\*63-1"),
    ("nope", "StreamState"),
])
def test_bad_set_state_is_refused(state, msg):
    streams = ls.Streams(MODEL)
    with pytest.raises(ls.InputError, match=msg):
        streams.set_state("a", state)
    assert "a" not in streams


@pytest.mark.parametrize("state,msg", [
    ({"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": 2**63}, "int from 0 to 2\\*\\*63-1"),
    ({"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": np.uint64(2**64 - 1)}, "int from 0 to 2\\*\\*63-1"),
    ({"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": -1}, "int from 0 to 2\\*\\*63-1"),
    ({"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": 1.0}, "int from 0"),
    ((np.zeros((2, 4)), np.zeros((2, 5))), "'h' has shape"),
    ((np.zeros((2, 5)), np.zeros((5, 2))), "'c' has shape"),
    ((np.full((2, 5), np.nan), np.zeros((2, 5))), "'h' contains NaN"),
    ((np.zeros((2, 5)), np.full((2, 5), 1e300)), "'c' has values out of range for float32"),  # finite in float64, Inf in float32
])
def test_a_refused_set_state_changes_nothing(state, msg):
    """An existing stream keeps its h, c, steps and last-seen time; a new id is not created."""
    clock = Clock()
    streams = ls.Streams(MODEL, clock=clock)
    streams.step("a", [1, 2, 3])
    before = streams.get_state("a")
    clock.t += 5
    for target in ("a", "new"):
        with pytest.raises(ls.InputError, match=msg):
            streams.set_state(target, state)
    after = streams.get_state("a")
    assert streams.ids() == ["a"] and after.steps == 1 and after.last_seen == before.last_seen
    np.testing.assert_array_equal(after.h, before.h)
    np.testing.assert_array_equal(after.c, before.c)


TOP = 2**63 - 1
STEP_PATHS = {  # (ids set near the top, how to step them once): every path that adds to a step count
    "one sample, (I,) float32": (["a"], lambda s, x: [s.step("a", x[0])]),
    "one sample, a list": (["a"], lambda s, x: [s.step("a", x[0].tolist())]),
    "rows, (T, I) float32": (["a"], lambda s, x: [s.step("a", x[:2])]),
    "rows, lists": (["a"], lambda s, x: [s.step("a", x[:2].tolist())]),
    "one sample, int id": ([7], lambda s, x: [s.step(7, x[0])]),
    "step_many": (["a", "b"], lambda s, x: [s.step_many(["a", "b"], x[:2])]),
    "step_many, repeated id": (["a"], lambda s, x: [s.step_many(["a", "a"], x[:2])]),
    "step_batch": (["a", "b"], lambda s, x: s.step_batch(["a", "b"], [x[:2], x[2]])),
    "step_segments, repeated id": (["a", "b"], lambda s, x: [s.step_segments(["a", "b", "a"], [1, 1, 2], x)]),
}


@pytest.mark.parametrize("path", list(STEP_PATHS))
def test_the_step_count_saturates_at_2_63_minus_1(path):
    ids, step = STEP_PATHS[path]
    streams = ls.Streams(MODEL)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for i in ids:
        streams.set_state(i, {"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": TOP - 2})
    for _ in range(3):
        for y in step(streams, x):
            assert np.isfinite(y).all() and y.shape[-1] == 2
    assert [streams.get_state(i).steps for i in ids] == [TOP] * len(ids)
    streams.set_state("top", {"h": np.zeros((2, 5)), "c": np.zeros((2, 5)), "steps": TOP})  # the largest
    assert streams.get_state("top").steps == TOP


def test_step_many_length_mismatch_and_full_store_change_nothing():
    streams = ls.Streams(MODEL, max_streams=2)
    streams.step("a", [1, 2, 3])
    before = streams.get_state("a")
    with pytest.raises(ls.InputError, match="one row per id"):
        streams.step_many(["a", "b"], np.ones((3, 3)))
    with pytest.raises(ls.StoreFullError, match="max_streams=2"):
        streams.step_many(["a", "b", "c"], np.ones((3, 3)))
    assert streams.ids() == ["a"] and np.array_equal(streams.get_state("a").c, before.c)
    assert streams.get_state("a").steps == 1


def test_numpy_int_ids_are_normalised(tmp_path):
    streams = ls.Streams(MODEL)
    streams.step(np.int64(5), [1, 2, 3])
    streams.step_many(np.arange(3), np.ones((3, 3)))
    assert sorted(streams.ids()) == [0, 1, 2, 5] and all(type(i) is int for i in streams.ids())
    assert np.int32(5) in streams and 5 in streams and 5.0 not in streams and True not in streams
    assert streams.stream_info(5)["steps"] == 1
    streams.save_snapshot(tmp_path / "s.lss")  # ids must be msgpack-able plain ints
    assert sorted(ls.Streams.load_snapshot(tmp_path / "s.lss", MODEL).ids()) == [0, 1, 2, 5]


def test_step_many_takes_int_ids_as_a_numpy_array():
    """A 1-D integer array of ids: the same outputs and streams as the list of the same ints (known ids in
    one compiled lookup, new ones created as Python ints); arrays that are not ids are refused as lists are."""
    rng = np.random.default_rng(SEED)
    model = random_model(rng, I=3, H=11, L=1, O=2)
    a, b = ls.Streams(model), ls.Streams(model)
    for t in range(4):
        ids = rng.integers(-50, 50, 40)  # repeats within a call, new and known ids
        X = rng.normal(0, 1, (40, 3)).astype(np.float32)
        arr = ids.astype([np.int64, np.int32, np.int16][t]) if t < 3 else (ids + 50).astype(np.uint64)
        ids = ids if t < 3 else ids + 50
        assert np.array_equal(a.step_many(ids.tolist(), X), b.step_many(arr, X)), f"t={t}, seed={SEED}"
    assert sorted(a.ids()) == sorted(b.ids()) and all(type(i) is int for i in b.ids())
    X = np.zeros((2, 3), np.float32)
    for bad, msg in [(np.array([True, False]), "got bool"), (np.array([1.0, 2.0]), "got float"),
                     (np.array([2**63, 1], np.uint64), "outside the int64 range")]:
        with pytest.raises(ls.InputError, match=msg):
            b.step_many(bad, X)
    assert sorted(a.ids()) == sorted(b.ids())


def test_a_bad_input_for_a_new_stream_on_a_full_store_is_a_bad_input():
    """A new id with NaN in x on a full store: InputError (as on every other path), not StoreFullError, and
    nothing changes; a good input for a new id is then refused as StoreFullError."""
    streams = ls.Streams(MODEL, max_streams=1)
    streams.step("a", np.zeros(MODEL.input_size, np.float32))
    nan = np.full(MODEL.input_size, np.nan, np.float32)
    for sid in ("b", 2):
        with pytest.raises(ls.InputError, match="NaN or Inf"):
            streams.step(sid, nan)
        with pytest.raises(ls.StoreFullError, match="max_streams=1"):
            streams.step(sid, np.zeros(MODEL.input_size, np.float32))
    assert streams.ids() == ["a"] and streams.stream_info("a")["steps"] == 1
