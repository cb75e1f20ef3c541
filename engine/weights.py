"""The weights store of a state directory: every weights version it has served, as <dir>/weights/<fingerprint>.npz.

Snapshots, step log segments and the cold store name the weights they were written under by fingerprint only;
after a weights update (EngineCore.reload) the old version is still needed to restore a snapshot taken before
it and to replay the log up to the update's record, and the new one to replay past it. So both are written
here (LSTMModel.save to a temporary name, fsynced, renamed, the directory fsynced) before the update's log
record, and a start finds any of them by fingerprint. Once a snapshot is durable, the versions that nothing
can need any more (neither that snapshot, nor a log record after it, nor the cold store, nor the model now
served) are deleted (prune, from engine/startup.py), so the store holds a few versions, not every one served.
"""
from __future__ import annotations

import logging
import os

from lstm_stream.errors import ModelError

log = logging.getLogger("lstm_stream.engine")

WEIGHTS_DIR = "weights"  # in the state directory


class WeightsStore:
    """<state dir>/weights/<fingerprint>.npz, one file per weights version served."""

    def __init__(self, state_dir):
        self.directory = os.path.join(os.fspath(state_dir), WEIGHTS_DIR)

    def path(self, fingerprint: str) -> str:
        return os.path.join(self.directory, f"{fingerprint}.npz")

    def has(self, fingerprint) -> bool:
        """Whether the version `fingerprint` is stored (False for anything that is not a fingerprint)."""
        return isinstance(fingerprint, str) and fingerprint.isalnum() and os.path.isfile(self.path(fingerprint))

    def fingerprints(self) -> set:
        """The fingerprints of every stored version."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        return {n[:-4] for n in names if n.endswith(".npz") and n[:-4].isalnum()}

    def put(self, model) -> str:
        """Store `model` (atomically and durably) unless its version is there already; returns its path."""
        path = self.path(model.fingerprint)
        if os.path.isfile(path):
            return path
        os.makedirs(self.directory, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            model.save(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def get(self, fingerprint: str):
        """The stored version `fingerprint` (an LSTMModel); ModelError naming the file if it is missing or does
        not hold that version."""
        from lstm_stream.model import load_model
        path = self.path(fingerprint)
        if not self.has(fingerprint):
            raise ModelError(f"weights version {fingerprint} is not in the weights store ({path} is missing)")
        model = load_model(path)
        if model.fingerprint != fingerprint:
            raise ModelError(f"{path} holds weights version {model.fingerprint}, not {fingerprint}: the file was "
                             "replaced or damaged")
        return model

    def prune(self, keep) -> list:
        """Delete every stored version whose fingerprint is not in `keep`; the fingerprints deleted. A file that
        cannot be deleted is logged and left (it is tried again after the next snapshot)."""
        gone = []
        for fingerprint in sorted(self.fingerprints() - set(keep)):
            try:
                os.unlink(self.path(fingerprint))
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot delete the weights version %s, which nothing needs any more: %s",
                            self.path(fingerprint), e)
                continue
            gone.append(fingerprint)
            log.info("deleted weights version %s from the weights store: no snapshot, log record or stream "
                     "needs it any more", fingerprint,
                     extra={"event": "weights_pruned", "fingerprint": fingerprint, "path": self.path(fingerprint)})
        return gone
