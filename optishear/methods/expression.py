"""Symbolic metrics: score every weight by an expression tree over W, G and X (Pruner-Zero's operators), prune the
lowest, zero them, through the fused kernels (``optishear_kernels.fused_prune`` with a tree).

Plan metrics: ``pruner-zero`` (the published metric, ``mul(abs(mul(W,W)),mms(G))``) or ``expr:<tree>``, e.g.
``expr:mul(W,sqrt(X))``. The tree is scored exactly as written (a search hands over canonical forms). It declares the
statistics its terminals read: ``X`` -> the activation norms of the walk, ``G`` -> the gradient statistics of the
backward pass (``calibrate.gradients``).
"""

from __future__ import annotations

from optishear_kernels import PRUNER_ZERO, Expr, fused_prune, looks_like_expr, parse_expr

from ..calibrate import ACT_NORM, GRADIENT
from .base import BlockJob, Method

PUBLISHED = {"pruner-zero": PRUNER_ZERO}


def resolve_expression(metric) -> Expr:
    """The tree a plan's metric names: ``pruner-zero``, ``expr:<tree>``, a bare tree text, or an ``Expr``.

    Raises:
        ValueError: malformed text or an unknown operator (with the position and the operators).
    """
    if isinstance(metric, Expr):
        return metric
    key = str(metric).strip()
    if key.lower() in PUBLISHED:
        return PUBLISHED[key.lower()]
    return parse_expr(key)


def expression_plan_metric(expr: Expr | str) -> str:
    """The plan ``metric`` text of a tree (``expr:<text>``)."""
    return "expr:" + parse_expr(expr).text


class ExpressionMethod(Method):
    """Score -> mask -> zero with a symbolic metric; non-finite scores on a layer are an error naming the layer."""

    name = "expression"

    @classmethod
    def handles(cls, metric: str) -> bool:
        return isinstance(metric, Expr) or str(metric).strip().lower() in PUBLISHED or looks_like_expr(metric)

    def __init__(self, plan):
        super().__init__(plan)
        self.expr = resolve_expression(plan.metric)

    def validate(self, plan) -> None:
        resolve_expression(plan.metric)

    def needs(self) -> frozenset[str]:
        out = set()
        if self.expr.uses_x:
            out.add(ACT_NORM)
        if self.expr.uses_g:
            out.add(GRADIENT)
        return frozenset(out)

    def prune_block(self, job: BlockJob) -> None:
        nm = self.plan.nm
        for r in job.refs:
            job.snapshot.save(r)
            w = r.weight2d()
            x = job.stat(r, ACT_NORM).to(w.device) if self.expr.uses_x else None
            g = job.stat(r, GRADIENT).to(w.device) if self.expr.uses_g else None
            try:
                out = fused_prune(w, x, self.expr, g=g, sparsity=None if nm is not None else job.sparsity, nm=nm,
                                  write_weight=True, write_mask=True, inplace=True,
                                  backend_name=job.backend)  # fmt: skip
            except (FloatingPointError, ValueError) as err:
                raise type(err)(f"layer {r.full_name}: {err}") from err
            job.masks.add(r.full_name, out.packed_mask)


__all__ = ["ExpressionMethod", "resolve_expression", "expression_plan_metric", "PUBLISHED"]
