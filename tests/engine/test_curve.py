"""CURVE encryption, client keys and roles (docs/operations.md, "Keys and roles"): keygen, the handshake
against a real daemon on loopback, SIGHUP re-reading the keys, step/admin roles, per-key namespaces."""
import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

import lstm_stream as ls
from clients import AsyncClient, Client, Forbidden, Timeout
from engine import cli
from engine.access import Access, key_id
from engine.core import EngineCore
from lstm_stream import protocol as P
from daemons import ROOT, free_tcp_endpoint

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

I = 4


def keygen(directory, name):
    assert cli.main(["keygen", str(directory), name]) == 0
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@pytest.fixture
def keys(tmp_path):
    """Key pairs made by `lstm-stream keygen` under tmp/keys, and the daemon's allow-list directories."""
    home = tmp_path / "keys"
    k = {name: keygen(home, name) for name in ("server", "gw1", "gw2", "op", "stranger")}
    allow, admin = tmp_path / "allow", tmp_path / "admin"
    allow.mkdir()
    admin.mkdir()
    for name in ("gw1", "gw2"):
        shutil.copy(k[name][0], allow)
    shutil.copy(k["op"][0], admin)
    return {"pairs": k, "allow": allow, "admin": admin, "server": k["server"][0]}


def curve_args(keys, *more):
    return ("--curve-secret", keys["pairs"]["server"][1], "--allow-keys", keys["allow"], "--admin-keys",
            keys["admin"], *more)


def client(d, keys, name, **kw):
    return Client(d.endpoint, server_key=keys["server"], client_keys=keys["pairs"][name][1], **kw)


def test_keygen_writes_a_usable_pair_with_private_permissions(tmp_path, capsys):
    public, secret = keygen(tmp_path / "new" / "keys", "pump-gw")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "keys").st_mode) == 0o700
    import zmq.auth
    pub, sec = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert zmq.curve_public(sec) == pub  # the secret half really belongs to the public one
    assert pub.decode() in capsys.readouterr().out
    assert cli.main(["keygen", str(tmp_path / "new" / "keys"), "pump-gw"]) == cli.EXIT_USAGE  # no overwrite
    assert zmq.auth.load_certificate(secret) == (pub, sec)


def test_serve_options_need_each_other():
    from engine.config import ServeConfig
    for bad in (dict(allow_keys="d"), dict(admin_keys="d"), dict(namespaces="on"), dict(curve_secret="s")):
        with pytest.raises(ValueError):
            ServeConfig(**bad)
    ServeConfig(curve_secret="s", admin_keys="d")


