"""What `lstm-stream serve` does before it binds: load the model, compile the kernels, open the Streams with
the cold store, restore the snapshot, replay the step log and open it for writing. engine/cli.py runs it;
each step fails with an exception that run_serve turns into exit 2 with a message.
"""
from __future__ import annotations

import logging
import time

from .logs import repeating
from .sdnotify import status

log = logging.getLogger("lstm_stream.engine")


def load_serving_model(path):
    """The model to serve: the .npz at `path`, or the shipped default model when path is None."""
    from lstm_stream.model import load_model
    if path is not None:
        return load_model(path)
    try:
        from lstm_stream.defaults import load_default_model
    except ImportError:
        raise SystemExit("--model is required: this installation has no default model") from None
    return load_default_model()


def warm_up(model, backend, threads):
    """Compile (or load from the cache) every kernel the daemon uses before serving, logging each stage
    (lstm_stream/warm.py: on a cold cache, in parallel processes). The CUDA kernels by stepping a scratch store."""
    import numpy as np

    import lstm_stream as ls
    from lstm_stream import warm
    # cold: the one-stream kernel is left to a child process (warm.deferred)
    warm.warm_up(model.dtype, model.autoregressive, defer=True,
                 progress=lambda message: log.info("kernels: %s", message, extra={"event": "kernels"}))
    if backend != "cpu":
        scratch = ls.Streams(model, backend=backend, threads=threads)
        if scratch.backend != "cpu":
            x = np.zeros((2, model.input_size), model.dtype)
            scratch.step(0, x[0])
            scratch.step(0, x)
            scratch.step_batch(list(range(64)), [x[:1]] * 64)
            if model.autoregressive:
                scratch.forecast(0, 1)


def open_state(serve, streams_config):
    import dataclasses

    import lstm_stream as ls

    from lstm_stream.errors import InputError

    from .persistence import Snapshots, open_cold, prepare_dir
    from .weights import WeightsStore
    if streams_config.idle_action == "evict" and serve.snapshot_dir is None:
        raise InputError("--idle-action evict needs --snapshot-dir: evicted streams go to a file there")
    if serve.snapshot_dir is not None:  # first: a directory it cannot write fails at once, not after compiling
        prepare_dir(serve.snapshot_dir)  # OSError naming it: run_serve refuses to start (exit 2)
        keep_id_scheme(serve.snapshot_dir, serve.namespaces == "on")
    status("loading the model")
    model = load_serving_model(serve.model[0] if serve.model else None)
    t0 = time.perf_counter()
    status("compiling the kernels (or loading them from the cache)")
    warm_up(model, streams_config.backend, streams_config.threads)
    cold = None if serve.snapshot_dir is None else open_cold(serve.snapshot_dir, streams_config)
    weights = None if serve.snapshot_dir is None else WeightsStore(serve.snapshot_dir)
    cold_fingerprint = None if cold is None else cold.fingerprint
    if cold_fingerprint not in (None, model.fingerprint) and weights.has(cold_fingerprint):
        cold.rebind(model.fingerprint)  # a version this directory served: recovery settles which one is in force
    streams = ls.Streams(model, cold=cold, **dataclasses.asdict(streams_config))
    log.info("model %r fingerprint %s: %d inputs -> %d outputs, hidden %d x %d layers, %s, backend %s "
             "(kernels ready in %.2f s)", model.name, model.fingerprint, model.input_size, model.output_size,
             model.hidden_size, model.num_layers, model.dtype, streams.backend, time.perf_counter() - t0,
             extra={"event": "model_loaded", "model": model.name, "fingerprint": model.fingerprint,
                    "backend": streams.backend, "duration_s": round(time.perf_counter() - t0, 6)})
    snapshots = journal = None
    if serve.snapshot_dir is not None:
        snapshots = Snapshots(streams, serve.snapshot_dir, every=serve.snapshot_every,
                              merge_huge_pages=serve.huge_pages == "merge")
        status("restoring the snapshot")
        # with a log, its replay settles evicted streams
        if snapshots.restore(cold_wins=not serve.logging_steps, weights=weights) is None:
            _start_weights(serve, streams, weights, cold_fingerprint)
        if serve.logging_steps:
            journal = _open_log(serve, streams, snapshots, weights)
        else:
            _set_aside_old_log(serve.snapshot_dir)
        snapshots.on_durable = _after_snapshot(streams, snapshots, journal, weights)
        _settle_weights(serve, streams, model, weights, journal, snapshots)
    return streams, snapshots, journal


