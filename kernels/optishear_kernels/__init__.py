"""optishear_kernels: standalone pruning ops (Triton kernels with pure-PyTorch twins).

Imports torch, and triton when it is installed; never ``optishear``. The import name is not
``kernels`` so that it cannot shadow the Hugging Face ``kernels`` package that transformers probes.
"""

from .act_norm import ActNorm, act_norm_update
from .backend import choose as choose_backend
from .canonical import canonical
from .expr import PRUNER_ZERO, Expr, expr_score, from_pruner_zero, looks_like_expr
from .expr import parse as parse_expr
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
from .operators import Coefficient, CoefMode, Transform
from .prune import PruneOutput, fused_prune, population_prune
from .select import nm_mask, pack_mask, row_topk_mask, unpack_mask

__version__ = "0.1.0"

__all__ = [
    "COEFFICIENTS",
    "PRUNER_ZERO",
    "Expr",
    "canonical",
    "expr_score",
    "from_pruner_zero",
    "looks_like_expr",
    "parse_expr",
    "COEFFICIENT_NAMES",
    "RIA",
    "TRANSFORMS",
    "WANDA",
    "ActNorm",
    "CoefMode",
    "Coefficient",
    "MetricConfig",
    "PruneOutput",
    "Transform",
    "act_norm_update",
    "all_configs",
    "all_finite",
    "choose_backend",
    "fused_prune",
    "meta_score",
    "nm_mask",
    "pack_mask",
    "population_prune",
    "row_topk_mask",
    "unpack_mask",
    "x_part",
]
