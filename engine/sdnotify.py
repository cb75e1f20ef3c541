"""systemd's notify protocol (sd_notify(3)), on the standard socket module: a `Type=notify` unit learns when the
daemon is ready, what it is doing, that it is stopping, and (with WatchdogSec=) that its loop still turns.

    notify = notifier()
    notify.status("restoring the snapshot")     # STATUS=...: `systemctl status` shows it
    notify.ready("serving 12 streams")          # READY=1: only once bound, warmed up, restored and replayed
    core.add_ticker(Ticker(notify, describe))  # WATCHDOG=1 (and STATUS=) from the loop's housekeeping
    notify.stopping()                           # STOPPING=1 at SIGTERM

The protocol is one datagram of KEY=VALUE lines per message, sent to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). Why not a package: the well-known
ones are a C extension over libsystemd (systemd-python: needs its headers to build) or unmaintained
(sdnotify, last release 2017); the protocol itself is these few lines. Nothing is sent, and nothing fails,
when $NOTIFY_SOCKET is unset (not run by systemd), and a send that fails is logged once and otherwise
ignored: telling systemd is never a reason for the daemon to stop.

The environment is read once, at the first use, and NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are then
removed from os.environ so that child processes (kernel compilers, the snapshot writer) cannot speak for the
daemon. WATCHDOG_PID, when set, must be this process's id, else the watchdog is not ours and stays off.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("lstm_stream.engine")

STATUS_EVERY = 10.0  # seconds between STATUS= updates while serving (only when the text changed)
RELOAD_POLL = 0.1    # seconds between looks at the SIGHUP flag (the loop polls at least this often anyway)


class Notifier:
    """The notify socket of this process, or a no-op when there is none."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET") or "")
        self.watchdog_usec = _watchdog_usec(env)
        self._sock = None
        self._failed = False
        if environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to tell (the daemon runs under systemd with Type=notify)."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One message of KEY=VALUE lines; whether it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
            return True
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s (further failures are not logged)",
                            self.address.replace("\0", "@"), e, extra={"event": "notify_failed"})
            return False

    def status(self, text: str) -> bool:
        """STATUS=text: one line shown by `systemctl status`."""
        return self.send("STATUS=" + text.replace("\n", " "))

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (and a status): start-up is complete, or a reload is."""
        return self.send("READY=1", *([] if status is None else ["STATUS=" + status.replace("\n", " ")]))

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd asks for; ready() again when it is done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the daemon is shutting down (systemd expects it to exit)."""
        return self.send("STOPPING=1", *([] if status is None else ["STATUS=" + status.replace("\n", " ")]))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the loop is alive."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str):
    """$NOTIFY_SOCKET as a socket address: '/run/...' as is, '@name' as the abstract name '\\0name'; None for
    an unset or unsupported one (systemd's vsock: addresses are for VMs, not served here: logged)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is not a path or an @abstract name; not notifying systemd", value,
                extra={"event": "notify_failed"})
    return None


def _watchdog_usec(env) -> int | None:
    """WATCHDOG_USEC when it is set, positive, and meant for this process (WATCHDOG_PID unset or ours)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid.strip() != str(os.getpid())):
        return None
    return usec


class Ticker:
    """A housekeeping ticker (EngineCore.add_ticker): WATCHDOG=1 every half of WATCHDOG_USEC, and STATUS= with the
    stream count every STATUS_EVERY seconds when it changed. Called only from the serving loop, so a loop that
    is stuck stops pinging and systemd restarts the daemon (after WatchdogSec)."""

    def __init__(self, notifier: Notifier, describe, clock=time.monotonic):
        self.notifier, self.describe = notifier, describe
        self.interval = None if notifier.watchdog_usec is None else notifier.watchdog_usec / 2e6
        now = clock()
        self._next_ping = now  # the first turn pings
        self._next_status = now + STATUS_EVERY
        self._status = None

    def __call__(self, now: float):
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY
            text = self.describe()
            if text != self._status:
                self._status = text
                self.notifier.status(text)
        if self.interval is None:
            return self._next_status
        if now >= self._next_ping:
            self._next_ping = now + self.interval
            self.notifier.watchdog()
        return min(self._next_ping, self._next_status)


class Reloader:
    """SIGHUP: re-read the client keys (engine/access.py) and every model's file (engine/modelwatch.py: same
    sizes keep every stream's state) on the loop, between RELOADING=1 and READY=1 (with systemd's ExecReload=
    sending SIGHUP, `systemctl reload` returns once both are re-read). With neither --curve-secret nor a --model
    file there is nothing to reload: it is logged, and SIGHUP does not stop the daemon."""

    def __init__(self, notifier: Notifier, access, describe, models=None):
        self.notifier, self.access, self.describe = notifier, access, describe
        self.models = models  # callable: reload every model's file, or None (the shipped default model only)
        self._asked = False

    def ask(self) -> None:
        """From the SIGHUP handler: a flag for the loop, and RELOADING=1."""
        what = [w for w, on in (("the client keys", self.access is not None),
                                ("the model files", self.models is not None)) if on]
        log.info("received SIGHUP: %s", f"re-reading {' and '.join(what)}" if what else
                 "nothing to reload (SIGHUP re-reads the client keys of --curve-secret and the --model files)",
                 extra={"event": "signal", "signal": "SIGHUP"})
        self._asked = True
        self.notifier.reloading()

    def __call__(self, now: float) -> float:
        if self._asked:
            self._asked = False
            if self.access is not None:
                self.access.request_reload()
                self.access.tick()  # a directory that cannot be read keeps the previous keys (logged there)
            if self.models is not None:
                self.models()  # a file that cannot be loaded keeps the model's weights (logged there)
            self.notifier.ready(self.describe())
        return now + RELOAD_POLL


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """This process's Notifier (made from the environment at the first call)."""
    global _notifier
    if _notifier is None:
        _notifier = Notifier()
    return _notifier


def status(text: str) -> bool:
    """STATUS=text to this process's notify socket, if any."""
    return notifier().status(text)
