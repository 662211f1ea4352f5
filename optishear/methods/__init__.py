"""Pruning methods behind one protocol (``base.Method``), chosen by the plan's ``metric``.

| file | method | plan ``metric`` |
|---|---|---|
| ``metric.py`` | score -> mask -> zero through the fused kernels | ``magnitude(-row)``, ``wanda``, ``ria``, meta |
| ``sparsegpt.py`` | SparseGPT's mask and OBS weight update (``obs.py``) | ``sparsegpt`` |
| ``expression.py`` | a symbolic metric over W, G, X through the fused kernels | ``pruner-zero``, ``expr:<tree>`` |
| ``sparsegpt.py`` | ADMM's gradual mask and least-squares update (``admm.py``, Boža 2024) | ``admm`` |
| ``structured.py`` | remove whole heads and MLP channels (surgery) | any, with ``structured=True`` |

The plan's ``update`` (``sparsegpt`` or ``admm``) wraps any unstructured method: its mask, then the OBS update (or
the ADMM least-squares solve) with the mask fixed.

A new method is a new file with a ``Method`` subclass, added to ``METHODS`` below (first match wins).
"""

from __future__ import annotations

from .base import BlockJob, MaskSink, Method, mask_digest
from .expression import ExpressionMethod
from .metric import NAMED, Metric, MetricMethod, prune_matrix, resolve_metric
from .sparsegpt import AdmmMethod, SparseGPTMethod, SparseGPTUpdate, with_update
from .structured import StructuredMethod

METHODS: list[type[Method]] = [StructuredMethod, SparseGPTMethod, AdmmMethod, MetricMethod, ExpressionMethod]


def method_for(plan) -> Method:
    """The method the plan names, built for that plan.

    Raises:
        ValueError: no method knows the plan's metric (the message lists what is accepted).
    """
    for cls in METHODS:
        if cls.handles_plan(plan):
            return with_update(cls(plan), getattr(plan, "update", "none"))
    resolve_metric(plan.metric)  # raises the metric's own message, with the accepted forms
    raise ValueError(f"no pruning method handles metric {plan.metric!r}")


__all__ = ["BlockJob", "MaskSink", "Method", "mask_digest", "NAMED", "Metric", "MetricMethod", "prune_matrix",
           "resolve_metric", "METHODS", "method_for", "AdmmMethod", "SparseGPTMethod", "SparseGPTUpdate",
           "StructuredMethod"]  # fmt: skip
