"""Shards without Ray: ShardEngines (the engine of serve, with the ownership check) on loopback in this process,
and ClusterClients routing to them. A stream's steps go to its owner only (the others answer wrong_shard,
nothing applied), step_many is split and merged in order, outputs are bit-identical to an offline Streams,
and a client holding a stale map is corrected by wrong_shard and ends up right."""
import numpy as np
import pytest

import lstm_stream as ls
from clients import Client, ClusterClient, WrongShard
from engine.cluster.shard import ShardEngine
from lstm_stream.errors import InputError
from lstm_stream.shardmap import Shard, ShardMap

NAMES = ("s0", "s1", "s2")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from models import random_model
    m = random_model(np.random.default_rng(5), I=4, H=16, L=2, O=3)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    m.save(path)
    return str(path), m


@pytest.fixture
def cluster(model, tmp_path):
    """Three shards on loopback with a full map (version 2: every endpoint known)."""
    first = ShardMap(1, [Shard(n, "") for n in NAMES])
    engines = [ShardEngine(n, str(tmp_path / n), first, model=model[0], options={"threads": 1, "fsync": "always"})
               for n in NAMES]
    full = ShardMap(2, [Shard(e.name, e.endpoint) for e in engines])
    for e in engines:
        e.set_map(full)
    yield full, engines
    for e in engines:
        e.stop()


def test_a_shard_refuses_streams_it_does_not_own(cluster):
    m, engines = cluster
    mine = next(i for i in range(100) if m.owner(i) == "s0")
    other = next(i for i in range(100) if m.owner(i) == "s1")
    x = np.ones(4, np.float32)
    with Client(m.endpoints["s0"]) as c:
        c.step(mine, x)
        with pytest.raises(WrongShard, match=r"does not own stream\(s\) .* version 2 \(owner of the first: 's1'\)") \
                as e:
            c.step_many({mine: x, other: x})  # one foreign id refuses the whole request
        assert e.value.version == 2 and e.value.code == "wrong_shard"
        for call in (lambda: c.get_state(other), lambda: c.set_state(other, c.get_state(mine)),
                     lambda: c.copy(mine, other), lambda: c.reset(other), lambda: c.drop(other)):
            with pytest.raises(WrongShard):
                call()
        assert c.get_state(mine).steps == 1  # nothing of the refused step_many was applied
        assert c.streams() == [mine]
        assert c.info()["cluster"] == m.as_map()
    with Client(m.endpoints["s1"]) as c:
        assert c.streams() == []


def test_routed_outputs_equal_an_offline_run(cluster, model):
    m, engines = cluster
    rng = np.random.default_rng(0)
    ids = [f"pump-{k}" for k in range(20)] + list(range(20))
    ref = ls.Streams(model[1], threads=1)
    clients = [ClusterClient(m.endpoints["s2"], timeout=10), ClusterClient([m.endpoints["s0"]], timeout=10)]
    try:
        for t in range(12):
            c = clients[t % 2]
            if t % 3 == 0:  # step_many over every shard, merged in the order given
                batch = {i: rng.normal(size=4).astype(np.float32) for i in ids}
                got = c.step_many(batch)
                assert list(got) == ids
                for i in ids:
                    assert np.array_equal(got[i], ref.step(i, batch[i]))
            elif t % 3 == 1:  # several rows per stream
                batch = {i: rng.normal(size=(2, 4)).astype(np.float32) for i in ids[::3]}
                got = c.step_many(batch)
                for i in batch:
                    assert np.array_equal(got[i], ref.step(i, batch[i]))
            else:
                for i in ids[::5]:
                    x = rng.normal(size=4).astype(np.float32)
                    assert np.array_equal(c.step(i, x), ref.step(i, x))
        for i in ids:
            st, want = clients[0].get_state(i), ref.get_state(i)
            assert np.array_equal(st.h, want.h) and np.array_equal(st.c, want.c) and st.steps == want.steps
        by_shard = {}
        for e in engines:
            with Client(e.endpoint) as one:
                by_shard[e.name] = set(one.streams())
        for i in ids:
            assert [n for n, s in by_shard.items() if i in s] == [m.owner(i)]
        assert sorted(map(str, clients[0].streams())) == sorted(map(str, ids))
        assert len(clients[0].streams(offset=5, limit=10)) == 10
        assert set(clients[0].info()["shards"]) == set(NAMES)
    finally:
        for c in clients:
            c.close()