@pytest.mark.parametrize("endpoint, loopback", [("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True),
                                                ("tcp://[::1]:5555", True), ("ipc:///tmp/x.sock", True),
                                                ("tcp://0.0.0.0:5555", False), ("tcp://10.1.2.3:5555", False),
                                                ("tcp://eth0:5555", False)])
def test_is_loopback(endpoint, loopback):
    assert cli.is_loopback(endpoint) is loopback


def test_no_keys_a_stranger_refused_then_allowed_after_sighup(daemon, served_models, keys):
    d = daemon("--model", served_models["cls"][0], *curve_args(keys), endpoint=daemon.endpoint("tcp"),
               client=dict(server_key=keys["server"], client_keys=keys["pairs"]["gw1"][1]))
    x = np.full(I, 0.25, np.float32)
    with Client(d.endpoint, timeout=0.5, retries=0) as plain, pytest.raises(Timeout):
        plain.step("a", x)  # no keys: the CURVE handshake never completes; nothing is served
    with client(d, keys, "stranger", timeout=0.5, retries=0) as stranger:
        with pytest.raises(Timeout):
            stranger.step("a", x)  # a key not in the allow-list: refused by the ZAP handler
        with client(d, keys, "gw1") as good:
            assert good.seq("a") == 0  # neither refused request was applied
            good.step("a", x)
        shutil.copy(keys["pairs"]["stranger"][0], keys["allow"])
        d.proc.send_signal(signal.SIGHUP)
        stranger.timeout = 0.5
        deadline = time.monotonic() + 30
        while True:  # the client reconnects by itself; the loop re-reads the keys within ~0.1 s
            try:
                y = stranger.step("b", x)
                break
            except Timeout:
                assert time.monotonic() < deadline, d.log()
        assert y.shape == (3,)
    assert "re-reading the client keys" in d.log() and "3 step" in d.log()
    assert "refused a CURVE connection" in d.log()


def test_asyncio_client_with_keys(daemon, served_models, keys):
    d = daemon("--model", served_models["cls"][0], *curve_args(keys),
               client=dict(server_key=keys["server"], client_keys=keys["pairs"]["op"][1]))
    import zmq.auth
    pair = tuple(k.decode() for k in zmq.auth.load_certificate(keys["pairs"]["gw2"][1]))

    async def go():
        async with AsyncClient(d.endpoint, server_key=keys["server"], client_keys=pair, timeout=10) as c:
            return await asyncio.gather(*(c.step(f"s{k}", np.zeros(I)) for k in range(20)))

    assert len(asyncio.run(asyncio.wait_for(go(), 60))) == 20


def test_step_key_is_refused_admin_ops_and_nothing_changes(daemon, served_models, keys, tmp_path):
    d = daemon("--model", served_models["cls"][0], "--snapshot-dir", tmp_path / "state", *curve_args(keys),
               client=dict(server_key=keys["server"], client_keys=keys["pairs"]["op"][1]))
    x = np.full(I, 0.5, np.float32)
    with client(d, keys, "gw1") as step, client(d, keys, "op") as admin:
        step.step("pump-7", x)
        step.step("pump-7", x)
        before = admin.get_state("pump-7")
        refused = {"drop": lambda: step.drop("pump-7"), "reset": lambda: step.reset("pump-7"),
                   "set_state": lambda: step.set_state("pump-7", (before.h * 0, before.c * 0)),
                   "copy": lambda: step.copy("pump-7", "x"), "streams": lambda: step.streams(),
                   "snapshot": lambda: step.snapshot(), "reload": lambda: step.reload(reset=True)}
        for op, call in refused.items():
            with pytest.raises(Forbidden) as e:
                call()
            assert e.value.code == P.FORBIDDEN and f"may not {op}; admin keys may" in str(e.value)
        after = admin.get_state("pump-7")
        assert after.steps == 2 and np.array_equal(after.h, before.h) and np.array_equal(after.c, before.c)
        assert admin.streams() == ["pump-7"] and not (tmp_path / "state" / "streams.lstmsnap").exists()
        assert step.info()["counters"]["error.forbidden"] == len(refused)
        assert step.get_state("pump-7").steps == 2
        admin.copy("pump-7", "pump-8")
        admin.set_state("pump-8", before)
        admin.reset("pump-8")
        admin.drop("pump-8")
        assert admin.snapshot()["streams"] == 1
        assert admin.reload()["changed"] is False  # an admin may (the same file: nothing to change)
        # a key taken out of the allow-list is refused on its open connection after SIGHUP
        os.unlink(keys["allow"] / "gw1.key")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            try:
                step.ping()
            except Forbidden as e:
                assert "not allowed" in str(e)
                break
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)


def test_namespaces_keep_each_keys_streams_apart(daemon, served_models, keys):
    path, model = served_models["cls"]
    d = daemon("--model", path, *curve_args(keys, "--namespaces", "on"),
               client=dict(server_key=keys["server"], client_keys=keys["pairs"]["op"][1]))
    rng = np.random.default_rng(3)
    xs = {name: rng.normal(size=(15, I)).astype(np.float32) for name in ("gw1", "gw2")}
    got = {}
    with client(d, keys, "gw1") as a, client(d, keys, "gw2") as b, client(d, keys, "op") as admin:
        ya, yb = [], []
        for t in range(15):  # interleaved, same id "pump-7", one sample at a time and via step_many
            ya.append(a.step("pump-7", xs["gw1"][t]))
            yb.append(b.step_many({"pump-7": xs["gw2"][t], 7: xs["gw2"][t]})["pump-7"])
        got = {"gw1": np.stack(ya), "gw2": np.stack(yb)}
        for name in ("gw1", "gw2"):
            alone = ls.Streams(model)
            want = np.stack([alone.step("pump-7", x) for x in xs[name]])
            assert np.array_equal(got[name], want)  # bit-identical to stepping that stream alone
        assert a.streams() == ["pump-7"] and sorted(map(str, b.streams())) == ["7", "pump-7"]
        assert 7 in b.streams()  # an int id comes back an int
        assert a.get_state("pump-7").steps == 15 and b.get_state(7).steps == 15
        with pytest.raises(KeyError) as e:
            a.get_state(7)  # gw2's 7 is not gw1's
        assert "unknown stream 7" in str(e.value) and key_id("x")[:4] not in str(e.value)
        import zmq.auth
        kid = {n: key_id(zmq.auth.load_certificate(keys["pairs"][n][0])[0].decode()) for n in ("gw1", "gw2")}
        assert sorted(admin.streams()) == sorted([f"{kid['gw1']}/pump-7", f"{kid['gw2']}/pump-7",
                                                  f"{kid['gw2']}#7"])  # admins see (and may manage) all


