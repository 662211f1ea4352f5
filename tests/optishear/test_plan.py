"""The plan and the search configuration: one codec to JSON and to the command line, for every field."""

import argparse
from dataclasses import fields, replace

import pytest
from optishear import Plan
from optishear.cli import build_parser
from optishear.search import SearchConfig

# A value different from the default for every field, of the field's own type.
PLAN_VALUES = dict(metric="w:row*sqrt,x:none*log", sparsity=0.6, structure="2:4", block_sparsity=[0.4, 0.6, 0.125],
                   owl_m=7.0, owl_lambda=0.05, targets=["mlp.*", "3.self_attn.q_proj"], ignore=["*down_proj"],
                   stats="dense", calib="some/dir with space/wiki.valid.raw", nsamples=3, seqlen=96, seed=11,
                   batch_size=5, update="sparsegpt", grad_dtype="bfloat16",
                   module_sparsity={"attn": [0.25, 0.5], "mlp": [0.5, 0.75]}, structured=True, rate=0.45,
                   importance="wanda-sp", layer_rates={"attention": [0.25, 0.5], "mlp": [0.125, 0.5]})  # fmt: skip
SEARCH_VALUES = dict(space="metric-then-blocks", algorithm="nsga2", objective="fro", tradeoff=True,
                     sparsity_levels=[0.3, 0.55], pop_size=7, generations=3, band=0.1, step=0.025, mutation_eta=9.5,
                     eliminate_duplicates=True, population="off", objective_windows=0, objective_seqlen=64,
                     validate_top=2, validate_windows=5, validate_seqlen=128, max_failures=3,
                     tree_size=9, operators="llm", operator_model="some/instruct model", operator_temperature=0.0,
                     mlp_steps=8, seed_adaptive=False, tree_operators="relative", search_seed=3,
                     tree_init_mutants=0.25, tree_survival="plus",
                     tree_seeds=["mul(W,G)", "mul(W,add(G,X))"], tree_screen=3,
                     tree_rates=["insert=0.15", "crossover=0.5"])  # fmt: skip


def _parse(cls, argv):
    p = argparse.ArgumentParser()
    cls.add_arguments(p)
    return p.parse_args(argv)


def test_every_field_has_a_test_value():
    assert set(PLAN_VALUES) == {f.name for f in fields(Plan)}
    assert set(SEARCH_VALUES) == {f.name for f in fields(SearchConfig)} - {"plan"}
    for name, value in PLAN_VALUES.items():
        assert value != getattr(Plan(), name), name
    for name, value in SEARCH_VALUES.items():
        assert value != getattr(SearchConfig(), name), name


@pytest.mark.parametrize("name", sorted(PLAN_VALUES))
def test_plan_round_trips_through_json_and_the_command_line_field_by_field(name):
    plan = replace(Plan(), **{name: PLAN_VALUES[name]})
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_args(_parse(Plan, plan.to_argv())) == plan


def test_plan_with_every_field_changed_round_trips():
    plan = Plan(**PLAN_VALUES)
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_args(_parse(Plan, plan.to_argv())) == plan
    owl = replace(plan, block_sparsity="owl", structure="unstructured")
    assert Plan.from_args(_parse(Plan, owl.to_argv())) == owl


@pytest.mark.parametrize("name", sorted(SEARCH_VALUES))
def test_search_config_round_trips_field_by_field(name):
    cfg = replace(SearchConfig(), **{name: SEARCH_VALUES[name]})
    assert SearchConfig.from_json(cfg.to_json()) == cfg
    assert SearchConfig.from_args(_parse(SearchConfig, cfg.to_argv())) == cfg


def test_search_config_with_every_field_changed_round_trips_through_the_real_cli():
    cfg = SearchConfig(plan=Plan(**{**PLAN_VALUES, "structure": "unstructured"}), **SEARCH_VALUES)
    assert SearchConfig.from_json(cfg.to_json()) == cfg
    args = build_parser().parse_args(["search", *cfg.to_argv(), "--out", "x"])
    assert SearchConfig.from_args(args) == cfg


def test_flags_left_out_keep_the_base_plan():
    """A recipe's plan is overridden only where the user says so."""
    base = Plan(**PLAN_VALUES)
    args = build_parser().parse_args(["prune", "--sparsity", "0.3"])
    assert Plan.from_args(args, base) == replace(base, sparsity=0.3)


def test_prune_and_search_share_the_plan_flags_and_validation():
    prune_flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["prune"]._actions}
    search_flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["search"]._actions}
    plan_fields = {f.name for f in fields(Plan)}
    assert plan_fields <= prune_flags and plan_fields <= search_flags
    for argv in (["prune", "--nsamples", "0"], ["search", "--nsamples", "0", "--out", "x"]):
        args = build_parser().parse_args(argv)
        plan = Plan.from_args(args)
        with pytest.raises(ValueError, match="nsamples must be a positive integer"):
            plan.validate()


def test_unknown_fields_and_old_stats_names():
    with pytest.raises(ValueError, match="unknown Plan fields"):
        Plan.from_dict({"metric": "wanda", "sparsty": 0.5})
    args = build_parser().parse_args(["search", "--stats", "fast", "--out", "x"])
    assert SearchConfig.from_args(args).plan.stats == "dense"
    with pytest.raises(ValueError, match="stats must be one of"):
        Plan(stats="fast").validate()
