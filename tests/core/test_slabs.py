"""slabs.Slab: per-slot arrays that grow in place in a reservation, and by a copy where there is none (or it is
outgrown); the stores that use them keep every stream through growth either way."""
import numpy as np
import pytest

import lstm_stream as ls
from lstm_stream import slabs
from lstm_stream.slabs import Slab, small_pages


@pytest.fixture(params=["mapped", "plain"])
def mode(request, monkeypatch):
    """Each test twice: with reservations (the usual), and where no mapping can be made (Windows, a strict
    overcommit policy, an address-space limit)."""
    if request.param == "plain":
        monkeypatch.setattr(slabs, "_mapping", lambda nbytes: None)
    return request.param


def test_grow_keeps_rows_in_place_and_new_rows_are_zero_or_fill(mode):
    rng = np.random.default_rng(5)
    slab = Slab(5, (3, 7), np.float32)
    before = slab.array
    before[:] = rng.standard_normal(before.shape, dtype=np.float32)
    kept = before.copy()
    after = slab.grow(13)
    assert after.shape == (13, 3, 7) and after.dtype == np.float32 and after.flags.c_contiguous
    assert after.flags.writeable and after.ctypes.data % 64 == 0  # on a cache line, as the kernels want
    assert np.array_equal(after[:5], kept) and not after[5:].any()
    assert np.shares_memory(before, after) == (mode == "mapped")  # in place: the old view is the same rows
    filled = Slab(3, (), np.int64, fill=-1)
    assert filled.array.tolist() == [-1] * 3
    filled.array[1] = 9
    assert filled.grow(7).tolist() == [-1, 9, -1, -1, -1, -1, -1]


def test_an_outgrown_reservation_is_copied_into_one_twice_as_large(mode):
    slab = Slab(2, (2,), np.int32, fill=7, reserve=3)
    slab.array[:] = [[1, 2], [3, 4]]
    assert slab.reserved == (3 if mode == "mapped" else 2)
    assert slab.grow(3)[:, 0].tolist() == [1, 3, 7]
    grown = slab.grow(5)  # beyond the reservation: copied
    assert grown.tolist() == [[1, 2], [3, 4], [7, 7], [7, 7], [7, 7]]
    assert slab.reserved == (6 if mode == "mapped" else 5)
    grown[4] = 0
    assert slab.grow(6)[4:].tolist() == [[0, 0], [7, 7]]


def test_huge_page_advice_changes_nothing_visible():
    """Advised past HUGE_FROM_BYTES (where the OS has transparent huge pages; ignored elsewhere)."""
    slab = Slab(1 << 10, (64,), np.float32, huge=True)
    slab.array[-1] = 1.5
    grown = slab.grow(1 << 15)  # 8 MiB: advised
    assert grown[(1 << 10) - 1, 0] == 1.5 and not grown[1 << 10:].any() and slab._advised == (slab._map is not None)


def test_small_pages_gives_a_writable_array_of_the_shape(mode):
    for shape in ((3, 2), (1 << 20, 1)):  # (plain memory below HUGE_FROM_BYTES, a mapping above)
        a = small_pages(shape, np.int64)
        a[...] = -1
        assert a.shape == shape and a.dtype == np.int64 and (a == -1).all()


def test_streams_grow_in_place_and_keep_every_stream_bit_exact(mode):
    """A store grown from 4 slots to a few thousand by new streams, and a copy stepped alongside with room
    from the start: every stream's outputs and state are the same bits; with reservations the state slab is
    the same memory throughout."""
    rng = np.random.default_rng(11)
    model = ls.LSTMModel.from_arrays({"weight_ih_l0": rng.standard_normal((20, 3), dtype=np.float32) * 0.3,
                                      "weight_hh_l0": rng.standard_normal((20, 5), dtype=np.float32) * 0.3,
                                      "bias_ih_l0": rng.standard_normal(20, dtype=np.float32) * 0.1,
                                      "bias_hh_l0": rng.standard_normal(20, dtype=np.float32) * 0.1})
    small, roomy = ls.Streams(model, threads=1, initial_capacity=4), ls.Streams(model, threads=1,
                                                                                 initial_capacity=4096)
    h0 = small._backend.h
    ids = [f"s{k}" for k in range(3000)] + list(range(500))  # str and int ids, both tables growing
    for round_ in range(3):
        for a in range(0, len(ids), 700):
            batch = ids[a:a + 700]
            x = rng.standard_normal((len(batch), 3), dtype=np.float32)
            assert np.array_equal(small.step_many(batch, x), roomy.step_many(batch, x))
    assert small._store.capacity >= len(ids) and np.shares_memory(h0, small._backend.h) == (mode == "mapped")
    for i in ids[::97]:
        a, b = small.get_state(i), roomy.get_state(i)
        assert np.array_equal(a.h, b.h) and np.array_equal(a.c, b.c)
