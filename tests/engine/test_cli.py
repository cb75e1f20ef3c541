"""The lstm-stream command: option parsing, and ping/info/step against a real daemon from a shell."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from daemons import ROOT

import lstm_stream as ls
from engine.cli import build_parser, parse_connect, parse_duration, parse_endpoint, parse_size


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


def cli(*args, timeout=60, env=None):
    environ = None
    if env is not None:
        environ = {k: v for k, v in os.environ.items() if k != "LSTM_STREAM_CACHE_DIR"}
        environ.update(env)
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=environ)


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


@pytest.mark.parametrize("opt, value", [("--max-batch", "0"), ("--max-turn-samples", "-5"), ("--max-pending", "0")])
def test_bad_limits_are_refused_at_start(served_models, opt, value):
    r = cli("serve", "--model", served_models["ar"][0], opt, value)
    assert r.returncode == 2 and f"({opt}) must be an integer >= 1, got {value}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("argv, stream, values", [
    (["s", "-0.1,0.2"], "s", "-0.1,0.2"), (["s", "-1e-3,2"], "s", "-1e-3,2"), (["s", "-0.5"], "s", "-0.5"),
    (["s", ".5,-.5"], "s", ".5,-.5"), (["s", "-.5,1", "--timeout", "1s"], "s", "-.5,1"),
    (["--int-id", "-7", "-1E+2,3"], "-7", "-1E+2,3")])
def test_step_takes_negative_values(argv, stream, values):
    args = build_parser().parse_args(["step", "--connect", "ipc:///tmp/x", *argv])
    assert (args.stream, args.values) == (stream, values)


def test_step_with_negative_values_from_a_shell(daemon, served_models):
    path, model = served_models["ar"]
    d = daemon("--model", path)
    ref = ls.Streams(model)
    for values in ("-0.1,0.2,-0.3,0.4", "-1e-3,2,3,-4e0"):
        r = cli("step", "s", values, "--connect", d.endpoint)
        x = np.array([float(v) for v in values.split(",")])
        assert r.returncode == 0 and json.loads(r.stdout) == ref.step("s", x).tolist(), r.stderr
    r = cli("step", "s", "-0.5", "--connect", d.endpoint)  # parsed; one value where the model takes 4
    assert r.returncode == 1 and "bad_input" in r.stderr and "(4,)" in r.stderr, r.stderr
    r = cli("step", "s", "0.1,x,0.3,0.4", "--connect", d.endpoint)
    assert r.returncode == 2 and "VALUES '0.1,x,0.3,0.4' is not comma-separated numbers; expected e.g." in r.stderr
    r = cli("step", "s", "--json", '[0.1, true, 0.3, 0.4]', "--connect", d.endpoint)
    assert r.returncode == 2 and "x contains a bool; expected real numbers (float or int)" in r.stderr, r.stderr
    r = cli("step", "--int-id", "seven", "0,0,0,0", "--connect", d.endpoint)
    assert r.returncode == 2 and "stream 'seven' is not an int; --int-id expects an integer id" in r.stderr


@pytest.mark.parametrize("text, what", [
    ("127.0.0.1:5555", "has no scheme"), ("localhost", "has no scheme"), ("inproc://x", "has scheme 'inproc'"),
    ("http://h:80", "has scheme 'http'"), ("tcp://127.0.0.1", "needs a host and a port"),
    ("tcp://:5555", "needs a host and a port"), ("tcp://h:port", "has port 'port'"),
    ("tcp://h:70000", "has port '70000'"), ("ipc://", "has no path")])
def test_bad_endpoints_say_what_is_expected(text, what):
    for parse in (parse_endpoint, parse_connect):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value).startswith(f"{text!r} {what}") and "e.g. tcp://127.0.0.1:5555" in str(e.value)


def test_good_endpoints_pass():
    for text in ("tcp://127.0.0.1:5555", "tcp://*:5555", "tcp://[::1]:5555", "tcp://eth0:1", "ipc:///tmp/x.sock",
                 "ipc://rel.sock"):
        assert parse_endpoint(text) == text
        if "*" not in text:
            assert parse_connect(text) == text
    with pytest.raises(argparse.ArgumentTypeError, match="only --bind takes"):
        parse_connect("tcp://*:5555")


def test_bad_bind_and_connect_fail_fast_and_clearly(tmp_path):
    r = cli("serve", "--bind", "127.0.0.1:5555", "--model", tmp_path / "missing.npz")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("argument --bind: '127.0.0.1:5555' has no scheme; expected tcp://HOST:PORT or ipc://PATH, e.g. "
            "tcp://127.0.0.1:5555") in r.stderr
    assert "missing.npz" not in r.stderr  # refused before the model was looked at
    r = cli("serve", "--bind", "tcp://127.0.0.1:5555", "--bind", "inproc://x", "--model", tmp_path / "missing.npz")
    assert r.returncode == 2 and "argument --bind: 'inproc://x' has scheme 'inproc'" in r.stderr, r.stderr
    for command in ("ping", "info", "demo"):
        r = cli(command, "--connect", "localhost:5555")
        assert r.returncode == 2 and "argument --connect: 'localhost:5555' has no scheme; expected" in r.stderr
    r = cli("step", "s", "0,0", "--connect", "tcp://127.0.0.1:x")
    assert r.returncode == 2 and "argument --connect: 'tcp://127.0.0.1:x' has port 'x'" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["some.txt", "random.bin", "missing.npz", "other.npz"])
def test_serve_refuses_a_file_that_is_not_a_model(tmp_path, name):
    (tmp_path / "some.txt").write_text("not weights\n")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    r = cli("serve", "--model", tmp_path / name, "--bind", f"ipc://{tmp_path}/d.sock"[:100])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "allow_pickle" not in r.stderr, r.stderr
    assert f"cannot start: model file '{tmp_path / name}'" in r.stderr, r.stderr
    assert "expected an .npz file written by LSTMModel.save" in r.stderr


def test_warm_compiles_into_the_cache_and_says_where(tmp_path):
    """`lstm-stream warm` on an empty cache compiles, says where the cache is, and a second run finds it warm."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = cli("warm", env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "float32: compiled" in first.stdout and f"cache: {tmp_path / 'cache'}" in first.stdout
    second = cli("warm", env=env)
    assert second.returncode == 0 and "float32: already compiled" in second.stdout
    bad = cli("warm", "--model", str(tmp_path / "nothing.npz"))
    assert bad.returncode == 2 and "cannot load the model" in bad.stderr
