"""`lstm-stream demo`: replay held-out smartwatch recordings as concurrent live streams through a daemon.

    lstm-stream demo                        # own daemon on a free loopback port, 40 streams, real time (10 s)
    lstm-stream demo --speed 0 --limit 8    # as fast as possible, the first 8 recordings
    lstm-stream demo --connect tcp://127.0.0.1:5555 --plot stream.png

Each held-out recording of the default model's data set (lstm_stream/data/README.md) becomes one stream: its
samples go through the asyncio client one at a time, paced at the recording's sample rate times --speed,
every stream concurrently on one connection. The daemon answers each sample with the class probabilities
for that moment. At the end the streamed outputs are compared with an offline run of the same model over
the same recordings in this process: the accuracies must be equal, and the outputs are bit-identical.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from .demo_view import LiveView, ReplayRecord, latency_line, plot_stream

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
DAEMON_START_TIMEOUT = 120.0  # seconds; a first start compiles the kernels (later starts load numba's cache)
DAEMON_STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
PROGRESS = re.compile(r"kernels: (.*)")  # the daemon's warm-up progress (lstm_stream/warm.py)
LISTENING = re.compile(r"listening on (tcp://\S+)")  # the daemon's log line naming the endpoint it bound


class DemoError(Exception):
    """The demo could not run (no daemon, wrong model, bad option); the message says what to do."""


def add_demo_arguments(p):
    """The demo's command-line options."""
    from .cli import parse_connect
    p.add_argument("--connect", metavar="ADDR", type=parse_connect,
                   help="use the daemon at ADDR (it must serve the default model); default: start one on a free "
                        "loopback port and stop it at the end")
    p.add_argument("--speed", type=float, default=1.0,
                   help="replay speed as a multiple of real time (1 = the recordings' 10 Hz; 0 = as fast as "
                        "possible)")
    p.add_argument("--limit", type=int, metavar="N", help="replay only the first N recordings (default: all 40)")
    p.add_argument("--plot", metavar="FILE.png", help="draw one stream's signals and predictions over time "
                                                      "(needs matplotlib: pip install 'lstm-stream[plot]')")
    p.add_argument("--plot-stream", type=int, default=0, metavar="N", help="which stream --plot draws (default 0)")
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of the live table")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="kernel backend of the daemon the demo starts")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")


def run_demo(args) -> int:
    """Entry point of `lstm-stream demo`: returns 0 when streaming accuracy equals offline accuracy."""
    try:
        return _run(args)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _run(args) -> int:
    from lstm_stream.defaults import load_replay
    replay = load_replay()
    _check_options(args, len(replay.X))
    if args.limit:
        replay = replay.subset(args.limit)
    if args.connect:
        return _replay_and_report(args, replay, args.connect)
    print("starting a daemon with the default model (the first start compiles the kernels) ...", flush=True)
    with Daemon(backend=args.backend) as daemon:
        print(f"daemon ready at {daemon.address} (pid {daemon.pid})", flush=True)
        return _replay_and_report(args, replay, daemon.address)