def open_models(serve, streams_config) -> list:
    """[(name, streams, snapshots, journal)] of every model `serve` names (ServeConfig.models), each opened by
    open_state: a named model's state in <snapshot-dir>/models/NAME/, the unnamed one's (the only one, as
    before there were several) in <snapshot-dir>. The name of an unnamed model is its file's stem ('default'
    for the shipped model): requests may name it."""
    import dataclasses
    import os
    out = []
    for name, path in serve.models:
        if name is None:
            one, shown = dataclasses.replace(serve, model=() if path is None else (path,), model_dir=None,
                                             default_model=None), \
                "default" if path is None else os.path.splitext(os.path.basename(path))[0]
        else:
            sub = None if serve.snapshot_dir is None else os.path.join(serve.snapshot_dir, "models", name)
            if sub is not None:
                os.makedirs(sub, exist_ok=True)
            one, shown = dataclasses.replace(serve, model=(path,), model_dir=None, default_model=None,
                                             snapshot_dir=sub), name
        if name is not None or len(serve.models) > 1:
            status(f"model {shown}")
        streams, snapshots, journal = open_state(one, streams_config)
        out.append((shown, streams, snapshots, journal))
    return out


def _start_weights(serve, streams, weights, cold_fingerprint):
    """Without a snapshot, the weights a recovery starts from: those of the step log's oldest segment, else
    the cold store's (when either names a version of the weights store)."""
    import os

    from lstm_stream.steplog import oldest_fingerprint
    start = None
    if serve.logging_steps:
        start = oldest_fingerprint(os.path.join(serve.snapshot_dir, "log"))
    start = start or cold_fingerprint
    if start not in (None, streams.model.fingerprint) and weights.has(start):
        streams.adopt_model(weights.get(start))


def _settle_weights(serve, streams, model, weights, journal, snapshots):
    """After recovery: the state reached the weights the daemon last served; if the --model file holds others,
    refuse to start (ModelError: exit 2) unless --model-update keep, which applies the file as a weights update
    (logged, and in the step log)."""
    import time

    from lstm_stream.errors import ModelError

    from .reloading import apply_reload
    reached = streams.model
    if reached.fingerprint == model.fingerprint:
        return
    file = serve.model[0] if serve.model else "the shipped default model"
    if serve.model_update != "keep":
        raise ModelError(
            f"the state in {serve.snapshot_dir} continues weights version {reached.fingerprint} (its last weights "
            f"update), but --model {file} holds version {model.fingerprint}. To continue every stream under the "
            f"file's weights, start with --model-update keep (logged as a weights update; the sizes must match); "
            f"to keep serving the weights in force, start with --model {weights.path(reached.fingerprint)}; or "
            f"move the state directory away to start with no streams")
    try:
        apply_reload(streams, model, weights=weights, journal=journal, wall=time.time(),
                     why="--model-update keep")
    except ModelError as e:
        raise ModelError(f"--model-update keep: {e}") from None
    snapshots.dirty = True  # the next timed snapshot names the file's weights


ID_SCHEME_FILE = "ids.json"  # in the state directory: whether its stream ids are namespaced (--namespaces)


