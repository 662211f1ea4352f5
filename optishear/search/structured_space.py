"""The per-block structured-rate space: one attention level and one MLP level per block, the parameter reduction held
at the target.

Genotype: ``[a_0 .. a_{n-1}, m_0 .. m_{n-1}]``. ``a_i`` indexes the block's reachable attention sizes under GQA
(``methods.structured.attention_levels``: for SmolLM2's 9 query heads in 3 KV groups, 8 levels from all heads kept
to none), ``m_i`` in ``0..steps`` removes ``m_i / steps`` of the block's MLP channels (steps = 16 by default).

The constraint: every candidate removes the target number of parameters (``rate`` of the decoder blocks), to within
one MLP channel. ``repair`` moves MLP levels (the largest down or the smallest up, then attention levels) until the
grid is within half a level per block of the target; ``decode`` spreads the rest evenly over the blocks in single
channels. So a genotype whose levels are all alike decodes to the uniform allocation, and moving one level up in one
block and down in another (DarwinLM's level swap) keeps the constraint by construction.
"""

from __future__ import annotations

import numpy as np

from ..methods.structured import Allocation, Budget
from .config import SearchConfig


class StructuredSpace:
    """Per-block attention and MLP levels at a fixed parameter reduction.

    Args:
        stage: the stage's name (keys are ``"<stage>:<genes>"``).
        cfg: the search configuration (``plan.rate`` is the target, ``mlp_steps`` the MLP grid).
        budget: the parameter accounting of the dense model (``methods.structured.Budget``).
    """

    n_obj = 1

    def __init__(self, stage: str, cfg: SearchConfig, budget: Budget):
        self.stage = stage
        self.cfg = cfg
        self.budget = budget
        self.n = budget.n
        self.steps = cfg.mlp_steps
        self.n_att = [len(lv) for lv in budget.levels]
        self.xl = np.zeros(2 * self.n)
        self.xu = np.array([k - 1 for k in self.n_att] + [self.steps] * self.n, dtype=float)
        self.target = budget.target(cfg.plan.rate)
        self.channels = [lay.channels for lay in budget.layouts]
        self.unit = budget.mlp[0]["ch_unit"]
        self.tolerance = self.n * self.unit * (max(self.channels) / self.steps) / 2
        self.seeds: list[np.ndarray] = []  # genotypes the first population holds beside the uniform one

    # -- genotype <-> allocation ---------------------------------------------------------------------------------
    def level_channels(self, i: int, m: int) -> int:
        return int(round(m * self.channels[i] / self.steps))

    def grid_removed(self, g) -> int:
        g = [int(v) for v in g]
        return sum(self.budget.removed(i, g[i], self.level_channels(i, g[self.n + i])) for i in range(self.n))

    def allocation(self, g) -> Allocation:
        """The genotype's allocation: grid channels plus the remainder spread evenly in single channels."""
        g = [int(v) for v in g]
        levels = g[: self.n]
        chans = [self.level_channels(i, g[self.n + i]) for i in range(self.n)]
        rest = self.target - self.budget.total_removed(Allocation(levels, chans))
        k = int(round(rest / self.unit))
        base, extra = divmod(abs(k), self.n)
        sign = 1 if k > 0 else -1
        out = list(chans)
        left = 0
        for i in range(self.n):
            want = out[i] + sign * (base + (1 if i < extra else 0))
            got = min(max(want, 0), self.channels[i])
            left += abs(want - got)
            out[i] = got
        if left:  # blocks at their bounds: the rest goes round the others
            out = self.budget.spread(out, sign * left * self.unit)
        return Allocation(levels, out)

    def _badness(self, g) -> tuple[float, float]:
        """(how far the grid is outside its tolerance, how far the decoded allocation is from the target beyond half
        a channel): both zero for a valid genotype."""
        grid = self.grid_removed(g) - self.target
        final = self.budget.total_removed(self.allocation(g)) - self.target
        return max(abs(grid) - self.tolerance, 0.0), max(abs(final) - self.unit / 2, 0.0)

    def repair_one(self, g) -> np.ndarray:
        """Clip and round, then move levels until the grid is within half a level per block of the target and the
        decoded allocation (the grid plus the spread remainder) within half a channel of it. A move steps the largest
        MLP level down (or the smallest up; ties: the lowest block), else an attention level, and is taken only if it
        brings the genotype closer."""
        g = np.clip(np.round(np.asarray(g, dtype=float)), self.xl, self.xu).astype(np.int64)
        n = self.n
        bad = self._badness(g)
        for _ in range(40 * n * (self.steps + 1)):
            if bad == (0.0, 0.0):
                break
            d = self.grid_removed(g) - self.target if bad[0] > 0 else \
                self.budget.total_removed(self.allocation(g)) - self.target  # fmt: skip
            step = -1 if d > 0 else 1
            moved = False
            for part in ("mlp", "attention"):
                lo, hi = (n, 2 * n) if part == "mlp" else (0, n)
                idx = [j for j in range(lo, hi) if self.xl[j] <= g[j] + step <= self.xu[j]]
                if not idx:
                    continue
                j = max(idx, key=lambda j: (g[j], -j)) if step < 0 else min(idx, key=lambda j: (g[j], j))
                g2 = g.copy()
                g2[j] += step
                if part == "attention":  # an attention step moves many parameters: let the MLP levels answer it
                    g2 = self._rebalance_mlp(g2)
                bad2 = self._badness(g2)
                if bad2 < bad:
                    g, bad, moved = g2, bad2, True
                    break
            if not moved:
                break
        return g

    def _rebalance_mlp(self, g: np.ndarray) -> np.ndarray:
        """MLP level steps (the largest down, or the smallest up) while they bring the grid closer to the target and
        it is outside its tolerance."""
        n = self.n
        for _ in range(n * (self.steps + 1)):
            d = self.grid_removed(g) - self.target
            if abs(d) <= self.tolerance:
                break
            step = -1 if d > 0 else 1
            idx = [j for j in range(n, 2 * n) if self.xl[j] <= g[j] + step <= self.xu[j]]
            if not idx:
                break
            j = max(idx, key=lambda j: (g[j], -j)) if step < 0 else min(idx, key=lambda j: (g[j], j))
            g2 = g.copy()
            g2[j] += step
            if abs(self.grid_removed(g2) - self.target) >= abs(d):
                break
            g = g2
        return g

    def repair(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        return np.stack([self.repair_one(row) for row in X]).astype(float)

    def key(self, x) -> str:
        return f"{self.stage}:" + ",".join(str(int(v)) for v in x)

    def decode(self, x) -> dict:
        """Plan changes: ``structured`` and the per-block ``layer_rates`` (exact fractions of each block's levels)."""
        return {"structured": True, "layer_rates": self.budget.rates(self.allocation(x))}

    def reduction(self, x) -> float:
        return self.budget.reduction(self.allocation(x))

    # -- populations ---------------------------------------------------------------------------------------------
    def uniform_genome(self) -> np.ndarray:
        """Every block at the attention level nearest the rate and the MLP level nearest the channels that fill it."""
        return self.genome_of(self.budget.uniform(self.cfg.plan.rate))

    def genome_of(self, alloc: Allocation) -> np.ndarray:
        """The genotype nearest an allocation: its attention levels, each block's removed channels rounded to the MLP
        grid, repaired to the budget."""
        g = list(alloc.levels) + [int(round(c * self.steps / self.channels[i]))
                                  for i, c in enumerate(alloc.channels_removed)]  # fmt: skip
        return self.repair_one(np.array(g, dtype=float))

    def swap(self, g, rng: np.random.RandomState, part: str | None = None) -> np.ndarray:
        """A small move, repaired: DarwinLM's level swap within the attention or the MLP levels (one block one level
        up, another one level down), or (``step``) one attention level up or down with the MLP levels answering it,
        which moves parameters between attention and MLP. Drawn 1/4 attention swap, 1/2 MLP swap, 1/4 step."""
        g = np.array(g, dtype=np.int64)
        if part is None:
            u = rng.rand()
            part = "attention" if u < 0.25 else "mlp" if u < 0.75 else "step"
        if part == "step":
            i = rng.randint(self.n)
            s = 1 if rng.rand() < 0.5 else -1
            if not self.xl[i] <= g[i] + s <= self.xu[i]:
                s = -s
            if self.xl[i] <= g[i] + s <= self.xu[i]:
                g[i] += s
                g = self._rebalance_mlp(g)
            return self.repair_one(g)
        lo = 0 if part == "attention" else self.n
        for _ in range(20):
            i, j = rng.choice(self.n, size=2, replace=False)
            if g[lo + i] < self.xu[lo + i] and g[lo + j] > self.xl[lo + j]:
                g[lo + i] += 1
                g[lo + j] -= 1
                break
        return self.repair_one(g)

    def seed_population(self, rng: np.random.RandomState, n: int, baseline_first: bool = True) -> np.ndarray:
        """The uniform genotype first, then each of ``seeds`` (an adaptive allocation's genotype, say), then one of
        these (in turn) + a random number of level swaps (distinct, repaired). Without ``seeds`` every variant starts
        from the uniform genotype."""
        base = self.uniform_genome()
        out, keys = [base], {self.key(base)}
        for g in self.seeds:
            if len(out) < n and self.key(g) not in keys:
                keys.add(self.key(g))
                out.append(np.asarray(g, dtype=float))
        starts = out[:]
        tries = 0
        while len(out) < n and tries < 100 * n:
            tries += 1
            g = starts[len(out) % len(starts)].copy()
            for _ in range(rng.randint(1, self.n + 1)):
                g = self.swap(g, rng)
            if self.key(g) not in keys:
                keys.add(self.key(g))
                out.append(g)
        return np.stack(out).astype(float)

    # -- text for the LLM operators -----------------------------------------------------------------------------
    def rows(self, g) -> tuple[list[int], list[int]]:
        g = [int(v) for v in g]
        return g[: self.n], g[self.n :]


__all__ = ["StructuredSpace"]
