"""The score -> mask -> zero method: magnitude, Wanda, RIA and every point of the meta metric, all through the
fused kernels of ``optishear_kernels``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from optishear_kernels import RIA, WANDA, MetricConfig, all_finite, fused_prune, nm_mask, pack_mask, row_topk_mask

from ..calibrate import ACT_NORM
from .base import BlockJob, Method

NAMED = ("magnitude", "magnitude-row", "wanda", "ria")


@dataclass(frozen=True)
class Metric:
    """A resolved metric.

    Attributes:
        name: the name the user gave, normalised (``wanda``, ``magnitude``, or a meta spec).
        config: the meta-metric point the kernels score with (None for whole-matrix magnitude).
        needs_activations: False when the score ignores X (no calibration pass needed).
        scope: ``"row"`` (per output row, the default) or ``"matrix"`` (one threshold per matrix).
    """

    name: str
    config: MetricConfig | None
    needs_activations: bool = True
    scope: str = "row"

    @property
    def spec(self) -> str:
        return self.name if self.config is None or self.name in NAMED else self.config.spec


def resolve_metric(metric: str | MetricConfig | tuple | list | Metric) -> Metric:
    """Resolve a name (``magnitude``, ``magnitude-row``, ``wanda``, ``ria``), a spec string
    (``"w:row*sqrt,x:none*log"``), four option indices or a ``MetricConfig``.

    Raises:
        ValueError: an unknown name or a malformed spec, with the accepted forms.
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        key = metric.strip().lower()
        if key == "magnitude":
            return Metric("magnitude", None, needs_activations=False, scope="matrix")
        if key == "magnitude-row":
            return Metric("magnitude-row", WANDA, needs_activations=False)
        if key == "wanda":
            return Metric("wanda", WANDA)
        if key == "ria":
            return Metric("ria", RIA)
        if ":" not in key and "," not in key:
            raise ValueError(
                f"unknown metric {metric!r}: use one of {NAMED}, a spec like 'w:none*none,x:none*none' "
                "or four option indices 'cw,uw,cx,ux'"
            )
    cfg = MetricConfig.parse(metric)
    return Metric(cfg.spec, cfg)


def prune_matrix(
    w2d: torch.Tensor,
    x_sq: torch.Tensor | None,
    metric: Metric,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    backend_name: str | None = None,
) -> torch.Tensor:
    """Prune ``w2d`` [out, in] in place by ``metric``; returns the pruned mask bit-packed (uint8 [out, ceil(in/8)]).

    Everything goes through ``optishear_kernels`` ops: the fused prune for every row-scoped metric,
    the selection twins for whole-matrix magnitude.
    """
    if metric.config is not None:
        x = x_sq if metric.needs_activations else torch.ones(w2d.shape[1], device=w2d.device)
        if x is None:
            raise ValueError(f"metric {metric.name} needs activation statistics")
        out = fused_prune(
            w2d, x, metric.config, sparsity=sparsity, nm=nm, write_weight=True, write_mask=True, inplace=True,
            backend_name=backend_name,
        )  # fmt: skip
        return out.packed_mask
    # Whole-matrix magnitude (Wanda's code's "magnitude"): int(numel * s) smallest |W| in the whole matrix.
    if not all_finite(w2d):
        raise ValueError("w contains NaN or inf")
    score = w2d.abs().float()
    if nm is not None:
        mask = nm_mask(score, *nm)
    else:
        mask = row_topk_mask(score.reshape(1, -1), int(w2d.numel() * sparsity)).reshape(w2d.shape)
    w2d.masked_fill_(mask, 0)
    return pack_mask(mask)


class MetricMethod(Method):
    """Score every weight by a row-scoped metric (or whole-matrix magnitude), prune the lowest, zero them."""

    name = "metric"

    @classmethod
    def handles(cls, metric: str) -> bool:
        try:
            resolve_metric(metric)
        except ValueError:
            return False
        return True

    def __init__(self, plan):
        super().__init__(plan)
        self.metric = resolve_metric(plan.metric)

    def validate(self, plan) -> None:
        resolve_metric(plan.metric)

    def needs(self) -> frozenset[str]:
        return frozenset({ACT_NORM}) if self.metric.needs_activations else frozenset()

    def prune_block(self, job: BlockJob) -> None:
        nm = self.plan.nm
        for r in job.refs:
            job.snapshot.save(r)
            x = job.stat(r, ACT_NORM) if self.metric.needs_activations else None
            packed = prune_matrix(
                r.weight2d(), x.to(r.module.weight.device) if x is not None else None, self.metric,
                sparsity=None if nm is not None else job.sparsity_for(r), nm=nm, backend_name=job.backend,
            )  # fmt: skip
            job.masks.add(r.full_name, packed)
