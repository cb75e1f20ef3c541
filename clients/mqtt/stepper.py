"""The daemon side of the bridge: step one batch of decoded messages (distinct streams) in one pipelined round
trip, every step carrying a sequence number, and retry what did not get through until it does.

Where a step's sequence number comes from:
  - sequenced (--seq-field): from the message. A redelivery carries the same number, so the daemon answers it
    from its receipt (`duplicate`) or, if the stream moved on since, with seq_stale: never applied twice, by
    this bridge process or by the next one.
  - derived: the stream's number on the daemon (read once per stream), plus one per step the bridge applies.
    The number given to a message is remembered by its MQTT packet id until that id carries another message,
    so a redelivery (DUP flag, same packet id: a broker restart, a reconnect) is resent with the same number
    and answered from the receipt. That memory dies with the bridge process unless --state-file keeps it
    (progress.py): without it, after a bridge crash, a message the daemon applied but the bridge had not
    acknowledged is stepped again (at-least-once).
Because every step carries a number, a step whose reply was lost (daemon killed, timeout) is simply resent.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from lstm_stream import protocol as P

from .._api import Call
from ..errors import Busy, ClientError, Forbidden, LogFailed, SequenceError, Timeout

log = logging.getLogger("lstm_stream.bridge")

# Nothing was applied and waiting can cure it: resend the same numbers later, acknowledging nothing meanwhile.
# Forbidden too: this client's key lacks the step role, which only the operator can fix (allow-list + SIGHUP),
# and dead-lettering every message until then would throw the data away.
TRANSIENT = (Timeout, Busy, LogFailed, Forbidden)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0  # seconds between resends while the daemon does not answer


@dataclass
class Outcome:
    """What became of one message: 'ok' (y, seq, duplicate), 'stale' (applied before; no outputs to publish)
    or 'rejected' (error: why it cannot be stepped)."""
    kind: str
    seq: int | None = None
    y: np.ndarray | None = None
    duplicate: bool = False
    error: str | None = None


def _parse_step(reply):
    return P.to_array(reply["y"], "y"), bool(reply.get("duplicate", False)), reply.get("seq")


class Stepper:
    """Steps batches through one Client; keeps the derived numbers and the packet-id memory."""

    def __init__(self, client, *, sequenced: bool, on_gap: str = "reject", stop: threading.Event | None = None,
                 progress=None):
        self.client, self.sequenced, self.on_gap = client, sequenced, on_gap
        self.stop = stop or threading.Event()
        self.progress = progress  # progress.py: the packet-id memory on disk (--state-file), or None
        self._count: dict = {}  # derived: stream -> its number on the daemon after our last step
        # derived: packet id -> (stream, seq) of the message it carried last; changed by paho's thread too
        self._by_mid: dict = progress.load() if progress is not None else {}
        self._lock = threading.Lock()
        self._resent: set = set()  # derived: indices of the batch under way resent under their old number
        self._mids: list = []  # the batch under way's packet ids
        self.retries = 0

    def forget(self, mid: int) -> None:
        """A packet id now carries a new message (no DUP flag): its old number must not be reused."""
        with self._lock:
            if self._by_mid.pop(mid, None) is not None and self.progress is not None:
                self.progress.forgot(mid)

    def session_lost(self) -> None:
        """The broker kept no session: the packet ids remembered name messages it will not deliver again."""
        with self._lock:
            self._by_mid.clear()
            if self.progress is not None:
                self.progress.rewrite({})

    def _remember(self, k, stream, seq) -> None:
        """Packet id of batch message k -> (stream, seq), before the step is sent (and on disk first)."""
        mid = self._mids[k]
        if self.sequenced or mid is None:
            return
        with self._lock:
            self._by_mid[mid] = (stream, seq)
            if self.progress is not None:
                self.progress.stepped(mid, stream, seq)
                if self.progress.should_compact(len(self._by_mid)):
                    self.progress.rewrite(self._by_mid)

    def step(self, samples, mids, dups) -> list[Outcome] | None:
        """Step samples[k] (distinct streams) and return one Outcome each; None if stopped before done."""
        numbered = self._numbers(samples, mids, dups)
        if numbered is None:
            return None
        seqs, self._resent = numbered
        self._mids = mids
        for k, s in enumerate(samples):
            self._remember(k, s.stream, seqs[k])
        out: list = [None] * len(samples)
        pending = list(range(len(samples)))
        backoff = BACKOFF_FIRST
        while pending:
            p = self.client.pipeline()
            for k in pending:
                fields = {"stream": samples[k].stream, "x": samples[k].x, "seq": seqs[k]}
                p._run(Call("step", fields, _parse_step))
            try:
                results = p.execute(return_exceptions=True)
            except ClientError as e:  # the round trip failed (Timeout): some replies may have come
                results = p.results
                log.warning("daemon at %s did not answer (%s); resending %d step(s) with the same sequence "
                            "numbers", self.client.address, e, len(pending))
            retry = [k for k, r in zip(pending, results) if self._settle(k, r, samples, seqs, out)]
            refused = [r for r in results if isinstance(r, TRANSIENT) and not isinstance(r, Timeout)]
            if refused:
                (log.error if isinstance(refused[0], Forbidden) else log.warning)(
                    "%d step(s) not applied (%s); resending in %.1f s", len(refused), refused[0], backoff)
            pending = retry
            if pending:
                self.retries += 1
                if self.stop.wait(backoff):
                    return None
                backoff = min(2 * backoff, BACKOFF_MAX)
        return out

    def _settle(self, k, r, samples, seqs, out) -> bool:
        """Record step k's result r in out[k]; True if it must be resent (seqs[k] possibly changed)."""
        stream = samples[k].stream
        if not isinstance(r, Exception):
            y, duplicate, seq = r
            out[k] = Outcome("ok", seq if seq is not None else seqs[k], y, duplicate)
            if not self.sequenced:
                self._count[stream] = out[k].seq
            return False
        if isinstance(r, TRANSIENT):
            return True
        if isinstance(r, SequenceError):
            return self._mismatch(k, r, samples, seqs, out)
        out[k] = Outcome("rejected", seqs[k], error=f"the daemon refused the step: {r}")
        return False

    def _mismatch(self, k, e: SequenceError, samples, seqs, out) -> bool:
        """The daemon's number is not what the step expected: applied before, another writer, lost state."""
        stream, sent = samples[k].stream, seqs[k]
        if self.sequenced or k in self._resent:
            if e.code == P.SEQ_STALE:  # the daemon has it: stepped before (its outputs are no longer kept)
                out[k] = Outcome("stale", sent)
                return False
            if self.sequenced and self.on_gap == "reject":
                out[k] = Outcome("rejected", sent, error=f"sequence number {sent} skips samples: stream "
                                 f"{stream!r} is at {e.seq} on the daemon, so the next is {e.expected} "
                                 "(--on-seq-gap apply steps it anyway)")
                return False
        log.warning("stream %r: sent number %s but the daemon is at %s (%s: another writer stepped it, or the "
                    "daemon lost its state); stepping it as number %s", stream, sent, e.seq, e.code, e.expected)
        seqs[k] = e.expected
        self._remember(k, stream, seqs[k])
        return True

    def _numbers(self, samples, mids, dups) -> tuple | None:
        """(each sample's sequence number: the stream's count after it, the indices of the samples resent
        under the number they were given before); None if stopped while the daemon was away."""
        if self.sequenced:
            return [s.seq for s in samples], set()
        seqs: list = [None] * len(samples)
        unknown, resent = [], set()
        for k, s in enumerate(samples):
            with self._lock:
                known = self._by_mid.get(mids[k]) if dups[k] else None
            if known is not None and known[0] == s.stream:
                seqs[k] = known[1]  # a redelivery of a message this bridge stepped: the same number
                resent.add(k)
            elif s.stream in self._count:
                seqs[k] = self._count[s.stream] + 1
            else:
                unknown.append(k)
        if unknown and not self._read_counts([samples[k].stream for k in unknown]):
            return None
        for k in unknown:
            seqs[k] = self._count[samples[k].stream] + 1
        return seqs, resent

    def _read_counts(self, streams) -> bool:
        """Read the daemon's number of each stream (one pipelined round trip, resent until it answers)."""
        backoff = BACKOFF_FIRST
        while True:
            p = self.client.pipeline()
            for s in streams:
                p.seq(s)
            try:
                for s, n in zip(streams, p.execute()):
                    self._count[s] = n
                return True
            except ClientError as e:
                log.warning("cannot read stream numbers from the daemon at %s (%s); retrying", self.client.address, e)
            if self.stop.wait(backoff):
                return False
            backoff = min(2 * backoff, BACKOFF_MAX)

