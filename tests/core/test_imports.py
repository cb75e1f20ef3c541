"""Every module of the three packages imports on its own, first, in a fresh set of our modules: no import cycle
that only works in one order (protocol.py and parsing.py import each other's names, say), and no optional
dependency imported at module level by a module the core needs."""
import importlib
import pkgutil
import subprocess
import sys

from daemons import ROOT

PACKAGES = ("lstm_stream", "engine", "clients")
OPTIONAL = {"ray", "keras", "onnx", "onnxruntime", "paho", "prometheus_client", "atheris", "torch", "tomli",
            "matplotlib", "numba_cuda", "cupy"}

CODE = """
import importlib, pkgutil, sys
bad = []
names = []
for pkg in %r:
    mod = importlib.import_module(pkg)
    names.append(pkg)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
ours = lambda n: n.split(".")[0] in %r
for name in names:
    for loaded in [n for n in sys.modules if ours(n)]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as e:
        if (e.name or "").split(".")[0] not in %r:
            bad.append(f"{name}: {e!r}")
print("\\n".join(bad))
print("checked", len(names))
"""


def test_every_module_imports_first_on_its_own():
    r = subprocess.run([sys.executable, "-c", CODE % (PACKAGES, PACKAGES, OPTIONAL)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("checked") and int(lines[-1].split()[1]) > 60, r.stdout
    assert lines[:-1] == [], "\n".join(lines[:-1])
