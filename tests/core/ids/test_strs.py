"""The str-id table (lstm_stream/ids/strs.py: ids' bytes in an arena, a hash table of slots) against a dict:
adds and removes in any order, with table growth, arena growth and compaction, and ids of every kind (NUL
inside, non-ASCII, lone surrogates, long, one character)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream.ids import strs as strtable
from lstm_stream.ids.strs import StrIds
from lstm_stream.store import StateStore

IDS = st.one_of(st.sampled_from(["a", "b", "ab", "a\0b", "\0", "é", "ä" * 3, "\ud800", "x" * 256, "日本"]),
                st.text(min_size=1, max_size=12),
                st.integers(0, 60).map(lambda k: f"s{k}"))


class Owner:
    """The slots side of a StateStore, reduced to what StrIds needs: a free list and a high-water mark."""

    def __init__(self, capacity):
        self.high, self.free, self.capacity = 0, [], capacity
        self.t = StrIds(capacity)

    def slot(self):
        if self.free:
            return self.free.pop()
        if self.high == self.capacity:
            self.capacity *= 2
            self.t.grow(self.capacity)
        self.high += 1
        return self.high - 1


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "add", "remove", "many"]), IDS,
                              st.lists(IDS, max_size=6)), max_size=120),
       cap=st.integers(1, 8))
def test_table_matches_a_dict(ops, cap):
    o, d = Owner(cap), {}
    for op, i, more in ops:
        if op == "add" and i not in d:
            d[i] = s = o.slot()
            o.t.add(i, s)
        elif op == "many":
            new = list(dict.fromkeys(j for j in more if j not in d))
            slots = np.array([o.slot() for _ in new], np.int64)
            o.t.add_many(new, slots)
            d.update(zip(new, slots.tolist()))
        elif i in d:
            s = d.pop(i)
            o.t.remove(s)
            o.free.append(s)
        assert len(o.t) == len(d)
        for j in [i] + more + list(d)[:6]:
            assert o.t.get(j) == d.get(j)
        probe = [i] + more + list(d)
        slots, missing = o.t.find_many(probe)
        assert slots.tolist() == [d.get(j, -1) for j in probe]
        assert missing == sum(j not in d for j in probe)
    if d:
        assert o.t.ids_of(np.array(list(d.values()))) == list(d)
    assert o.t.used - o.t.garbage == sum(len(k.encode("utf-8", "surrogatepass")) for k in d)
    assert (o.t.kv >= 0).sum() == len(d) and 2 * len(d) <= len(o.t.kv)


def test_arena_compacts_instead_of_growing_when_ids_come_and_go():
    o = Owner(64)
    for k in range(20_000):
        s = o.slot()
        o.t.add(f"stream-{k:06d}", s)
        if k >= 50:  # keep 50 alive
            old = f"stream-{k - 50:06d}"
            slot = o.t.get(old)
            o.t.remove(slot)
            o.free.append(slot)
    assert len(o.t) == 50 and o.t.arena.shape[0] <= 4096  # 50 live ids of 12 bytes
    assert [o.t.get(f"stream-{k:06d}") is not None for k in range(19_940, 20_000)] == [False] * 10 + [True] * 50


def test_arena_doubles_in_place_while_little_of_it_is_garbage():
    """Ids only added: the arena grows in its reservation (slabs.py), the bytes already there never move; a
    removal leaving under a quarter garbage still grows it in place; a quarter or more compacts it."""
    o = Owner(64)
    first = o.t.arena
    for k in range(5000):
        o.t.add(f"stream-{k:06d}", o.slot())
    assert o.t.arena.shape[0] >= 5000 * 13 and np.shares_memory(first, o.t.arena) and o.t.garbage == 0
    grown = o.t.arena
    for k in range(0, 5000, 10):  # a tenth removed: garbage, not compacted
        slot = o.t.get(f"stream-{k:06d}")
        o.t.remove(slot)
        o.free.append(slot)
    size, garbage = o.t.arena.shape[0], o.t.garbage
    while o.t.used + 13 <= size:  # fill it, then one more: doubled in place, the garbage kept
        o.t.add(f"more-{o.t.used:07d}", o.slot())
    o.t.add(f"more-{o.t.used:07d}", o.slot())
    assert o.t.arena.shape[0] == 2 * size and o.t.garbage == garbage and np.shares_memory(grown, o.t.arena)
    for k in range(5000):  # most of the rest removed: the next room made by compaction
        if k % 10:
            slot = o.t.get(f"stream-{k:06d}")
            o.t.remove(slot)
            o.free.append(slot)
    while o.t.garbage:
        o.t.add(f"last-{o.t.used:07d}", o.slot())
    live = np.array(sorted(set(range(o.high)) - set(o.free)), np.int64)
    ids = o.t.ids_of(live)
    assert o.t.used == sum(len(i) for i in ids) and len(ids) == len(o.t)  # compacted: no garbage left
    assert [o.t.get(i) for i in ids] == live.tolist() and o.t.get("stream-000001") is None


def test_find_many_takes_the_callers_join_and_refuses_other_kinds():
    o = Owner(4)
    for i in ("a", "b"):
        o.t.add(i, o.slot())
    assert o.t.find_many(["b", "a", "c"], "b\0a\0c")[0].tolist() == [1, 0, -1]
    assert o.t.find_many(["a", 1]) is None
    slots, missing = o.t.find_many([])
    assert len(slots) == 0 and missing == 0


def test_store_str_id_bookkeeping_is_compact():
    """The store's str-id bookkeeping per stream: arena bytes + 12 per slot + table rows (8 bytes each)."""
    store = StateStore(initial_capacity=1024)
    ids = [f"sensor-{k:07d}" for k in range(50_000)]
    store.add_many(ids, 0.0)
    per_id = store.strs.nbytes / len(ids)
    assert per_id < 60, per_id
    assert store.ids()[:3] == ids[:3] and store.ids() == ids
    assert store.lookup(ids[::-1][:100]).tolist() == list(range(49_999, 49_899, -1))


def test_ids_found_lately_are_bounded_and_forgotten_on_remove(monkeypatch):
    monkeypatch.setattr(strtable, "HOT_MAX", 8)
    o = Owner(4)
    for k in range(30):
        o.t.add(f"id{k}", o.slot())
    for k in range(30):
        assert o.t.get(f"id{k}") == k and len(o.t._hot) <= 8
    assert o.t.find_many(["id29", "id28"])[0].tolist() == [29, 28]  # from the dict
    o.t.remove(29)
    o.free.append(29)
    assert o.t.get("id29") is None and o.t.find_many(["id29", "id28"])[0].tolist() == [-1, 28]
    o.t.add("other", o.slot())  # takes slot 29
    assert o.t.get("other") == 29 and o.t.get("id29") is None
