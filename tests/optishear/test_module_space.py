"""The per-module allocation space (attention vs MLP per block) and searches with the weight update on."""

import json

import numpy as np
import pytest
from optishear import Plan, prune
from optishear.models import model_linears
from optishear.plan import module_kind
from optishear.recipe import recipe_plan
from optishear.search import SearchConfig, search
from optishear.search.module_space import ModuleSpace, kind_sizes, repair_exact

from ..conftest import random_windows, tiny_gpt2, tiny_llama


def test_module_kind_names():
    assert module_kind("self_attn.q_proj") == "attn" and module_kind("attn.c_attn") == "attn"
    assert module_kind("attention.dense") == "attn"
    assert module_kind("mlp.down_proj") == "mlp" and module_kind("fc1") == "mlp" and module_kind("mlp.c_proj") == "mlp"


@pytest.mark.parametrize("seed", range(20))
def test_repair_holds_the_weighted_mean_exactly_with_unequal_sizes(seed):
    rng = np.random.RandomState(seed)
    sizes = np.array([884736] * 30 + [2654208] * 30)  # SmolLM2: attention 1/4 of a block's parameters
    o = repair_exact(rng.uniform(-3, 3, size=60), sizes, 2)
    assert (np.abs(o) <= 2).all()
    assert int((o * sizes).sum()) == 0


def test_repair_reaches_zero_where_the_largest_offset_alone_cannot():
    from optishear.search.spaces import repair_offsets

    sizes = np.array([1, 3])
    start = np.array([-2.0, 1.0])  # sum 1: the largest offset's step (size 3) overshoots to -2
    assert int((repair_offsets(start, sizes, 3) * sizes).sum()) == 1
    assert int((repair_exact(start, sizes, 3) * sizes).sum()) == 0


def _cfg(space, **kw):
    plan_kw = {k: kw.pop(k) for k in list(kw) if k in Plan.__dataclass_fields__}
    plan = Plan(**{**dict(nsamples=4, seqlen=32, batch_size=2, stats="dense"), **plan_kw})
    return SearchConfig(plan=plan, **{**dict(space=space, pop_size=6, generations=2, objective_windows=0,
                                             validate_top=2, band=0.1, step=0.05), **kw})  # fmt: skip


def test_module_space_decodes_to_exact_parameter_weighted_mean():
    model = tiny_llama(layers=3)
    sizes = kind_sizes(model_linears(model))
    assert sizes.shape == (3, 2) and sizes[0, 1] > sizes[0, 0] > 0
    cfg = _cfg("modules")
    space = ModuleSpace("modules", cfg, sizes, False, "wanda")
    X = space.seed_population(np.random.RandomState(0), 12, True)
    assert not X[0].any()
    assert space.decode(X[0])["module_sparsity"] is None
    for x in X[1:]:
        ms = space.decode(x)["module_sparsity"]
        if ms is None:
            continue
        weighted = sum(ms["attn"][i] * sizes[i, 0] + ms["mlp"][i] * sizes[i, 1] for i in range(3)) / sizes.sum()
        assert weighted == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("space", ["modules", "metric-modules", "metric-then-modules"])
def test_module_spaces_end_to_end_with_update_and_the_recipe_replays(tmp_path, space):
    calib = random_windows(4, 32)
    cfg = _cfg(space, update="sparsegpt")
    res = search(tiny_llama(layers=3), None, cfg, tmp_path / "run", windows=calib,
                 validation_windows=random_windows(2, 32, seed=3), progress=False)  # fmt: skip
    recipe = json.loads((tmp_path / "run" / "optishear_recipe.json").read_text())
    plan = recipe_plan(recipe)
    assert plan.update == "sparsegpt" and recipe["search"]["space"] == space
    trials = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert any(t["changes"].get("module_sparsity") for t in trials)
    model = tiny_llama(layers=3)
    replay = prune(model, plan=plan, windows=calib, keep_masks=True, progress=False)
    assert replay.mask_digest == recipe["mask_digest"]
    assert res.objective == pytest.approx(recipe["search"]["value"])
    if plan.module_sparsity is not None:  # achieved per-linear sparsities follow the allocation
        for refs in model_linears(model):
            for r in refs:
                want = plan.module_sparsity[module_kind(r.name)][r.block]
                assert abs(replay.layer_sparsity[r.full_name] - want) < 0.02


def test_module_sparsity_needs_unstructured_and_matching_blocks():
    with pytest.raises(ValueError, match="unstructured"):
        Plan(structure="2:4", module_sparsity={"attn": [0.5], "mlp": [0.5]}).validate()
    with pytest.raises(ValueError, match="decoder blocks"):
        prune(tiny_gpt2(), plan=Plan(module_sparsity={"attn": [0.5], "mlp": [0.5]}), windows=random_windows(2, 16),
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="module_sparsity"):
        SearchConfig(plan=Plan(module_sparsity={"attn": [0.5], "mlp": [0.5]}), space="modules").validate()


def test_population_hashes_decline_per_module_and_update_plans():
    """The kernels' population op knows masks at block sparsities only: a per-module or updated plan must not get a
    uniform plan's digest (the search would answer it with the uniform plan's objective)."""
    from optishear.search.runner import TrialRunner

    runner = TrialRunner(tiny_llama(layers=2), random_windows(4, 32), _cfg("modules"))
    base = runner.plan_for({"metric": "wanda"})
    assert runner.population_hashes([base]) is not None
    per_module = runner.plan_for({"metric": "wanda", "module_sparsity": {"attn": [0.4, 0.4], "mlp": [0.55, 0.55]}})
    assert runner.population_hashes([base, per_module]) is None
    assert runner.population_hashes([runner.plan_for({"metric": "wanda", "update": "sparsegpt"})]) is None
    runner.close()
