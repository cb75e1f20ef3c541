"""In-process client: the Client API over an EngineCore in this process, with no socket and no msgpack.

    c = LocalClient.serving(model)                 # a fresh core over Streams(model); or LocalClient(core)
    y = c.step("pump-7", x)
    with c.pipeline() as p: ...                    # queued, served together (one kernel call for the steps)

Each call is checked as the daemon checks a decoded request (protocol.parse_request) and served by the same
EngineCore, so results and errors are the daemon's, bit for bit: what tests and notebooks use to drive the
engine without a daemon. Importing this module loads no numba; serving() imports the engine when called.
"""
from __future__ import annotations

import itertools

from lstm_stream import protocol as P

from ._api import Api, Call
from .client import Pipeline
from .errors import BadReply


class LocalClient(Api):
    """Client's methods, served by an EngineCore in this process. For one thread at a time."""

    def __init__(self, core, *, model: str | None = None):
        self.core = core
        self.model = model  # the model every request names (a core of several models); None: the default
        self._model = {} if model is None else {"model": model}
        self._ids = itertools.count(1)

    @classmethod
    def serving(cls, model, *, config=None, **streams_options) -> "LocalClient":
        """A LocalClient of a new EngineCore over Streams(model, **streams_options)."""
        from engine.core import EngineConfig, EngineCore
        from lstm_stream.streams import Streams
        return cls(EngineCore(Streams(model, **streams_options), config or EngineConfig()))

    @classmethod
    def serving_models(cls, models: dict, *, default: str | None = None, config=None,
                       **streams_options) -> "LocalClient":
        """A LocalClient of several models in this process, as `serve --model NAME=PATH ...` serves them
        (engine/multimodel.py): models {name: LSTMModel}; it uses the default model (`default`, or the only
        one); `for_model(name)` gives a LocalClient of another, sharing the same core."""
        from engine.core import EngineConfig, EngineCore
        from engine.multimodel import ModelRouter
        from lstm_stream.streams import Streams
        config = config or EngineConfig()
        cores = {name: EngineCore(Streams(m, **streams_options), config, name=name) for name, m in models.items()}
        return cls(ModelRouter(cores, default))

    def for_model(self, name: str) -> "LocalClient":
        """A LocalClient of the same core whose requests name model `name`."""
        return LocalClient(self.core, model=name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Nothing to release (the core stays usable); for symmetry with Client."""

    def __repr__(self):
        return f"LocalClient({self.core.streams.model!r})"

    def pipeline(self, *, merge_steps: bool = True) -> Pipeline:
        """A Pipeline: queue calls, serve them together, get results in order (merge_steps: as in
        Client.pipeline)."""
        return Pipeline(self, merge_steps=merge_steps)

    def _run(self, call: Call):
        return call.finish(self._roundtrip([call])[0])

    def _roundtrip(self, calls, parse=None) -> list:
        """Queue every call, serve the core until all are answered; reply maps in call order, or
        parse(call, reply map) of each."""
        core, replies = self.core, {}
        for k, call in enumerate(calls):
            try:
                req = P.parse_request({"v": P.PROTOCOL_VERSION, "id": next(self._ids), "op": call.op,
                                       **self._model, **call.fields})
            except P.ProtocolError as e:
                replies[k] = core.refuse(e.request_id, e.code, e.message)
                continue
            reply = core.submit(k, req)
            if reply is not None:
                replies[k] = reply
        while len(replies) < len(calls) and (core.pending or core.snapshots_waiting):
            if not core.pending:  # `snapshot` requests: their background write ends here
                core.settle_snapshots()
            replies.update(core.step())
        if len(replies) < len(calls):  # cannot happen: every queued request is answered by step()
            raise BadReply("the engine answered fewer requests than it was given")
        maps = [replies[k].as_map() for k in range(len(calls))]
        return maps if parse is None else [parse(call, m) for call, m in zip(calls, maps)]

    def _reopen(self) -> None:
        """Nothing to reopen (Pipeline calls this after a Timeout, which cannot happen here)."""
