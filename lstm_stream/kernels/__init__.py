"""Step kernels: cpu.py (numba @njit) and cuda.py (numba.cuda), over the flat layout of layout.py."""
