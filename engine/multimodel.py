"""Several models in one daemon: one EngineCore per model behind the interface the server uses of one core.

    router = ModelRouter({"pump": core_a, "fan": core_b}, default="pump")
    router.submit(tag, req)     # req.model names the core ("pump", "fan"); None: the default model's
    router.step()               # a turn of every core with work, in turn: [(tag, Reply)]
    router.housekeep()          # each core's housekeeping; the earliest deadline

Each model keeps everything a one-model daemon has, apart: its Streams (so streams are keyed by (model, id):
"pump-7" of model pump and "pump-7" of model fan are two streams), its state directory
(`<snapshot-dir>/models/NAME/`: snapshot, step log, cold store), its counters and its queue. A request's
optional "model" field names its model; without it, the default model (--default-model, or the only one)
serves it, and with several models and no default it is refused as unknown_model, naming the models. A
client's requests to one model keep their order; requests to two models are two queues, served in turn.
`info` answers for one model (the named one, the default, or without either the first) and lists every model
under "models"; `ping` needs no model.
"""
from __future__ import annotations

from lstm_stream import protocol as P
from lstm_stream.messages import Reply


class ModelRouter:
    """EngineCores by model name; quacks like the one EngineCore that engine/server.py and WireCore drive."""

    def __init__(self, cores: dict, default: str | None = None):
        if not cores:
            raise ValueError("a ModelRouter needs at least one model")
        if default is not None and default not in cores:
            raise ValueError(f"the default model {default!r} is not one of the models served: {', '.join(cores)}")
        self.cores = dict(cores)
        self.default = default if default is not None else (next(iter(cores)) if len(cores) == 1 else None)
        self._first = next(iter(self.cores.values()))
        self.config = self._first.config
        self.access = self._first.access
        self._ring = list(self.cores.values())
        # Refusals before any core (an unknown model) and the server's dropped replies are counted by the
        # default model's core (or the first one's): its counters are the router's `metrics`.
        self.metrics = self._home().metrics

    @property
    def stats(self):
        """The loop's histograms (engine/loopstats.py, with the metrics endpoint on), shared by every core."""
        return self._first.stats

    @stats.setter
    def stats(self, value) -> None:
        for c in self._ring:
            c.stats = value

    # ---- what the server and WireCore read ----------------------------------------------------------
    @property
    def streams(self):
        """The default model's Streams (or the first model's)."""
        return self._home().streams

    @property
    def journals(self) -> list:
        """The step logs of every model (the server waits on each one's fsync wake-ups)."""
        return [j for c in self._ring for j in c.journals]

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self._ring)

    @property
    def pending_bytes(self) -> int:
        return sum(c.pending_bytes for c in self._ring)

    @property
    def held(self) -> int:
        return sum(c.held for c in self._ring)

    @property
    def arrival(self) -> float:
        return self._first.arrival

    @arrival.setter
    def arrival(self, t: float) -> None:  # the server stamps each drain's read time (metrics on)
        for c in self._ring:
            c.arrival = t

    def _home(self):
        return self.cores[self.default] if self.default is not None else self._first

    # ---- requests in, replies out --------------------------------------------------------------
    def core_for(self, name):
        """The EngineCore of model `name` (None: the default), or None when there is no such model."""
        if name is None:
            return self.cores.get(self.default) if self.default is not None else None
        return self.cores.get(name)

    def submit(self, tag, req, nbytes: int = 0, user=None) -> Reply | None:
        """Queue req at its model's core (see EngineCore.submit); unknown_model if it has none."""
        core, refused = self._route(req)
        if refused is not None:
            return refused
        reply = core.submit(tag, req, nbytes, user)
        if reply is not None and req.op == "info" and reply.ok:
            reply.result["models"] = self.describe()
        return reply

    def _route(self, req):
        """(core, None): the core that serves req; or (None, the unknown_model Reply)."""
        core = self.core_for(req.model)
        if core is not None:
            return core, None
        if req.model is None and (req.op == "ping" or req.op == "info"):
            return self._first, None  # ping and info need no model: the first one answers (info lists them all)
        return None, self._unknown(req)

    def _unknown(self, req) -> Reply:
        names = sorted(self.cores)
        if req.model is None:
            message = (f"this daemon serves {len(names)} models and has no default (--default-model): name one in "
                       f"the request's 'model' field: {', '.join(names)}")
        else:
            message = f"no model {req.model[:64]!r} here; this daemon serves: {', '.join(names)}"
        reply = self.refuse(req.id, P.UNKNOWN_MODEL, message, op=req.op)
        reply.detail = {"models": names}
        return reply

    def refuse(self, request_id, code: str, message: str, *, counted: bool = False, op=None) -> Reply:
        """An error Reply to a message no model's core took (counted by the default model's core)."""
        return self._home().refuse(request_id, code, message, counted=counted, op=op)

    def step(self) -> list:
        """One turn of each core with queued requests, replies held for an fsync or `snapshot` requests
        answered, in turn."""
        out = []
        for core in self._ring:
            if core.pending or core.held or core.snapshots_waiting:
                out.extend(core.step())
        return out

    @property
    def snapshots_waiting(self) -> int:
        return sum(c.snapshots_waiting for c in self._ring)

    def settle_snapshots(self) -> None:
        for core in self._ring:
            core.settle_snapshots()

    def housekeep(self, now: float | None = None) -> float:
        """Every core's housekeeping; the earliest of their deadlines."""
        return min(core.housekeep(now) for core in self._ring)

    def add_ticker(self, tick) -> None:
        """A shell timer (systemd's watchdog, the log's repeat counts), run by the first core's housekeeping."""
        self._first.add_ticker(tick)

    def call(self, msg: dict) -> dict:
        """One request map in-process, its reply map out (tests, tools)."""
        try:
            req = P.parse_request(msg)
        except P.ProtocolError as e:
            return self.refuse(e.request_id, e.code, e.message).as_map()
        core, refused = self._route(req)
        if refused is not None:
            return refused.as_map()
        reply = core.call(msg)
        if req.op == "info" and reply.get("ok"):
            reply["models"] = self.describe()
        return reply

    # ---- what info says of the models ----------------------------------------------------------
    def describe(self) -> dict:
        """{name: {fingerprint, sizes, streams, default}} of every model served."""
        out = {}
        for name, core in self.cores.items():
            m = core.streams.model
            out[name] = {"fingerprint": m.fingerprint, "input_size": m.input_size, "output_size": m.output_size,
                         "hidden_size": m.hidden_size, "num_layers": m.num_layers, "dtype": str(m.dtype),
                         "autoregressive": m.autoregressive, "streams": len(core.streams),
                         "default": name == self.default}
        return out

    def requests(self) -> int:
        """Requests received, all models (systemd's status line, the stop log line)."""
        return sum(c.metrics["requests"] for c in self._ring)

    def __len__(self) -> int:
        """Streams in memory, all models."""
        return sum(len(c.streams) for c in self._ring)
