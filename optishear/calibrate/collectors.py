"""Statistics collectors: what a method can ask the calibration walk for, per linear layer.

A method declares the statistics it needs by name; the walk builds one collector per name for every
distinct linear input (q/k/v share one, gate/up share one) and folds every calibration batch into it.

| name | result per linear | used by |
|---|---|---|
| ``act_norm`` | X ``[in]`` float32: mean of x^2 per input channel | Wanda, RIA, the meta metric, OWL |
| ``hessian`` | ``{"sum": [in, in] float64 sum of x x^T, "count": tokens}`` | SparseGPT (H = 2/n sum x x^T) |
| ``moments`` | ``{"mean": [in], "var": [in]}`` float64 (unbiased variance) | fluctuation metrics (FLAP) |

Everything accumulates in float64. Float32 sums of squares over thousands of tokens come out differently
with the CPU's vector width (AVX2 and AVX-512 add in different orders) and with the batch size, and near-ties
between scores then flip masks from machine to machine (measured: 60.618 against 60.445 perplexity for the
same Wanda run; README, "Reproducibility"). In float64 the per-channel sums agree far below float32's
resolution, so X rounded once to float32 is the same everywhere.

Per-weight gradient statistics need a backward pass over the whole model, not a block-by-block walk; they
are computed by their own pass (``gradients.py``; ``GRADIENT`` names them so that a method can declare them, and the
engine runs the pass and adds G to each linear's statistics).
"""

from __future__ import annotations

from typing import Protocol

import torch
from optishear_kernels import ActNorm

ACT_NORM = "act_norm"
HESSIAN = "hessian"
MOMENTS = "moments"
GRADIENT = "grad"  # not collected by the walk: a separate backward pass
WALK_STATISTICS = (ACT_NORM, HESSIAN, MOMENTS)


class Collector(Protocol):
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs ``x: [..., in]`` in."""

    def result(self):
        """The statistic, on CPU."""


class ActNormCollector:
    """Mean x^2 per input channel through the kernels' act-norm op (float64 accumulation)."""

    def __init__(self, n: int, device, backend: str | None):
        self.acc = ActNorm(n, device, backend_name=backend)

    def update(self, x: torch.Tensor) -> None:
        self.acc.update(x)

    def result(self) -> torch.Tensor:
        return self.acc.mean().to("cpu", torch.float32)


class HessianCollector:
    """Sum of x x^T over tokens, in float64 (SparseGPT's H is ``2 / count * sum``).

    The sum is symmetric, so only its upper triangle of tiles is multiplied and the lower one is mirrored at the end:
    with t tiles a side that is t(t+1)/2 of t^2 products (float64, 4096 tokens on 2 cores: SmolLM2's 1536-wide MLP
    input 116 ms whole, 82-88 ms in 4 to 6 tiles a side; its 576-wide inputs 18 against 14 ms in 2). Tiles are at
    least ``TILE`` wide and at most ``MAX_TILES`` a side, so that each product stays a large matmul. The result is
    exactly symmetric (the upper triangle mirrored)."""

    TILE = 288
    MAX_TILES = 8

    def __init__(self, n: int, device, backend: str | None):
        self.sum = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.count = 0
        t = min(self.MAX_TILES, max(1, n // self.TILE))
        self.edges = [n * i // t for i in range(t + 1)]

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        e = self.edges
        for i in range(len(e) - 1):
            xi = x[:, e[i] : e[i + 1]].T
            for j in range(i, len(e) - 1):
                self.sum[e[i] : e[i + 1], e[j] : e[j + 1]].addmm_(xi, x[:, e[j] : e[j + 1]])
        self.count += x.shape[0]

    def result(self) -> dict:
        upper = torch.triu(self.sum.cpu())
        return {"sum": upper + torch.triu(upper, diagonal=1).T, "count": self.count}


class MomentsCollector:
    """Per-channel mean and unbiased variance, from float64 sums of x and x^2."""

    def __init__(self, n: int, device, backend: str | None):
        self.s1 = torch.zeros(n, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        self.s1 += x.sum(dim=0)
        self.s2 += x.square().sum(dim=0)
        self.count += x.shape[0]

    def result(self) -> dict:
        n = self.count
        mean = self.s1 / n
        var = (self.s2 - n * mean.square()).clamp_min(0) / max(n - 1, 1)
        return {"mean": mean.cpu(), "var": var.cpu(), "count": n}


COLLECTORS = {ACT_NORM: ActNormCollector, HESSIAN: HessianCollector, MOMENTS: MomentsCollector}


def make_collectors(needs, n: int, device, backend: str | None) -> dict[str, Collector]:
    unknown = set(needs) - set(COLLECTORS)
    if unknown:
        raise ValueError(f"the calibration walk cannot collect {sorted(unknown)}; it knows {sorted(COLLECTORS)}")
    return {name: COLLECTORS[name](n, device, backend) for name in sorted(needs)}


__all__ = ["ACT_NORM", "HESSIAN", "MOMENTS", "GRADIENT", "WALK_STATISTICS", "Collector", "ActNormCollector",
           "HessianCollector", "MomentsCollector", "COLLECTORS", "make_collectors"]  # fmt: skip
