"""Which stages a search runs, and the space and optimizer of each.

``STAGES[space_name](cfg, runner)`` gives the stages in order, each a function of the previous stage's chosen
solution (None for the first) that returns ``(space, optimizer)``. A new space is a new entry here (and its
name in ``config.SPACES``); the driver runs any space that has ``stage``, ``n_obj``, ``key(g)`` and
``decode(g) -> plan changes``, with any optimizer that has ``has_next / ask / tell / front / generation``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import SearchConfig
from .optimizers import PymooOptimizer
from .spaces import VectorSpace
from .symbolic import symbolic_stage

logger = logging.getLogger(__name__)

StageBuilder = Callable[[dict | None], tuple[object, object]]


def _block_sizes(runner) -> list[int]:
    return [sum(r.weight2d().numel() for r in refs) for refs in runner.linears]


def vector_stage(cfg: SearchConfig, runner, name: str, search_metric: bool, search_blocks: bool) -> StageBuilder:
    """A stage over ``VectorSpace`` with pymoo; in a second stage the fixed metric is the first stage's choice."""

    def build(prev: dict | None):
        fixed = prev["metric"] if prev is not None else cfg.plan.metric
        space = VectorSpace(name, cfg, _block_sizes(runner), search_metric, search_blocks, fixed)
        opt = PymooOptimizer(space, algorithm=cfg.algorithm, pop_size=cfg.pop_size, generations=cfg.generations,
                             mutation_eta=cfg.mutation_eta, eliminate_duplicates=cfg.eliminate_duplicates,
                             seed=cfg.optimizer_seed)  # fmt: skip
        return space, opt

    return build


def module_stage(cfg: SearchConfig, runner, name: str, search_metric: bool) -> StageBuilder:
    """A stage over ``ModuleSpace`` (per-block attention and MLP sparsities) with pymoo."""
    from .module_space import ModuleSpace, kind_sizes

    def build(prev: dict | None):
        fixed = prev["metric"] if prev is not None else cfg.plan.metric
        space = ModuleSpace(name, cfg, kind_sizes(runner.linears), search_metric, fixed)
        opt = PymooOptimizer(space, algorithm=cfg.algorithm, pop_size=cfg.pop_size, generations=cfg.generations,
                             mutation_eta=cfg.mutation_eta, eliminate_duplicates=cfg.eliminate_duplicates,
                             seed=cfg.optimizer_seed)  # fmt: skip
        return space, opt

    return build


def structured_stage(cfg: SearchConfig, runner) -> StageBuilder:
    """Per-block structured rates (``structured_space``) with the plain or the LLM-driven evolution."""

    def build(prev: dict | None):
        from ..methods.structured import Budget
        from ..models.surgery import family_for
        from .evolution import EvolutionOptimizer, PlainOperators
        from .structured_space import StructuredSpace

        space = StructuredSpace("structured", cfg, Budget(runner.model, family_for(runner.model),
                                                          cfg.plan.importance == "flap"))  # fmt: skip
        if cfg.seed_adaptive:
            space.seeds = [adaptive_genome(space, runner)]
        if cfg.operators == "llm":
            from .llm_operators import LLMOperators, load_chat_model

            chat = load_chat_model(cfg.operator_model, temperature=cfg.operator_temperature)
            ops = LLMOperators(space, chat, seed=cfg.optimizer_seed, rate=cfg.plan.rate)
        else:
            ops = PlainOperators(space)
        return space, EvolutionOptimizer(space, ops, pop_size=cfg.pop_size, generations=cfg.generations,
                                         seed=cfg.optimizer_seed)  # fmt: skip

    return build


def adaptive_genome(space, runner):
    """The genotype of the plan's importance with adaptive allocation (``layer_rates="adaptive"``), scored on the
    dense model's statistics (the runner's, collected once)."""
    from ..methods.structured import importance_needs, model_adaptive_allocation

    plan = runner.plan
    needs = importance_needs(plan.importance)
    stats = runner.dense_stats(needs) if needs else None
    runner.snapshot.restore()  # the scores read the dense weights
    g = space.genome_of(model_adaptive_allocation(runner.model, space.budget, stats, plan.importance, plan.rate))
    logger.info("structured search: the first population holds the adaptive allocation %s", space.key(g))
    return g


STAGES: dict[str, Callable[[SearchConfig, object], list[StageBuilder]]] = {
    "metric": lambda cfg, runner: [vector_stage(cfg, runner, "metric", True, False)],
    "blocks": lambda cfg, runner: [vector_stage(cfg, runner, "blocks", False, True)],
    "joint": lambda cfg, runner: [vector_stage(cfg, runner, "joint", True, True)],
    "metric-then-blocks": lambda cfg, runner: [vector_stage(cfg, runner, "metric", True, False),
                                               vector_stage(cfg, runner, "blocks", False, True)],
    "modules": lambda cfg, runner: [module_stage(cfg, runner, "modules", False)],
    "metric-modules": lambda cfg, runner: [module_stage(cfg, runner, "metric-modules", True)],
    "metric-then-modules": lambda cfg, runner: [vector_stage(cfg, runner, "metric", True, False),
                                                module_stage(cfg, runner, "modules", False)],
    "symbolic": lambda cfg, runner: [symbolic_stage(cfg, runner)],
    "structured": lambda cfg, runner: [structured_stage(cfg, runner)],
}  # fmt: skip


def stage_count(space: str) -> int:
    """How many stages ``space`` runs (the length of its ``STAGES`` entry; the builders are only listed, not run)."""
    return len(STAGES[space](SearchConfig(space=space), None))


__all__ = ["STAGES", "StageBuilder", "stage_count", "vector_stage", "module_stage", "structured_stage"]
