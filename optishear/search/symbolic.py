"""The symbolic space: genetic programming over expression trees (Pruner-Zero's search, which its authors did not
release), on the search package's ask/tell interface.

    genotype: a canonical tree (``optishear_kernels.canonical``), key ``symbolic:<text>``
    plan change: ``metric = "expr:<text>"`` (the tree the trial scores with, its recipe's metric)

``GPOptimizer`` is a plain generational GP:

- first generation: the seeds (Wanda ``mul(W,sqrt(X))`` first, the stage's baseline; magnitude ``W``; RIA's
  activation exponent ``mul(W,sqrt(sqrt(X)))`` (RIA's relative-importance normaliser needs row and column sums, which
  Pruner-Zero's operators do not have); the published Pruner-Zero metric; with ``tree_operators="relative"`` also
  RIA itself, ``mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))``; then the user's ``tree_seeds``, ``builtin_seeds``), then,
  with ``init_mutants`` f > 0, ``round(f * (pop_size - seeds))`` trees one mutation away from a seed (point, then
  subtree mutation, each round over the seeds in order), then ramped half-and-half trees of depth 2 to 4 (grow and
  full alternating over the depths), each simplified to its canonical form, duplicates and trees over ``max_size``
  redrawn;
- each next generation: the ``elitism`` best distinct trees unchanged, the rest bred from parents chosen by
  tournaments of ``tournament`` trees: subtree crossover (``p_crossover``; ``crossover="one-point"``: Poli and
  Langdon's one-point crossover, the point drawn from both parents' common region, ``_one_point``), subtree
  mutation (``p_subtree``: a random node replaced by a fresh grow tree of depth 1 to 3), point mutation (``p_point``:
  a node's operator swapped for another of the same arity, a terminal for another terminal), insertion (``p_insert``,
  0 by default: a new operator put above a node below the root, the node its argument, a binary operator's other
  argument a random terminal; DEAP's ``mutInsert``), shrink (``p_shrink``, 0 by default: an operator node replaced
  by one of its arguments; DEAP's ``mutShrink``), else a copy; every child is simplified, and a child over
  ``max_size`` nodes is replaced by its parent (the size limit against bloat);
- fitness: the trial's objective (lower is better); a failed trial (NaN or infinite scores) is infeasible.

With ``survival="plus"`` (``--tree-survival plus``) the loop is the (mu + lambda) form the meta-metric search's
pymoo GA has: the parents of each generation are the ``pop_size`` best distinct trees evaluated so far (not the last
generation with ``elitism`` of them), and every child is new to the run: a child that repeats a tree already asked
(or one asked in the same generation) is mutated again, point then subtree alternating, up to ``retries`` times, so
that a generation spends its ``pop_size`` trials on trees never scored instead of on copies the trial log answers.

With ``screen`` (``--tree-screen K``, ours, off by default) each generation breeds K times as many children as it
evaluates, exactly as above, and evaluates the ones a surrogate predicts best: each candidate's mask on a few sampled
rows of a few layers, its predicted objective that of the evaluated tree with the nearest such mask (Hildebrandt and
Branke's phenotypic surrogate for GP; ``screen.py``). Elites are kept as before; a candidate whose sampled mask
repeats an evaluated one's goes after every new one.

Everything random comes from one ``random.Random(seed)``, and a tell depends only on the objectives told, so the same
seed gives the same search, and a resumed search (whose trials are read back from the log) replays it exactly.

Why not DEAP (``deap`` 1.4.4 is on the package index): its GP operators draw from the global ``random`` module
(determinism then depends on every other user of it), its trees are prefix lists of its own primitive set, and
its algorithms are loops that call the evaluation themselves, not ask/tell. We need our own tree type anyway (the
kernels compile it, ``canonical`` simplifies it), and the operators above are a page of code.
"""

from __future__ import annotations

import math
import random

import numpy as np
from optishear_kernels import PRUNER_ZERO, Expr, canonical, parse_expr
from optishear_kernels.expr import ARITY, BINARY, OPERATORS, RELATIVE, TERMINALS, random_tree

from ..methods.expression import expression_plan_metric
from .config import TREE_RATES, TREE_SURVIVALS, SearchConfig
from .screen import MaskPhenotype, Screen

