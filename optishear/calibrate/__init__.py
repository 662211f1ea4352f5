"""Calibration: the one walk over decoder blocks, and the statistics collectors behind it."""

from .collectors import ACT_NORM, GRADIENT, HESSIAN, MOMENTS, WALK_STATISTICS, make_collectors
from .gradients import GradientStats, gradient_statistics, merge_gradients
from .walk import BlockInputs, BlockStats, capture_block_inputs, walk

__all__ = ["ACT_NORM", "GRADIENT", "HESSIAN", "MOMENTS", "WALK_STATISTICS", "make_collectors", "BlockInputs",
           "BlockStats", "capture_block_inputs", "walk", "GradientStats", "gradient_statistics",
           "merge_gradients"]  # fmt: skip
