"""Property: any pipeline gives the same results and leaves the same states merged as sent one call at a time.

Two in-process engines with the same model run the same calls, one as a pipeline that merges runs of steps
(clients/coalesce.py), the other with merge_steps=False: steps of every input kind (float32 and float64
samples, several samples, a NaN, a wrong size, an id repeated within a run), reads, resets and drops among
them, and a store of few streams (store_full). Every result must be alike (equal arrays of the same dtype and
shape, or errors of the same class and text), and so must every stream's state after.
"""
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from clients import LocalClient
from clients.coalesce import Run, split

I = 4
IDS = [f"p{k}" for k in range(6)] + [7, 8]  # few ids: runs repeat them; str and int ids mixed
MAX_STREAMS = 6                              # fewer than the ids: some new streams do not fit


def x_of(kind: int, rng) -> np.ndarray:
    if kind == 0:
        return rng.normal(size=I).astype(np.float64)
    if kind == 1:
        return rng.normal(size=(2, I)).astype(np.float32)
    if kind == 2:
        return np.array([0.5, np.nan, 0.5, 0.5], np.float32)  # refused: in a run, the run is refused
    if kind == 3:
        return np.zeros(I + 1, np.float32)                   # refused, and ends a run (another shape)
    return rng.normal(size=I).astype(np.float32)             # the common case


@st.composite
def calls(draw):
    """Segments in a row: a stretch of steps of one base input kind (float32 or float64 samples) with a few odd
    ones in it (a NaN, a wrong size, several samples), or one read, reset or drop."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            out.append((draw(st.sampled_from(["get_state", "reset", "drop"])), draw(st.sampled_from(IDS)), None))
            continue
        base = draw(st.sampled_from([4, 4, 4, 0]))
        for _ in range(draw(st.integers(1, 60))):
            odd = draw(st.integers(0, 39))
            out.append(("step", draw(st.sampled_from(IDS)), (1, 2, 3)[odd] if odd < 3 else base))
    return out


def alike(a, b) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if a is None:
        return b is None
    return np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c) and a.steps == b.steps


@settings(max_examples=100, deadline=None)
@given(calls=calls(), seed=st.integers(0, 2**32 - 1))
def test_a_merged_pipeline_equals_the_calls_one_at_a_time(served_models, calls, seed):
    _, model = served_models["ar"]
    twins = [LocalClient.serving(model, max_streams=MAX_STREAMS) for _ in range(2)]
    rng = np.random.default_rng(seed)
    xs = [x_of(kind, rng) if op == "step" else None for op, _, kind in calls]
    got = []
    for client, merge in zip(twins, (True, False)):
        p = client.pipeline(merge_steps=merge)
        for (op, stream, _), x in zip(calls, xs):
            if op == "step":
                p.step(stream, x)
            else:
                getattr(p, op)(stream)
        if merge:
            event(f"merged runs: {min(sum(isinstance(i, Run) for i in split(p._calls)), 3)}+")
        got.append(p.execute(return_exceptions=True))
    merged, separate = got
    for k, (a, b) in enumerate(zip(merged, separate)):
        assert alike(a, b), (k, calls[k], a, b)
    for stream in IDS:
        a, b = (c.pipeline().get_state(stream).execute(return_exceptions=True)[0] for c in twins)
        assert alike(a, b), stream