def test_copy_across_shards(cluster):
    m, _ = cluster
    a = "pump-1"
    b = next(f"b{k}" for k in range(100) if m.owner(f"b{k}") != m.owner(a))
    with ClusterClient(m) as c:
        c.step(a, np.ones(4, np.float32))
        c.copy(a, b)
        sa, sb = c.get_state(a), c.get_state(b)
        assert np.array_equal(sa.h, sb.h) and np.array_equal(sa.c, sb.c) and sb.steps == 1


def test_a_reload_reaches_every_shard_and_every_stream_keeps_its_state(cluster, model, tmp_path):
    """ClusterClient.reload sends the update to every shard ({name: result}); each shard's streams continue
    under the new weights, bit-identical to an offline Streams switched at the same point."""
    from models import random_model
    m, _ = cluster
    new = random_model(np.random.default_rng(6), I=4, H=16, L=2, O=3, peepholes=True)
    new.save(tmp_path / "new.npz")
    rng = np.random.default_rng(1)
    ids = [f"r{k}" for k in range(12)]
    ref = ls.Streams(model[1], threads=1)
    with ClusterClient(m, timeout=10) as c:
        batch = {i: rng.normal(size=(2, 4)).astype(np.float32) for i in ids}
        c.step_many(batch)
        for i in ids:
            ref.step(i, batch[i])
        out = c.reload(tmp_path / "new.npz")
        assert set(out) == set(NAMES)
        assert all(r["fingerprint"] == new.fingerprint and r["previous"] == model[1].fingerprint and r["changed"]
                   for r in out.values()), out
        assert sum(r["streams"] for r in out.values()) == len(ids)
        ref.replace_model(new)
        batch = {i: rng.normal(size=4).astype(np.float32) for i in ids}
        got = c.step_many(batch)
        for i in ids:
            assert np.array_equal(got[i], ref.step(i, batch[i]))
        assert {s["fingerprint"] for s in c.info()["shards"].values()} == {new.fingerprint}


def test_a_stale_map_is_corrected_by_wrong_shard(cluster, model):
    """A client whose map sends everything to s0 (a stale map of one shard) is told wrong_shard by s0,
    fetches the map from it, resends to the owners, and every stream ends up where it belongs, each step
    applied once (exactly_once: the resent steps carry their seq)."""
    m, engines = cluster
    stale = ShardMap(1, [Shard("s0", m.endpoints["s0"])])
    ref = ls.Streams(model[1], threads=1)
    rng = np.random.default_rng(1)
    with ClusterClient(stale, exactly_once=True, timeout=10) as c:
        assert c.map.version == 1
        for k in range(30):
            x = rng.normal(size=4).astype(np.float32)
            assert np.array_equal(c.step(f"q{k}", x), ref.step(f"q{k}", x))
        assert c.map == m
    with ClusterClient(stale) as c:  # step_many too
        batch = {f"q{k}": rng.normal(size=4).astype(np.float32) for k in range(30)}
        got = c.step_many(batch)
        for i, x in batch.items():
            assert np.array_equal(got[i], ref.step(i, x))
        for k in range(30):
            assert c.get_state(f"q{k}").steps == 2


def test_a_shard_recovers_its_streams_after_stop(model, tmp_path):
    m = ShardMap(1, [Shard("s0", ""), Shard("s1", "")])
    e = ShardEngine("s0", str(tmp_path / "s0"), m, model=model[0], options={"threads": 1})
    ids = [i for i in range(50) if m.owner(i) == "s0"]
    with Client(e.endpoint) as c:
        c.step_many({i: np.ones(4, np.float32) for i in ids})
        want = {i: c.get_state(i) for i in ids}
    e.stop()
    e = ShardEngine("s0", str(tmp_path / "s0"), m, model=model[0], options={"threads": 1})
    try:
        with Client(e.endpoint) as c:
            for i in ids:
                assert np.array_equal(c.get_state(i).h, want[i].h)
    finally:
        e.stop()


