"""Sparsity allocation across blocks. OWL (Yin et al., 2024): blocks with more activation outliers are pruned less."""

from __future__ import annotations

import torch

from optishear_kernels import WANDA, meta_score

from .calibrate import ACT_NORM
from .models import LinearRef


def outlier_ratios(linears: list[list[LinearRef]], stats: list[dict[str, torch.Tensor]], m: float = 5.0) -> list[float]:
    """Per block: the fraction of Wanda scores |W| * ||X|| above ``m`` times their layer's mean score."""
    ratios = []
    for refs, block_stats in zip(linears, stats):
        above, total = 0, 0
        for r in refs:
            score = meta_score(r.weight2d(), block_stats[r.name][ACT_NORM], WANDA)
            above += int((score > m * score.mean()).sum())
            total += score.numel()
        ratios.append(above / max(total, 1))
    return ratios


def owl_block_sparsity(ratios: list[float], target: float, lam: float = 0.08) -> list[float]:
    """OWL's mapping: outlier ratios scaled to a spread of ``2 * lam`` and centred on the target, so the
    mean block sparsity is the target; more outliers, lower sparsity."""
    r = torch.tensor(ratios, dtype=torch.float64)
    span = float(r.max() - r.min())
    scaled = (r - r.min()) * (2 * lam / span) if span > 0 else torch.zeros_like(r)
    keep = scaled - scaled.mean() + (1 - target)
    return [float(1 - k) for k in keep]
