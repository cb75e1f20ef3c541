"""StepContext: the arrays a one-stream CPU step reads and writes, handed to the compiled step as one argument.

A Python-to-Numba call costs ~40 ns for each array argument it unboxes; the one-stream step needs eight
arrays (weights, index, the two state slabs, the id table, scratch, step counts, last-seen times), which at
~2.5 µs a step was a fifth of it. A StructRef holding them is unboxed as one pointer. Numba's StructRef is
cacheable (its type names its fields, not an address, unlike a jitclass), and new_context is compiled and
cached like the kernels. A context is built when the backend binds its fast path and rebuilt when any of its
arrays is replaced (growth).
"""
from __future__ import annotations

from numba import njit, types
from numba.experimental import structref

FIELDS = ("wbuf", "meta", "h", "c", "kv", "scratch", "steps", "last_seen")


@structref.register
class StepContextType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(typ)) for name, typ in fields)


class StepContext(structref.StructRefProxy):
    """Opaque from Python: build it with new_context and pass it to kernels.cpu.step_one."""


structref.define_proxy(StepContext, StepContextType, list(FIELDS))


@njit(cache=True)
def new_context(wbuf, meta, h, c, kv, scratch, steps, last_seen):
    """A StepContext over these arrays (no copies)."""
    return StepContext(wbuf, meta, h, c, kv, scratch, steps, last_seen)
