"""The OptiShear meta pruning metric: its option tables and its pure-PyTorch scoring (the twin).

    S = [C_w(|W|) * U_w(|W|)] * [C_x(X) * U_x(sqrt X)]

``W: [out, in]`` is a weight, ``X: [in]`` the per-input-channel mean of x^2 over calibration tokens.
``U`` is a transform applied elementwise, ``C`` a coefficient (a normaliser) computed from its argument.
The X side is a vector, read as a ``[1, in]`` matrix: its "row" is the whole vector and its "column"
sum of channel j is X_j itself.

Numerical safety (the released OptiShear code is not safe here, we are):
- a normaliser whose denominator is 0 (an all-zero row, say) is 1, never 1/0;
- ``log`` is ``log(max(a, FLT_MIN))``: finite on exact zeros;
- ``exp`` is ``exp(a - max(a))`` over the same domain as ``softmax`` (the row for W, the vector for X),
  so it cannot overflow; it differs from the plain exp by a positive per-row constant, which leaves
  every per-row mask unchanged;
- reductions (row/column sums, totals, norms, softmax sums) accumulate in float64 and are rounded to
  float32 once, so the Triton kernels and this twin agree to the bit.

Scores are float32. Elementwise order of operations is part of the contract (the kernels repeat it):
``w_part = c_w * u_w``; ``score = w_part * x_part``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .operators import (
    COEF_MODE,
    COEFFICIENT_NAMES,
    COEFFICIENTS,
    NEEDS_COL_SUM,
    NEEDS_ROW_MAX,
    NEEDS_ROW_SUM,
    NEEDS_SQ_SUM,
    NEEDS_TOTAL,
    ROW_CONSTANT,
    TRANSFORMS,
    Coefficient,
    CoefMode,
    Transform,
)

# Extra W-side coefficient outside the 7x7x7x7 space: RIA's relative importance 1/row_sum + 1/col_sum.
RIA_COEFFICIENT = Coefficient.RIA.value

FLT_MIN = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class MetricConfig:
    """One point of the meta-metric space, as four option indices (plain ints, as recipes store them).

    Attributes:
        cw: W-side coefficient, a ``Coefficient`` value (index into ``COEFFICIENT_NAMES``: 0..6, or 7 for RIA's).
        uw: W-side transform, a ``Transform`` value (index into ``TRANSFORMS``).
        cx: X-side coefficient, a ``Coefficient`` value other than RIA (index into ``COEFFICIENTS``).
        ux: X-side transform, a ``Transform`` value, applied to sqrt X.

    ``w_coef``, ``w_transform``, ``x_coef`` and ``x_transform`` give the same choices as enums.
    """

    cw: int = 0
    uw: int = 0
    cx: int = 0
    ux: int = 0

    def __post_init__(self):
        for name, value, limit in (
            ("cw", self.cw, len(COEFFICIENT_NAMES)),
            ("uw", self.uw, len(TRANSFORMS)),
            ("cx", self.cx, len(COEFFICIENTS)),
            ("ux", self.ux, len(TRANSFORMS)),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
                raise ValueError(f"MetricConfig.{name} must be an int in [0, {limit}), got {value!r}")
            object.__setattr__(self, name, int(value))  # an enum member is stored as its plain index

    @property
    def w_coef(self) -> Coefficient:
        return Coefficient(self.cw)

    @property
    def w_transform(self) -> Transform:
        return Transform(self.uw)

    @property
    def x_coef(self) -> Coefficient:
        return Coefficient(self.cx)

    @property
    def x_transform(self) -> Transform:
        return Transform(self.ux)

    @property
    def spec(self) -> str:
        """Readable spec, e.g. ``"w:none*none,x:none*none"`` (Wanda)."""
        return (
            f"w:{COEFFICIENT_NAMES[self.cw]}*{TRANSFORMS[self.uw]},"
            f"x:{COEFFICIENTS[self.cx]}*{TRANSFORMS[self.ux]}"
        )

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.cw, self.uw, self.cx, self.ux)

    def canonical(self) -> MetricConfig:
        """The simplest configuration that ranks the weights of every row exactly as this one does.

        Only exact algebra, zeros and dead channels included (see ``_POWER_CLASSES``):
        - a W coefficient that is constant along a row (row, total, mean, fro) is a positive per-row
          factor, and an X coefficient that is a scalar (row, total, mean, fro: X is one vector) a positive
          global one: both are ``none``;
        - softmax is exp divided by a positive per-row (W) or global (X) sum: it is ``exp``;
        - with no coefficient on W, powers on both sides (none, sqrt, square of |W| and of sqrt X, times 1/X
          or not) give ``|W|^p * sqrt(X)^r``, which ranks like any positive power of itself: only ``r / p``
          matters, and the smallest configuration with that ratio stands for all of them.
        RIA's coefficient is its own class. Near-coincidences that are not exact (1/(sum X + X_j) is
        almost constant when no channel dominates) are left to the search's mask hashing.
        """
        cw, uw, cx, ux = self.w_coef, self.w_transform, self.x_coef, self.x_transform
        if cw in ROW_CONSTANT:
            cw = Coefficient.NONE
        if cx in ROW_CONSTANT:
            cx = Coefficient.NONE
        uw = Transform.EXP if uw == Transform.SOFTMAX else uw
        ux = Transform.EXP if ux == Transform.SOFTMAX else ux
        power = _POWER_CLASSES.get((cw, uw, cx, ux))
        return MetricConfig(*power) if power is not None else MetricConfig(cw, uw, cx, ux)

    @classmethod
    def parse(cls, spec: str | MetricConfig | tuple | list) -> MetricConfig:
        """Parse ``"w:row*sqrt,x:none*log"``, ``"1,1,0,4"`` or a 4-tuple of ints."""
        if isinstance(spec, MetricConfig):
            return spec
        if isinstance(spec, (tuple, list)):
            if len(spec) != 4:
                raise ValueError(f"a metric needs 4 option indices (cw, uw, cx, ux), got {spec!r}")
            return cls(*(int(v) for v in spec))
        if not isinstance(spec, str):
            raise ValueError(f"cannot read a metric from {spec!r}")
        text = spec.strip().replace(" ", "")
        if text.replace(",", "").isdigit():
            return cls.parse([int(v) for v in text.split(",")])
        sides = dict(part.split(":", 1) for part in text.split(",") if ":" in part)
        if set(sides) != {"w", "x"} or text.count(",") != 1:
            raise ValueError(
                f"malformed metric spec {spec!r}: expected 'w:<coef>*<transform>,x:<coef>*<transform>' "
                f"with coefficients {COEFFICIENT_NAMES} and transforms {TRANSFORMS}"
            )
        out = []
        for side, coefs in (("w", COEFFICIENT_NAMES), ("x", COEFFICIENTS)):
            parts = sides[side].split("*")
            if len(parts) != 2 or parts[0] not in coefs or parts[1] not in TRANSFORMS:
                raise ValueError(
                    f"malformed metric spec {spec!r}: side {side!r} is {sides[side]!r}; "
                    f"expected <coef>*<transform> with coef in {coefs} and transform in {TRANSFORMS}"
                )
            out += [coefs.index(parts[0]), TRANSFORMS.index(parts[1])]
        return cls(*out)


def _power_classes() -> dict[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(0, uw, cx, ux) with uw, ux in {none, sqrt, square} and cx in {none, col} -> the smallest tuple with
    the same exponent ratio r / p of ``|W|^p * sqrt(X)^r``. Zeros stay zeros in every member (|W| = 0 gives
    0; X_j = 0 gives 0 because 1/0 is taken as 1 and sqrt(0)^q = 0), so the ranking is the same exactly."""
    from fractions import Fraction

    power = {Transform.NONE: Fraction(1), Transform.SQRT: Fraction(1, 2), Transform.SQUARE: Fraction(2)}
    members: dict[Fraction, list[tuple[int, int, int, int]]] = {}
    for uw, p in power.items():
        for cx in (Coefficient.NONE, Coefficient.COL):  # 1/X_j is sqrt(X_j)^-2
            for ux, q in power.items():
                r = q - (2 if cx == Coefficient.COL else 0)
                members.setdefault(r / p, []).append((0, int(uw), int(cx), int(ux)))
    return {m: min(ms) for ms in members.values() for m in ms}


