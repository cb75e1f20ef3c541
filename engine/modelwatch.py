"""Weights updates that the operator starts without a client: SIGHUP reloads every model's file, and the files of
`--model-dir` are watched, each reloaded once it has changed and then stayed the same for a moment.

    reload_files(core, "SIGHUP")                 # on the loop (sdnotify.Reloader): every model with a file
    core.add_ticker(ModelWatcher({path: core}))  # --model-dir: each file's (mtime, size) looked at every second

Both call EngineCore.reload_file (engine/core.py): same sizes keep every stream's state, and the step log records
the switch; a file with other sizes, or one that cannot be read, is refused and logged, and the model keeps its
weights. A reload never resets: that is the `reload` op's explicit `reset`.
"""
from __future__ import annotations

import logging
import os

from .logs import repeating

log = logging.getLogger("lstm_stream.engine")

WATCH_EVERY = 1.0  # seconds between looks at the watched files; a change is applied once it held for one look


def cores_of(core) -> dict:
    """{name: EngineCore} of an EngineCore or a ModelRouter (engine/multimodel.py)."""
    cores = getattr(core, "cores", None)
    return dict(cores) if cores is not None else {core.name: core}


def has_files(core) -> bool:
    """Whether any model was started from a file (the shipped default model has none)."""
    return any(c.model_path is not None for c in cores_of(core).values())


def reload_one(name, core, why: str) -> dict | None:
    """core.reload_file() of its --model file, logged either way; the result, or None if it was refused."""
    try:
        out = core.reload_file()
    except Exception as e:  # ModelError (unreadable, other sizes), LogWriteError, OSError: nothing changed
        log.warning("%s: model %s: weights update from %s refused, the model keeps its weights (%s): %s", why,
                    name, core.model_path, core.streams.model.fingerprint, e,
                    extra=repeating("reload_refused", name, model=name, path=core.model_path))
        return None
    if out["changed"]:
        log.info("%s: model %s: weights %s -> %s from %s; %d streams continue", why, name, out["previous"],
                 out["fingerprint"], core.model_path, out["streams"],
                 extra={"event": "model_reloaded", "model": name, "fingerprint": out["fingerprint"],
                        "previous": out["previous"], "streams": out["streams"], "reason": why})
    else:
        log.info("%s: model %s: %s holds the weights already served (%s)", why, name, core.model_path,
                 out["fingerprint"], extra={"event": "model_unchanged", "model": name, "reason": why})
    return out


def reload_files(core, why: str = "SIGHUP") -> None:
    """Reload every model that has a file (on the loop thread, between turns)."""
    for name, c in cores_of(core).items():
        if c.model_path is not None:
            reload_one(name, c, why)


class ModelWatcher:
    """A ticker (EngineCore.add_ticker) reloading each watched file once it has changed: its (mtime, size)
    differs from the version served and stayed so for one look (a file being written is not read half-way;
    write the new file elsewhere and rename it over the old one, which is atomic). A refused file is not tried
    again until it changes again."""

    def __init__(self, watched: dict, every: float = WATCH_EVERY):
        self.watched = dict(watched)  # path -> (name, EngineCore)
        self.every = every
        self._served = {path: self._stat(path) for path in self.watched}  # the version now served (or refused)
        self._seen = dict(self._served)                                   # at the last look

    @staticmethod
    def _stat(path):
        try:
            st = os.stat(path)
        except OSError:
            return None  # gone for now (being replaced): looked at again
        return st.st_mtime_ns, st.st_size

    def __call__(self, now: float) -> float:
        for path, (name, core) in self.watched.items():
            st = self._stat(path)
            if st is None or st == self._served[path]:
                self._seen[path] = st
                continue
            if st == self._seen[path]:  # changed, and held still for one look: read it
                self._served[path] = st
                reload_one(name, core, "file changed")
            self._seen[path] = st
        return now + self.every
