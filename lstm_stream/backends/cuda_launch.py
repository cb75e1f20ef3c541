"""How the CUDA backend launches its kernels: each compiled once for its one signature and launched through
the compiled kernel (no per-call type dispatch), shared-memory opt-ins, and the device's attributes.
"""
from __future__ import annotations

import logging

from numba import cuda

from ..kernels import cuda as k
from ..kernels import cuda_wide as kw
from ..kernels.constants import DEFAULT_SHARED_BYTES

log = logging.getLogger("lstm_stream")


# ---- device queries (guarded: the simulator and old drivers lack some) ------------------------------------
def device_attr(name, default):
    """The current device's attribute `name` as an int, or default where the device does not say."""
    try:
        return int(getattr(cuda.get_current_device(), name))
    except Exception:
        return default


def sm_count() -> int:
    """Streaming multiprocessors of the current device."""
    return device_attr("MULTIPROCESSOR_COUNT", 1)


def shared_limit() -> int:
    """Bytes of dynamic shared memory one block may use (the opt-in maximum where the device has one)."""
    return max(DEFAULT_SHARED_BYTES, device_attr("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", DEFAULT_SHARED_BYTES))


def shared_per_sm() -> int:
    """Bytes of shared memory per streaming multiprocessor."""
    return device_attr("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", DEFAULT_SHARED_BYTES)


def simulated() -> bool:
    """True under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    try:
        from numba.cuda.core import config  # numba-cuda >= 0.2x
    except ImportError:  # older numba-cuda: numba's own config
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


SIGNATURES = {  # kernel: argument types; A1 = dtype[::1], A2 = dtype[:, ::1]
    "step_kernel": "A1, int64[::1], A2, int64[::1], A2, A2",
    "forecast_kernel": "A1, int64[::1], A2, int64[::1], A2",
    "gates_kernel": "A1, int64[::1], A2, int64[::1], A2, A2, int64",
    "hidden_kernel": "A1, int64[::1], A2, int64[::1], A2, int64",
    "head_kernel": "A1, int64[::1], A2, int64[::1], A2, int64",
    "softmax_kernel": "int64[::1], int64[::1], A2, int64",
    "zero_slots_kernel": "A2, int64[::1]",
}


class Kernels:
    """The kernels for one dtype, compiled for their one signature (step and forecast at construction, so
    errors show there) and launched through the compiled kernel, which skips per-call type dispatch.
    Plain launches under the simulator."""

    def __init__(self, dtype):
        self.sim = simulated()
        self.direct = not self.sim  # launch through the compiled kernel (skips per-call type dispatch)
        self.dtype = dtype
        self._compiled, self._shared = {}, {}
        if not self.sim:
            for name in ("step_kernel", "forecast_kernel"):
                self._get(name)

    def compile_all(self) -> None:
        """Compile every kernel for its one signature now (on a GPU; the simulator compiles nothing)."""
        if not self.sim:
            for name in SIGNATURES:
                self._get(name)

    def _get(self, name):
        if name not in self._compiled:
            sig = SIGNATURES[name].replace("A1", f"{self.dtype}[::1]").replace("A2", f"{self.dtype}[:, ::1]")
            self._compiled[name] = module_of(name).__dict__[name].compile(f"void({sig})")
        return self._compiled[name]

    def launch(self, name, grid, block, stream, shared, args):
        """name[grid, block, stream, shared](*args), on a GPU straight through the compiled kernel."""
        if self.direct:
            try:
                from numba.cuda.cudadrv.driver import _to_core_stream
                from numba.cuda.errors import normalize_kernel_dimensions
                g, b = normalize_kernel_dimensions(grid, block)
                return self._get(name).launch(args, g, b, _to_core_stream(stream), shared)
            except (AttributeError, ImportError, TypeError) as e:  # pragma: no cover - numba-cuda internals moved
                log.warning("cuda backend: direct kernel launch unavailable (%s); using numba's dispatcher", e)
                self.direct = False
        kern = module_of(name).__dict__[name]
        if not self.sim:
            self._get(name)  # compiled for its one signature (and opted in to shared memory) before use
        kern[grid, block, stream, shared](*args)

    def opt_in_shared(self, nbytes: int, names=("step_kernel", "forecast_kernel")) -> bool:
        """Allow nbytes of dynamic shared memory per block (above 48 KiB CUDA needs a per-kernel opt-in).
        False when that cannot be done; the caller then needs less."""
        if nbytes <= DEFAULT_SHARED_BYTES or self.sim:
            return True
        try:
            from numba.cuda.cudadrv import driver as drv
            attr = drv.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            for name in names:
                fn = self._get(name)._codelibrary.get_cufunc()
                drv.driver.cuKernelSetAttribute(attr, nbytes, fn.handle, fn.device.id)
            return True
        except Exception as e:  # pragma: no cover - needs a GPU
            log.warning("cuda backend: shared-memory opt-in of %d bytes failed (%s)", nbytes, e)
            return False


def module_of(name):
    """The kernels module that defines kernel `name`."""
    return k if name in ("step_kernel", "forecast_kernel", "zero_slots_kernel") else kw
