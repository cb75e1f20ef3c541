"""Compiled kernels are cached per user, never in the package directory, in a directory keyed on every source of
the package and the compiler versions (lstm_stream/jitcache.py). Each case runs a fresh Python on a copy of
the package, as pip would install it, and compiles one small cached function there."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lstm_stream
from lstm_stream import jitcache

PACKAGE = Path(lstm_stream.__file__).resolve().parent
CHILD = """
import sys
from lstm_stream import jitcache
from lstm_stream.ids import ints
assert ints.find(ints.new_table(16), 5) == -1
print(jitcache.cache_dir())
"""


def installed_copy(tmp_path) -> Path:
    """The package copied into tmp_path/site (no __pycache__), as a fresh install."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "lstm_stream", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def run_child(site, **env) -> Path:
    base = {k: v for k, v in os.environ.items() if k not in ("LSTM_STREAM_CACHE_DIR", "NUMBA_CACHE_DIR")}
    r = subprocess.run([sys.executable, "-c", CHILD], env={**base, "PYTHONPATH": str(site), **env}, cwd=site,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def cache_files(path: Path) -> list:
    return sorted(p.name for p in path.rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_the_cache_is_outside_the_package_and_keyed_on_every_source(tmp_path):
    site = installed_copy(tmp_path)
    root = tmp_path / "cache"
    first = run_child(site, LSTM_STREAM_CACHE_DIR=str(root))
    assert cache_files(site) == [], "compiled code was written into the package directory"
    assert first.parent == root / "lstm-stream" and any(n.startswith("ints.find") for n in cache_files(first))
    assert run_child(site, LSTM_STREAM_CACHE_DIR=str(root)) == first  # the same sources: the same directory
    # An edit to any file of the package (here one no compiled function is in) starts a new directory, so
    # code inlined from another file can never be loaded stale.
    with open(site / "lstm_stream" / "state.py", "a") as f:
        f.write("\n# edited\n")
    second = run_child(site, LSTM_STREAM_CACHE_DIR=str(root))
    assert second != first and second.parent == first.parent and cache_files(second)
    assert cache_files(site) == []


def test_numba_cache_dir_is_honoured_and_the_platform_dir_is_the_default(tmp_path):
    site = installed_copy(tmp_path)
    numba_dir = run_child(site, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    assert numba_dir.parent == tmp_path / "numba" / "lstm-stream"
    home = run_child(site, XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    expected = tmp_path / "xdg" if sys.platform.startswith("linux") else None
    if expected is not None:
        assert home.parent == expected / "lstm-stream"
    assert cache_files(site) == []


def test_other_versions_directories_are_pruned(tmp_path, monkeypatch):
    root = tmp_path / "lstm-stream"
    for k in range(jitcache.KEEP_OTHER + 3):
        d = root / f"0.0.{k}-old"
        d.mkdir(parents=True)
        os.utime(d, (1000 + k, 1000 + k))
    current = root / "current"
    current.mkdir()
    jitcache._prune(current)
    left = sorted(p.name for p in root.iterdir())
    newest = [f"0.0.{k}-old" for k in range(3, jitcache.KEEP_OTHER + 3)]
    assert left == sorted(newest + ["current"])
