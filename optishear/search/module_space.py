"""The per-module allocation space: one sparsity per decoder block and module kind (attention vs MLP), the
parameter-weighted mean over all pruned weights held exactly at the target, optionally with the meta metric.

Genotype: ``[cw, uw, cx, ux]`` when the metric is searched, then one integer level offset per block for its
attention linears and one per block for its MLP linears (``target + step * offset`` within ``target +- band``), then
a sparsity-level index in trade-off mode. It decodes to the plan's ``module_sparsity``.
"""

from __future__ import annotations

import numpy as np
from optishear_kernels import COEFFICIENTS, TRANSFORMS, MetricConfig

from ..plan import MODULE_KINDS, module_kind
from .config import SearchConfig
from .spaces import seed_genotypes


def kind_sizes(linears) -> np.ndarray:
    """Parameters per block and module kind: [n_blocks, 2] (attention, MLP)."""
    out = np.zeros((len(linears), len(MODULE_KINDS)), dtype=np.int64)
    for i, refs in enumerate(linears):
        for r in refs:
            out[i, MODULE_KINDS.index(module_kind(r.name))] += r.weight2d().numel()
    return out


def repair_exact(offsets: np.ndarray, sizes: np.ndarray, limit: int) -> np.ndarray:
    """Integer offsets in [-limit, limit] whose size-weighted sum is zero (the mean sparsity exactly the target)
    whenever the sizes allow it. While the sum is positive, the largest offset whose step down brings the sum
    closer to zero steps down (lowest index first among equals); while negative, the smallest steps up. Unlike a
    rule that only looks at the largest offset, this reaches zero with unequal sizes (SmolLM2's MLP has 3x the
    parameters of its attention). Genes of size 0 are set to 0."""
    o = np.clip(np.round(offsets), -limit, limit).astype(np.int64)
    w = np.asarray(sizes, dtype=np.int64)
    o[w == 0] = 0
    while True:
        total = int((o * w).sum())
        if total == 0:
            break
        step = -1 if total > 0 else 1
        movable = (o > -limit) if step < 0 else (o < limit)
        better = movable & (w > 0) & (np.abs(total + step * w) < abs(total))
        cand = np.where(better)[0]
        if not len(cand):
            break
        i = cand[np.argmax(o[cand])] if step < 0 else cand[np.argmin(o[cand])]
        o[i] += step
    return o


class ModuleSpace:
    """Integer genotypes over (metric?) + per-block attention and MLP level offsets (+ a level in trade-off mode).

    Args:
        stage: the stage's name (keys are ``"<stage>:<genes>"``).
        cfg: the search configuration (band, step, levels, target sparsity).
        sizes: parameters per block and kind, [n_blocks, 2] (``kind_sizes``).
        search_metric: search the meta metric too; fixed_metric: the metric otherwise.
    """

    def __init__(self, stage: str, cfg: SearchConfig, sizes, search_metric: bool, fixed_metric: str):
        self.stage = stage
        self.cfg = cfg
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.n_blocks = self.sizes.shape[0]
        self.gene_sizes = self.sizes.T.reshape(-1)  # attention offsets of every block, then MLP offsets
        self.search_metric = search_metric
        self.fixed_metric = fixed_metric
        lo, hi = [], []
        if search_metric:
            lo += [0, 0, 0, 0]
            hi += [len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1, len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1]
        n = cfg.n_offsets
        lo += [-n if s else 0 for s in self.gene_sizes]
        hi += [n if s else 0 for s in self.gene_sizes]
        if cfg.tradeoff:
            lo += [0]
            hi += [len(cfg.sparsity_levels) - 1]
        self.xl, self.xu = np.array(lo, dtype=float), np.array(hi, dtype=float)

    @property
    def n_obj(self) -> int:
        return 2 if self.cfg.tradeoff else 1

    def _a(self) -> int:
        return 4 if self.search_metric else 0

    def repair(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(np.round(X), self.xl, self.xu)
        a, n = self._a(), len(self.gene_sizes)
        for row in X:
            if self.search_metric:  # one genotype per exact ranking class
                row[:4] = MetricConfig(*(int(v) for v in row[:4])).canonical().as_tuple()
            row[a : a + n] = repair_exact(row[a : a + n], self.gene_sizes, self.cfg.n_offsets)
        return X

    def key(self, x) -> str:
        return f"{self.stage}:" + ",".join(str(int(v)) for v in x)

    def decode(self, x) -> dict:
        """Plan changes: ``metric``, ``module_sparsity`` (None when every offset is 0: uniform at the target)."""
        x = [int(v) for v in x]
        a, B = self._a(), self.n_blocks
        metric = MetricConfig(*x[:4]).spec if self.search_metric else self.fixed_metric
        target = self.cfg.sparsity_levels[x[-1]] if self.cfg.tradeoff else self.cfg.plan.sparsity
        offs = x[a : a + 2 * B]
        module = None
        if any(offs):
            module = {kind: [round(target + self.cfg.step * o, 10) for o in offs[k * B : (k + 1) * B]]
                      for k, kind in enumerate(MODULE_KINDS)}  # fmt: skip
        return {"metric": metric, "module_sparsity": module, "sparsity": target, "target": target}

    def seed_population(self, rng: np.random.RandomState, n: int, baseline_first: bool) -> np.ndarray:
        """Uniform random genotypes, repaired; the first is the baseline (Wanda / the fixed metric, uniform)."""
        return seed_genotypes(self, rng, n, baseline_first)


__all__ = ["ModuleSpace", "kind_sizes", "repair_exact"]
