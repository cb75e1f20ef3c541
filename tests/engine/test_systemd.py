"""systemd: the notify protocol (engine/sdnotify.py) against a real AF_UNIX datagram socket, a real daemon that
tells it READY/STATUS/WATCHDOG/RELOADING/STOPPING, and the unit file (systemd-analyze verify where installed)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from daemons import ROOT, short_ipc_dir
from engine import sdnotify

UNIT = ROOT / "contrib" / "systemd" / "lstm-stream.service"
WAIT = 120.0  # seconds: a cold start compiles the kernels


class NotifySocket:
    """The socket systemd would listen on: a datagram socket bound to a path or an abstract name."""

    def __init__(self, abstract: bool = False):
        self.dir = short_ipc_dir()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"lss-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.env_value = os.path.join(self.dir, "notify")
            self.sock.bind(self.env_value)
        self.messages: list = []

    def next(self, timeout: float) -> dict | None:
        """The next message as {KEY: VALUE}, or None after `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode("utf-8")
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.split("\n"))
        self.messages.append(msg)
        return msg

    def until(self, key: str, value: str = "", timeout: float = WAIT, proc=None) -> dict:
        """Read messages until one holds `key` with a value starting with `value`; fails after `timeout`, or
        once `proc` has exited and sent nothing more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next(min(deadline - time.monotonic(), 1.0))
            if msg is None:
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"the daemon exited ({proc.returncode}) before {key}; got {self.messages}")
            elif msg.get(key, "\0").startswith(value):
                return msg
        pytest.fail(f"no {key}={value}... within {timeout} s; got {self.messages}")

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    sockets = []

    def make(abstract=False):
        sockets.append(NotifySocket(abstract))
        return sockets[-1]

    yield make
    for s in sockets:
        s.close()


# ---- the protocol ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(notify_socket, abstract):
    sock = notify_socket(abstract)
    n = sdnotify.Notifier({"NOTIFY_SOCKET": sock.env_value, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_usec == 3_000_000
    assert n.ready("serving 3 streams")
    assert sock.next(5) == {"READY": "1", "STATUS": "serving 3 streams"}
    assert n.status("two\nlines") and sock.next(5) == {"STATUS": "two lines"}
    assert n.watchdog() and sock.next(5) == {"WATCHDOG": "1"}
    assert n.reloading()
    msg = sock.next(5)
    assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
    assert n.stopping() and sock.next(5) == {"STOPPING": "1"}
    n.close()


def test_no_socket_no_messages():
    n = sdnotify.Notifier({})
    assert not n.enabled and n.watchdog_usec is None
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()
    assert n._sock is None  # no socket was even made
    assert sdnotify.Notifier({"NOTIFY_SOCKET": "vsock:2:999"}).enabled is False  # not served here: logged


def test_watchdog_is_ours_only():
    assert sdnotify.Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}).watchdog_usec == 1000
    assert sdnotify.Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_usec is None
    assert sdnotify.Notifier({"WATCHDOG_USEC": "0"}).watchdog_usec is None
    assert sdnotify.Notifier({"WATCHDOG_USEC": "soon"}).watchdog_usec is None


def test_a_gone_socket_is_not_fatal(notify_socket, caplog):
    sock = notify_socket()
    n = sdnotify.Notifier({"NOTIFY_SOCKET": sock.env_value})
    sock.close()
    assert not n.ready() and not n.status("x")
    n.close()
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1  # once


def test_ticker_pings_at_half_the_watchdog(notify_socket):
    """The housekeeping ticker: WATCHDOG=1 at each half period of the loop's clock, never more often."""
    sock = notify_socket()
    n = sdnotify.Notifier({"NOTIFY_SOCKET": sock.env_value, "WATCHDOG_USEC": "2000000"})
    tick = sdnotify.Ticker(n, lambda: "serving", clock=lambda: 100.0)
    assert tick(100.0) == 101.0 and sock.next(5) == {"WATCHDOG": "1"}
    assert tick(100.5) == 101.0  # not yet
    tick(101.0)
    assert sock.next(5) == {"WATCHDOG": "1"}
    tick(110.0)  # the status is due too
    assert sorted(k for m in (sock.next(5), sock.next(5)) for k in m) == ["STATUS", "WATCHDOG"]
    sock.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        sock.sock.recv(4096)  # nothing more was sent
    n.close()


def test_the_loop_calls_tickers_when_due():
    """EngineCore.add_ticker: the housekeeping (the serving loop's) calls a ticker at its first turn, then only
    once the time it returned has come; its deadline bounds the loop's next poll."""
    import numpy as np
    from models import random_model

    import lstm_stream as ls
    from engine.core import EngineConfig, EngineCore
    core = EngineCore(ls.Streams(random_model(np.random.default_rng(1), I=3, H=4, L=1, O=2)), EngineConfig(),
                      clock=lambda: 50.0)
    calls = []
    core.add_ticker(lambda now: calls.append(now) or now + 2.0)
    assert core.housekeep(100.0) == 102.0 and calls == [100.0]
    core.housekeep(101.0)
    assert calls == [100.0]
    assert core.housekeep(102.5) == 104.5 and calls == [100.0, 102.5]


# ---- a real daemon ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True])
def test_daemon_notifies_systemd(daemon, notify_socket, tmp_path, abstract):
    """STATUS at each start stage, READY=1 once the daemon answers, WATCHDOG=1 from the loop, RELOADING=1 and
    READY=1 around SIGHUP, STOPPING=1 at SIGTERM; a clean exit."""
    from clients import Client
    sock = notify_socket(abstract)
    d = daemon("--snapshot-dir", tmp_path / "state", wait=False,
               env={"NOTIFY_SOCKET": sock.env_value, "WATCHDOG_USEC": "400000"})
    ready = sock.until("READY", "1", proc=d.proc)
    assert sock.messages[0] == {"STATUS": "starting"}
    with Client(d.endpoint, timeout=5, retries=0) as c:
        c.ping()  # ready means ready: bound, warm, restored (no retry needed)
        before = [m.get("STATUS") for m in sock.messages[:-1]]
        for stage in ("loading the model", "compiling the kernels", "restoring the snapshot",
                      "replaying the step log"):
            assert any(s and s.startswith(stage) for s in before), (stage, before)
        assert ready["STATUS"] == "serving 0 streams; 0 requests served"
        assert "listening on" in d.log()  # the bind was logged before READY was sent
        for _ in range(2):
            sock.until("WATCHDOG", "1", timeout=30)
        d.proc.send_signal(signal.SIGHUP)
        reloading = sock.until("RELOADING", "1", timeout=30)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        sock.until("READY", "1", timeout=30)
        c.ping()  # SIGHUP without --curve-secret: logged, not fatal
    assert "received SIGHUP: nothing to reload" in d.log()
    d.proc.send_signal(signal.SIGTERM)
    sock.until("STOPPING", "1", timeout=30)
    assert d.proc.wait(60) == 0


def test_no_watchdog_without_watchdog_usec(daemon, notify_socket):
    sock = notify_socket()
    d = daemon(wait=False, env={"NOTIFY_SOCKET": sock.env_value})
    sock.until("READY", "1", proc=d.proc)
    d.proc.send_signal(signal.SIGTERM)
    sock.until("STOPPING", "1", timeout=30)
    assert d.proc.wait(60) == 0
    assert not any("WATCHDOG" in m for m in sock.messages)


def test_a_refused_start_says_why(daemon, notify_socket, tmp_path):
    sock = notify_socket()
    d = daemon("--model", tmp_path / "missing.npz", wait=False, env={"NOTIFY_SOCKET": sock.env_value})
    msg = sock.until("STATUS", "failed to start: cannot start: ")
    assert "missing.npz" in msg["STATUS"]
    assert d.wait_exit() == 2 and not any("READY" in m for m in sock.messages)


# ---- the unit file ---------------------------------------------------------------------------------------
def test_unit_asks_for_what_the_daemon_does():
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/lstm-stream/serve.toml" in settings["ExecStart"]
    for hardening in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert settings[hardening] == "yes", hardening
    assert settings["ProtectSystem"] == "strict" and settings["StateDirectory"] == "lstm-stream"
    assert "MemoryDenyWriteExecute" not in settings  # Numba executes the code it compiles


def test_docs_show_the_unit_file():
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- unit: [^\n]*-->\n```ini\n(.*?)```\n<!-- /unit -->", doc, re.S)
    assert block and block.group(1) == UNIT.read_text(), "docs/operations.md's copy of the unit file differs"


def test_systemd_analyze_verify(tmp_path):
    """The unit as systemd reads it: no unknown key, no bad value. ExecStart= must name an executable that
    exists, so the check runs on a copy pointing at this checkout's entry point."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    exe = tmp_path / "lstm-stream"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "lstm-stream.service"
    unit.write_text(UNIT.read_text().replace("/opt/lstm-stream/venv/bin/lstm-stream", str(exe)))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    mentions = [line for line in (r.stdout + r.stderr).splitlines() if "lstm-stream" in line]
    assert r.returncode == 0 and not mentions, r.stdout + r.stderr
    # and it does find mistakes: an unknown key is reported
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in r.stdout + r.stderr