def test_bad_shard_options_are_refused(model, tmp_path):
    m = ShardMap(1, [Shard("s0", "")])
    with pytest.raises(InputError, match="'s9' is not in the shard map"):
        ShardEngine("s9", str(tmp_path), m, model=model[0])
    with pytest.raises(InputError, match="'bogus' is not an option of serve"):
        ShardEngine("s0", str(tmp_path), m, model=model[0], options={"bogus": 1})
    with pytest.raises(InputError, match="'bind' is set by the cluster"):
        ShardEngine("s0", str(tmp_path), m, model=model[0], options={"bind": ("tcp://*:1",)})


def test_the_client_and_the_cli_do_not_import_ray():
    """Ray is imported only when a cluster is started or asked (engine/cluster/actors.py, control.py)."""
    import subprocess
    import sys
    code = "import sys, clients, engine.cli, engine.cluster.shard, lstm_stream.shardmap; sys.exit('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_async_client_routes_the_same(cluster, model):
    """AsyncClusterClient: many requests in flight over three shards, bit-identical to an offline run; a stale
    map corrected by wrong_shard; the ops sent to every shard."""
    import asyncio

    from clients import AsyncClusterClient
    m, engines = cluster
    ref = ls.Streams(model[1], threads=1)
    rng = np.random.default_rng(2)
    xs = {f"a{k}": rng.normal(size=(3, 4)).astype(np.float32) for k in range(24)}
    want = {i: ref.step(i, x) for i, x in xs.items()}

    async def main():
        stale = ShardMap(1, [Shard("s1", m.endpoints["s1"])])
        async with AsyncClusterClient(stale, timeout=10, exactly_once=True) as c:
            ys = await asyncio.gather(*(c.step(i, x) for i, x in xs.items()))  # every stream in flight at once
            assert c.map == m
            got = await c.step_many({i: x[0] for i, x in xs.items()})
            states = await asyncio.gather(*(c.get_state(i) for i in xs))
            info = await c.info()
            return ys, got, states, info, sorted(map(str, await c.streams()))

    ys, got, states, info, listed = asyncio.run(asyncio.wait_for(main(), 120))
    for (i, x), y, st in zip(xs.items(), ys, states):
        assert np.array_equal(y, want[i])
        assert np.array_equal(got[i], ref.step(i, x[0]))
        assert st.steps == 4 and np.array_equal(st.h, ref.get_state(i).h)
    assert set(info["shards"]) == set(NAMES) and listed == sorted(xs)


def test_a_pipeline_sends_each_shard_its_share(cluster, model):
    """ClusterClient.pipeline(): steps of many streams, a step_many across every shard, reads and an op of
    every shard in one pipeline from a stale map; results in order, bit-identical to an offline run; a call
    that fails leaves the others applied (PipelineError, its exception in its place)."""
    from clients import PipelineError
    m, _ = cluster
    ref = ls.Streams(model[1], threads=1)
    rng = np.random.default_rng(3)
    xs = {f"p{k}": rng.normal(size=4).astype(np.float32) for k in range(30)}
    batch = {f"p{k}": rng.normal(size=4).astype(np.float32) for k in range(30)}
    with ClusterClient(ShardMap(1, [Shard("s2", m.endpoints["s2"])]), timeout=10) as c:
        with c.pipeline() as p:
            for i, x in xs.items():
                p.step(i, x)
            p.step_many(batch)
            p.get_state("p3")
            p.ping()
        for (i, x), y in zip(xs.items(), p.results):
            assert np.array_equal(y, ref.step(i, x))
        got = p.results[len(xs)]
        assert list(got) == list(batch)
        for i, x in batch.items():
            assert np.array_equal(got[i], ref.step(i, x))
        assert p.results[-2].steps == 2 and isinstance(p.results[-1], float)
        assert c.map == m
        p = c.pipeline()
        p.step("p0", np.ones(4, np.float32))
        p.step("p1", np.ones(5, np.float32))  # the wrong input size
        with pytest.raises(PipelineError):
            p.execute()
        assert isinstance(p.results[0], np.ndarray) and isinstance(p.results[1], Exception)
        assert c.get_state("p0").steps == 3 and c.get_state("p1").steps == 2


