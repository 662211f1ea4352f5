"""Search spaces: how a genotype (what an optimizer proposes) becomes a plan (what a trial prunes with).

A space gives the optimizer its bounds, a repair that maps any proposal onto a valid, canonical genotype, a
seeded first population whose first member is the stage's baseline, a key per genotype (the trial log's
identity) and the decoding into plan changes. Vector spaces here: the meta metric (four option indices,
repaired to their exact ranking class), the per-block sparsities (integer offsets on a grid, repaired so that
the size-weighted mean is exactly the target) and, in trade-off mode, a sparsity level. Other genomes (symbolic
trees, structured rates) are other classes with the same methods.
"""

from __future__ import annotations

import numpy as np
from optishear_kernels import COEFFICIENTS, TRANSFORMS, MetricConfig

from .config import SearchConfig


def repair_offsets(offsets: np.ndarray, sizes: np.ndarray, limit: int) -> np.ndarray:
    """Make the size-weighted sum of integer level offsets zero (the mean sparsity exactly the target).

    Offsets are clipped to [-limit, limit]; while the weighted sum is positive the largest offset (lowest
    block index first) steps down, while negative the smallest steps up, as long as that brings the sum
    closer to zero. With equal block sizes (every decoder stack we know) the result is exactly balanced.
    """
    o = np.clip(np.round(offsets), -limit, limit).astype(np.int64)
    w = np.asarray(sizes, dtype=np.int64)
    while True:
        total = int((o * w).sum())
        if total == 0:
            break
        step = -1 if total > 0 else 1
        cand = np.where(o > -limit)[0] if step < 0 else np.where(o < limit)[0]
        if not len(cand):
            break
        i = cand[np.argmax(o[cand])] if step < 0 else cand[np.argmin(o[cand])]
        if abs(total + step * int(w[i])) >= abs(total):
            break
        o[i] += step
    return o


class VectorSpace:
    """Integer genotypes: [cw, uw, cx, ux] if the metric is searched, one level offset per block if blocks are,
    and a sparsity-level index in trade-off mode.

    Args:
        stage: the stage's name (keys are ``"<stage>:<genes>"``).
        cfg: the search configuration (band, step, levels, the base plan's target sparsity).
        block_sizes: parameters per block (the repair weighs offsets by them).
        search_metric / search_blocks: which parts are searched.
        fixed_metric: the metric when it is not searched.
    """

    def __init__(self, stage: str, cfg: SearchConfig, block_sizes: list[int], search_metric: bool,
                 search_blocks: bool, fixed_metric: str):  # fmt: skip
        self.stage = stage
        self.cfg = cfg
        self.n_blocks = len(block_sizes)
        self.sizes = np.asarray(block_sizes)
        self.search_metric = search_metric
        self.search_blocks = search_blocks
        self.fixed_metric = fixed_metric
        lo, hi = [], []
        if search_metric:
            lo += [0, 0, 0, 0]
            hi += [len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1, len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1]
        if search_blocks:
            lo += [-cfg.n_offsets] * self.n_blocks
            hi += [cfg.n_offsets] * self.n_blocks
        if cfg.tradeoff:
            lo += [0]
            hi += [len(cfg.sparsity_levels) - 1]
        self.xl, self.xu = np.array(lo, dtype=float), np.array(hi, dtype=float)

    @property
    def n_obj(self) -> int:
        return 2 if self.cfg.tradeoff else 1

    def repair(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(np.round(X), self.xl, self.xu)
        if self.search_metric:  # one genotype per exact ranking class (MetricConfig.canonical)
            for row in X:
                row[:4] = MetricConfig(*(int(v) for v in row[:4])).canonical().as_tuple()
        if self.search_blocks:
            a = 4 if self.search_metric else 0
            for row in X:
                row[a : a + self.n_blocks] = repair_offsets(row[a : a + self.n_blocks], self.sizes, self.cfg.n_offsets)
        return X

    def key(self, x) -> str:
        return f"{self.stage}:" + ",".join(str(int(v)) for v in x)

    def decode(self, x) -> dict:
        """Plan changes for genotype ``x``: ``metric``, ``block_sparsity`` (None: uniform at ``sparsity``)."""
        x = [int(v) for v in x]
        metric = MetricConfig(*x[:4]).spec if self.search_metric else self.fixed_metric
        i = 4 if self.search_metric else 0
        target = self.cfg.sparsity_levels[x[-1]] if self.cfg.tradeoff else self.cfg.plan.sparsity
        blocks = [round(target + self.cfg.step * o, 10) for o in x[i : i + self.n_blocks]] if self.search_blocks \
            else [target] * self.n_blocks  # fmt: skip
        return {"metric": metric, "block_sparsity": blocks, "target": target}

    def seed_population(self, rng: np.random.RandomState, n: int, baseline_first: bool) -> np.ndarray:
        """Uniform random genotypes, repaired; the first is the baseline (Wanda, uniform blocks at the target)."""
        return seed_genotypes(self, rng, n, baseline_first)


def seed_genotypes(space, rng: np.random.RandomState, n: int, baseline_first: bool) -> np.ndarray:
    """``n`` uniform random integer genotypes within ``space.xl``/``space.xu``, repaired by ``space.repair``; with
    ``baseline_first`` the first is all zeros (the baseline metric, no offsets) at the plan's sparsity level."""
    X = np.stack([rng.randint(int(lo), int(hi) + 1, size=n) for lo, hi in zip(space.xl, space.xu)], axis=1)
    X = X.astype(float)
    if baseline_first:
        X[0, :] = 0
        if space.cfg.tradeoff:
            lv = space.cfg.sparsity_levels
            X[0, -1] = lv.index(space.cfg.plan.sparsity) if space.cfg.plan.sparsity in lv else 0
    return space.repair(X)


__all__ = ["VectorSpace", "repair_offsets", "seed_genotypes"]
