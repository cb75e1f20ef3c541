"""Where Numba keeps lstm-stream's compiled kernels: a per-user cache directory, never the package directory.

    import lstm_stream.jitcache   # before the first @njit(cache=True) of the package (the jit modules do it)
    jitcache.cache_dir()          # the directory this installation's kernels are cached in

Numba's default puts a function's cache in the __pycache__ beside its source file. For an installed package
that is site-packages: a later `pip install -e .` leaves a site-packages/lstm_stream/ holding only cache files,
which Python then takes for the package. And Numba keys each function's cache on its own source file only:
a kernel that inlines a function of another file (every kernel inlines layout.py's accessors and panel.py's
intrinsics) would load stale code after that other file changed.

So every function of this package is cached in

    <root>/lstm-stream/<version>-<digest>/<subdirectory of the source file>

root: $LSTM_STREAM_CACHE_DIR if set, else $NUMBA_CACHE_DIR if set, else the platform's per-user cache
directory (~/.cache on Linux, honouring $XDG_CACHE_HOME; ~/Library/Caches on macOS; %LOCALAPPDATA% on
Windows); when that cannot be written, a directory of this user's in the system's temporary directory.
digest: a hash of every source file of the package and of the Numba, llvmlite and Python versions, so that an
edit anywhere in the package, an upgrade or another interpreter starts a new directory. Numba itself keys the
entries inside on the CPU (name and features) and on each function's signature. Directories of other digests
are pruned to the most recent KEEP_OTHER.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "LSTM_STREAM_CACHE_DIR"
PACKAGE = Path(__file__).resolve().parent
KEEP_OTHER = 4  # cache directories of other versions/edits kept beside the current one (each ~2 MB)

_dir: Path | None = None


def _versions() -> bytes:
    import llvmlite
    import numba
    return f"numba {numba.__version__} llvmlite {llvmlite.__version__} python {sys.version}".encode()


def source_digest() -> str:
    """16 hex digits over the package's Python sources (paths and contents) and the compiler versions."""
    h = hashlib.sha256(_versions())
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _platform_root() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def root() -> Path:
    """The directory holding every version's cache directory (see the module doc)."""
    for name in (ENV, "NUMBA_CACHE_DIR"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser() / "lstm-stream"
    return _platform_root() / "lstm-stream"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def cache_dir() -> Path:
    """This installation's cache directory, created if needed (decided once per process)."""
    global _dir
    if _dir is None:
        from . import __version__
        name = f"{__version__}-{source_digest()}"
        path = root() / name
        if not _writable(path):
            uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
            path = Path(tempfile.gettempdir()) / f"lstm-stream-cache-{uid}" / name
            path.mkdir(parents=True, exist_ok=True)
        _prune(path)
        _dir = path
    return _dir


def _prune(current: Path) -> None:
    """Remove the cache directories of other digests beyond the KEEP_OTHER most recently used."""
    try:
        others = [p for p in current.parent.iterdir() if p.is_dir() and p != current]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for p in others[KEEP_OTHER:]:
        shutil.rmtree(p, ignore_errors=True)


class PackageCacheLocator:
    """A Numba cache locator (the interface of numba.core.caching._CacheLocator) for this package's files."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        sub = Path(py_file).resolve().parent.relative_to(PACKAGE)
        self._path = str(cache_dir() / sub)

    @classmethod
    def from_function(cls, py_func, py_file):
        """A locator when py_file is one of this package's sources, else None (Numba asks the next one)."""
        try:
            Path(py_file).resolve().relative_to(PACKAGE)
        except (ValueError, OSError):
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self

    def ensure_cache_path(self):
        os.makedirs(self._path, exist_ok=True)
        tempfile.TemporaryFile(dir=self._path).close()

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        # The directory is keyed on every source already; the file's own stamp is Numba's usual one.
        st = os.stat(self._py_file)
        return st.st_mtime, st.st_size

    def get_disambiguator(self):
        return str(self._lineno)


def entry_point(dispatcher, args):
    """dispatcher's compiled entry point for these arguments' types (compiled or loaded now if need be), to call
    without Numba's per-call type resolution (~0.3 µs); the caller passes arguments of exactly these types."""
    import numba
    try:
        return dispatcher.compile(tuple(numba.typeof(a) for a in args))
    except AttributeError:  # a Numba without Dispatcher.compile(signature): dispatch per call
        return dispatcher


def _install(impl) -> None:
    classes = impl._locator_classes
    if PackageCacheLocator not in classes:
        impl._locator_classes = [PackageCacheLocator] + list(classes)


def install() -> None:
    """Put PackageCacheLocator first among Numba's cache locators (CPU, and numba-cuda's when it is loaded)."""
    from numba.core import caching
    _install(getattr(caching, "CacheImpl", None) or caching._CacheImpl)
    if "numba.cuda" in sys.modules:  # never load numba.cuda for this
        try:
            from numba.cuda.core import caching as cuda_caching  # numba-cuda's own copy, in recent versions
        except ImportError:
            return
        _install(cuda_caching.CacheImpl)


install()
