"""The cache of whole id lists (ids/groups.py IdGroups, which StrIds.find_many uses for step_many's str ids): it
must never hand out a slot that is not the id's slot now, through drops, slot reuse, eviction, copies and
restores, nor confuse two lists whose ids join to the same string. Checked against one private Streams per
id, as the state store's own machine does."""
import os
import secrets
import shutil
import tempfile

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import lstm_stream as ls
from lstm_stream.ids.groups import IdGroups
from lstm_stream.ids.strs import GROUP_MIN_IDS
from lstm_stream.store import StateStore
from models import Clock, random_model

SEED = int(os.environ.get("LSTM_TEST_SEED", secrets.randbelow(2**31)))
MODEL = random_model(np.random.default_rng(SEED), I=3, H=7, L=1, O=2)

POOL = [f"s{k}" for k in range(GROUP_MIN_IDS + 8)]
# A few fixed lists of at least GROUP_MIN_IDS ids (so the cache takes them), overlapping, in different orders.
_rng = np.random.default_rng(5)
GROUPS = [list(_rng.permutation(POOL)[:GROUP_MIN_IDS + k].tolist()) for k in (0, 3, 8)] + [POOL[::-1]]


def test_a_list_is_cached_from_its_second_sighting_and_get_returns_a_copy():
    store = StateStore()
    ids = [f"id{k}" for k in range(GROUP_MIN_IDS)]
    for i in ids:
        store.add(i, 0.0)
    want = np.array([store.slot(i) for i in ids])
    for _ in range(2):
        assert np.array_equal(store.known_slots(list(ids)), want)
    assert len(store.groups) == 1 and store.groups.hits == 0
    got = store.known_slots([i.encode().decode() for i in ids])  # equal, but other str objects
    assert np.array_equal(got, want) and store.groups.hits == 1
    got[:] = -7  # the caller's copy
    assert np.array_equal(store.known_slots(list(ids)), want)


def test_short_lists_unknown_ids_and_mixed_kinds_are_not_cached():
    store = StateStore()
    ids = [f"id{k}" for k in range(GROUP_MIN_IDS)]
    for i in ids + [7]:
        store.add(i, 0.0)
    for _ in range(3):
        assert store.known_slots(ids[:GROUP_MIN_IDS - 1]) is not None
        assert store.known_slots(ids[:-1] + ["nope"]) is None
        mixed = store.known_slots(ids[:-1] + [7])
        assert mixed is not None and mixed[-1] == store.slot(7)
    assert len(store.groups) == 0


def test_a_removed_id_clears_the_cache_and_its_reused_slot_is_never_handed_out():
    store = StateStore()
    ids = [f"id{k}" for k in range(GROUP_MIN_IDS)]
    for i in ids:
        store.add(i, 0.0)
    for _ in range(3):
        store.known_slots(ids)
    assert len(store.groups) == 1
    slot = store.remove(ids[3])
    assert len(store.groups) == 0
    assert store.known_slots(ids) is None  # ids[3] is gone
    assert store.add("newcomer", 0.0) == slot  # it takes the freed slot
    assert store.known_slots(ids) is None
    store.add(ids[3], 0.0)  # back, in a new slot
    for _ in range(3):
        got = store.known_slots(ids)
        assert np.array_equal(got, [store.slot(i) for i in ids]) and slot not in got


def test_lists_that_join_to_the_same_string_are_never_confused():
    """'a\\0b', 'c' and 'a', 'b\\0c' join (with NUL) to the same key: neither may be cached."""
    store = StateStore()
    fill = [f"f{k}" for k in range(GROUP_MIN_IDS - 2)]
    one, two = ["a\0b", "c"] + fill, ["a", "b\0c"] + fill
    for i in set(one + two):
        store.add(i, 0.0)
    for _ in range(3):
        for ids in (one, two):
            assert np.array_equal(store.known_slots(ids), [store.slot(i) for i in ids])
    assert len(store.groups) == 0


