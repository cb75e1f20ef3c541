"""clients/c: the C example client (libzmq + msgpack-c, written from docs/protocol.md) built with the system cc
and run against a real daemon: its float32 outputs must equal the Python client's, bit for bit."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clients import Client

SOURCE = Path(__file__).resolve().parents[2] / "clients" / "c" / "lstm_client.c"
# msgpack-c's pkg-config name and library: msgpack-c on Debian 13 (libmsgpack-c-dev), msgpack (-lmsgpackc) on 12
FLAG_SETS = (("pkg-config", "libzmq", "msgpack-c"), ("pkg-config", "libzmq", "msgpack"))
FALLBACK_LIBS = (["-lzmq", "-lmsgpack-c"], ["-lzmq", "-lmsgpackc"])


def _flags() -> list:
    """Compiler and linker flags for libzmq and msgpack-c, from pkg-config when it knows them."""
    if shutil.which("pkg-config"):
        for cmd in FLAG_SETS:
            r = subprocess.run([*cmd[:1], "--cflags", "--libs", *cmd[1:]], capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout.split()
    return []


def _build(tmp_path) -> Path:
    """The built client; skips (saying why) without a compiler or the two libraries' headers."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc): .ci/run installs gcc, libzmq3-dev and libmsgpack-c-dev where apt-get is")
    probe = tmp_path / "probe.c"
    probe.write_text("#include <zmq.h>\n#include <msgpack.h>\nint main(void) { return 0; }\n")
    if subprocess.run([cc, "-c", str(probe), "-o", str(tmp_path / "probe.o"), *_flags()],
                      capture_output=True).returncode != 0:
        pytest.skip("zmq.h or msgpack.h not found: install libzmq3-dev and libmsgpack-c-dev (libmsgpack-dev on "
                    "Debian 12), as .ci/run does where apt-get is")
    exe, errors, flags = tmp_path / "lstm_client", [], _flags()
    for libs in ([flags] if flags else []) + list(FALLBACK_LIBS):
        r = subprocess.run([cc, "-O2", "-Wall", str(SOURCE), "-o", str(exe), *libs],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return exe
        errors.append(r.stderr)
    pytest.fail("clients/c/lstm_client.c does not build:\n" + "\n".join(errors))


def _hex(a) -> str:
    """float32 values as the hex of their bits, as the C client prints them."""
    return " ".join(f"{b:08x}" for b in np.ascontiguousarray(a, np.float32).view("<u4").ravel())


def _expected(endpoint, I) -> dict:
    """What the C client must print, computed with the Python client on streams py-1 and py-2."""
    x = (0.25 * np.arange(2 * I, dtype=np.float32) - 0.5).reshape(2, I)
    with Client(endpoint) as c:
        out = {"step": _hex(c.step("py-1", x[0])), "step2": _hex(c.step("py-1", x))}
        ys = c.step_many({"py-1": x[0], "py-2": x[1]})
        out["step_many"] = _hex(np.stack([ys["py-1"], ys["py-2"]]))
        st = c.get_state("py-1")
        out.update(h=_hex(st.h), c=_hex(st.c), steps=str(st.steps))
    return out


def test_the_c_client_matches_the_python_client_bit_for_bit(daemon, served_models, tmp_path):
    exe = _build(tmp_path)
    path, model = served_models["cls"]
    d = daemon("--model", path, endpoint=daemon.endpoint("tcp"))
    r = subprocess.run([str(exe), d.endpoint, "c"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert got["info"] == f"input_size {model.input_size}"
    assert float(got["ping"]) > 0
    expected = _expected(d.endpoint, model.input_size)
    assert {k: got[k] for k in expected} == expected
