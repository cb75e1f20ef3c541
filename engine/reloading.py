"""A weights update of one EngineCore's Streams, in the order that keeps recovery exact (EngineCore.reload and
a start with `--model-update keep` both run it, on the loop thread, between turns):

    1. check the new model against the served one (Streams.check_replacement): refused, nothing changed
    2. write both versions to the state directory's weights store (engine/weights.py), durably
    3. append the RELOAD record to the step log and start a new segment under the new fingerprint (the
       rotation fsyncs the record): a replay switches at exactly this point
    4. Streams.replace_model: from the next step on, every stream steps with the new weights

A crash before 3 leaves the old weights in force (the update never happened); after it, the replay switches
at the record. If 4 fails after 3 (the cold store cannot be written, memory), the log already says the update
happened: the step log is failed (Journal.fail) and the daemon stops, answering nothing more, so that a restart
replays the update where the log has it. The snapshots name the weights they hold in their header (the fingerprint at capture).
"""
from __future__ import annotations

import logging
import time

from lstm_stream import protocol as P

from . import records
from .journal import LogWriteError

log = logging.getLogger("lstm_stream.engine")


def apply_reload(streams, model, *, reset: bool = False, weights=None, journal=None, wall: float = 0.0,
                 why: str = "reload") -> dict:
    """Serve `model` on `streams` (steps 1-4 above); {fingerprint, previous, streams, changed, reset, cold}:
    streams = streams in memory kept (or dropped, with reset), cold = cold streams dropped by a reset. Same
    fingerprint and no reset: nothing is done (changed False). Raises ModelError (other sizes without reset),
    OSError (the weights store), LogWriteError (the log): in each case before anything changed."""
    old = streams.model
    changes = streams.check_replacement(model, reset=reset)
    if model.fingerprint == old.fingerprint and not reset:
        return {"fingerprint": old.fingerprint, "previous": old.fingerprint, "streams": len(streams),
                "changed": False, "reset": False, "cold": 0}
    if weights is not None:
        weights.put(old)
        weights.put(model)
    cold = 0 if not reset or streams.cold is None else streams.cold.count() - len(streams.cold.warm)
    lsn = None
    if journal is not None:
        lsn = journal.append(records.reload_record(model.fingerprint, wall, reset))
        journal.weights_from(lsn, model.fingerprint)
    try:
        n = streams.replace_model(model, reset=reset)
    except BaseException as e:
        if journal is not None:  # the log says the update happened: memory must not go on without it
            journal.fail(f"the weights update to {model.fingerprint} (record {lsn}) was logged but could not be "
                         f"applied ({type(e).__name__}: {e})")
        raise
    if journal is not None:
        try:
            journal.switch(model.fingerprint, model.dtype)
        except OSError as e:  # the record is written; the next rotation or fsync makes it durable
            log.warning("could not start a new step log segment after the weights update: %s", e)
    result = {"fingerprint": model.fingerprint, "previous": old.fingerprint, "streams": n, "changed": True,
              "reset": bool(reset), "cold": cold}
    if reset:
        log.warning("weights update (%s) WITH RESET to %s (was %s): every stream was DROPPED: %d in memory, %d "
                    "cold%s", why, model.fingerprint, old.fingerprint, n, cold,
                    f"; the sizes changed: {', '.join(changes)}" if changes else "",
                    extra={"event": "model_reloaded", "fingerprint": model.fingerprint,
                           "previous": old.fingerprint, "reset": True, "streams": n, "cold": cold})
    else:
        log.info("weights update (%s) to %s (was %s): %d streams in memory continue under the new weights",
                 why, model.fingerprint, old.fingerprint, n,
                 extra={"event": "model_reloaded", "fingerprint": model.fingerprint, "previous": old.fingerprint,
                        "reset": False, "streams": n})
    return result


class Reloads:
    """EngineCore's weights updates (a mixin, as ops.Ops and housekeeping.Housekeeping): reload(), the file
    reload that SIGHUP and the model-dir watch use, and the `reload` op."""

    def reload(self, model, *, reset: bool = False) -> dict:
        """Serve `model` from now on: every stream keeps its state and steps with the new weights from its next
        step (engine/reloading.py: weights store, log record, swap). Other sizes: ModelError unless reset, which
        drops every stream (logged at WARNING with the counts). Call it on the loop thread between turns:
        requests still queued are then served with the new weights. The `reload` op is queued like any other,
        so the requests before it in serving order are served with the old weights, those after with the new;
        every request with exactly one version. Returns {fingerprint, previous, streams} (and changed, reset,
        cold). Same fingerprint, no reset: nothing changes."""
        if self.journal is not None and not self.journal.writable:
            raise LogWriteError(self.journal.refusal())
        out = apply_reload(self.streams, model, reset=reset, weights=self.weights, journal=self.journal,
                           wall=time.time())
        if out["changed"]:
            self.metrics["reloads"] += 1
            if reset:
                self.metrics["reloads_reset"] += 1
            self._mutated()
            if self.snapshots is not None and self.journal is None:
                # no log to replay the update from: a snapshot soon names the new weights (in the background)
                try:
                    self.snapshots.start("reload")
                except Exception as e:
                    log.warning("the snapshot after the weights update failed: %s", e)
        return out

    def reload_file(self, path=None, *, reset: bool = False) -> dict:
        """reload() of the model file at `path` (default: model_path, the daemon's --model file). ModelError if
        there is no such path, or the file is missing, unreadable or not a model; else as reload()."""
        from lstm_stream.errors import ModelError
        from lstm_stream.model import load_model
        path = self.model_path if path is None else path
        if path is None:
            raise ModelError("no model file to reload: this engine was given no model_path (the daemon's --model)")
        return self.reload(load_model(path), reset=reset)


    def _op_reload(self, req):
        """EngineCore.reload_file with the request's path and reset; each refusal with its code, nothing changed."""
        from lstm_stream.errors import ModelError
        if req.path is not None and type(req.path) is not str:
            raise P.ProtocolError(P.BAD_REQUEST, f"field 'path' of op 'reload' must be a str (a model file on "
                                                 f"the daemon's machine), got {type(req.path).__name__}")
        if req.path is None and self.model_path is None:
            raise P.ProtocolError(P.UNSUPPORTED, "this daemon was started without --model (it serves the shipped "
                                                 "default model): give the model file to load in 'path'")
        try:
            return self.reload_file(req.path, reset=req.reset)
        except Exception as e:
            if self.journal is not None and self.journal.fatal is not None:  # logged, not applied: stopping
                raise P.ProtocolError(P.LOG_FAILED, self.journal.refusal()) from None
            if isinstance(e, ModelError):
                raise P.ProtocolError(P.BAD_MODEL, f"reload refused, nothing changed: {e}") from None
            if isinstance(e, LogWriteError):
                raise P.ProtocolError(P.LOG_FAILED, str(e)) from None
            if isinstance(e, OSError):
                raise P.ProtocolError(P.SNAPSHOT_FAILED, f"reload refused, nothing changed: the weights store in "
                                                         f"{self.weights.directory} cannot be written: {e}") from None
            raise
