"""The float32 activation shared by the CPU and CUDA kernels, written once so both compute the same bits.

Plain Python over numpy scalars: kernels/cpu.py compiles it with @njit (through an overload), kernels/cuda.py
as a CUDA device function.
"""
import numpy as np


def tanh32(x):
    """tanh(x) ~ x * P(x^2) / Q(x^2) on [-7.9053, 7.9053] (Eigen's clamped rational form, |error| < 4e-7),
    saturated to float32 rounding beyond; x itself for |x| < 4e-4. Vectorises (no libm call)."""
    lim = np.float32(7.90531110763549805)
    z = min(max(x, -lim), lim)
    z2 = z * z
    p = z2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = z2 * p + np.float32(-8.60467152213735e-11)
    p = z2 * p + np.float32(5.12229709037114e-08)
    p = z2 * p + np.float32(1.48572235717979e-05)
    p = z2 * p + np.float32(6.37261928875436e-04)
    p = z2 * p + np.float32(4.89352455891786e-03)
    q = z2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = z2 * q + np.float32(2.26843463243900e-03)
    q = z2 * q + np.float32(4.89352518554385e-03)
    r = (z * p) / q
    return x if abs(x) < np.float32(4e-4) else r
