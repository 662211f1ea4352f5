"""Screening the symbolic GP's children by their masks on a sample of rows, before any is scored (ours).

This is the surrogate of Hildebrandt and Branke ("On using surrogates with genetic programming", Evolutionary
Computation 23(3), 2015): a tree's *phenotype* is what it decides on a small fixed sample of cases, and a child's
fitness is predicted as the fitness of the evaluated tree whose phenotype is nearest. Here the cases are weights:
``MaskPhenotype`` prunes ``rows`` rows of every linear of ``blocks`` evenly spaced decoder blocks with the tree, through
the engine's own ``fused_prune`` on the dense weights and the search's dense statistics, at the trial's sparsity or
N:M pattern, and the phenotype is those rows' packed mask (``rows`` x ``in / 8`` bytes per linear; about 7.5 kB on
SmolLM2-135M). A whole-tensor reduction (``mms``, ``zsn``, ``rsn``, ``csn``) still sees the whole layer: the layer is
scored whole and only its sampled rows are kept.

``Screen`` predicts, for a batch of candidate children, each one's objective from the nearest phenotype (Hamming
distance; the lower objective among equally near ones) in its archive of the trees already told, and ``pick`` keeps
the ``n`` best predicted, in this order:

1. candidates whose phenotype is new (to the archive and to the candidates kept before them), best predicted first;
2. candidates whose phenotype repeats one kept before them in this batch or one in the archive (very likely the same
   mask, which the trial log answers for free but which teaches the search nothing);
3. candidates whose scores are not finite on a sampled layer (the trial would fail), last.

Ties keep the order the candidates were bred in, so a screened search is as deterministic as the GP. What the
screen costs is one score and select of the sampled layers per candidate (``screen`` x the children of a
generation), reported by the search's log; no objective is evaluated for a candidate that is not kept, so the
distinct evaluations a search counts are the kept children's. The phenotypes read the dense statistics even when the
plan's are sequential (the mask a trial makes then differs more from its phenotype; the ranking is still a
prediction), and the plan's uniform sparsity even when its blocks get others (OWL).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from optishear_kernels import Expr, fused_prune

from ..calibrate import ACT_NORM, GRADIENT

logger = logging.getLogger(__name__)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between the packed bit vector ``a`` (``[bytes]``) and each row of ``b`` (``[n, bytes]``)."""
    return _POPCOUNT[np.bitwise_xor(b, a[None, :])].sum(axis=1)


