"""Triton helpers the generated scoring functions of ``symbolic`` import: constants and float64 tanh.

``tanh`` has no core Triton op (libdevice's does not run in the interpreter), so it is computed here in float64
from ``tl.exp`` (libdevice's ``__nv_exp`` when compiled): ``(1 - e^-2|x|) / (1 + e^-2|x|)`` for ``|x| >= 1/8`` and
its odd Taylor series through ``x^15`` below (truncation < 1e-17 relative, where the closed form would lose bits to
cancellation), with the sign put back. Accurate to about 1e-15 relative, so rounding it to float32 gives the same
value as torch's float64 ``tanh`` rounded to float32 except when the exact value lies within 1e-15 of a float32
rounding boundary (a chance of about 1e-8 per value).
"""

from __future__ import annotations

import numpy as np

from ._triton import tl, triton

EXP_MAX_VALUE = 88.0
LOG_EPS_VALUE = float(np.float32(0.001))  # the float32 nearest 0.001, exactly as the twin adds it

if triton is not None:
    EXP_MAX = tl.constexpr(EXP_MAX_VALUE)
    LOG_EPS = tl.constexpr(LOG_EPS_VALUE)

    @triton.jit
    def _tanh_f64(x):
        """tanh of a float64 tensor (see the module docstring)."""
        ax = tl.abs(x)
        t = tl.exp(-2.0 * ax)
        closed = (1.0 - t) / (1.0 + t)
        x2 = ax * ax
        p = -929569.0 / 638512875.0
        p = p * x2 + 21844.0 / 6081075.0
        p = p * x2 - 1382.0 / 155925.0
        p = p * x2 + 62.0 / 2835.0
        p = p * x2 - 17.0 / 315.0
        p = p * x2 + 2.0 / 15.0
        p = p * x2 - 1.0 / 3.0
        series = ax + ax * (x2 * p)
        r = tl.where(ax < 0.125, series, closed)
        return tl.where(x < 0, -r, r)
