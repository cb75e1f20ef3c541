"""A real `lstm-stream serve` in a subprocess, for end-to-end tests: fresh endpoint, bounded waits, always stopped."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # a daemon gets them only from `env`
START_TIMEOUT = 120.0  # seconds: numba may compile the kernels on a cold cache (shared, busy CI machine)


def free_tcp_endpoint() -> str:
    """tcp://127.0.0.1:<a port free right now>."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def short_ipc_dir() -> str:
    """A new short directory for ipc:// sockets (their paths are limited to ~100 characters)."""
    return tempfile.mkdtemp(prefix="lss-", dir="/tmp")


class Daemon:
    """One daemon process; start() waits until it answers ping, stop() signals it and waits (then kills)."""

    def __init__(self, endpoint: str, args, log_path, client=None, env=None):
        self.endpoint, self.args, self.log_path = endpoint, list(args), Path(log_path)
        self.client = dict(client or {})  # Client options that reach it (CURVE: server_key, client_keys)
        self.env = dict(env or {})  # added to the environment (e.g. NOTIFY_SOCKET)
        self.proc = None

    def start(self, *, wait: bool = True) -> "Daemon":
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}  # (pytest under systemd)
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--bind", self.endpoint,
                                          "--log-level", "debug", *self.args],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        from clients import Client, Timeout
        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout=0.5, retries=0, **self.client) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode} before answering:\n{self.log()}")
                try:
                    c.ping()
                    return
                except Timeout:
                    pass
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"daemon did not answer ping within {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself (e.g. a refused start); kill it if it does not."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the daemon and wait for it to exit; SIGKILL after `timeout`. Returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def log(self) -> str:
        """Everything the daemon wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class DaemonFactory:
    """Starts daemons for one test and stops every one of them at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = Path(tmp_path)
        self.ipc_dir = short_ipc_dir()
        self.daemons: list = []

    def endpoint(self, kind: str = "ipc") -> str:
        """A fresh endpoint: ipc:// in a short temporary directory, or tcp:// on a free loopback port."""
        if kind == "tcp":
            return free_tcp_endpoint()
        return f"ipc://{self.ipc_dir}/d{len(self.daemons)}.sock"

    def __call__(self, *args, endpoint: str | None = None, wait: bool = True, client=None, env=None) -> Daemon:
        """Start a daemon with `serve` arguments `args`; `client`: the Client options that reach it (CURVE);
        `env`: variables added to its environment."""
        d = Daemon(endpoint or self.endpoint(), [str(a) for a in args], self.tmp_path / f"daemon{len(self.daemons)}.log",
                   client, env)
        self.daemons.append(d)
        return d.start(wait=wait)

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def serving(tmp_path_factory, served_models, name: str, *args):
    """The body of a module fixture: yields (endpoint, model) of one daemon serving served_models[name]
    (with more `serve` arguments `args`), stopped at the module's end."""
    factory = DaemonFactory(tmp_path_factory.mktemp(f"served-{name}"))
    path, model = served_models[name]
    try:
        yield factory("--model", path, *args).endpoint, model
    finally:
        factory.close()


def run_async(coro, timeout: float = 120):
    """asyncio.run(coro), bounded by `timeout` seconds."""
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, timeout))