def test_core_checks_the_role_of_each_request(tmp_path, served_models):
    """In-process: EngineCore.submit is the one place a role is checked (the daemon hands it the User-Id)."""
    import zmq.auth
    allow = tmp_path / "allow"
    allow.mkdir()
    public, _ = zmq.auth.create_certificates(tmp_path, "gw")
    shutil.copy(public, allow)
    user = zmq.auth.load_certificate(public)[0].decode()
    core = EngineCore(ls.Streams(served_models["cls"][1]), access=Access(str(allow), None, namespaces=False))
    step = P.parse_request({"v": 1, "id": 1, "op": "step", "stream": "s", "x": [0.0] * I})
    assert core.submit("tag", step, user=user) is None and core.step()[0][1].ok
    drop = P.parse_request({"v": 1, "id": 2, "op": "drop", "stream": "s"})
    reply = core.submit("tag", drop, user=user)
    assert reply.code == P.FORBIDDEN and reply.id == 2 and core.streams.ids() == ["s"]
    assert core.submit("tag", drop, user="someone-else").code == P.FORBIDDEN
    assert core.submit("tag", drop, user=None).code == P.FORBIDDEN  # no User-Id under CURVE: no role


def test_a_non_loopback_bind_without_curve_is_warned_about(daemon, served_models):
    from daemons import free_tcp_endpoint
    port = free_tcp_endpoint().rpartition(":")[2]
    d = daemon("--model", served_models["cls"][0], endpoint=f"tcp://0.0.0.0:{port}", wait=False)
    d.endpoint = f"tcp://127.0.0.1:{port}"
    d.wait_ready()
    assert "WARNING" in d.log() and "without CURVE" in d.log()
    loop = daemon("--model", served_models["cls"][0], endpoint=daemon.endpoint("tcp"))
    assert "without CURVE" not in loop.log()


def test_namespaces_setting_is_kept_with_the_state_directory(tmp_path):
    """The state directory records --namespaces on its first start; another setting later is refused."""
    from engine.startup import ID_SCHEME_FILE, keep_id_scheme
    from lstm_stream.errors import InputError
    on, off, legacy = tmp_path / "on", tmp_path / "off", tmp_path / "legacy"
    for d in (on, off, legacy):
        d.mkdir()
    keep_id_scheme(on, True)
    keep_id_scheme(on, True)  # the same setting again: fine
    assert json.loads((on / ID_SCHEME_FILE).read_text()) == {"namespaces": True}
    with pytest.raises(InputError, match=r"--namespaces off, but the state in .* was served with --namespaces on"
                                         r".*let any step key name another key's streams"):
        keep_id_scheme(on, False)
    keep_id_scheme(off, False)
    with pytest.raises(InputError, match="hide every existing stream from the step keys"):
        keep_id_scheme(off, True)
    (legacy / "streams.lstmsnap").write_bytes(b"state written before the record existed")
    with pytest.raises(InputError, match="served with --namespaces off"):
        keep_id_scheme(legacy, True)  # state without a record: it was served with namespaces off
    keep_id_scheme(legacy, False)
    assert json.loads((legacy / ID_SCHEME_FILE).read_text()) == {"namespaces": False}
    (on / ID_SCHEME_FILE).write_text('{"namespaces": "yes"}')
    with pytest.raises(InputError, match=r"unreadable .* write \{\"namespaces\": true\}"):
        keep_id_scheme(on, True)


def test_a_daemon_refuses_state_served_with_other_namespaces(daemon, served_models, keys, tmp_path):
    path, model = served_models["cls"]
    state = tmp_path / "state"
    d = daemon("--model", path, "--snapshot-dir", state, *curve_args(keys, "--namespaces", "on"),
               client=dict(server_key=keys["server"], client_keys=keys["pairs"]["op"][1]))
    with client(d, keys, "gw1") as a:
        a.step("pump-7", np.ones(I, np.float32))
    d.stop()
    r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--model", path, "--snapshot-dir", state,
                        "--bind", free_tcp_endpoint(), *curve_args(keys)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "was served with --namespaces on" in r.stderr, r.stderr
