"""A search's configuration: the base plan it varies, and how it searches."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import codec
from ..codec import opt
from ..plan import Plan, check_sparsity

SPACES = ("metric", "blocks", "joint", "metric-then-blocks", "modules", "metric-modules", "metric-then-modules",
          "symbolic", "structured")
ROW_METRIC_SPACES = ("metric", "symbolic")  # spaces that search the metric only (any structure, fixed blocks)
OPERATORS = ("ga", "llm")
TREE_OPERATORS = ("pruner-zero", "relative")
TREE_SURVIVALS = ("generational", "plus")  # the symbolic GP's survival (symbolic.GPOptimizer)
# the symbolic GP's variation probabilities and their defaults (``tree_rates``; symbolic.GPOptimizer's p_<name>)
TREE_RATES = {"crossover": 0.7, "subtree": 0.15, "point": 0.1, "insert": 0.0, "shrink": 0.0}
ALGORITHMS = ("nsga3", "nsga2")
OBJECTIVES = ("kl", "fro")


def search_plan_defaults() -> Plan:
    """The plan a search starts from when none is given: statistics from 32 x 512 calibration windows (what the
    README's evaluations use, so a searched metric is judged with the statistics it will be applied with),
    computed once from the dense model (``stats="dense"``; ``sequential`` runs the walk in every trial)."""
    return Plan(nsamples=32, seqlen=512, batch_size=4, stats="dense")


def _nonneg_int(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")


def _pos_int(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass
class SearchConfig:
    """A search run.

    Attributes:
        plan: the base plan: what every trial shares (structure, targets/ignore, statistics mode, calibration)
            and what the space varies from (``plan.metric`` is the fixed metric of the ``blocks`` space,
            ``plan.sparsity`` the target mean sparsity, held exactly by the repair).
        space: ``metric`` (the 2,401-point meta metric), ``blocks`` (one sparsity per block, the plan's metric),
            ``joint`` (both at once) or ``metric-then-blocks`` (the paper's order); ``modules`` (one sparsity per block
            and module kind, attention vs MLP), ``metric-modules`` (with the metric, at once) or
            ``metric-then-modules``; ``symbolic`` (genetic programming over expression trees on W, G and X,
            Pruner-Zero's search: ``search/symbolic.py``).
        algorithm: ``nsga3`` (OptiShear v1) or ``nsga2`` (the paper's later version), both pymoo's.
        objective: ``kl`` (mean KL(dense || pruned) of next-token distributions, the default: on SmolLM2 it ranks
            metrics as perplexity does, where ``fro`` inverted two of three, see the README) or ``fro``
            (Frobenius norm of the logits difference, OptiShear v1).
        objective_windows, objective_seqlen: the prompts the objective compares dense and pruned outputs on,
            drawn from the calibration text apart from the statistics windows (OptiShear's "example prompts");
            0 windows: the calibration windows themselves.
        tradeoff: add the mean sparsity as a second objective over ``sparsity_levels`` (error vs sparsity).
        band, step: block sparsities lie on ``target + step * j`` within ``target +- band``.
        validate_top, validate_windows, validate_seqlen: after each stage, the ``validate_top`` best distinct
            candidates and the stage's seeded baseline are scored again on ``validate_windows`` held-out prompts
            (a third draw, disjoint from the other two), and the lowest held-out error is chosen. 0: off.
        mutation_eta: polynomial mutation's distribution index (smaller: bolder steps).
        eliminate_duplicates: pymoo's duplicate elimination (offspring must differ from the population). Off by
            default: an offspring that repeats a known configuration is answered from the trial log for free.
        population: ``on``: each generation's masks come from the kernels' population op first, so that trials
            whose masks were seen are answered without pruning; ``auto``: on when the kernels run in Triton;
            ``off``. On the CPU twin the op costs as much as pruning each member.
        max_failures: trials that fail (a non-finite objective, say) are recorded with ``status: failed`` and
            treated as infeasible by the optimizer; past this many the search stops with an error. (A symbolic tree
            whose scores overflow is infeasible without counting here.)
        tree_size: the symbolic space's size limit, in nodes of a tree's canonical form.
        tree_operators: the symbolic space's operators: ``pruner-zero`` (Pruner-Zero's, the default), or
            ``relative``: those and the row and column relative importance ``rsn``, ``csn``, ``rcn``
            (``optishear_kernels.expr``), with RIA written with them as one more seed.
        tree_init_mutants: the fraction of the symbolic search's first generation, beyond its seeds, made of one
            mutation of a seed (point and subtree mutation alternating, round-robin over the seeds); the rest are
            ramped half-and-half trees. 0 (the default): Pruner-Zero's initialisation, every non-seed tree random.
        tree_survival: the symbolic GP's survival: ``generational`` (the default: each generation replaces the
            last but for ``elitism`` trees) or ``plus``: (mu + lambda), the parents are the best distinct trees so
            far and every child is new to the run, as in the meta-metric search's GA (``symbolic.GPOptimizer``).
        tree_seeds: trees (text form) the symbolic search's first generation holds after its built-in seeds (Wanda,
            magnitude, RIA's exponent, Pruner-Zero's metric, and RIA with ``relative``): trees found on another model
            or published elsewhere. Each must parse, use only the ``tree_operators`` grammar's operators, fit
            ``tree_size`` and be new: a tree whose canonical form is a built-in seed or an earlier entry is refused.
        tree_rates: the symbolic GP's variation probabilities as ``name=value`` entries, each name one of
            ``TREE_RATES`` (crossover, subtree, point, insert, shrink mutation); a name not given keeps its default
            (``TREE_RATES``); the probabilities must sum to at most 1 (the rest: a copy of the parent).
        tree_screen: the symbolic GP breeds this many candidates per child it evaluates and evaluates the ones
            whose masks on a sample of rows are nearest to the best trees evaluated (``screen.py``); 0 (the
            default): off, every child bred is evaluated.
        operators, operator_model, operator_temperature, mlp_steps: ``space="structured"`` only: the evolutionary
            operators (``ga``: tournament, block-wise crossover, level swaps; ``llm``: an instruct model proposes
            parents, crossovers and mutations, as Self-Pruner does), the operator model (a local instruct model; None:
            the packaged SmolLM2-135M-Instruct), its sampling temperature (0: greedy), and the MLP grid (levels of
            1/mlp_steps of the channels).
        seed_adaptive: ``space="structured"``: the first population holds, beside the uniform allocation, the
            adaptive one (``layer_rates="adaptive"``: FLAP's ranking of every head and channel across blocks by
            standardized scores, from the dense statistics), rounded to the grid; its variants start from either.
            Off: every first-population member starts from the uniform allocation (the searches before this option).
        search_seed: the optimizer's seed (its first population, its variation, the LLM operators' sampling). None:
            the plan's ``seed``, which also draws the statistics, objective and held-out windows; set it to rerun the
            same objective (same windows) with another optimizer trajectory.
    """

    plan: Plan = field(default_factory=search_plan_defaults, metadata={"nested": Plan})
    space: str = opt("metric", choices=SPACES, type=str, help="what the search varies")
    algorithm: str = opt("nsga3", choices=ALGORITHMS, type=str, help="pymoo algorithm")
    objective: str = opt("kl", choices=OBJECTIVES, type=str, help="reconstruction error against the dense model")
    tradeoff: bool = opt(False, kind="bool", help="second objective: sparsity (error vs sparsity front)")
    sparsity_levels: list[float] = opt(kind="list", type=float, help="sparsity levels of --tradeoff",
                                       default_factory=lambda: [0.4, 0.45, 0.5, 0.55, 0.6])  # fmt: skip
    pop_size: int = opt(20, type=int, help="population size")
    generations: int = opt(10, type=int, help="generations")
    band: float = opt(0.05, type=float, help="block sparsities within target +- band")
    step: float = opt(0.05, type=float, help="block sparsity grid step")
    mutation_eta: float = opt(5.0, type=float, help="polynomial mutation index")
    eliminate_duplicates: bool = opt(False, kind="bool", help="offspring must be new (pymoo's default)")
    population: str = opt("auto", choices=("auto", "on", "off"), type=str, help="kernels' population op")
    objective_windows: int = opt(4, type=int, help="objective prompts (0: the calibration windows)")
    objective_seqlen: int = opt(256, type=int, help="tokens per objective prompt")
    validate_top: int = opt(4, type=int, help="held-out finalists per stage (0: none)")
    validate_windows: int = opt(16, type=int, help="held-out prompts")
    validate_seqlen: int = opt(512, type=int, help="tokens per held-out prompt")
    max_failures: int = opt(10, type=int, help="failed trials tolerated before the search stops")
    tree_size: int = opt(17, type=int, help="symbolic space: most nodes a tree may have")
    tree_operators: str = opt("pruner-zero", choices=TREE_OPERATORS, type=str,
                              help="symbolic space: Pruner-Zero's operators, or with the row/column relative ones "
                              "(rsn, csn, rcn) and RIA as a seed")  # fmt: skip
    tree_init_mutants: float = opt(0.0, type=float, help="symbolic space: fraction of the first generation, "
                                   "beyond the seeds, made of one mutation of a seed (0: all ramped "
                                   "half-and-half)")  # fmt: skip
    tree_survival: str = opt("generational", choices=TREE_SURVIVALS, type=str,
                             help="symbolic space: generational (elitism 2), or plus: the best trees so far breed "
                             "and every child is a tree not yet scored")  # fmt: skip
    tree_seeds: list[str] = opt(kind="list", type=str, default_factory=list,
                                help="symbolic space: more trees for the first generation, after the built-in seeds "
                                "(e.g. trees found on another model)")  # fmt: skip
    tree_rates: list[str] = opt(kind="list", type=str, default_factory=list,
                                help="symbolic space: variation probabilities, name=value for crossover, subtree, "
                                "point, insert, shrink (default crossover=0.7 subtree=0.15 point=0.1)")  # fmt: skip
    tree_screen: int = opt(0, type=int, help="symbolic space: breed K candidates per child evaluated and evaluate "
                           "those whose sampled masks are nearest the best evaluated trees (0: off)")
    operators: str = opt("ga", choices=OPERATORS, type=str, help="structured: plain GA or LLM-driven operators")
    operator_model: str | None = opt(None, type=str, help="structured: local instruct model for --operators llm "
                                     "(default: the packaged SmolLM2-135M-Instruct)")  # fmt: skip
    operator_temperature: float = opt(0.7, type=float, help="structured: LLM sampling temperature (0: greedy)")
    mlp_steps: int = opt(16, type=int, help="structured: MLP levels per block (steps of 1/mlp_steps of the channels)")
    seed_adaptive: bool = opt(True, kind="bool", help="structured: the first population holds the importance's "
                              "adaptive allocation (FLAP's) beside the uniform one")  # fmt: skip
    search_seed: int | None = opt(None, type=int, help="the optimizer's seed (default: --seed, which also draws the "
                                  "windows): another search trajectory on the same objective")  # fmt: skip

    @property
    def optimizer_seed(self) -> int:
        """The seed of the optimizer: ``search_seed``, else the plan's."""
        return self.plan.seed if self.search_seed is None else self.search_seed

    def validate(self) -> None:
        if not isinstance(self.plan, Plan):
            raise ValueError(f"plan must be a Plan, got {type(self.plan).__name__}")
        self.plan.validate()
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if (self.space == "structured") != bool(self.plan.structured):
            raise ValueError("--space structured searches structured per-block rates and needs a structured plan "
                             "(plan.structured=True; the CLI sets it), and a structured plan needs --space structured")
        if self.operators not in OPERATORS:
            raise ValueError(f"operators must be one of {OPERATORS}, got {self.operators!r}")
        if self.search_seed is not None:
            _nonneg_int(self.search_seed, "search_seed")
        if not 0.0 <= self.tree_init_mutants <= 1.0:
            raise ValueError(f"tree_init_mutants is a fraction in [0, 1], got {self.tree_init_mutants}")
        if self.tree_screen != 0 and (not isinstance(self.tree_screen, int) or self.tree_screen < 2):
            raise ValueError(f"tree_screen is 0 (off) or at least 2 candidates per child, got {self.tree_screen}")
        if self.tree_screen and self.space != "symbolic":
            raise ValueError(f"tree_screen screens the symbolic search's children; --space {self.space} has none")
        if self.tree_survival not in TREE_SURVIVALS:
            raise ValueError(f"tree_survival must be one of {TREE_SURVIVALS}, got {self.tree_survival!r}")
        if self.tree_operators not in TREE_OPERATORS:
            raise ValueError(f"tree_operators must be one of {TREE_OPERATORS}, got {self.tree_operators!r}")
        if self.tree_seeds:
            self._check_tree_seeds()
        self.gp_rates()  # raises on a bad tree_rates entry
        if self.space == "structured":
            _pos_int(self.mlp_steps, "mlp_steps")
            if self.plan.layer_rates is not None and self.plan.layer_rates != "uniform":
                raise ValueError("--space structured searches the per-block rates: the plan must not fix them "
                                 "(layer_rates uniform)")  # fmt: skip
            if not self.operator_temperature >= 0:
                raise ValueError(f"operator_temperature must be >= 0, got {self.operator_temperature}")
            if self.pop_size < 2:
                raise ValueError(f"the structured search needs pop_size >= 2, got {self.pop_size}")
        if self.plan.nm is not None and self.space not in ROW_METRIC_SPACES:
            raise ValueError("N:M fixes every block's sparsity: only --space metric or symbolic applies")
        if self.space == "symbolic" and self.tradeoff:
            raise ValueError("--tradeoff searches sparsity levels, which the symbolic space does not: drop one")
        if self.plan.module_sparsity is not None and self.space not in ROW_METRIC_SPACES:
            raise ValueError(f"--space {self.space} searches the sparsities: the plan must not fix module_sparsity")
        if self.plan.block_sparsity is not None and self.space not in ROW_METRIC_SPACES:
            raise ValueError(f"--space {self.space} searches the block sparsities: the plan must not fix them")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.population not in ("auto", "on", "off"):
            raise ValueError(f"population must be auto, on or off, got {self.population!r}")
        if not self.mutation_eta > 0:
            raise ValueError(f"mutation_eta must be > 0, got {self.mutation_eta}")
        if not (self.step > 0 and self.band >= 0):
            raise ValueError(f"band must be >= 0 and step > 0, got band={self.band}, step={self.step}")
        s = self.plan.sparsity
        if s - self.band < 0 or s + self.band >= 1:
            raise ValueError(f"sparsity +- band must stay in [0, 1): {s} +- {self.band}")
        for name in ("objective_windows", "validate_top", "max_failures"):
            _nonneg_int(getattr(self, name), name)
        for name in ("pop_size", "generations", "objective_seqlen", "validate_windows", "validate_seqlen", "tree_size"):
            _pos_int(getattr(self, name), name)
        if self.tradeoff:
            if not self.sparsity_levels:
                raise ValueError("--tradeoff needs at least one sparsity level")
            for lv in self.sparsity_levels:
                check_sparsity(lv, "sparsity_levels")
                if self.space != "metric" and (lv - self.band < 0 or lv + self.band >= 1):
                    raise ValueError(f"sparsity level {lv} +- band {self.band} leaves [0, 1)")

    def gp_rates(self) -> dict[str, float]:
        """``tree_rates`` with the defaults for the names not given, as ``GPOptimizer``'s ``p_<name>`` keywords."""
        rates = dict(TREE_RATES)
        given = set()
        for i, entry in enumerate(self.tree_rates):
            name, eq, value = str(entry).partition("=")
            name = name.strip()
            if not eq or name not in TREE_RATES:
                raise ValueError(f"tree_rates[{i}] {entry!r}: expected name=value with name one of "
                                 f"{', '.join(TREE_RATES)}")  # fmt: skip
            if name in given:
                raise ValueError(f"tree_rates[{i}] {entry!r}: {name} is given twice")
            try:
                rates[name] = float(value)
            except ValueError:
                raise ValueError(f"tree_rates[{i}] {entry!r}: {value.strip()!r} is not a number") from None
            if not 0.0 <= rates[name] <= 1.0:
                raise ValueError(f"tree_rates[{i}] {entry!r}: a probability is in [0, 1]")
            given.add(name)
        if self.tree_rates and self.space != "symbolic":
            raise ValueError(f"tree_rates sets the symbolic GP's variation; --space {self.space} has none")
        if sum(rates.values()) > 1 + 1e-9:
            text = " ".join(f"{k}={v:g}" for k, v in rates.items())
            raise ValueError(f"tree_rates: the variation probabilities {text} sum to {sum(rates.values()):g}, "
                             "more than 1; lower one (names not given keep their defaults)")  # fmt: skip
        return {f"p_{k}": v for k, v in rates.items()}

    def _check_tree_seeds(self) -> None:
        from optishear_kernels import canonical, parse_expr

        from .symbolic import OPERATOR_SETS, builtin_seeds

        if self.space != "symbolic":
            raise ValueError(f"tree_seeds seeds the symbolic search; --space {self.space} has no trees: drop them")
        seen = {canonical(parse_expr(t)): f"the built-in seed {t}" for t in builtin_seeds(self.tree_operators)}
        allowed = set(OPERATOR_SETS[self.tree_operators])
        for i, text in enumerate(self.tree_seeds):
            where = f"tree_seeds[{i}] {text!r}"
            try:
                written = parse_expr(text)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            tree = canonical(written)
            extra = sorted({n.op for n in written.nodes() if n.args} - allowed)
            if extra:
                raise ValueError(f"{where} uses {', '.join(extra)}, which --tree-operators {self.tree_operators} "
                                 "does not have")  # fmt: skip
            if tree.size > self.tree_size:
                raise ValueError(f"{where} has {tree.size} nodes in its canonical form {tree.text}, over "
                                 f"--tree-size {self.tree_size}")  # fmt: skip
            if tree in seen:
                raise ValueError(f"{where} is {seen[tree]} (canonical form {tree.text})")
            seen[tree] = f"tree_seeds entry {text!r}"
        if len(seen) > self.pop_size:
            raise ValueError(f"{len(seen)} seeds (built-in and tree_seeds) do not fit a population of {self.pop_size}")

    @property
    def n_offsets(self) -> int:
        return int(round(self.band / self.step + 1e-9))

    # -- codec -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return codec.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        return codec.from_dict(cls, data)

    def to_json(self) -> str:
        return codec.to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "SearchConfig":
        return cls.from_dict(json.loads(text))

    def to_argv(self) -> list[str]:
        """Plan flags then search flags: ``optishear search <these> --out DIR`` runs this search."""
        return self.plan.to_argv() + codec.to_argv(self)

    @classmethod
    def add_arguments(cls, parser) -> None:
        Plan.add_arguments(parser, search_plan_defaults())
        codec.add_arguments(parser, cls, cls())

    @classmethod
    def from_args(cls, args, base: "SearchConfig | None" = None) -> "SearchConfig":
        base = base or cls()
        cfg = codec.from_args(cls, args, base)
        cfg.plan = Plan.from_args(args, base.plan)
        return cfg


__all__ = ["SearchConfig", "SPACES", "ALGORITHMS", "OBJECTIVES", "OPERATORS", "TREE_OPERATORS",
           "search_plan_defaults"]
