"""An elitist evolutionary loop behind the ask/tell interface, with swappable operators (plain or LLM-driven).

    generation 0: the space's seeded population (the uniform allocation first)
    generation g: pop_size offspring, each  select two parents -> crossover -> mutate -> repair -> new?
                  survival: the pop_size best distinct of parents + offspring

The operators are an object with ``select / crossover / mutate``; ``PlainOperators`` are the classic ones (binary
tournament, block-wise uniform crossover, DarwinLM's level-swap mutation), ``llm_operators.LLMOperators`` ask an
instruct model and fall back to these. The loop is ours rather than pymoo's GA because the LLM operators need the
population with its fitness as text at every call and a count of what each call returned; with both operator sets
in one loop, a comparison differs in the operators only.

An offspring that repeats a genotype already proposed in this run is replaced by a plain level swap of itself
(up to ``max_retries`` times, counted as ``duplicates``), so every generation evaluates ``pop_size`` new models and
two runs with the same sizes spend the same number of distinct evaluations.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class PlainOperators:
    """Binary tournament, block-wise uniform crossover, level-swap mutation."""

    name = "ga"

    def __init__(self, space, swaps: tuple[int, int] = (1, 3)):
        self.space = space
        self.swaps = swaps
        self.stats: dict = {"operators": "ga"}

    def select(self, pop: list[np.ndarray], fit: list[float], rng: np.random.RandomState, generation: int):
        def one(exclude=None):
            a, b = rng.choice(len(pop), size=2, replace=False)
            w = a if (fit[a], a) <= (fit[b], b) else b
            return w

        i = one()
        for _ in range(10):
            j = one()
            if j != i:
                break
        else:
            j = (i + 1) % len(pop)
        return int(i), int(j)

    def crossover(self, a, b, fa: float, fb: float, rng: np.random.RandomState, generation: int) -> np.ndarray:
        """Each block takes its attention and MLP levels together from one parent or the other."""
        n = self.space.n
        take_b = rng.rand(n) < 0.5
        child = np.array(a, dtype=float).copy()
        child[:n][take_b] = np.asarray(b)[:n][take_b]
        child[n:][take_b] = np.asarray(b)[n:][take_b]
        return child

    def mutate(self, g, rng: np.random.RandomState, generation: int, best=None) -> np.ndarray:
        k = rng.randint(self.swaps[0], self.swaps[1] + 1)
        for _ in range(k):
            g = self.space.swap(g, rng)
        return np.asarray(g, dtype=float)


class EvolutionOptimizer:
    """(mu + lambda) evolution over a ``StructuredSpace`` with ``operators``; ask/tell like ``PymooOptimizer``.

    Args:
        space: the space (``seed_population``, ``repair_one``, ``swap``, ``key``).
        operators: ``PlainOperators`` or ``LLMOperators``.
        pop_size, generations: population size and number of generations (the first is the seeded population).
        seed: seeds ``numpy.random.RandomState`` (the operators' randomness and the LLM's sampling seeds).
    """

    def __init__(self, space, operators, *, pop_size: int = 10, generations: int = 10, seed: int = 0,
                 max_retries: int = 20):  # fmt: skip
        if pop_size < 2:
            raise ValueError(f"the evolutionary search needs pop_size >= 2, got {pop_size}")
        self.space = space
        self.ops = operators
        self.plain = PlainOperators(space)
        self.pop_size = pop_size
        self.generations = generations
        self.rng = np.random.RandomState(seed)
        self.max_retries = max_retries
        self.generation = 0
        self.population: list[tuple[np.ndarray, float]] = []
        self.seen: set[str] = set()
        self._asked: list[np.ndarray] = []
        self.duplicates = 0
        self.unresolved = 0

    @property
    def stats(self) -> dict:
        out = dict(getattr(self.ops, "stats", {}))
        out.update(duplicates=self.duplicates, unresolved_duplicates=self.unresolved)
        return out

    def has_next(self) -> bool:
        return self.generation < self.generations

    def ask(self) -> list:
        if self.generation == 0:
            X = list(self.space.seed_population(self.rng, self.pop_size, True))
        else:
            X = self._offspring()
        self._asked = X
        self.seen.update(self.space.key(x) for x in X)
        return X

    def _offspring(self) -> list[np.ndarray]:
        pop = [g for g, _ in self.population]
        fit = [f for _, f in self.population]
        best = pop[int(np.argmin(fit))]
        out, keys = [], set()
        for _ in range(self.pop_size):
            i, j = self.ops.select(pop, fit, self.rng, self.generation)
            child = self.ops.crossover(pop[i], pop[j], fit[i], fit[j], self.rng, self.generation)
            child = self.space.repair_one(child)
            child = self.ops.mutate(child, self.rng, self.generation, best=(best, min(fit)))
            child = self.space.repair_one(child)
            tries = 0
            while self.space.key(child) in self.seen or self.space.key(child) in keys:
                if tries == 0:
                    self.duplicates += 1
                if tries >= self.max_retries:
                    self.unresolved += 1
                    break
                child = self.plain.mutate(child, self.rng, self.generation)
                child = self.space.repair_one(child)
                tries += 1
            keys.add(self.space.key(child))
            out.append(np.asarray(child, dtype=float))
        return out

    def tell(self, objectives: np.ndarray, feasible: np.ndarray) -> None:
        merged = {self.space.key(g): (g, f) for g, f in self.population}
        for x, f, ok in zip(self._asked, np.asarray(objectives)[:, 0], feasible):
            if ok:
                merged.setdefault(self.space.key(x), (np.asarray(x, dtype=float), float(f)))
        ranked = sorted(merged.items(), key=lambda kv: (kv[1][1], kv[0]))
        self.population = [v for _, v in ranked[: self.pop_size]]
        self.generation += 1

    def front(self) -> list[tuple[object, np.ndarray]]:
        """The surviving population, best first (single objective: the driver chooses from it)."""
        return [(g, np.array([f])) for g, f in self.population]

    # -- the LLM operators' journal (the driver writes and replays it) --------------------------------------------
    def drain_journal(self) -> list[dict]:
        fn = getattr(self.ops, "drain_journal", None)
        return fn() if fn else []

    def replay(self, records: list[dict]) -> None:
        fn = getattr(self.ops, "replay", None)
        if fn:
            fn(records)


__all__ = ["EvolutionOptimizer", "PlainOperators"]
