"""Optimizers behind one ask/tell interface.

    opt.has_next() -> bool
    opt.ask() -> list of genotypes             (the next generation, repaired by the space)
    opt.tell(objectives [n, n_obj], feasible [n])
    opt.front() -> list of (genotype, objectives)   (the final non-dominated feasible set)

The driver owns everything else (dedupe, trials, the log), so an optimizer never sees a model. Here: pymoo's
NSGA-III (OptiShear v1) and NSGA-II (its later version) over the vector spaces. A failed trial is told as
infeasible (one inequality constraint, violated), which pymoo ranks below every feasible solution; with no
failures the constraint is satisfied everywhere and the search is the unconstrained one.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

FAILED_OBJECTIVE = 1e30  # what a failed trial reports as its objective; it is also infeasible


class Optimizer(Protocol):
    generation: int

    def has_next(self) -> bool: ...

    def ask(self) -> list: ...

    def tell(self, objectives: np.ndarray, feasible: np.ndarray) -> None: ...

    def front(self) -> list[tuple[object, np.ndarray]]: ...


class PymooOptimizer:
    """pymoo's NSGA-III or NSGA-II in ask/tell mode over a ``VectorSpace``.

    Integer genes are searched as one float vector: simulated binary crossover and polynomial mutation, rounded,
    then the space's repair (canonical metrics, exact mean sparsity). The first population is the space's seeded
    one (the baseline first), drawn from ``numpy.random.RandomState(seed)``.
    """

    def __init__(self, space, *, algorithm: str = "nsga3", pop_size: int = 20, generations: int = 10,
                 mutation_eta: float = 5.0, eliminate_duplicates: bool = False, seed: int = 0,
                 baseline_first: bool = True):  # fmt: skip
        from pymoo.core.problem import Problem
        from pymoo.core.repair import Repair
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair

        class _Repair(Repair):
            def _do(self, problem, X, **kwargs):
                return space.repair(X)

        n_obj = space.n_obj
        problem = Problem(n_var=len(space.xl), n_obj=n_obj, n_ieq_constr=1, xl=space.xl, xu=space.xu, vtype=int)
        rng = np.random.RandomState(seed)
        common = dict(pop_size=pop_size, sampling=space.seed_population(rng, pop_size, baseline_first),
                      crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                      mutation=PM(eta=mutation_eta, vtype=float, repair=RoundingRepair()), repair=_Repair(),
                      eliminate_duplicates=eliminate_duplicates)  # fmt: skip
        if algorithm == "nsga3":
            from pymoo.algorithms.moo.nsga3 import NSGA3
            from pymoo.util.ref_dirs import get_reference_directions

            ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=1 if n_obj == 1 else 12)
            self.algo = NSGA3(ref_dirs=ref_dirs, **common)
        elif algorithm == "nsga2":
            from pymoo.algorithms.moo.nsga2 import NSGA2

            self.algo = NSGA2(**common)
        else:
            raise ValueError(f"algorithm must be nsga3 or nsga2, got {algorithm!r}")
        self.algo.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
        self.generation = 0
        self._pop = None

    def has_next(self) -> bool:
        return self.algo.has_next()

    def ask(self) -> list:
        self._pop = self.algo.ask()
        return list(self._pop.get("X"))

    def tell(self, objectives: np.ndarray, feasible: np.ndarray) -> None:
        F = np.where(np.asarray(feasible)[:, None], objectives, FAILED_OBJECTIVE)
        self._pop.set("F", F)
        self._pop.set("G", np.where(np.asarray(feasible), 0.0, 1.0)[:, None])
        self.algo.tell(infills=self._pop)
        self.generation += 1

    def front(self) -> list[tuple[object, np.ndarray]]:
        opt = self.algo.opt
        cv = opt.get("CV")
        return [(x, f) for x, f, c in zip(opt.get("X"), opt.get("F"), cv) if c is None or float(np.max(c)) <= 0]


__all__ = ["Optimizer", "PymooOptimizer", "FAILED_OBJECTIVE"]
