"""The Backend protocol's contract, for the tests of each backend (tests/core/test_backends.py and
tests/cuda/test_cuda_backend_protocol.py): every method present with a compatible signature, and a proxy that
lets Streams reach its backend only through the protocol."""
import inspect

from lstm_stream.backends.protocol import Backend

METHODS = sorted(name for name, value in vars(Backend).items() if inspect.isfunction(value) and name[0] != "_")


def signature_problems(cls) -> list:
    """What in cls does not implement Backend: a missing method or attribute, or a signature that does not
    accept every call the protocol's does (the same leading parameters, by name and kind; any extra ones with
    a default)."""
    problems = [] if "name" in vars(cls) else ["no class attribute `name`"]
    for name in METHODS:
        impl = getattr(cls, name, None)
        if not callable(impl):
            problems.append(f"{name}: missing")
            continue
        want = list(inspect.signature(getattr(Backend, name)).parameters.values())
        got = list(inspect.signature(impl).parameters.values())
        same = len(got) >= len(want) and all(a.name == b.name and a.kind == b.kind for a, b in zip(want, got))
        if not same or any(p.default is inspect.Parameter.empty for p in got[len(want):]):
            want_sig = inspect.signature(getattr(Backend, name))
            problems.append(f"{name}{inspect.signature(impl)} does not accept the calls of {name}{want_sig}")
    return problems


class ProtocolOnly:
    """A backend seen through the protocol alone: any other attribute raises AttributeError; `used` records
    which protocol members were called."""

    def __init__(self, backend):
        self._inner, self.used = backend, set()

    def __getattr__(self, attr):
        if attr != "name" and attr not in METHODS:
            raise AttributeError(f"Streams used {attr!r}, which is not part of the Backend protocol")
        self.used.add(attr)
        return getattr(self._inner, attr)
