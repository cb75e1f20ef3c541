"""Invariant 2 on CUDA: a stream's outputs are bit-identical whatever shares its batch (tile partners, tile
slot, order) and whatever the launch geometry (threads per block, grid size, weights staged or not)."""
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream.backends import cuda as cuda_backend
from cuda_helpers import big
from models import random_model, step_ragged_interleaved


def alone(model, xs_by_id):
    """Each stream run alone (one call over its whole sequence) in a fresh CUDA Streams."""
    out = {}
    for sid, xs in xs_by_id.items():
        if len(xs):
            out[sid] = ls.Streams(model, backend="cuda").step(sid, xs)
    return out


@pytest.mark.parametrize("P", [0, 3])
def test_interleaved_step_many_with_repeats_is_bit_identical(P, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=3, H=big(5, 40), L=2, P=P, O=3)
    n_streams, n_samples = big(7, 200), big(40, 5000)
    ids = [f"s{k}" if k % 2 else k for k in range(n_streams)]
    order = rng.integers(0, n_streams, n_samples)
    X = rng.normal(0, 1, (n_samples, 3)).astype(np.float32)
    expected = alone(model, {ids[k]: X[order == k] for k in range(n_streams)})
    streams = ls.Streams(model, backend="cuda")
    got = {i: [] for i in ids}
    pos = 0
    while pos < n_samples:  # random batch sizes, repeated ids inside a batch
        n = int(rng.integers(1, big(15, 500)))
        batch = [ids[k] for k in order[pos:pos + n]]
        for i, y in zip(batch, streams.step_many(batch, X[pos:pos + n])):
            got[i].append(y)
        pos += n
    for i in expected:
        assert np.array_equal(np.stack(got[i]), expected[i]), f"stream {i!r}, seed={seed}"


def test_ragged_step_batch_is_bit_identical(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=3, H=big(6, 48), L=big(2, 3), O=2)
    seqs = {k: rng.normal(0, 1, (int(rng.integers(1, big(9, 60))), 3)).astype(np.float32)
            for k in range(big(6, 100))}
    expected = alone(model, seqs)
    got = step_ragged_interleaved(ls.Streams(model, backend="cuda"), seqs, rng, max_chunk=4)
    for k in seqs:
        assert np.array_equal(got[k], expected[k]), f"stream {k}, seed={seed}"


GEOMETRIES = {  # name: monkeypatches of cuda_backend
    "default": {},
    "few threads (units loop per thread)": {"MAX_BLOCK_THREADS": 8, "MIN_BLOCK_THREADS": 8},
    "one persistent block for all tiles": {"MAX_BLOCKS_PER_SM": 1, "sm_count": lambda: 1},
    "weights read from global memory": {"Kernels.opt_in_shared": lambda self, n, names=(): False},
    "wide path (units over blocks)": {"CUDABackend._wide": lambda self, n: True},
    "wide path, few threads": {"CUDABackend._wide": lambda self, n: True, "MAX_BLOCK_THREADS": 8,
                               "MIN_BLOCK_THREADS": 8},
}


@pytest.mark.parametrize("P,O,act", [(0, 3, "softmax"), (4, 3, "sigmoid"), (0, 0, "none")])
def test_launch_geometry_and_path_do_not_change_outputs(P, O, act, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=2, H=big(11, 300), L=2, P=P, O=O, head_activation=act)
    n = big(9, 3000)
    batches = [[rng.normal(0, 1, (int(rng.integers(1, 4)), 2)).astype(np.float32) for _ in range(n)]
               for _ in range(2)]  # ragged: 1 to 3 steps per stream
    results = {}
    for name, patches in GEOMETRIES.items():
        with monkeypatch.context() as m:
            for attr, value in patches.items():
                owner, _, leaf = attr.rpartition(".")
                m.setattr(getattr(cuda_backend, owner) if owner else cuda_backend, leaf, value)
            s = ls.Streams(model, backend="cuda")
            if name == "weights read from global memory":
                assert not s._backend.staged
            results[name] = np.concatenate([np.concatenate(s.step_batch(list(range(n)), xs)) for xs in batches])
    for name, r in results.items():
        assert np.array_equal(r, results["default"]), f"{name}: seed={seed}"


def test_batch_order_does_not_change_outputs(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, I=4, H=big(5, 64), L=1, O=2, head_activation="sigmoid")
    n = big(6, 1000)
    X = rng.normal(0, 1, (n, 4)).astype(np.float32)
    a = ls.Streams(model, backend="cuda").step_many(list(range(n)), X)
    perm = rng.permutation(n)
    b = ls.Streams(model, backend="cuda").step_many([int(p) for p in perm], X[perm])
    assert np.array_equal(a[perm], b), f"seed={seed}"
