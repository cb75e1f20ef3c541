"""The shard map (lstm_stream/shardmap.py): the documented rule byte for byte, str and int ids kept apart,
the vectorised owners() equal to owner(), and rendezvous hashing's promise: adding or removing a shard moves
only the streams whose owner changes (to the new shard, or off the removed one), about 1/N of them."""
import collections
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_stream.shardmap import HASH, Shard, ShardMap, score, shard_seed, stream_hash, stream_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def shards(*names):
    return [Shard(n, f"tcp://127.0.0.1:{5000 + k}") for k, n in enumerate(names)]


def test_the_documented_examples():
    """docs/cluster.md's table of (id, h, scores, owner) is what this code computes: other languages test
    their implementation against it."""
    rows = re.findall(r"^\| `(.+?)` \| `(0x[0-9a-f]+)` \| `(0x[0-9a-f]+)` \| `(0x[0-9a-f]+)` \| `(0x[0-9a-f]+)` \| "
                      r"`(s\d)` \|$", DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 4
    seeds = re.search(r"with seeds `(0x[0-9a-f]+)`,\s+`(0x[0-9a-f]+)`, `(0x[0-9a-f]+)`",
                      DOC.read_text(encoding="utf-8"))
    assert [hex(shard_seed(n)) for n in ("s0", "s1", "s2")] == list(seeds.groups())
    m = ShardMap(1, shards("s0", "s1", "s2"))
    for text, h, *scores, owner in rows:
        stream = int(text) if re.fullmatch(r"-?\d+", text) else text.strip('"')
        assert hex(stream_hash(stream)) == h, text
        assert [hex(score(stream, n)) for n in ("s0", "s1", "s2")] == scores, text
        assert m.owner(stream) == owner, text


def test_keys_keep_str_and_int_ids_apart():
    assert stream_key("7") != stream_key(7)
    assert stream_key(7) == b"i" + (7).to_bytes(8, "little", signed=True)
    assert stream_key(-1) == b"i" + b"\xff" * 8
    assert stream_key("é") == b"s\xc3\xa9"
    for bad in (1.5, None, b"x", True):
        with pytest.raises(TypeError, match="str or an int"):
            stream_key(bad)
    with pytest.raises(OverflowError):
        stream_key(2**63)


def test_the_hash_is_the_same_in_another_process():
    """Never Python's hash(): a fresh interpreter (another PYTHONHASHSEED) computes the same owners."""
    code = "from lstm_stream.shardmap import *; print(ShardMap(1, [Shard(n, '') for n in 'abc']).owners(['x', 7]))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(DOC.parents[1])}).stdout for seed in "12"}
    assert len(outs) == 1 and outs.pop().strip() == str(ShardMap(1, shards("a", "b", "c")).owners(["x", 7]))


def test_owners_equals_owner_and_spreads_evenly():
    m = ShardMap(4, shards("s2", "s0", "s1"))
    ids = [f"pump-{k}" for k in range(6000)] + list(range(-3000, 3000))
    owners = m.owners(ids)
    assert owners == [m.owner(i) for i in ids]
    counts = collections.Counter(owners)
    assert set(counts) == {"s0", "s1", "s2"} and min(counts.values()) > 0.3 * len(ids)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_adding_a_shard_moves_only_streams_to_it(n):
    ids = [f"d{k}" for k in range(20000)]
    names = [f"s{k}" for k in range(n)]
    before = ShardMap(1, shards(*names)).owners(ids)
    after = ShardMap(2, shards(*names, "new")).owners(ids)
    moved = [(a, b) for a, b in zip(before, after) if a != b]
    assert {b for _, b in moved} == {"new"}
    assert abs(len(moved) / len(ids) - 1 / (n + 1)) < 0.03  # about 1/(N+1) of the streams


def test_removing_a_shard_moves_only_its_streams():
    ids = list(range(20000))
    before = ShardMap(1, shards("a", "b", "c", "d")).owners(ids)
    after = ShardMap(2, shards("a", "b", "d")).owners(ids)
    assert all(a == b for a, b in zip(before, after) if a != "c")
    assert "c" not in after


def test_owner_ignores_endpoints_and_order():
    a = ShardMap(1, [Shard("x", "tcp://h1:1"), Shard("y", "tcp://h2:2")])
    b = ShardMap(9, [Shard("y", "tcp://h9:9"), Shard("x", "tcp://h8:8")])
    ids = [f"k{k}" for k in range(500)]
    assert a.owners(ids) == b.owners(ids)


def test_the_wire_form_round_trips_and_bad_maps_are_refused():
    m = ShardMap(3, shards("s1", "s0"))
    w = m.as_map()
    assert w == {"version": 3, "hash": HASH, "shards": [{"name": "s0", "endpoint": "tcp://127.0.0.1:5001"},
                                                      {"name": "s1", "endpoint": "tcp://127.0.0.1:5000"}]}
    assert ShardMap.from_map(w) == m
    assert m.with_shard("s1", "tcp://h:1").version == 4
    for bad, message in [({**w, "hash": "md5"}, "hash rule 'md5'"), ({**w, "shards": [{"name": 1}]}, "list of"),
                         ({**w, "version": 0}, "version must be an int >= 1"), ([], "is a map"),
                         ({**w, "shards": []}, "at least one shard"),
                         ({**w, "shards": w["shards"] * 2}, "distinct")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ShardMap.from_map(bad)


def test_seeds_differ_per_name():
    assert len({shard_seed(f"s{k}") for k in range(1000)}) == 1000