def _check_options(args, n_recordings):
    if not (args.speed >= 0 and np.isfinite(args.speed)):
        raise DemoError(f"--speed must be a number >= 0 (0 = as fast as possible), got {args.speed}")
    if args.limit is not None and not 1 <= args.limit <= n_recordings:
        raise DemoError(f"--limit must be between 1 and {n_recordings}, got {args.limit}")
    n = args.limit or n_recordings
    if args.plot and not 0 <= args.plot_stream < n:
        raise DemoError(f"--plot-stream must be between 0 and {n - 1}, got {args.plot_stream}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DemoError("--plot needs matplotlib: pip install 'lstm-stream[plot]' (or pip install "
                            "matplotlib), or run the demo without --plot") from None
    if not args.timeout > 0:
        raise DemoError(f"--timeout must be a positive number of seconds, got {args.timeout}")


def _replay_and_report(args, replay, address) -> int:
    from clients import Client
    with Client(address, timeout=args.timeout) as client:
        info = _check_daemon_model(client, address, replay.model_fingerprint)
    record = _replay(args, replay, address)
    return _report(args, replay, record, info.get("backend", "cpu"))


def _replay(args, replay, address) -> ReplayRecord:
    """Run the replay with the live view; the demo's streams are dropped from the daemon afterwards."""
    N, T, _ = replay.X.shape
    ids = [f"demo-{uuid.uuid4().hex[:8]}-{n:02d}" for n in range(N)]
    record = ReplayRecord(N, T, len(replay.class_names))
    pace = "as fast as possible" if args.speed == 0 else (
        f"{replay.sample_rate_hz:g} Hz x {args.speed:g}" + (" (real time)" if args.speed == 1 else ""))
    title = f"lstm-stream demo: {N} smartwatch streams -> {address}, {pace}"
    view = LiveView(record, replay.labels, replay.class_names, title=title,
                    stream=_PlainStdout() if args.plain else sys.stdout)
    if not view.tty:
        print(title, flush=True)
    try:
        asyncio.run(replay_streams(address, ids, replay.X, rate_hz=replay.sample_rate_hz * args.speed,
                                   record=record, on_reply=view.update, timeout=args.timeout))
    finally:
        view.close()
        _drop_streams(address, ids, args.timeout)
    return record


def offline_run(X, backend: str):
    """(outputs (N, T, O), backend used) of the default model over X in this process, on the daemon's backend
    when this process can run it (bit-identity is promised per backend), else on the CPU."""
    from lstm_stream.defaults import load_default_model, offline_outputs
    from lstm_stream.errors import BackendError
    model = load_default_model()
    try:
        return offline_outputs(model, X, backend=backend), backend
    except BackendError:
        return offline_outputs(model, X, backend="cpu"), "cpu"


def _report(args, replay, record, daemon_backend) -> int:
    """Print streaming vs offline accuracy, bit-identity, throughput and latency; draw --plot; exit status."""
    from lstm_stream.defaults import accuracy
    streaming = accuracy(record.predictions(), replay.labels)
    offline_y, backend = offline_run(replay.X, daemon_backend)
    offline = accuracy(offline_y.argmax(axis=-1), replay.labels)
    match, identical = streaming == offline, bool(np.array_equal(record.outputs, offline_y))
    print(f"\nstreaming accuracy: {streaming}")
    print(f"offline accuracy:   {offline}  (same model, whole recordings, in-process, {backend})")
    print(f"match: {'yes' if match else 'NO'}; outputs bit-identical to offline: {'yes' if identical else 'NO'} "
          f"(max |diff| {np.nanmax(np.abs(record.outputs - offline_y)):.1e})")
    if backend != daemon_backend:
        print(f"note: the daemon runs on {daemon_backend}, this process on {backend}; outputs are equal within "
              "float32 rounding there, bit-identity holds per backend")
    if replay.expected is not None:  # documented for the whole replay set only
        print(f"documented accuracy: {replay.expected}  "
              f"({'equal' if offline == replay.expected else 'DIFFERENT'}; lstm_stream/data/README.md)")
    print(f"{record.steps_done} steps in {record.elapsed:.2f} s ({record.steps_done / record.elapsed:,.0f} steps/s), "
          f"round-trip {latency_line(record)}")
    if args.plot:
        n = args.plot_stream
        plot_stream(args.plot, replay.X[n], record.outputs[n], int(replay.labels[n]), replay.class_names,
                    replay.channel_names, replay.sample_rate_hz,
                    title=f"stream {n}: true activity {replay.class_names[replay.labels[n]]}, "
                          f"predictions from the daemon at every sample")
        print(f"wrote {args.plot}")
    return EXIT_OK if match and (identical or backend != daemon_backend) else EXIT_MISMATCH


async def replay_streams(address, ids, X, *, rate_hz: float, record: ReplayRecord, on_reply=None,
                         timeout: float = 10.0) -> None:
    """Step stream ids[n] through X[n] (T, C) sample by sample, all streams concurrently, at rate_hz (0: no pacing).

    Each stream waits for a sample's reply before sending its next one, so a stream's steps arrive in order;
    streams are phase-shifted across one period, as independent sensors would be.
    """
    from clients import AsyncClient
    N, T, _ = X.shape
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    loop = asyncio.get_running_loop()

    async def one(n):
        start = loop.time() + period * n / N
        for t in range(T):
            if period:
                delay = start + t * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            t0 = time.perf_counter()
            y = await client.step(ids[n], X[n, t])
            record.record(n, t, y, time.perf_counter() - t0)
            if on_reply is not None:
                on_reply()

    async with AsyncClient(address, timeout=timeout) as client:
        record.started = time.perf_counter()
        try:
            await asyncio.gather(*(one(n) for n in range(N)))
        finally:
            record.finished = time.perf_counter()


def _check_daemon_model(client, address, fingerprint):
    from clients.errors import ClientError
    try:
        info = client.info()
    except ClientError as e:
        raise DemoError(f"no lstm-stream daemon answers at {address} ({e}); start one with `lstm-stream serve`, "
                        "or run `lstm-stream demo` without --connect to let it start its own") from None
    if info.get("fingerprint") != fingerprint:
        name = (info.get("model") or {}).get("name")
        raise DemoError(f"the daemon at {address} serves model {name!r} (fingerprint {info.get('fingerprint')}), "
                        f"not the default model this demo replays (fingerprint {fingerprint}); start a daemon "
                        "with `lstm-stream serve` and no --model, or run the demo without --connect")
    return info


def _drop_streams(address, ids, timeout):
    """Remove the demo's streams so that a shared daemon is left as it was (best effort)."""
    from clients import Client
    from clients.errors import ClientError
    try:
        with Client(address, timeout=timeout) as client, client.pipeline() as p:
            for i in ids:
                p.drop(i)
            p.execute(return_exceptions=True)
    except ClientError:
        pass


class _PlainStdout:
    """sys.stdout seen as a non-terminal (for --plain)."""

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()

    def isatty(self):
        return False


class Daemon:
    """`lstm-stream serve` (default model) as a child process on a loopback port it picks; stopped on exit.

    The daemon binds tcp://127.0.0.1:* (the kernel picks a free port, so no other process can race for it)
    and logs the endpoint it got, which is read back from its log.
    """

    def __init__(self, *, backend: str = "cpu", start_timeout: float = DAEMON_START_TIMEOUT):
        self.backend, self.start_timeout = backend, start_timeout
        self.address: str | None = None
        self._proc = None
        self._log = None

    @property
    def pid(self) -> int:
        """Process id of the daemon."""
        return self._proc.pid

    def __enter__(self):
        self._log = tempfile.TemporaryFile(mode="a+")  # O_APPEND: the child's writes go to the end however we seek
        root = str(Path(__file__).resolve().parents[1])  # so `-m engine.cli` works from a checkout too
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--bind", "tcp://127.0.0.1:*", "--backend",
               self.backend, "--log-level", "info"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self):
        from clients import Client
        from clients.errors import ClientError
        deadline = time.monotonic() + self.start_timeout
        shown = 0  # the daemon's progress lines ("kernels: compiling ...") printed so far
        while self.address is None:
            self._check_alive()
            log_text = self._read_log()
            progress = PROGRESS.findall(log_text)
            for line in progress[shown:]:
                print(f"  {line}", flush=True)
            shown = len(progress)
            found = LISTENING.search(log_text)
            if found:
                self.address = found.group(1)
            elif time.monotonic() > deadline:
                raise DemoError(f"the daemon did not report its endpoint within {self.start_timeout:.0f} s:\n"
                                f"{self.log_tail()}")
            else:
                time.sleep(0.05)
        with Client(self.address, timeout=0.5, retries=0) as client:
            while True:
                self._check_alive()
                try:
                    client.ping()
                    return
                except ClientError:
                    if time.monotonic() > deadline:
                        raise DemoError(f"the daemon did not answer at {self.address} within "
                                        f"{self.start_timeout:.0f} s:\n{self.log_tail()}") from None
                    time.sleep(0.05)

    def _check_alive(self):
        if self._proc.poll() is not None:
            raise DemoError(f"the daemon exited with status {self._proc.returncode} before answering:\n"
                            f"{self.log_tail()}")

    def _read_log(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the daemon wrote to stdout and stderr."""
        return "\n".join(self._read_log().splitlines()[-lines:]) or "(no output)"

    def __exit__(self, *exc):
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
        return False
