"""`lstm-stream cluster up | status` as a user runs them: a real `cluster up` process with its own local Ray,
a ClusterClient stepping through it, `status` from the storage and from a shard's endpoint, SIGTERM: every
shard snapshots and the command exits 0. Wrong uses exit 2 with a message, before any Ray starts."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
START = 240.0  # seconds for a local Ray and its shards to come up on a loaded machine (usually ~15 s)


def cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               RAY_AUTH_MODE="token")  # a local Ray uses token auth; an explicit --address must ask for it
    return subprocess.run([sys.executable, "-m", "engine.cli", "cluster", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def test_wrong_uses_say_what_was_expected(tmp_path):
    r = cli("status", "--storage", tmp_path)
    assert r.returncode == 2 and "no shard map in" in r.stderr
    (tmp_path / "map.json").write_text(json.dumps({"version": 1, "hash": "hrw-blake2b-splitmix64", "shards": [
        {"name": "s0", "endpoint": ""}, {"name": "s1", "endpoint": ""}]}))
    pytest.importorskip("ray", reason="cluster up needs ray: pip install 'lstm-stream[ray]'")
    r = cli("up", "--shards", 3, "--storage", tmp_path)
    assert r.returncode == 2 and "holds a cluster of 2 shards (s0, s1); start it with --shards 2" in r.stderr
    r = cli("up", "--storage", tmp_path / "new")
    assert r.returncode == 2 and "--shards must be an int >= 1, got None" in r.stderr
    r = cli("up", "--shards", 1, "--storage", tmp_path / "new", "--model", "pump=pump.npz")
    assert r.returncode == 2 and "a cluster serves one model" in r.stderr
    r = cli("up", "--shards", 1, "--storage", tmp_path / "new", "--model-dir", tmp_path)
    assert r.returncode == 2 and "unrecognized arguments: --model-dir" in r.stderr
    r = cli("up", "--shards", 1, "--storage", tmp_path / "new2", "--model", tmp_path / "missing.npz",
            "--num-cpus", 1, timeout=300)
    assert r.returncode == 1 and "cannot start the cluster: a shard failed to start:" in r.stderr
    assert "missing.npz" in r.stderr.split("cannot start the cluster")[-1]


def test_up_status_and_stop(tmp_path, served_models):
    pytest.importorskip("ray", reason="cluster up needs ray: pip install 'lstm-stream[ray]'")
    from clients import ClusterClient
    storage = tmp_path / "storage"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "cluster", "up", "--shards", "2", "--storage",
                             str(storage), "--model", str(served_models["cls"][0]), "--threads", "1",
                             "--num-cpus", "1", "--fsync", "always"], stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=ROOT, env=env)
    try:
        out = _read_map(proc, tmp_path / "up.log")
        m = json.loads(out)
        assert [s["name"] for s in m["shards"]] == ["s0", "s1"] and all(s["endpoint"] for s in m["shards"])
        with ClusterClient(m["shards"][1]["endpoint"], timeout=30) as c:
            ys = c.step_many({f"p{k}": np.ones(4, np.float32) for k in range(40)})
            assert len(ys) == 40
        r = cli("status", "--storage", storage)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"shard map version {m['version']}" in r.stdout and "2 shards, 2 answering, 40 streams" in r.stdout
        r = cli("status", "--connect", m["shards"][0]["endpoint"], "--json")
        rows = json.loads(r.stdout)["shards"]
        assert r.returncode == 0 and sum(row["streams"] for row in rows) == 40
        assert {row["map_version"] for row in rows} == {m["version"]}
        address = re.search(r"Ray address (\S+:\d+)", (tmp_path / "up.log").read_text()).group(1)
        r = cli("add-shard", "s2", "--address", address, "--storage", storage, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert [s["name"] for s in json.loads(r.stdout)["shards"]] == ["s0", "s1", "s2"]
        r = cli("remove-shard", "s0", "--address", address, "--storage", storage, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        r = cli("remove-shard", "s0", "--address", address, "--storage", storage, timeout=300)
        assert r.returncode == 2 and "shard 's0' is not in the cluster (s1, s2)" in r.stderr
        r = cli("status", "--storage", storage)
        assert r.returncode == 0 and "2 shards, 2 answering, 40 streams" in r.stdout, r.stdout + r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        for name in ("s1", "s2"):  # each shard snapshotted at shutdown
            assert (storage / "shards" / name / "streams.lstmsnap").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        log.close()


def _read_map(proc, log_path) -> str:
    """The JSON map `cluster up` prints on stdout once every shard serves (bounded by START)."""
    deadline = time.monotonic() + START
    lines = []
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
            if line.startswith("}"):
                return "".join(lines)
            continue
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"cluster up did not print the map (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}")
