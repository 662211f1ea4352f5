"""optishear_kernels: standalone pruning ops (Triton kernels with pure-PyTorch twins).

Imports torch, and triton when it is installed; never ``optishear``. The import name is not
``kernels`` so that it cannot shadow the Hugging Face ``kernels`` package that transformers probes.
"""

from .act_norm import ActNorm, act_norm_update
from .backend import choose as choose_backend
from .metric import (
    COEFFICIENT_NAMES,
    COEFFICIENTS,
    RIA,
    TRANSFORMS,
    WANDA,
    MetricConfig,
    all_configs,
    all_finite,
    meta_score,
    x_part,
)
from .prune import PruneOutput, fused_prune, population_prune
from .select import nm_mask, pack_mask, row_topk_mask, unpack_mask

__all__ = [
    "ActNorm",
    "act_norm_update",
    "choose_backend",
    "COEFFICIENT_NAMES",
    "COEFFICIENTS",
    "TRANSFORMS",
    "RIA",
    "WANDA",
    "MetricConfig",
    "all_configs",
    "all_finite",
    "meta_score",
    "x_part",
    "PruneOutput",
    "fused_prune",
    "population_prune",
    "nm_mask",
    "pack_mask",
    "row_topk_mask",
    "unpack_mask",
]