def test_the_cache_is_bounded():
    g = IdGroups(max_bytes=2000, max_seen=4)
    for k in range(50):
        key = "\0".join(f"k{k}-{j}" for j in range(20))
        slots = np.arange(20, dtype=np.int64)
        g.put(key, 20, slots)
        g.put(key, 20, slots)
        assert g._bytes <= 2000 and len(g._seen) <= 4
    assert 0 < len(g) < 50
    big = "\0".join(["x" * 200] * 20)
    g.put(big, 20, slots)
    g.put(big, 20, slots)
    assert g.get(big) is None and g._bytes <= 2000  # larger than the whole cache: never kept


def _x(seed, n):
    return np.random.default_rng(seed).standard_normal((n, MODEL.input_size)).astype(np.float32)


class GroupMachine(RuleBasedStateMachine):
    """step_many over a few fixed lists of str ids (cached after their second use), mixed with drops, resets,
    copies, evictions and snapshot restores; every stream must match a private Streams of its own."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.streams = ls.Streams(MODEL, idle_ttl=10.0, initial_capacity=4, clock=self.clock)
        self.solo, self.seen = {}, {}
        self.tmp = tempfile.mkdtemp()

    def _solo_step(self, i, x):
        if i not in self.solo:
            self.solo[i] = ls.Streams(MODEL)
        self.seen[i] = self.clock.t
        return self.solo[i].step(i, x)

    @rule(g=st.sampled_from(range(len(GROUPS))), seed=st.integers(0, 2**32 - 1), times=st.integers(1, 3))
    def step_group(self, g, seed, times):
        ids = GROUPS[g]
        for t in range(times):
            X = _x(seed + t, len(ids))
            Y = self.streams.step_many([i.encode().decode() for i in ids], X)
            for k, i in enumerate(ids):
                assert np.array_equal(Y[k], self._solo_step(i, X[k])), f"stream {i} of group {g}"

    @rule(i=st.sampled_from(POOL))
    def drop(self, i):
        if i in self.solo:
            self.streams.drop(i)
            del self.solo[i], self.seen[i]

    @rule(i=st.sampled_from(POOL))
    def reset(self, i):
        if i in self.solo:
            self.streams.reset(i)
            self.solo[i] = ls.Streams(MODEL)
            self.solo[i].set_state(i, (np.zeros((1, 7)), np.zeros((1, 7))))

    @precondition(lambda self: self.solo)
    @rule(data=st.data(), dst=st.sampled_from(POOL))
    def copy(self, data, dst):
        src = data.draw(st.sampled_from(sorted(self.solo)))
        self.streams.copy(src, dst)
        s = ls.Streams(MODEL)
        s.set_state(dst, self.solo[src].get_state(src))
        self.solo[dst] = s
        self.seen.setdefault(dst, self.clock.t)

    @rule(dt=st.floats(0, 8))
    def advance_clock_and_evict(self, dt):
        self.clock.t += dt
        evicted = set(self.streams.evict_idle())
        assert evicted == {i for i, t in self.seen.items() if t < self.clock.t - 10.0}
        for i in evicted:
            del self.solo[i], self.seen[i]

    @precondition(lambda self: self.solo)
    @rule(data=st.data())
    def snapshot_and_restore_fewer(self, data):
        """Restore a snapshot taken with some streams that were dropped since: the restore drops every
        stream and adds the snapshot's in fresh slots."""
        path = os.path.join(self.tmp, "snap.npz")
        self.streams.save_snapshot(path)
        gone = data.draw(st.lists(st.sampled_from(sorted(self.solo)), unique=True))
        for i in gone:
            self.streams.drop(i)
        self.streams.step_many(GROUPS[0], _x(1, len(GROUPS[0])))  # new slots for the dropped, then restore
        self.streams.restore_snapshot(path)  # exactly the snapshot's streams again, each as its solo twin

    @invariant()
    def same_streams_and_states(self):
        assert set(self.streams.ids()) == set(self.solo)
        for i, solo in self.solo.items():
            a, b = self.streams.get_state(i), solo.get_state(i)
            assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps, i

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


GroupMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestGroupMachine = GroupMachine.TestCase