SEEDS = ("mul(W,sqrt(X))", "W", "mul(W,sqrt(sqrt(X)))", PRUNER_ZERO.text)
RIA_TREE = "mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))"  # RIA, with the relative operators
TREE_CROSSOVERS = ("subtree", "one-point")  # GPOptimizer's crossover (a bench/gp_simulate.py knob, not a flag)
OPERATOR_SETS = {"pruner-zero": OPERATORS, "relative": OPERATORS + RELATIVE}  # by SearchConfig.tree_operators


class SymbolicSpace:
    """Trees as genotypes; the plan change is the tree as a metric, at the target sparsity (uniform blocks)."""

    def __init__(self, stage: str, cfg: SearchConfig, n_blocks: int):
        self.stage = stage
        self.cfg = cfg
        self.n_blocks = n_blocks

    @property
    def n_obj(self) -> int:
        return 1

    def key(self, tree: Expr) -> str:
        return f"{self.stage}:{tree.text}"

    def decode(self, tree: Expr) -> dict:
        target = self.cfg.plan.sparsity
        return {"metric": expression_plan_metric(tree), "block_sparsity": [target] * self.n_blocks, "target": target}

    @staticmethod
    def counts_failure(record) -> bool:
        """A tree whose scores overflow is a bad tree, not a broken search: it is infeasible and does not count
        towards ``max_failures``."""
        return "NaN or infinite" not in (record.error or "") and "NaN or inf in" not in (record.error or "")


def subtrees(tree: Expr, prefix=()):
    """(path, node) for every node, pre-order; a path is the tuple of argument indices from the root."""
    yield prefix, tree
    for i, a in enumerate(tree.args):
        yield from subtrees(a, prefix + (i,))


def common_region(a: Expr, b: Expr, prefix=()):
    """Paths of the nodes two trees share by shape, pre-order: the root, and the arguments of every shared node
    whose operator has the same arity in both (Poli and Langdon's common region)."""
    yield prefix
    if a.args and len(a.args) == len(b.args):
        for i, (x, y) in enumerate(zip(a.args, b.args)):
            yield from common_region(x, y, prefix + (i,))


def subtree_at(tree: Expr, path: tuple[int, ...]) -> Expr:
    """The node of ``tree`` at ``path``."""
    for i in path:
        tree = tree.args[i]
    return tree


def replace_subtree(tree: Expr, path: tuple[int, ...], new: Expr) -> Expr:
    """``tree`` with the node at ``path`` (as ``subtrees`` gives it) replaced by ``new``."""
    if not path:
        return new
    args = list(tree.args)
    args[path[0]] = replace_subtree(args[path[0]], path[1:], new)
    return Expr(tree.op, tuple(args))


