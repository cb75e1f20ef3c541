"""The thin ZeroMQ shell around EngineCore: one ROUTER socket, one thread, one loop.

Frames in: [identity, payload] from a DEALER, or [identity, b"", payload] from a REQ (or a DEALER that sends
an empty delimiter); the reply goes back with the same envelope. Sends never block: ROUTER_MANDATORY makes a
peer whose queue is full (it stopped reading) or that is gone an error, and that reply is counted as
dropped and logged, never silently lost.

With `curve=(public, secret)` (z85 keys of the server) the socket is a CURVE server: every connection is
encrypted, and pyzmq's ThreadAuthenticator (a ZAP handler thread on this context) lets in only the keys that
core.access allows; each message's "User-Id" (the peer's z85 public key) goes to the core with the request.
"""
from __future__ import annotations

import errno
import logging
import threading
import time

import zmq

from lstm_stream import protocol as P

from .logs import repeating
from .wire import WireCore

log = logging.getLogger("lstm_stream.engine")

MAX_POLL_SECONDS = 0.1  # the loop re-checks the stop flag at least this often (signals set it)
SHUTDOWN_LINGER_MS = 1000  # at exit, time given to ZeroMQ to deliver the last replies (linger is 0 otherwise)

# The loop receives and sends a message's frames one call each, with flags as plain ints: pyzmq's
# recv_multipart and send_multipart cost ~3 µs a message each beyond those calls (enum arithmetic on the
# flags, a type check per frame), as much as the rest of a one-sample step's Python (docs/benchmarks.md).
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


