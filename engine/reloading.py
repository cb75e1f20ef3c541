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

from . import records

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
