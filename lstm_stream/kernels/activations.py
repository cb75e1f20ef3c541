"""The activations of the kernels, written once so that the CPU and CUDA kernels compute the same bits.

tanh32 is plain Python over numpy float32 scalars: kernels/cuda.py compiles it as a CUDA device function (NVVM
contracts each a*b+c of it into an FMA). The CPU kernels reach the same polynomial through act_tanh /
act_sigmoid, whose overloads below pick tanh32_fused for float32 (tanh32 with each multiply-add written as
panel.fmuladd, so the same FMAs whatever the function is compiled into) and libm for float64 when Numba
compiles a kernel (called from plain Python they are libm's, float64).
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

from .panel import fmuladd


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


def tanh32_fused(x):
    """tanh32 with its multiply-adds as explicit FMAs (panel.fmuladd): the CPU kernels' float32 tanh."""
    lim = np.float32(7.90531110763549805)
    z = min(max(x, -lim), lim)
    z2 = z * z
    p = fmuladd(z2, np.float32(-2.76076847742355e-16), np.float32(2.00018790482477e-13))
    p = fmuladd(z2, p, np.float32(-8.60467152213735e-11))
    p = fmuladd(z2, p, np.float32(5.12229709037114e-08))
    p = fmuladd(z2, p, np.float32(1.48572235717979e-05))
    p = fmuladd(z2, p, np.float32(6.37261928875436e-04))
    p = fmuladd(z2, p, np.float32(4.89352455891786e-03))
    q = fmuladd(z2, np.float32(1.19825839466702e-06), np.float32(1.18534705686654e-04))
    q = fmuladd(z2, q, np.float32(2.26843463243900e-03))
    q = fmuladd(z2, q, np.float32(4.89352518554385e-03))
    r = (z * p) / q
    return x if abs(x) < np.float32(4e-4) else r


def act_tanh(x):
    """tanh, float32 via tanh32 (in compiled code), float64 exact."""
    return math.tanh(x)


def act_sigmoid(x):
    """Logistic sigmoid, float32 via tanh32 (in compiled code), float64 exact."""
    return 1.0 / (1.0 + math.exp(-x))


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(act_tanh, jit_options=dict(error_model="numpy"))
def _ov_tanh(x):
    if _is_f32(x):
        return tanh32_fused
    return lambda x: math.tanh(x)


@overload(act_sigmoid, jit_options=dict(error_model="numpy"))
def _ov_sigmoid(x):
    if _is_f32(x):
        def sigmoid32(x):
            # σ(x) = (1 + tanh(x/2)) / 2: no exp, so it vectorises like tanh32
            return fmuladd(np.float32(0.5), act_tanh(np.float32(0.5) * x), np.float32(0.5))
        return sigmoid32
    return lambda x: 1.0 / (1.0 + math.exp(-x))