def test_an_async_pipeline_sends_each_shard_its_share(cluster, model):
    """AsyncClusterClient.pipeline(): the sync pipeline's test, awaited; from a stale map, results in order and
    bit-identical to an offline run; a failed call leaves the others applied."""
    import asyncio

    from clients import AsyncClusterClient, PipelineError
    m, _ = cluster
    ref = ls.Streams(model[1], threads=1)
    rng = np.random.default_rng(4)
    xs = {f"q{k}": rng.normal(size=4).astype(np.float32) for k in range(30)}
    batch = {f"q{k}": rng.normal(size=4).astype(np.float32) for k in range(30)}

    async def main():
        async with AsyncClusterClient(ShardMap(1, [Shard("s0", m.endpoints["s0"])]), timeout=10) as c:
            async with c.pipeline() as p:
                for i, x in xs.items():
                    p.step(i, x)
                p.step_many(batch)
                p.get_state("q3")
                p.ping()
            first = p.results
            assert c.map == m
            p = c.pipeline()
            p.step("q0", np.ones(4, np.float32))
            p.step("q1", np.ones(5, np.float32))  # the wrong input size
            with pytest.raises(PipelineError):
                await p.execute()
            return first, p.results, (await c.get_state("q0")).steps, (await c.get_state("q1")).steps

    first, second, s0, s1 = asyncio.run(asyncio.wait_for(main(), 120))
    for (i, x), y in zip(xs.items(), first):
        assert np.array_equal(y, ref.step(i, x))
    got = first[len(xs)]
    assert list(got) == list(batch)
    for i, x in batch.items():
        assert np.array_equal(got[i], ref.step(i, x))
    assert first[-2].steps == 2 and isinstance(first[-1], float)
    assert isinstance(second[0], np.ndarray) and isinstance(second[1], Exception) and (s0, s1) == (3, 2)


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CURVE")
def test_shards_with_curve_keys(model, tmp_path):
    """Shards started with the same --curve-secret and key directories: a ClusterClient with an allowed step
    key routes (and is corrected by wrong_shard) over encrypted connections; a stranger's key gets nothing;
    the step role may not drop; --namespaces on is refused on shards, saying why."""
    import shutil

    import zmq.auth

    from clients import Forbidden, Timeout
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    allow.mkdir()
    keys.mkdir()
    pairs = {n: zmq.auth.create_certificates(keys, n) for n in ("server", "gw", "stranger")}
    shutil.copy(pairs["gw"][0], allow)
    options = {"threads": 1, "curve_secret": pairs["server"][1], "allow_keys": str(allow)}
    first = ShardMap(1, [Shard(n, "") for n in NAMES[:2]])
    engines = [ShardEngine(n, str(tmp_path / n), first, model=model[0], options=options) for n in NAMES[:2]]
    m = ShardMap(2, [Shard(e.name, e.endpoint) for e in engines])
    for e in engines:
        e.set_map(m)
    try:
        stale = ShardMap(1, [Shard("s0", m.endpoints["s0"])])
        with ClusterClient(stale, server_key=pairs["server"][0], client_keys=pairs["gw"][1], timeout=10) as c:
            ys = c.step_many({f"k{i}": np.ones(4, np.float32) for i in range(20)})
            assert len(ys) == 20 and c.map == m
            with pytest.raises(Forbidden):
                c.drop("k1")
        with pytest.raises(Timeout):
            with Client(m.endpoints["s0"], server_key=pairs["server"][0], client_keys=pairs["stranger"][1],
                        timeout=0.5, retries=0) as c:
                c.ping()
    finally:
        for e in engines:
            e.stop()
    with pytest.raises(InputError, match="--namespaces on is not supported on cluster shards"):
        ShardEngine("s0", str(tmp_path / "x"), first, model=model[0], options={**options, "namespaces": "on"})


def _pipeline_calls(rng, ids, rounds, bad=True):
    """Steps of every id, round after round; with bad, one of wrong size and one holding a NaN among them."""
    calls = [(i, rng.normal(size=4).astype(np.float32)) for _ in range(rounds) for i in ids]
    if bad:
        calls[57] = (calls[57][0], np.ones(5, np.float32))  # another shape: it ends a run, and goes alone
        x = calls[130][1].copy()
        x[2] = np.nan
        calls[130] = (calls[130][0], x)  # its run is refused whole, then sent one by one
    return calls


def _requests(m) -> int:
    total = 0
    for name in NAMES:
        with Client(m.endpoints[name], timeout=10) as c:
            total += c.info()["counters"]["requests"]
    return total


