"""EngineCore's checks of a request before it is queued (a mixin, as ops.Ops): the model it names, the shard
that owns its ids, what its client's key may do, and the per-request bounds. Each refusal is a Reply, and
nothing is applied."""
from __future__ import annotations

from lstm_stream import protocol as P
from lstm_stream.messages import Reply

from .access import Owned


class Admission:
    """_admit (model, ownership, access) and _over_bounds (--max-request-samples, --max-request-new-streams)."""

    def _admit(self, tag, req, user):
        """(tag, req, None) for a request to go on with (with access control, req's ids namespaced and tag an
        Owned), or (tag, req, Reply) refusing it."""
        if req.model is not None and req.model != self.name:  # (a daemon of several: the router checked it)
            served = "one unnamed model" if self.name is None else f"one model, {self.name!r}"
            reply = self.refuse(req.id, P.UNKNOWN_MODEL, f"no model {req.model[:64]!r} here; this daemon serves "
                                                         f"{served}", counted=True, op=req.op)
            reply.detail = {"models": [] if self.name is None else [self.name]}
            return tag, req, reply
        if self.ownership is not None:  # a shard of a cluster: ids it does not own are wrong_shard
            wrong = self.ownership(req)  # (on the client's own ids: before access control namespaces them)
            if wrong is not None:
                reply = self.refuse(req.id, P.WRONG_SHARD, wrong[0], counted=True)
                reply.detail = wrong[1]
                return tag, req, reply
        if self.access is not None:
            try:
                req, why, kid = self.access.admit(req, user)
            except P.ProtocolError as e:  # an id that cannot be namespaced
                return tag, req, self.refuse(e.request_id, e.code, e.message, counted=True, op=req.op)
            if why is not None:
                return tag, req, self.refuse(req.id, P.FORBIDDEN, why, counted=True, op=req.op)
            if kid is not None:
                tag = Owned(tag, kid)  # its replies show the client's own ids (step() unwraps the tag)
        return tag, req, None

    def _over_bounds(self, req, cfg) -> Reply | None:
        """The too_large Reply of a step, step_many or forecast over --max-request-samples or
        --max-request-new-streams (nothing applied), else None: no request holds the loop for long."""
        if req.op == "forecast":
            n, what = req.horizon, "a forecast horizon of"
        else:
            try:
                n = req.samples
            except Exception:  # a malformed request: the planner refuses it with its own error
                return None
            what = "a request of"
        if n > cfg.max_request_samples:
            return self._too_large(req, f"{what} {n} samples is over this daemon's bound of "
                                        f"{cfg.max_request_samples} (--max-request-samples); nothing was "
                                        "applied: split it", cfg.max_request_samples, "--max-request-samples")
        if req.op == "step_many" and isinstance(req.streams, list) and len(req.streams) > cfg.max_request_new_streams:
            try:
                new = len(set(self.streams.unknown(req.streams)))
            except TypeError:  # an id that is not hashable: the planner refuses it
                return None
            if new > cfg.max_request_new_streams:
                return self._too_large(req, f"a step_many creating {new} new streams is over this daemon's "
                                            f"bound of {cfg.max_request_new_streams} "
                                            "(--max-request-new-streams); nothing was applied: split it",
                                       cfg.max_request_new_streams, "--max-request-new-streams")
        return None

    def _too_large(self, req, message, limit, option) -> Reply:
        reply = self.refuse(req.id, P.TOO_LARGE, message, counted=True, op=req.op)
        reply.detail = {"limit": limit, "option": option}
        return reply
