"""The batch planner on its own: typed requests in, a BatchPlan out; no socket, no kernel call, no change."""
import subprocess
import sys

import numpy as np
import pytest
from models import random_model

import lstm_stream as ls
from engine.planner import plan
from lstm_stream import protocol as P
from lstm_stream.errors import InputError, StoreFullError

I, O = 3, 2


@pytest.fixture(scope="module")
def model():
    return random_model(np.random.default_rng(11), I=I, H=5, L=1, O=O)


def request(op, rid=0, **fields):
    return P.parse_request({"v": 1, "id": rid, "op": op, **fields})


def test_segments_rows_and_spans_in_arrival_order(model):
    streams = ls.Streams(model)
    streams.step("known", np.ones(I))
    rng = np.random.default_rng(0)
    x1, xs, X = rng.normal(size=I), rng.normal(size=(4, I)), rng.normal(size=(2, I))
    ragged = [rng.normal(size=I), rng.normal(size=(3, I))]
    reqs = [request("step", 0, stream="known", x=x1), request("step", 1, stream="a", x=xs),
            request("step_many", 2, streams=["b", "known"], x=X),
            request("step_many", 3, streams=["a", 7], xs=ragged)]
    p = plan(reqs, streams)
    assert p.refused == [] and p.ids == ["known", "a", "b", "known", "a", 7]
    assert p.lengths.tolist() == [1, 4, 1, 1, 1, 3] and p.samples == 11
    want = np.concatenate([x1[None], xs, X, ragged[0][None], ragged[1]]).astype(np.float32)
    assert p.X.dtype == np.float32 and p.X.flags.c_contiguous and np.array_equal(p.X, want)
    assert p.slots is None  # some ids are new: the call looks them up (and creates them)
    assert [(s.row, s.rows) for s in p.spans] == [(0, 1), (1, 4), (5, 2), (7, 4)]
    assert len(streams) == 1 and streams.stream_info("known")["steps"] == 1  # nothing changed
    Y = np.arange(11 * O, dtype=np.float32).reshape(11, O)
    results = dict((r.id, res) for r, res in p.results(Y))
    assert results[0]["y"].shape == (O,) and np.array_equal(results[0]["y"], Y[0])
    assert np.array_equal(results[1]["y"], Y[1:5]) and np.array_equal(results[2]["y"], Y[5:7])
    ys = results[3]["ys"]
    assert ys[0].shape == (O,) and np.array_equal(ys[0], Y[7]) and np.array_equal(ys[1], Y[8:11])


def test_known_streams_come_with_their_slots(model):
    streams = ls.Streams(model)
    streams.step_many(["a", "b", 5], np.ones((3, I)))
    p = plan([request("step", 0, stream="b", x=np.ones(I)),
              request("step_many", 1, streams=[5, "a"], x=np.ones((2, I)))], streams)
    assert p.slots.tolist() == [streams.known_slot(i) for i in ("b", 5, "a")] and p.lengths is None
    assert p.generation == streams.generation
    streams.drop("a")
    assert streams.generation != p.generation  # step_planned looks the ids up again


def test_a_bad_request_is_refused_alone(model):
    streams = ls.Streams(model)
    reqs = [request("step", 0, stream="a", x=np.ones(I)), request("step", 1, stream="b", x=np.ones(I + 1)),
            request("step_many", 2, streams=["c"], x=np.ones((2, I))),
            request("step_many", 3, streams=[], x=np.ones((0, I))),
            request("step", 4, stream="d" * 300, x=np.ones(I)), request("step", 5, stream="a", x=np.ones(I))]
    p = plan(reqs, streams)
    assert [s.request.id for s in p.spans] == [0, 5] and p.ids == ["a", "a"]
    refused = {r.id: e for r, e in p.refused}
    assert sorted(refused) == [1, 2, 3, 4]
    assert isinstance(refused[1], InputError) and f"({I},)" in str(refused[1])
    assert "2 rows but 'streams' lists 1" in str(refused[2])
    assert getattr(refused[3], "code", None) == P.BAD_INPUT
    assert "256" in str(refused[4])


def test_store_room_is_counted_in_arrival_order(model):
    streams = ls.Streams(model, max_streams=3)
    streams.step("old", np.ones(I))
    reqs = [request("step", 0, stream="n1", x=np.ones(I)),
            request("step_many", 1, streams=["n2", "n3"], x=np.ones((2, I))),  # 1 + 1 + 2 > 3
            request("step", 2, stream="n2", x=np.ones(I)),
            request("step", 3, stream="n3", x=[np.nan] * I),                     # full, but NaN is said first
            request("step", 4, stream="old", x=np.ones(I))]
    p = plan(reqs, streams)
    assert [s.request.id for s in p.spans] == [0, 2, 4]
    refused = {r.id: e for r, e in p.refused}
    assert isinstance(refused[1], StoreFullError)
    assert "2 of max_streams=3 streams in use or being created, this request adds 2" in str(refused[1])
    assert isinstance(refused[3], InputError) and "NaN" in str(refused[3])


def test_non_finite_names_the_field(model):
    streams = ls.Streams(model)
    bad_x = np.ones((2, I))
    bad_x[1, 0] = np.inf
    reqs = [request("step", 0, stream="a", x=np.ones(I)), request("step", 1, stream="b", x=bad_x),
            request("step_many", 2, streams=["c", "d"], xs=[np.ones(I), [[0, np.nan, 0]]])]
    p = plan(reqs, streams)  # NaN/Inf is left to the call that runs the plan
    assert len(p.spans) == 3
    bad = {r.id: str(e) for r, e in p.non_finite()}
    assert bad == {1: "x contains NaN or Inf; expected finite values",
                   2: "xs[1] contains NaN or Inf; expected finite values"}


def test_the_planner_loads_no_kernel():
    code = ("import sys, engine.planner; bad = sorted(m for m in sys.modules if m.startswith('numba') or "
            "m.startswith('lstm_stream.kernels') or m.startswith('lstm_stream.backends')); print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("before", [["other"], ["other", "p"], ["p"]])
@pytest.mark.parametrize("T", [1, 2, 3])
def test_a_sequenced_step_after_other_steps_of_the_turn_counts_its_own_samples(model, before, T):
    """The first sequenced step of a turn counted the rows already planned per stream in a loop whose variable
    shadowed its own T: a step of T > 1 samples after another step in the same turn was refused as a seq_gap
    ("a step of 1 sample(s) must carry seq 1, got 3"). Found by tests/fuzz (witness streams)."""
    streams = ls.Streams(model)
    reqs = [request("step", k, stream=s, x=np.ones(I)) for k, s in enumerate(before)]
    reqs.append(request("step", 9, stream="p", x=np.ones((T, I)), seq=before.count("p") + T))
    p = plan(reqs, streams)
    assert p.refused == [], p.refused
    assert p.spans[-1].rows == T and p.spans[-1].seq == before.count("p") + T