_POWER_CLASSES = _power_classes()

WANDA = MetricConfig(0, 0, 0, 0)
RIA = MetricConfig(RIA_COEFFICIENT, 0, 0, 1)


def all_configs() -> list[MetricConfig]:
    """The 2,401 points of the meta-metric space, in (cw, uw, cx, ux) lexicographic order."""
    n_c, n_t = len(COEFFICIENTS), len(TRANSFORMS)
    return [MetricConfig(a, b, c, d) for a in range(n_c) for b in range(n_t) for c in range(n_c) for d in range(n_t)]


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN and no inf.

    One min/max reduction (NaN propagates through ``aminmax``) instead of ``isfinite(t).all()``, which
    materialises a bool tensor as large as ``t``: about 20x faster on CPU for a weight matrix, and these
    checks run on every matrix of every search trial.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _recip(den: torch.Tensor) -> torch.Tensor:
    """1/den in float32 with 1 where den is 0 (a normaliser of nothing normalises nothing)."""
    den = den.to(torch.float32)
    return torch.where(den > 0, 1.0 / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


@dataclass
class WStats:
    """Whole-matrix reductions the W side needs (the pre-pass), all float32 rounded from float64.

    Attributes:
        row_sum: [out] sum_j |W_ij|.
        col_sum: [in] sum_i |W_ij|.
        total: [] sum |W|.
        sq_sum: [] sum W^2.
        row_max: [out] max_j of the transform's argument (|W|), for safe exp/softmax.
        row_exp_sum: [out] sum_j exp(|W_ij| - row_max_i), for softmax.
    """

    row_sum: torch.Tensor
    col_sum: torch.Tensor
    total: torch.Tensor
    sq_sum: torch.Tensor
    row_max: torch.Tensor
    row_exp_sum: torch.Tensor


def w_stats(w: torch.Tensor, cfg: MetricConfig, *, is_abs: bool = False) -> WStats | None:
    """Pre-pass reductions over |W| that ``cfg`` needs; None when it needs none.

    Only the reductions the configuration uses are computed; the others are empty tensors.
    ``is_abs``: ``w`` is already |W| in float32 (``meta_score`` has it), so no copy is made.
    """
    cw = cfg.w_coef
    needs_coef = cw != Coefficient.NONE
    needs_soft = cfg.w_transform in NEEDS_ROW_MAX
    if not (needs_coef or needs_soft):
        return None
    a = w.detach() if is_abs else w.detach().abs().to(torch.float32)
    empty = a.new_empty(0)
    row_sum = col_sum = total = sq_sum = row_max = row_exp_sum = empty
    if cw in NEEDS_ROW_SUM:
        row_sum = a.sum(dim=1, dtype=torch.float64).to(torch.float32)
    if cw in NEEDS_COL_SUM:
        col_sum = a.sum(dim=0, dtype=torch.float64).to(torch.float32)
    if cw in NEEDS_TOTAL:
        total = a.sum(dtype=torch.float64).to(torch.float32)
    if cw in NEEDS_SQ_SUM:
        sq_sum = a.square().sum(dtype=torch.float64).to(torch.float32)
    if needs_soft:
        row_max = a.amax(dim=1)
        if cfg.w_transform == Transform.SOFTMAX:
            row_exp_sum = torch.exp(a - row_max[:, None]).sum(dim=1, dtype=torch.float64).to(torch.float32)
    return WStats(row_sum, col_sum, total, sq_sum, row_max, row_exp_sum)


def w_coef_operands(stats: WStats | None, cfg: MetricConfig, numel: int):
    """The W coefficient as (row_vec [out] | None, col_vec [in] | None, scalar float32 tensor | None, mode).

    ``mode`` is the ``CoefMode`` (``COEF_MODE[cfg.w_coef]``): ROW multiplies by row_vec; COL by col_vec;
    INV_ROW_PLUS_COL by 1/(row_sum_i + col_sum_j) (per element); SCALAR by the scalar; ROW_PLUS_COL by
    (row_vec_i + col_vec_j) (RIA).
    """
    cw = cfg.w_coef
    mode = COEF_MODE[cw]
    if cw == Coefficient.NONE:
        return None, None, None, mode
    if cw == Coefficient.ROW:
        return _recip(stats.row_sum), None, None, mode
    if cw == Coefficient.COL:
        return None, _recip(stats.col_sum), None, mode
    if cw == Coefficient.ROWCOL:
        return stats.row_sum, stats.col_sum, None, mode
    if cw == Coefficient.TOTAL:
        return None, None, _recip(stats.total), mode
    if cw == Coefficient.MEAN:
        mean = (stats.total.to(torch.float64) / numel).to(torch.float32)
        return None, None, _recip(mean), mode
    if cw == Coefficient.FRO:
        return None, None, _recip(torch.sqrt(stats.sq_sum.to(torch.float64)).to(torch.float32)), mode
    return _recip(stats.row_sum), _recip(stats.col_sum), None, mode


def _transform(a: torch.Tensor, u: Transform, row_max=None, row_exp_sum=None) -> torch.Tensor:
    """U(a) for a float32 tensor ``a >= 0``; ``row_max``/``row_exp_sum`` broadcast against ``a``."""
    if u == Transform.NONE:
        return a
    if u == Transform.SQRT:
        return torch.sqrt(a)
    if u == Transform.SQUARE:
        return a * a
    if u == Transform.EXP:
        return torch.exp(a - row_max)
    if u == Transform.LOG:
        return torch.log(torch.clamp_min(a, FLT_MIN))
    if u == Transform.SIGMOID:
        return torch.sigmoid(a)
    return torch.exp(a - row_max) / row_exp_sum


def x_part(x_sq: torch.Tensor, cfg: MetricConfig) -> torch.Tensor:
    """The X side ``C_x(X) * U_x(sqrt X)`` as a float32 vector [in]; shared by every backend.

    Args:
        x_sq: [in] per-input-channel mean of x^2 (any float dtype, finite, >= 0).
    """
    x = x_sq.detach().to(torch.float32)
    s = torch.sqrt(x)
    row_max = row_exp_sum = None
    if cfg.x_transform in NEEDS_ROW_MAX:
        row_max = s.amax()
        row_exp_sum = torch.exp(s - row_max).sum(dtype=torch.float64).to(torch.float32)
    u = _transform(s, cfg.x_transform, row_max, row_exp_sum)
    cx = cfg.x_coef
    if cx == Coefficient.NONE:
        return u
    if cx in (Coefficient.ROW, Coefficient.TOTAL):  # the vector's row sum is its total
        c = _recip(x.sum(dtype=torch.float64).to(torch.float32))
    elif cx == Coefficient.COL:  # column sum of channel j is X_j
        c = _recip(x)
    elif cx == Coefficient.ROWCOL:
        total = x.sum(dtype=torch.float64).to(torch.float32)
        return (1.0 / _safe_den(total + x)) * u
    elif cx == Coefficient.MEAN:
        c = _recip((x.sum(dtype=torch.float64) / x.numel()).to(torch.float32))
    else:  # Coefficient.FRO
        c = _recip(torch.sqrt(x.to(torch.float64).square().sum()).to(torch.float32))
    return c * u


def _safe_den(den: torch.Tensor) -> torch.Tensor:
    """Denominator with zeros replaced by 1 (so 1/den is 1 there)."""
    return torch.where(den > 0, den, torch.ones_like(den))


def meta_score(
    w: torch.Tensor,
    x_sq: torch.Tensor | None,
    cfg: MetricConfig,
    xp: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
):
    """Score every weight: the torch twin of the fused kernels' scoring.

    Args:
        w: [out, in] weight, any float dtype.
        x_sq: [in] mean of x^2 per input channel, or None when ``xp`` is given.
        cfg: the metric.
        xp: optional precomputed ``x_part(x_sq, cfg)``.
        out: optional float32 [out, in] buffer to write the scores into (saves an allocation, whose page
            faults cost more than the arithmetic on CPU).

    Returns:
        [out, in] float32 scores; lower means pruned first.
    """
    if xp is None:
        xp = x_part(x_sq, cfg)
    w = w.detach()
    if out is not None:
        a = torch.abs(w, out=out) if w.dtype == torch.float32 else out.copy_(w).abs_()
    else:
        a = w.abs().to(torch.float32)
    stats = w_stats(a, cfg, is_abs=True)
    row_max = row_exp_sum = None
    if cfg.w_transform in NEEDS_ROW_MAX:
        row_max = stats.row_max[:, None]
        row_exp_sum = stats.row_exp_sum[:, None] if cfg.w_transform == Transform.SOFTMAX else None
    # Every intermediate below is our own tensor, so products are taken in place (x * y == y * x exactly).
    u = _transform(a, cfg.w_transform, row_max, row_exp_sum)
    rv, cv, sc, mode = w_coef_operands(stats, cfg, a.numel())
    if mode == CoefMode.ROW:
        u.mul_(rv[:, None])
    elif mode == CoefMode.COL:
        u.mul_(cv[None, :])
    elif mode == CoefMode.INV_ROW_PLUS_COL:
        u.mul_(1.0 / _safe_den(rv[:, None] + cv[None, :]))
    elif mode == CoefMode.SCALAR:
        u.mul_(sc)
    elif mode == CoefMode.ROW_PLUS_COL:
        u.mul_(rv[:, None] + cv[None, :])
    return u.mul_(xp[None, :])
