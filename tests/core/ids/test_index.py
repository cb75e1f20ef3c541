"""The IdIndex contract (lstm_stream/ids/), the same checks for the int and the str index against a dict: adds
one by one and in bulk, removes in any order (each shifting its probe run back), lookups of one id and of
lists, ids of slots, growth. And the one delete both tables share (probe.backshift), on crafted probe runs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream import ids
from lstm_stream.ids import probe
from lstm_stream.ids.ints import IntIds
from lstm_stream.ids.strs import GROUP_MIN_IDS, StrIds

KINDS = {
    "int": (IntIds, st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-40, 40),
                              st.integers(0, 40).map(lambda k: k << 40),  # differ in high bits only
                              st.sampled_from([-2**63, 2**63 - 1, 0, -1]))),
    "str": (StrIds, st.one_of(st.sampled_from(["a", "b", "a\0b", "é", "\ud800", "x" * 256]),
                              st.text(min_size=1, max_size=10), st.integers(0, 40).map(lambda k: f"s{k}"))),
}


class Owner:
    """Slots for an index as a StateStore hands them out: a free list, then a high-water mark, then growth."""

    def __init__(self, make, capacity):
        self.high, self.free, self.capacity = 0, [], capacity
        self.index = make(capacity)

    def slot(self):
        if self.free:
            return self.free.pop()
        if self.high == self.capacity:
            self.capacity *= 2
            self.index.grow(self.capacity)
        self.high += 1
        return self.high - 1


def check_against(index, d, probes):
    assert len(index) == len(d)
    for i in list(d) + probes:  # every id still held is found, wherever removals shifted its row
        assert index.get(i) == d.get(i)
    for lst in (probes + list(d), list(d)[:3], list(d) * 2 + probes[:1] * GROUP_MIN_IDS, []):
        slots, missing = index.find_many(lst)
        assert slots.tolist() == [d.get(i, -1) for i in lst] and missing == sum(i not in d for i in lst)
    if d:
        assert index.ids_of(np.array(list(d.values()), np.int64)) == list(d)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), cap=st.integers(1, 8))
def test_an_index_matches_a_dict(kind, data, cap):
    make, id_strategy = KINDS[kind]
    o, d = Owner(make, cap), {}
    assert isinstance(o.index, ids.IdIndex)
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["add", "add", "many", "remove", "remove"]), id_strategy,
                                       st.lists(id_strategy, max_size=5)), max_size=80))
    for op, i, more in ops:
        if op == "add" and i not in d:
            d[i] = s = o.slot()
            o.index.add(i, s)
        elif op == "many":
            new = list(dict.fromkeys(j for j in more if j not in d))
            slots = np.array([o.slot() for _ in new], np.int64)
            o.index.add_many(new, slots)
            d.update(zip(new, slots.tolist()))
        elif op == "remove" and d:
            victim = list(d)[hash(i) % len(d)]
            s = d.pop(victim)
            o.index.remove(s)
            o.free.append(s)
        check_against(o.index, d, [i] + more)
    assert 2 * len(d) <= o.index.kv.shape[0] and (o.index.kv[:, -1] >= 0).sum() == len(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_other_kinds_are_not_looked_up(kind):
    make, _ = KINDS[kind]
    index = make(4)
    held, other = (5, "5") if kind == "int" else ("5", 5)
    index.add(held, 0)
    assert index.find_many([held, other]) is None and index.find_many([other, held]) is None
    assert index.find_many([held])[0].tolist() == [0]


def run_is_intact(kv):
    """Every row can be reached from its home without passing an empty row (what lookups rely on)."""
    mask, w = len(kv) - 1, kv.shape[1] - 1
    for i in np.flatnonzero(kv[:, w] != probe.EMPTY):
        j = probe.home(kv[i, w] >> 32, mask)
        while j != i:
            if kv[j, w] == probe.EMPTY:
                return False
            j = (j + 1) & mask
    return True


@pytest.mark.parametrize("width", [1, 2])
@settings(max_examples=100, deadline=None)
@given(homes=st.lists(st.integers(0, 15), min_size=1, max_size=8), data=st.data())
def test_backshift_keeps_every_probe_run_intact(width, homes, data):
    """Rows of crafted tags (clashing homes, runs that wrap past the last row) deleted in any order: the rest
    stay reachable from their homes and their key columns move with them."""
    kv = probe.new_table(16, width)
    tags = [h + 16 * k for k, h in enumerate(homes)]  # distinct tags, homes as drawn
    for slot, tag in enumerate(tags):
        row = probe.place(kv, tag, slot)
        kv[row, :width - 1] = 1000 + slot
    live = dict(enumerate(tags))
    for slot in data.draw(st.permutations(list(live))):
        assert probe.delete_slot(kv, live.pop(slot), slot)
        assert not probe.delete_slot(kv, tags[slot], slot)  # gone
        assert run_is_intact(kv)
        rows = kv[kv[:, -1] != probe.EMPTY]
        assert sorted((rows[:, -1] & probe.LOW).tolist()) == sorted(live)
        assert all((rows[:, :width - 1] == 1000 + (rows[:, -1:] & probe.LOW)).all(axis=1))
        assert all((rows[:, -1] >> 32) == [live[s] for s in (rows[:, -1] & probe.LOW).tolist()])


def test_rehash_keeps_rows_and_keys():
    kv = probe.new_table(16, 2)
    for slot in range(7):
        kv[probe.place(kv, 15 + 16 * slot, slot), 0] = -slot
    big = probe.new_table(64, 2)
    probe.rehash(kv, big)
    rows = big[big[:, 1] != probe.EMPTY]
    assert sorted(zip((rows[:, 1] & probe.LOW).tolist(), rows[:, 0].tolist())) == [(s, -s) for s in range(7)]
    assert run_is_intact(big)


CHILD = """
from lstm_stream import ids
from lstm_stream.ids import ints, probe, strs
ids.warm_up()
called_from_python = (ints.find, ints.find_many, ints.insert, ints.insert_many, ints.delete, strs.find_bytes,
                      strs.find_joined, strs.find_ends, strs.store_many, strs.delete, strs.compact, strs.gather,
                      probe.rehash)
print(' '.join(f.__name__ for f in called_from_python if not f.signatures))
"""


def test_warm_up_compiles_every_function_of_the_package():
    """What Streams.warm_up (and so the daemon's start) calls, in a fresh process, where nothing else has
    compiled the tables' functions yet: every compiled function Python calls has its code."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                         cwd=Path(ids.__file__).parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [], f"not compiled by warm_up: {out.stdout}"
