"""The lstm-stream command: option parsing, and ping/info/step against a real daemon from a shell."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from daemons import ROOT

import lstm_stream as ls
from engine.cli import OMP_DEFAULTS, build_parser, parse_duration, parse_size, set_omp_defaults


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800),
                                           ("1.5", 1.5), (" 10 S ", 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0s", "-1s", "5 minutes", "s", "1e3"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_sizes():
    assert parse_size("65536") == 65536 and parse_size("64KiB") == 65536 and parse_size("16MiB") == 16 * 2**20
    for bad in ("0", "1.5MiB", "12GB", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_serve_options_parse():
    args = build_parser().parse_args(["serve", "--model", "m.npz", "--bind", "tcp://127.0.0.1:5555", "--bind",
                                      "ipc:///tmp/x", "--snapshot-dir", "s", "--snapshot-every", "30s",
                                      "--idle-ttl", "1h", "--max-streams", "1000", "--backend", "auto"])
    assert args.bind == ["tcp://127.0.0.1:5555", "ipc:///tmp/x"] and args.snapshot_every == 30
    assert args.idle_ttl == 3600 and args.max_streams == 1000 and args.backend == "auto"


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_ping_info_step_from_a_shell(daemon, served_models):
    path, model = served_models["ar"]
    d = daemon("--model", path)
    r = cli("ping", "--connect", d.endpoint)
    assert r.returncode == 0 and r.stdout.startswith("pong from"), r.stderr
    r = cli("info", "--connect", d.endpoint)
    assert r.returncode == 0 and json.loads(r.stdout)["fingerprint"] == model.fingerprint
    r = cli("step", "--connect", d.endpoint, "pump-7", "0.1,0.2,0.3,0.4")
    ref = ls.Streams(model)
    assert json.loads(r.stdout) == ref.step("pump-7", np.array([0.1, 0.2, 0.3, 0.4])).tolist()
    r = cli("step", "--connect", d.endpoint, "--int-id", "7", "--json", "[[1, 2, 3, 4], [0, 0, 0, 0]]")
    assert json.loads(r.stdout) == ref.step(7, np.array([[1, 2, 3, 4], [0, 0, 0, 0.0]])).tolist()
    r = cli("step", "--connect", d.endpoint, "pump-7", "1,2")
    assert r.returncode == 1 and "bad_input" in r.stderr and "Traceback" not in r.stderr


def test_client_commands_time_out_clearly(tmp_path):
    r = cli("ping", "--connect", f"ipc://{tmp_path}/nobody"[:100], "--timeout", "200ms")
    assert r.returncode == 1 and "no reply" in r.stderr and "Traceback" not in r.stderr


def test_snapshot_every_needs_a_dir(served_models):
    r = cli("serve", "--model", served_models["ar"][0], "--snapshot-every", "1s")
    assert r.returncode == 2 and "--snapshot-every needs --snapshot-dir" in r.stderr


def test_openmp_workers_sleep_unless_the_environment_says_otherwise():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_omp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    env = {}
    set_omp_defaults(env)
    assert env == OMP_DEFAULTS and env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("opt, value", [("--max-batch", "0"), ("--max-turn-samples", "-5"), ("--max-pending", "0")])
def test_bad_limits_are_refused_at_start(served_models, opt, value):
    r = cli("serve", "--model", served_models["ar"][0], opt, value)
    assert r.returncode == 2 and f"({opt}) must be an integer >= 1, got {value}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
