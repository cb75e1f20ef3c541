"""The ops besides stepping (EngineCore's `_op_<name>` methods, one per op; a mixin of EngineCore): what each
one does to the Streams and what it answers. EngineCore._call logs the state-changing ones first (with a step
log) and turns exceptions into error replies; each method here only does its op. The exception is `snapshot`
with a state directory: EngineCore._turn hands it to Snapshots.request, and step() answers it once its file is
durable (_snapshot_replies, below).
"""
from __future__ import annotations

import time

import lstm_stream
from lstm_stream import protocol as P

from .access import Access


class Ops:
    """EngineCore's ops other than step/step_many (self is the EngineCore)."""

    def _op_ping(self, req):
        return {"time": time.time()}

    def _op_info(self, req):
        m = self.streams.model
        stats = self.streams.stats()
        return {"protocol": P.PROTOCOL_VERSION, "version": lstm_stream.__version__, "name": self.name,
                "model": m.config(),
                "fingerprint": m.fingerprint, "autoregressive": m.autoregressive, "backend": stats["backend"],
                "streams": stats["streams"], "capacity": stats["capacity"], "max_streams": stats["max_streams"],
                "idle_ttl": self.streams.idle_ttl, "state_bytes_per_stream": stats["state_bytes_per_stream"],
                "slab_bytes": stats["slab_bytes"], "id_lists": stats["id_lists"], "cold": stats["cold"],
                "decoded_id_lists": self.decode_stats() if self.decode_stats is not None else None,
                "decoded_templates": self.template_stats() if self.template_stats is not None else None,
                "uptime": self._clock() - self._started,
                "pending": self._pending, "max_batch": self.config.max_batch,
                "max_pending": self.config.max_pending, "max_message_bytes": self.config.max_message_bytes,
                "max_request_samples": self.config.max_request_samples,
                "max_request_new_streams": self.config.max_request_new_streams,
                "counters": dict(self.metrics),
                "cluster": None if self.ownership is None else self.ownership.map.as_map(),  # shard map
                "log": None if self.journal is None else {**self.journal.status(), "held_replies": self.held},
                "snapshot": None if self.snapshots is None else {"path": self.snapshots.path,
                                                                  "every": self.snapshots.every,
                                                                  "last": self.snapshots.last,
                                                                  **self.snapshots.status()}}

    def _op_streams(self, req):
        offset, limit = req.offset, req.limit
        if offset < 0 or not 0 <= limit <= P.MAX_STREAMS_PAGE:
            raise P.ProtocolError(P.BAD_INPUT, f"offset must be >= 0 and limit in 0..{P.MAX_STREAMS_PAGE}, "
                                                 f"got offset={offset}, limit={limit}")
        ids = self.streams.ids()
        prefix = getattr(req, "prefix", None)  # a namespaced key (access.OwnStreams): its own ids only
        if prefix is not None:
            ids = Access.own_ids(ids, prefix)
        return {"streams": ids[offset:offset + limit], "total": len(ids)}

    def _op_forecast(self, req):
        m = self.streams.model
        if not m.autoregressive:
            raise P.ProtocolError(P.UNSUPPORTED, f"forecast needs an autoregressive model (output_size == "
                                                 f"input_size); this one maps {m.input_size} inputs to "
                                                 f"{m.output_size} outputs")
        return {"y": self.streams.forecast(req.stream, req.horizon)}

    def _op_get_state(self, req):
        st = self.streams.get_state(req.stream)
        return {"h": st.h, "c": st.c, "steps": st.steps, "last_seen": st.last_seen}

    def _op_set_state(self, req):
        # Streams.set_state checks everything (steps in int64, shapes, NaN) before any change
        self.streams.set_state(req.stream, {"h": req.h, "c": req.c, "steps": req.steps})
        self._mutated()
        return {}

    def _op_copy(self, req):
        self.streams.copy(req.src, req.dst)
        self._mutated()
        return {}

    def _op_reset(self, req):
        self.streams.reset(req.stream)
        self._mutated()
        return {}

    def _op_drop(self, req):
        self.streams.drop(req.stream)
        self._mutated()
        return {}

    # ---- `snapshot` requests: written in the background, answered once durable (EngineCore.step) ----
    @property
    def snapshots_waiting(self) -> int:
        """`snapshot` requests not answered yet (their replies leave from step() once their file is durable)."""
        return 0 if self.snapshots is None else self.snapshots.waiting + len(self.snapshots.answered)

    def settle_snapshots(self) -> None:
        """Finish the writes that `snapshot` requests wait for, on this thread (in-process callers, shutdown);
        the next step() has their replies."""
        if self.snapshots is not None:
            self.snapshots.settle()

    def _snapshot_replies(self) -> list:
        """[(tag, Reply)] of the `snapshot` requests whose write is durable or failed."""
        done, self.snapshots.answered = self.snapshots.answered, []
        out = []
        for (tag, req), record, error in done:
            if error is None:
                out.append((tag, self._success(req, dict(record))))
            else:
                e = P.ProtocolError(P.SNAPSHOT_FAILED, f"snapshot to {self.snapshots.path} failed: {error}")
                out.append((tag, self._failure(req, e)))
        return out

    def _op_snapshot(self, req):
        """Without a state directory only: with one, EngineCore._turn hands the request to Snapshots.request,
        which writes it in the background (the loop pauses for the fork, ~10 ms at 2M streams of hidden 64)
        and answers it once the file is durable."""
        raise P.ProtocolError(P.UNSUPPORTED, "this daemon was started without --snapshot-dir")