def keep_id_scheme(directory, namespaces: bool) -> None:
    """Refuse to serve a state directory with another --namespaces setting than the one that wrote it.

    Under --namespaces on, the snapshots, the step log and the cold store hold each step key's ids with its
    key id as a prefix ('KID/pump-7'); served with namespaces off, any step key could name those ids and read
    or step another key's streams, and ids created meanwhile would have no owner. So the setting is recorded
    in the directory (ID_SCHEME_FILE) on the first start and checked on every later one. A directory with
    state but no record was written before the record existed, or with namespaces off: it counts as off."""
    import json
    import os

    from lstm_stream.errors import InputError

    from lstm_stream.coldstore import COLD_NAME

    from .persistence import SNAPSHOT_NAME
    path = os.path.join(directory, ID_SCHEME_FILE)
    missing = False
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)["namespaces"]
        if type(recorded) is not bool:
            raise ValueError(f"namespaces is {recorded!r}, not true or false")
    except FileNotFoundError:
        missing = True
        has_state = any(os.path.exists(os.path.join(directory, name)) for name in (SNAPSHOT_NAME, COLD_NAME)) \
            or (os.path.isdir(os.path.join(directory, "log")) and bool(os.listdir(os.path.join(directory, "log"))))
        recorded = False if has_state else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is unreadable ({e}); it records whether this directory's stream ids are "
                         'namespaced: write {"namespaces": true} or {"namespaces": false} to match how it was '
                         "served") from None
    if recorded is not None and recorded != namespaces:
        was, now = ("on", "off") if recorded else ("off", "on")
        raise InputError(f"--namespaces {now}, but the state in {directory} was served with --namespaces {was} "
                         f"(recorded in {path}): its stream ids are {'' if recorded else 'not '}prefixed with their "
                         f"client key's id, so serving it with --namespaces {now} would "
                         + ("let any step key name another key's streams" if recorded else
                            "hide every existing stream from the step keys")
                         + f". Start with --namespaces {was}, or start from another --snapshot-dir")
    if missing:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"namespaces": namespaces}, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _set_aside_old_log(directory):
    """--step-log off with a log left by an earlier run: the snapshots written from now on do not continue
    it, so replaying it later would be wrong; it is renamed (kept, never deleted) and the rename logged."""
    import os
    old = os.path.join(directory, "log")
    if os.path.isdir(old) and os.listdir(old):
        aside = f"{old}.off-{time.strftime('%Y%m%dT%H%M%S')}"
        os.rename(old, aside)
        log.warning("--step-log off: the step log of an earlier run was moved to %s (snapshots from now on do not "
                    "continue it); delete it once it is not needed", aside)


def _after_snapshot(streams, snapshots, journal, weights):
    """Snapshots.on_durable: once a snapshot is on disk, delete the step log segments it covers and the weights
    versions nothing can need any more: those that neither the snapshot, nor a record after it, nor the cold
    store, nor the model now served name (WeightsStore.prune)."""
    taken = {}
    position = snapshots.position

    def capture():  # at the snapshot's capture, on the loop: the version its states were reached with
        taken["fingerprint"] = streams.model.fingerprint
        return position() if position is not None else {}

    def durable(meta):
        covered = meta.get("log_lsn", 0)
        if journal is not None:
            journal.covered(covered)
            keep = journal.versions_after(covered)
        else:
            keep = {taken.get("fingerprint", streams.model.fingerprint)}
        keep.add(streams.model.fingerprint)
        if streams.cold is not None and streams.cold.fingerprint is not None:
            keep.add(streams.cold.fingerprint)
        weights.prune(keep)

    snapshots.position = capture
    return durable


def _open_log(serve, streams, snapshots, weights=None):
    """Replay the step log after the restored snapshot, then open it for writing; snapshots record the log
    position they hold, and a durable one deletes the segments it covers."""
    import os

    from .journal import Journal
    from .records import recover
    directory = os.path.join(serve.snapshot_dir, "log")
    os.makedirs(directory, exist_ok=True)
    meta = snapshots.restored_meta
    status("replaying the step log")
    streams.replaying(meta.get("cold_lsn", 0))  # thaws read the cold versions the snapshot knew
    start = streams.model.fingerprint  # the version the snapshot holds (the replay switches at each update)
    try:
        last, stats = recover(streams, directory, meta.get("log_lsn", 0), weights)
    finally:
        streams.replaying(None)
    journal = Journal(directory, streams.model.fingerprint, streams.model.dtype, fsync=serve.fsync,
                      segment_bytes=serve.log_segment)
    journal.weights_from(meta.get("log_lsn", 0), start)
    for lsn, fingerprint in stats["versions"]:
        journal.weights_from(lsn, fingerprint)
    journal.open(last)

    def position():  # at the snapshot's capture, on the loop: it holds every record written so far
        if journal.lsn >= journal.segment_first:  # start a new segment, so that this one can go once it is durable
            try:
                journal.rotate()
            except OSError as e:  # the snapshot still holds every record so far; this segment just stays longer
                log.warning("could not start a new step log segment at the snapshot: %s", e,
                            extra=repeating("log_rotate_failed", error=str(e)))
        return {"log_lsn": journal.lsn}

    snapshots.position = position
    return journal