class GPOptimizer:
    """Generational GP over ``SymbolicSpace`` with the ask/tell interface of ``optimizers.Optimizer``.

    Args:
        space: the space (keys only; trees are the genotypes).
        pop_size, generations, seed: the run's size and seed.
        seeds: trees of the first generation, in order (the first is the stage's baseline).
        max_size: most nodes a tree may have (canonical form).
        tournament, p_crossover, p_subtree, p_point, elitism, init_depth, init_mutants: the GP's settings (module
            docstring).
        operators: the operators random trees and point mutations draw from (``OPERATOR_SETS``).
        survival: ``"generational"`` (the default) or ``"plus"`` (module docstring); ``retries``: the plus loop's
            attempts to make a repeated child new.
        crossover: ``"subtree"`` (the default: a random node of each parent) or ``"one-point"`` (``_one_point``).
        screen: a ``screen.Screen`` (None: off): each generation breeds ``screen.factor`` times the children it
            evaluates, the same way, and asks the ones the screen picks (module docstring).
    """

    def __init__(self, space: SymbolicSpace, *, pop_size: int = 20, generations: int = 15, seed: int = 0,
                 seeds=SEEDS, max_size: int = 17, tournament: int = 3,
                 p_crossover: float = TREE_RATES["crossover"], p_subtree: float = TREE_RATES["subtree"],
                 p_point: float = TREE_RATES["point"], p_insert: float = TREE_RATES["insert"],
                 p_shrink: float = TREE_RATES["shrink"],
                 elitism: int = 2,
                 init_depth: tuple[int, int] = (2, 4), init_mutants: float = 0.0,
                 operators: tuple[str, ...] = OPERATORS, survival: str = "generational",
                 retries: int = 20, crossover: str = "subtree", screen=None):  # fmt: skip
        if pop_size < 2:
            raise ValueError(f"the GP needs a population of at least 2, got {pop_size}")
        if survival not in TREE_SURVIVALS:
            raise ValueError(f"survival must be one of {TREE_SURVIVALS}, got {survival!r}")
        self.survival = survival
        if crossover not in TREE_CROSSOVERS:
            raise ValueError(f"crossover must be one of {TREE_CROSSOVERS}, got {crossover!r}")
        self.crossover = crossover
        self.retries = retries
        self.screen = screen
        self.asked: set[Expr] = set()  # every tree asked in this run (the plus loop's children are new to it)
        self.survivors: list[tuple[Expr, float]] = []  # the plus loop's parents, best first
        self.space = space
        self.pop_size = pop_size
        self.generations = generations
        self.rng = random.Random(seed)
        self.max_size = max_size
        self.tournament = tournament
        probs = {"p_crossover": p_crossover, "p_subtree": p_subtree, "p_point": p_point, "p_insert": p_insert,
                 "p_shrink": p_shrink}  # fmt: skip
        if min(probs.values()) < 0 or sum(probs.values()) > 1 + 1e-9:
            raise ValueError(f"the GP's operator probabilities must be >= 0 and sum to at most 1, got {probs}")
        self._edges = np.cumsum(list(probs.values()))  # _child's draw: crossover, subtree, point, insert, shrink
        self.elitism = elitism
        self.operators = tuple(operators)
        self.unary = tuple(o for o in self.operators if ARITY[o] == 1)
        self.generation = 0
        self.best: dict[str, tuple[Expr, float]] = {}
        if not 0.0 <= init_mutants <= 1.0:
            raise ValueError(f"init_mutants is a fraction in [0, 1], got {init_mutants}")
        self.init_mutants = init_mutants
        self.pop = self._initial([canonical(parse_expr(s)) for s in seeds][:pop_size], init_depth)
        self.fitness: list[float] | None = None

    # -- the population ----------------------------------------------------------------------------------------
    def _initial(self, seeds: list[Expr], depth: tuple[int, int]) -> list[Expr]:
        pop, seen = [], set()
        for t in seeds:
            if t not in seen:
                pop.append(t)
                seen.add(t)

        def mutant(i):  # point, then subtree mutation, each round over the seeds in order
            seed = seeds[i % len(seeds)]
            return self._point(seed) if (i // len(seeds)) % 2 == 0 else self._subtree(seed)

        depths = list(range(depth[0], depth[1] + 1))

        def ramped(i):  # grow and full alternating over the depths
            return random_tree(self.rng, depths[i % len(depths)], (i // len(depths)) % 2 == 0, operators=self.operators)

        self._fill(pop, seen, round(self.init_mutants * (self.pop_size - len(pop))), mutant, fill=False)
        self._fill(pop, seen, self.pop_size - len(pop), ramped, fill=True)
        return pop

    def _fill(self, pop: list[Expr], seen: set[Expr], n: int, draw, *, fill: bool) -> None:
        """Append ``n`` canonical trees ``draw(0), draw(1), ...`` to ``pop``, skipping duplicates and trees over
        ``max_size`` for up to ``100 * pop_size`` draws; then ``fill`` takes whatever comes, else it stops short."""
        tries, limit = 0, 100 * self.pop_size
        while n > 0 and (fill or tries < limit):
            t = canonical(draw(tries))
            tries += 1
            if (t in seen or t.size > self.max_size) and (tries < limit or not fill):
                continue
            pop.append(t)
            seen.add(t)
            n -= 1

    def _select(self) -> Expr:
        picks = [self.rng.randrange(len(self.pop)) for _ in range(self.tournament)]
        return self.pop[min(picks, key=lambda j: (self.fitness[j], j))]

    def _crossover(self, a: Expr, b: Expr) -> Expr:
        if self.crossover == "one-point":
            return self._one_point(a, b)
        pa, _ = self.rng.choice(list(subtrees(a)))
        _, sub = self.rng.choice(list(subtrees(b)))
        return replace_subtree(a, pa, sub)

    def _one_point(self, a: Expr, b: Expr) -> Expr:
        """Poli and Langdon's one-point crossover: a point drawn from the two trees' common region (the nodes at
        the same path in both whose ancestors have the same arities in both), below the root when there is one, and
        ``b``'s subtree there put in ``a``'s place: ``mul(A,B) x mul(C,D)`` gives ``mul(A,D)`` or ``mul(C,B)``."""
        region = list(common_region(a, b))
        path = self.rng.choice(region[1:] or region)
        return replace_subtree(a, path, subtree_at(b, path))

    def _subtree(self, a: Expr) -> Expr:
        pa, _ = self.rng.choice(list(subtrees(a)))
        fresh = random_tree(self.rng, self.rng.randint(1, 3), grow=True, operators=self.operators)
        return replace_subtree(a, pa, fresh)

    def _point(self, a: Expr) -> Expr:
        pa, node = self.rng.choice(list(subtrees(a)))
        pool = TERMINALS if not node.args else self.unary if ARITY[node.op] == 1 else BINARY
        op = self.rng.choice([o for o in pool if o != node.op])
        return replace_subtree(a, pa, Expr(op, node.args))

    def _insert(self, a: Expr) -> Expr:
        paths = list(subtrees(a))
        pa, node = self.rng.choice(paths[1:] or paths)  # not above the root: a unary op there mostly keeps the order
        op = self.rng.choice(self.operators)
        if ARITY[op] == 1:
            return replace_subtree(a, pa, Expr(op, (node,)))
        other = Expr(self.rng.choice(TERMINALS), ())
        return replace_subtree(a, pa, Expr(op, (node, other) if self.rng.random() < 0.5 else (other, node)))

    def _shrink(self, a: Expr) -> Expr:
        inner = [(p, n) for p, n in subtrees(a) if n.args]
        if not inner:
            return a
        pa, node = self.rng.choice(inner)
        return replace_subtree(a, pa, self.rng.choice(node.args))

    def _child(self) -> Expr:
        r = self.rng.random()
        parent = self._select()
        edges = self._edges
        if r < edges[0]:
            child = self._crossover(parent, self._select())
        elif r < edges[1]:
            child = self._subtree(parent)
        elif r < edges[2]:
            child = self._point(parent)
        elif r < edges[3]:
            child = self._insert(parent)
        elif r < edges[4]:
            child = self._shrink(parent)
        else:
            return parent
        child = canonical(child)
        return child if child.size <= self.max_size else parent

    # -- ask / tell --------------------------------------------------------------------------------------------
    def has_next(self) -> bool:
        return self.generation < self.generations

    def ask(self) -> list[Expr]:
        self.asked.update(self.pop)
        return list(self.pop)

    def _new_child(self, batch: set[Expr]) -> Expr:
        """A child (``_child``) that is neither asked before nor in ``batch``, re-mutated until it is (or
        ``retries`` attempts have been made: then it is kept as it is, and the trial log answers it)."""
        child = self._child()
        for k in range(self.retries):
            if child not in self.asked and child not in batch:
                break
            m = canonical(self._point(child) if k % 2 == 0 else self._subtree(child))
            child = m if m.size <= self.max_size else child
        return child

    def _tell_plus(self, f: list[float]) -> None:
        merged = {t: v for t, v in self.survivors}
        for t, v in zip(self.pop, f):
            merged.setdefault(t, v)
        ranked = sorted(merged.items(), key=lambda tv: (tv[1], tv[0].text))
        finite = [tv for tv in ranked if math.isfinite(tv[1])]
        self.survivors = (finite if len(finite) >= 2 else ranked)[: self.pop_size]
        self.pop = [t for t, _ in self.survivors]  # the parents _select draws from
        self.fitness = [v for _, v in self.survivors]
        nxt: list[Expr] = []
        batch: set[Expr] = set()
        while len(nxt) < self.pop_size * (self.screen.factor if self.screen else 1):
            child = self._new_child(batch)
            batch.add(child)
            nxt.append(child)
        self.pop = self.screen.pick(nxt, self.pop_size) if self.screen else nxt

    def tell(self, objectives: np.ndarray, feasible: np.ndarray) -> None:
        f = [float(o[0]) if ok and math.isfinite(float(o[0])) else math.inf
             for o, ok in zip(np.asarray(objectives), np.asarray(feasible))]  # fmt: skip
        self.fitness = f
        if self.screen is not None:
            self.screen.tell(self.pop, f)
        for t, v in zip(self.pop, f):
            if math.isfinite(v) and (t.text not in self.best or v < self.best[t.text][1]):
                self.best[t.text] = (t, v)
        self.generation += 1
        if not self.has_next():
            return
        if self.survival == "plus":
            return self._tell_plus(f)
        order = sorted(range(len(self.pop)), key=lambda j: (f[j], self.pop[j].text))
        nxt, seen = [], set()
        for j in order:
            if len(nxt) >= self.elitism or not math.isfinite(f[j]):
                break
            if self.pop[j] not in seen:
                nxt.append(self.pop[j])
                seen.add(self.pop[j])
        if self.screen is None:
            nxt += [self._child() for _ in range(self.pop_size - len(nxt))]
        else:
            n = self.pop_size - len(nxt)
            nxt += self.screen.pick([self._child() for _ in range(n * self.screen.factor)], n)
        self.pop = nxt

    def front(self) -> list[tuple[Expr, np.ndarray]]:
        """The best tree seen (a single objective: the front is its minimum)."""
        if not self.best:
            return []
        tree, v = min(self.best.values(), key=lambda tv: (tv[1], tv[0].text))
        return [(tree, np.array([v]))]


def builtin_seeds(tree_operators: str) -> tuple[str, ...]:
    """The first generation's own seeds for a grammar: ``SEEDS``, and RIA with the relative operators."""
    return SEEDS + (RIA_TREE,) if tree_operators == "relative" else SEEDS


def gp_optimizer(cfg: SearchConfig, space: SymbolicSpace, **settings) -> GPOptimizer:
    """The GP that ``--space symbolic`` runs for ``cfg`` (its size, optimizer seed, grammar, seeds and first
    generation: the built-in seeds, then ``cfg.tree_seeds``; its ``tree_rates``); ``settings`` overrides the GP's
    other settings (``tournament``, ``p_crossover``...)."""
    if cfg.tree_screen and "screen" not in settings:
        raise ValueError("tree_screen needs the search's runner for the phenotypes: pass screen=Screen(...)")
    settings = {**cfg.gp_rates(), **settings}
    return GPOptimizer(space, pop_size=cfg.pop_size, generations=cfg.generations, seed=cfg.optimizer_seed,
                       max_size=cfg.tree_size, operators=OPERATOR_SETS[cfg.tree_operators],
                       init_mutants=cfg.tree_init_mutants, survival=cfg.tree_survival,
                       seeds=builtin_seeds(cfg.tree_operators) + tuple(cfg.tree_seeds), **settings)  # fmt: skip


def screen_for(cfg: SearchConfig, runner) -> Screen:
    """The screen of ``cfg.tree_screen`` (> 0): phenotypes on the runner's model, rows drawn with the optimizer's
    seed."""
    return Screen(MaskPhenotype(runner, seed=cfg.optimizer_seed), cfg.tree_screen)


def symbolic_stage(cfg: SearchConfig, runner):
    """The stage builder of ``--space symbolic`` (``stages.STAGES``)."""

    def build(prev):
        space = SymbolicSpace("symbolic", cfg, len(runner.linears))
        if not cfg.tree_screen:
            return space, gp_optimizer(cfg, space)
        return space, gp_optimizer(cfg, space, screen=screen_for(cfg, runner))

    return build


__all__ = ["SymbolicSpace", "GPOptimizer", "gp_optimizer", "builtin_seeds", "symbolic_stage", "screen_for", "SEEDS",
           "RIA_TREE", "OPERATOR_SETS"]
