"""Backends own the state slabs and run the kernels; they decide nothing about ids or policy.

    make_backend("cpu" | "cuda" | "auto", model, capacity)  -> a Backend (protocol.py)

cpu.py: CPUBackend (host slabs, worker threads); cuda.py: CUDABackend (device slab; its kernel launches in
cuda_launch.py), imported only when a GPU is asked for, so that numba.cuda loads only then.
"""
from __future__ import annotations

import logging

from ..errors import BackendError
from .cpu import CPUBackend
from .protocol import Backend

__all__ = ["Backend", "CPUBackend", "cuda_available", "make_backend"]

log = logging.getLogger("lstm_stream")


def cuda_available() -> bool:
    """True when numba.cuda can see a usable GPU (or the CUDA simulator is on)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba-cuda missing or broken driver: no GPU for us
        return False


def make_backend(name: str, model, capacity: int, *, threads=None) -> Backend:
    """Backend by name: 'cpu', 'cuda' (fails clearly without a GPU), or 'auto' (CUDA if usable, logged)."""
    if name not in ("cpu", "cuda", "auto"):
        raise BackendError(f"backend must be 'cpu', 'cuda' or 'auto', got {name!r}")
    if name in ("cuda", "auto") and cuda_available():
        from .cuda import CUDABackend
        try:
            backend = CUDABackend(model, capacity)
        except BackendError as e:
            if name == "cuda":
                raise
            log.warning("backend=auto: a GPU is visible but unusable (%s); using cpu", e)
        else:
            if name == "auto":
                log.info("backend=auto chose cuda")
            return backend
    elif name == "cuda":
        raise BackendError("backend='cuda' needs a usable NVIDIA GPU with numba-cuda installed "
                           "(pip install 'lstm-stream[cu12]' or '[cu13]'); none was found. Use backend='cpu' "
                           "or 'auto'.")
    elif name == "auto":
        log.info("backend=auto chose cpu (no usable GPU)")
    return CPUBackend(model, capacity, threads=threads)