def _check_twins(calls, results, model):
    """Each merged result is what the same call sent alone got, and what an offline Streams gives."""
    ref = ls.Streams(model, threads=1)
    for (i, x), merged, alone in zip(calls, results[True], results[False]):
        try:
            want = ref.step(i, x)
        except InputError:
            assert type(merged) is type(alone) and merged.code == alone.code == "bad_input", (merged, alone)
            continue
        assert np.array_equal(merged, want) and np.array_equal(alone, want)
        assert merged.dtype == alone.dtype and merged.shape == alone.shape


@pytest.mark.parametrize("stale, bad", [(False, False), (False, True), (True, True)],
                         ids=["full map", "full map, bad steps", "stale map, bad steps"])
def test_a_merged_pipeline_gives_what_one_request_per_call_gives(cluster, model, stale, bad):
    """ClusterPipeline's runs of steps go to each shard as step_many (merge_steps, the default): the same
    results, errors and states as one request per call, in far fewer requests when no run is refused; from a
    stale map, the merged runs refused as wrong_shard go again one by one, then to their owners."""
    m, _ = cluster
    ids = [f"m{k}" for k in range(40)]
    calls = _pipeline_calls(np.random.default_rng(11), ids, 5, bad)
    start = ShardMap(1, [Shard("s1", m.endpoints["s1"])]) if stale else m
    results, requests = {}, {}
    with ClusterClient(start, timeout=10) as c:
        for merge in (True, False):
            before = _requests(m)
            p = c.pipeline(merge_steps=merge)
            for i, x in calls:
                p.step(f"{merge}-{i}", x)
            results[merge] = p.execute(return_exceptions=True)
            requests[merge] = _requests(m) - before - len(NAMES)  # (less the info requests that counted)
        _check_twins(calls, results, model[1])
        for i in ids:
            a, b = c.get_state(f"True-{i}"), c.get_state(f"False-{i}")
            assert a.steps == b.steps and np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c)
    assert requests[False] >= len(calls)
    if not bad:  # a run of each shard's steps in one request (up to a run's size)
        assert requests[True] <= 2 * len(NAMES), requests


def test_an_async_merged_pipeline_gives_what_one_request_per_call_gives(cluster, model):
    """AsyncClusterClient.pipeline(merge_steps=...): each shard's share as its AsyncPipeline, merged or not,
    with the same results and far fewer requests merged."""
    import asyncio

    from clients import AsyncClusterClient
    m, _ = cluster
    calls = _pipeline_calls(np.random.default_rng(12), [f"n{k}" for k in range(40)], 5, bad=False)
    results, requests = {}, {}

    async def main():
        async with AsyncClusterClient(m, timeout=10) as c:
            for merge in (True, False):
                before = _requests(m)
                p = c.pipeline(merge_steps=merge)
                for i, x in calls:
                    p.step(f"{merge}-{i}", x)
                results[merge] = await p.execute(return_exceptions=True)
                requests[merge] = _requests(m) - before - len(NAMES)

    asyncio.run(asyncio.wait_for(main(), 120))
    _check_twins(calls, results, model[1])
    assert requests[False] >= len(calls) and requests[True] <= 2 * len(NAMES), requests


def test_a_merged_pipeline_that_times_out_on_one_shard_keeps_the_others_results(cluster, model):
    """A shard that never answers (a silent socket in its place in the map): the merged pipeline raises
    Timeout after its deadline, with every other shard's steps answered in `results` (bit-identical to an
    offline run) and the Timeout in place of the silent shard's."""
    import zmq

    from clients import Timeout
    m, _ = cluster
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        shards = [Shard(n, f"tcp://127.0.0.1:{port}" if n == "s1" else m.endpoints[n]) for n in NAMES]
        calls = _pipeline_calls(np.random.default_rng(13), [f"t{k}" for k in range(40)], 3, bad=False)
        ref = ls.Streams(model[1], threads=1)
        with ClusterClient(ShardMap(m.version, shards), timeout=1, retries=0) as c:
            p = c.pipeline()
            for i, x in calls:
                p.step(i, x)
            with pytest.raises(Timeout):
                p.execute()
        for (i, x), r in zip(calls, p.results):
            if m.owner(i) == "s1":
                assert isinstance(r, Timeout)
            else:
                assert np.array_equal(r, ref.step(i, x))
        assert any(m.owner(i) == "s1" for i, _ in calls) and any(m.owner(i) != "s1" for i, _ in calls)
    finally:
        silent.close(0)