class MaskPhenotype:
    """A tree's packed mask on ``rows`` rows of every pruned linear of ``blocks`` evenly spaced blocks of a search's
    model (module docstring); None when its scores are not finite there, or it reads G without gradients.

    Args:
        runner: the search's ``TrialRunner`` (its linears, dense weight snapshot, dense statistics, plan, backend).
        blocks: how many decoder blocks to sample (evenly spaced, the first and the last included when >= 2).
        rows: rows sampled per linear, drawn once from ``seed``.
    """

    def __init__(self, runner, *, blocks: int = 3, rows: int = 4, seed: int = 0):
        if blocks < 1 or rows < 1:
            raise ValueError(f"the screen samples at least one block and one row, got blocks={blocks}, rows={rows}")
        plan = runner.plan
        self.nm, self.sparsity, self.backend = plan.nm, (None if plan.nm else plan.sparsity), runner.backend
        n = len(runner.linears)
        picked = sorted({round(i * (n - 1) / max(blocks - 1, 1)) for i in range(min(blocks, n))})
        self._gradients = runner.gradients is not None
        needs = {ACT_NORM, GRADIENT} if self._gradients else {ACT_NORM}
        stats = runner.dense_stats(needs)
        gen = torch.Generator().manual_seed(seed)
        self.layers = []  # (name, dense weight [out, in], x, g, sampled rows)
        for b in picked:
            for r in runner.linears[b]:
                saved = runner.snapshot.saved(r)
                w = (saved.t() if r.transposed else saved).to(r.module.weight.device)
                s = stats[b].get(r.name, {})
                x = s.get(ACT_NORM)
                g = s.get(GRADIENT)
                pick = torch.randperm(w.shape[0], generator=gen)[: min(rows, w.shape[0])].sort().values
                self.layers.append((r.full_name, w, None if x is None else x.to(w.device),
                                    None if g is None else g.to(w.device), pick.to(w.device)))  # fmt: skip
        self.nbytes = sum(len(p) * ((w.shape[1] + 7) // 8) for _, w, _, _, p in self.layers)

    def __call__(self, tree: Expr) -> np.ndarray | None:
        if tree.uses_g and not self._gradients:
            return None
        parts = []
        for name, w, x, g, rows in self.layers:
            try:
                out = fused_prune(w, x if tree.uses_x else None, tree, g=g if tree.uses_g else None,
                                  sparsity=self.sparsity, nm=self.nm, write_weight=False, write_mask=True,
                                  backend_name=self.backend)  # fmt: skip
            except (FloatingPointError, ValueError):  # non-finite scores: the trial would fail on this layer
                return None
            parts.append(out.packed_mask[rows].reshape(-1).cpu().numpy())
        return np.concatenate(parts)


class Screen:
    """The archive of told trees' phenotypes and objectives, and the choice of the children to evaluate.

    Args:
        phenotype: tree -> packed bits or None (``MaskPhenotype``).
        factor: candidates bred per child evaluated (the GP's ``screen``).
    """

    def __init__(self, phenotype, factor: int):
        if factor < 2:
            raise ValueError(f"a screen breeds at least 2 candidates per child evaluated, got {factor}")
        self.phenotype = phenotype
        self.factor = factor
        self._memo: dict[Expr, np.ndarray | None] = {}
        self._index: dict[bytes, int] = {}  # phenotype -> its row in _bits and _f
        self._rows: list[np.ndarray] = []  # the archive's phenotypes, in the order first told
        self._bits: np.ndarray | None = None  # _rows stacked [n, bytes], rebuilt after a tell adds to them
        self._f: list[float] = []  # the lowest objective told with each
        self.computed = 0  # phenotypes computed, and their seconds
        self.seconds = 0.0

    def of(self, tree: Expr) -> np.ndarray | None:
        if tree not in self._memo:
            t0 = time.perf_counter()
            self._memo[tree] = self.phenotype(tree)
            self.computed += 1
            self.seconds += time.perf_counter() - t0
        return self._memo[tree]

    def tell(self, trees: list[Expr], objectives: list[float]) -> None:
        """Archive the phenotypes of trees with a finite objective (a phenotype told twice keeps the lower)."""
        for t, v in zip(trees, objectives):
            if not np.isfinite(v):
                continue
            p = self.of(t)
            if p is None:
                continue
            key = p.tobytes()
            if key in self._index:
                i = self._index[key]
                self._f[i] = min(self._f[i], v)
                continue
            self._index[key] = len(self._f)
            self._f.append(v)
            self._rows.append(p)
            self._bits = None

    def predict(self, tree: Expr) -> float:
        """The objective of the archived phenotype nearest ``tree``'s (inf if it has none or the archive is empty)."""
        p = self.of(tree)
        if p is None or not self._rows:
            return float("inf")
        if self._bits is None:
            self._bits = np.stack(self._rows)
        d = hamming(p, self._bits)
        near = np.flatnonzero(d == d.min())
        return float(min(self._f[i] for i in near))

    def pick(self, candidates: list[Expr], n: int) -> list[Expr]:
        """The ``n`` candidates to evaluate (module docstring's order); ties keep the candidates' order."""
        new, repeats, failing = [], [], []
        seen = set(self._index)
        ranked = sorted(range(len(candidates)), key=lambda i: (self.predict(candidates[i]), i))
        for i in ranked:
            p = self.of(candidates[i])
            if p is None:
                failing.append(i)
            elif p.tobytes() in seen:
                repeats.append(i)
            else:
                seen.add(p.tobytes())
                new.append(i)
        kept = (new + repeats + failing)[:n]
        logger.info("screen: %d of %d candidates kept (%d new sampled masks); %d phenotypes so far, %.1f s",
                    len(kept), len(candidates), len(new), self.computed, self.seconds)  # fmt: skip
        return [candidates[i] for i in kept]


__all__ = ["MaskPhenotype", "Screen", "hamming"]
