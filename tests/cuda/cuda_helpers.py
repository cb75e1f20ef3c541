"""Helpers of the CUDA tests: simulator detection and sizes that shrink under the simulator."""


def simulated() -> bool:
    """True under numba's CUDA simulator (it interprets every thread in Python: keep sizes tiny)."""
    try:
        from numba.cuda.core import config  # numba-cuda >= 0.2x
    except ImportError:  # older numba-cuda: numba's own config
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def big(sim_value, gpu_value):
    """A size: small under the simulator, larger on a real GPU."""
    return sim_value if simulated() else gpu_value
