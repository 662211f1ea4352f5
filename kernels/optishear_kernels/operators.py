"""Operator choices of the meta metric as named enums, shared by the twin, the kernels and the AOT report.

Two index spaces, kept apart on purpose:

- ``Transform`` and ``Coefficient`` are the user-facing option indices stored in ``MetricConfig``
  (``uw``/``ux`` and ``cw``/``cx``), in recipes and in search logs. Their values never change.
- ``CoefMode`` is how a kernel applies the W-side coefficient to a tile: which operand it reads (a
  per-row value, a per-column tile, one scalar) and how it combines them. Several coefficients share a
  mode (1/total, 1/mean and 1/Frobenius are all "multiply by one scalar"); ``COEF_MODE`` maps one space
  to the other. Kernels never see a ``Coefficient``.

Triton reads a global inside ``@triton.jit`` code only when it is a ``tl.constexpr``; the ``T_*`` and
``MODE_*`` names below mirror the enums for the kernels (``if W_TRANSFORM == T_SOFTMAX:`` compiles to
straight-line code, exactly like a literal). They exist only when triton is installed.
"""

from __future__ import annotations

from enum import IntEnum

from ._triton import tl


class Transform(IntEnum):
    """U: an elementwise transform of |W| (W side) or of sqrt(X) (X side). Stored as ``uw``/``ux``."""

    NONE = 0
    SQRT = 1
    SQUARE = 2
    EXP = 3  # exp(a - max a): max over the row (W) or the vector (X), so it cannot overflow
    LOG = 4  # log(max(a, FLT_MIN))
    SIGMOID = 5
    SOFTMAX = 6  # over the row (W) or the vector (X)


class Coefficient(IntEnum):
    """C: a normaliser computed from its argument. Stored as ``cw``/``cx``; ``RIA`` is W-side only."""

    NONE = 0
    ROW = 1  # 1 / row sum
    COL = 2  # 1 / column sum
    ROWCOL = 3  # 1 / (row sum + column sum)
    TOTAL = 4  # 1 / sum of all
    MEAN = 5  # 1 / mean of all
    FRO = 6  # 1 / Frobenius norm
    RIA = 7  # 1 / row sum + 1 / column sum (RIA's relative importance), outside the 7 x 7 x 7 x 7 space


class CoefMode(IntEnum):
    """How a kernel applies the W coefficient; the operands named are prepared by the launcher."""

    NONE = 0  # no coefficient
    ROW = 1  # times a per-row operand (1 / row sum)
    COL = 2  # times a per-column operand (1 / column sum)
    INV_ROW_PLUS_COL = 3  # times 1 / (row_i + col_j), row and column sums, formed per element
    SCALAR = 4  # times one scalar (1 / total, 1 / mean, 1 / Frobenius norm)
    ROW_PLUS_COL = 5  # times (row_i + col_j), reciprocals of the sums (RIA)


TRANSFORMS: tuple[str, ...] = tuple(t.name.lower() for t in Transform)
COEFFICIENTS: tuple[str, ...] = tuple(c.name.lower() for c in Coefficient if c != Coefficient.RIA)
COEFFICIENT_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in Coefficient)

COEF_MODE: dict[Coefficient, CoefMode] = {
    Coefficient.NONE: CoefMode.NONE,
    Coefficient.ROW: CoefMode.ROW,
    Coefficient.COL: CoefMode.COL,
    Coefficient.ROWCOL: CoefMode.INV_ROW_PLUS_COL,
    Coefficient.TOTAL: CoefMode.SCALAR,
    Coefficient.MEAN: CoefMode.SCALAR,
    Coefficient.FRO: CoefMode.SCALAR,
    Coefficient.RIA: CoefMode.ROW_PLUS_COL,
}

# What each choice needs from the whole-matrix pre-pass (W side).
NEEDS_ROW_MAX = frozenset({Transform.EXP, Transform.SOFTMAX})  # exp(a - row max)
NEEDS_ROW_SUM = frozenset({Coefficient.ROW, Coefficient.ROWCOL, Coefficient.RIA})
NEEDS_COL_SUM = frozenset({Coefficient.COL, Coefficient.ROWCOL, Coefficient.RIA})
NEEDS_TOTAL = frozenset({Coefficient.TOTAL, Coefficient.MEAN})
NEEDS_SQ_SUM = frozenset({Coefficient.FRO})
# Coefficients that are one value per row of W (a positive per-row factor: they never change a row's
# ranking), and the X-side ones that are one scalar (X is a single vector).
ROW_CONSTANT = frozenset({Coefficient.ROW, Coefficient.TOTAL, Coefficient.MEAN, Coefficient.FRO})
# Which operands a coefficient mode reads.
READS_ROW = frozenset({CoefMode.ROW, CoefMode.INV_ROW_PLUS_COL, CoefMode.ROW_PLUS_COL})
READS_COL = frozenset({CoefMode.COL, CoefMode.INV_ROW_PLUS_COL, CoefMode.ROW_PLUS_COL})

if tl is not None:
    # Mirrors for @triton.jit code (test_operators checks that each enum member has one, equal in value).
    T_NONE = tl.constexpr(Transform.NONE.value)
    T_SQRT = tl.constexpr(Transform.SQRT.value)
    T_SQUARE = tl.constexpr(Transform.SQUARE.value)
    T_EXP = tl.constexpr(Transform.EXP.value)
    T_LOG = tl.constexpr(Transform.LOG.value)
    T_SIGMOID = tl.constexpr(Transform.SIGMOID.value)
    T_SOFTMAX = tl.constexpr(Transform.SOFTMAX.value)
    MODE_NONE = tl.constexpr(CoefMode.NONE.value)
    MODE_ROW = tl.constexpr(CoefMode.ROW.value)
    MODE_COL = tl.constexpr(CoefMode.COL.value)
    MODE_INV_ROW_PLUS_COL = tl.constexpr(CoefMode.INV_ROW_PLUS_COL.value)
    MODE_SCALAR = tl.constexpr(CoefMode.SCALAR.value)
    MODE_ROW_PLUS_COL = tl.constexpr(CoefMode.ROW_PLUS_COL.value)
    FLT_MIN_F32 = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny, for log's clamp