class Server:
    """Binds a ROUTER socket and runs an EngineCore (through its WireCore) until stop() or SIGTERM."""

    def __init__(self, core, binds, *, context=None, curve=None):
        self.core = core
        self._wire = WireCore(core)
        self._stop = threading.Event()
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        cfg = core.config
        self._sock = sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, cfg.hwm)
        sock.setsockopt(zmq.RCVHWM, cfg.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * cfg.max_message_bytes)
        self._auth, self._user, self._recv = None, None, self._recv_frames
        if curve is not None:  # before bind: every connection then handshakes CURVE and asks the ZAP handler
            from .access import start_authenticator
            self._auth = start_authenticator(self._ctx, core.access)
            sock.curve_publickey, sock.curve_secretkey = curve
            sock.curve_server = True
            self._recv = self._recv_with_user
        self.endpoints = []
        try:
            for b in [binds] if isinstance(binds, str) else binds:
                sock.bind(b)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
                log.info("listening on %s", self.endpoints[-1], extra={"event": "listening",
                                                                       "endpoint": self.endpoints[-1]})
        except zmq.ZMQError:
            self._close(0)
            raise
        self._dropped_logged = 0
        self.received_bytes = self.sent_bytes = 0  # request and reply payloads (the Prometheus endpoint's)
        self.fatal = False  # the step log could not be made durable (--fsync always): stopped without answering

    def stop(self) -> None:
        """Ask the loop to finish the current turn, serve what is queued, and return (signal-safe)."""
        self._stop.set()

    def run(self) -> None:
        """The loop: poll (timeout only for housekeeping), drain, step, reply, housekeep; until stop()."""
        core, wire, sock = self.core, self._wire, self._sock
        journals, stats, clock = core.journals, core.stats, time.perf_counter  # stats: LoopStats with metrics on
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        for journal in journals:  # the fsync threads' wake-ups: held replies may leave (--fsync always)
            poller.register(journal.wake_fd, zmq.POLLIN)
        deadline = core.housekeep()
        spin_until = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if core.pending or now < spin_until:
                    wait = 0  # work queued, or just served: look again without sleeping (EngineConfig.spin)
                else:
                    wait = min(max(deadline - now, 0.0), MAX_POLL_SECONDS)
                events = dict(poller.poll(wait * 1000))
                if sock in events and core.held < core.config.max_pending:  # held: replies awaiting an fsync
                    if stats is not None:
                        core.arrival = clock()  # the read time of this drain's requests (queue wait)
                    self._drain()
                for journal in journals:  # (one per model; none without a step log)
                    if journal.wake_fd in events:
                        journal.woken()
                    if journal.fatal is not None:
                        self.fatal = True
                        return
                t0 = clock() if stats is not None else 0.0
                replies = wire.step()
                if replies:
                    self._send_all(replies)
                    if stats is not None:
                        stats.turn(t0, clock())
                    spin_until = time.monotonic() + core.config.spin
                deadline = core.housekeep()
            while core.pending:  # answer what was accepted before stopping
                self._send_all(wire.step())
            if journals and core.held:
                for journal in journals:
                    journal.sync()
                self._send_all(wire.step())
            if core.snapshots_waiting:  # `snapshot` requests: their writes end here, their replies leave
                core.settle_snapshots()
                self._send_all(wire.step())
        finally:
            self._close(SHUTDOWN_LINGER_MS)

    def _close(self, linger_ms):
        self._sock.close(linger_ms)
        if self._auth is not None:
            self._auth.stop()
        if self._own_ctx:
            self._ctx.term()  # returns once the last replies are sent, or after linger_ms

    def _drain(self) -> None:
        """Read ready frames without blocking, up to read_per_turn, while the core has room in its queue
        (max_pending requests, max_pending_bytes of them): what is not read stays in ZeroMQ's queues, whose
        high-water marks push back on the senders, instead of being read only to be refused. Replies the core
        gives at once (ping, info, refusals) are sent at once."""
        wire, core = self._wire, self.core
        room, room_bytes = core.config.max_pending, core.config.max_pending_bytes
        for _ in range(core.config.read_per_turn):
            if core.pending >= room or core.pending_bytes >= room_bytes:
                return
            try:
                frames = self._recv()  # (CURVE: also sets self._user)
            except zmq.Again:
                return
            self.received_bytes += len(frames[-1])
            if len(frames) == 2:
                envelope, body = frames[:1], frames[1]
            elif len(frames) == 3 and frames[1] == b"":
                envelope, body = frames[:2], frames[2]
            else:
                env = frames[:2] if len(frames) > 2 and frames[1] == b"" else frames[:1]
                log.warning("refused a message of %d frames (expected an identity, an optional empty delimiter and "
                            "one payload)", len(frames), extra=repeating("bad_message", "frames", code=P.BAD_MESSAGE))
                self._send(env, wire.reject(P.BAD_MESSAGE, f"expected one payload frame (after an optional "
                                                           f"empty delimiter), got {len(frames) - 1} frames"))
                continue
            reply = wire.submit(envelope, body, self._user)
            if reply is not None:
                self._send(envelope, reply)

    def _recv_frames(self) -> list:
        """recv_multipart(NOBLOCK), shorter (see _NOBLOCK): zmq.Again if no message is ready. A ROUTER's message
        is the peer's identity and at least one frame, and ZeroMQ hands over a message's frames together, so
        once the first is in, the others are."""
        sock = self._sock
        return self._rest([sock.recv(_NOBLOCK), sock.recv(_NOBLOCK)])

    def _recv_with_user(self) -> list:
        """_recv_frames under CURVE: the frames as bytes; the peer's user id (z85 public key, set by the ZAP
        handler) in self._user. Only the first frame (the ROUTER's identity frame, which carries the message's
        metadata) is received as a zmq.Frame: a Frame per part cost ~4 µs more per message."""
        sock = self._sock
        first = sock.recv(_NOBLOCK, copy=False)
        try:
            self._user = first.get("User-Id")
        except zmq.ZMQError:  # no User-Id (cannot happen with a ZAP handler): no role, refused as forbidden
            self._user = None
        return self._rest([first.bytes, sock.recv(_NOBLOCK)])

    def _rest(self, frames: list) -> list:
        """frames, with the message's frames after them received (while ZeroMQ says more follow)."""
        sock = self._sock
        while sock.getsockopt(_RCVMORE):
            frames.append(sock.recv(_NOBLOCK))
        return frames

    def _send_all(self, replies) -> None:
        for envelope, data in replies:
            self._send(envelope, data)

    def _send(self, envelope, data) -> None:
        """Send one reply (send_multipart, shorter: see _NOBLOCK). A ROUTER refuses a message at its first
        frame (the peer's queue is full, or it is gone); once that is taken, the others are."""
        sock = self._sock
        try:
            for frame in envelope:
                sock.send(frame, _MORE_NOBLOCK)
            sock.send(data, _NOBLOCK)
            self.sent_bytes += len(data)
        except zmq.ZMQError as e:  # Again: the peer's queue is full; EHOSTUNREACH: the peer is gone
            self.core.metrics["replies_dropped"] += 1
            n = self.core.metrics["replies_dropped"]
            if n >= 2 * self._dropped_logged:  # log 1, 2, 4, 8, ... drops: visible without flooding
                self._dropped_logged = n
                why = "its queue is full (it is not reading replies)" if e.errno == zmq.EAGAIN else \
                    "it disconnected" if e.errno == errno.EHOSTUNREACH else str(e)
                log.warning("dropped a reply to a client: %s; %d replies dropped so far", why, n,
                            extra={"event": "reply_dropped", "replies_dropped": n})
