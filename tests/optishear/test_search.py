import json

import numpy as np
import pytest
import torch
from optishear import PruneConfig, model_linears, prune
from optishear.plan import Plan
from optishear.search import SearchConfig, TrialRunner, VectorSpace, repair_offsets, search
from optishear_kernels import MetricConfig, population_prune

from ..conftest import Killed, kill_after, random_windows, tiny_llama


PLAN_FIELDS = set(Plan.__dataclass_fields__)


def _cfg(**kw):
    base = dict(space="joint", pop_size=8, generations=3, nsamples=4, seqlen=32, batch_size=2, seed=0,
                objective_windows=0, validate_top=0, stats="dense")  # fmt: skip
    base.update(kw)
    plan = Plan(**{k: v for k, v in base.items() if k in PLAN_FIELDS})
    return SearchConfig(plan=plan, **{k: v for k, v in base.items() if k not in PLAN_FIELDS})


def _run_trial(runner, metric, blocks, known=None):
    return runner.run(runner.trial_plan(metric, blocks), known)


def _run(tmp_path, name, cfg, **kw):
    return search(tiny_llama(layers=4), None, cfg, tmp_path / name, windows=random_windows(4, 32), progress=False,
                  **kw)  # fmt: skip


def test_search_end_to_end_writes_every_output(tmp_path):
    res = _run(tmp_path, "run", _cfg())
    out = tmp_path / "run"
    for f in ("config.json", "trials.jsonl", "pareto.json", "history.json", "optishear_recipe.json", "search.png"):
        assert (out / f).is_file(), f
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) <= res.trials and res.distinct <= len(trials)
    assert sum(t["evaluated"] for t in trials) == res.distinct
    assert len(res.history) == 3 and res.history[-1]["best"] == pytest.approx(min(t["objective"] for t in trials))
    # Wanda at uniform sparsity is in the first population, so the search is never worse than Wanda.
    wanda = [t for t in trials if t["metric"] == MetricConfig().spec and len(set(t["block_sparsity"])) == 1]
    assert wanda and res.objective <= wanda[0]["objective"]
    assert abs(np.mean(res.block_sparsity) - 0.5) < 1e-12


def test_recipe_of_a_search_reproduces_its_model(tmp_path):
    """Statistics from the calibration windows, the objective on separate prompts (OptiShear's split)."""
    calib, prompts = random_windows(4, 32), random_windows(3, 24, seed=7)
    res = search(tiny_llama(layers=4), None, _cfg(space="metric", objective="kl"), tmp_path / "run", windows=calib,
                 objective_windows=prompts, progress=False)  # fmt: skip
    recipe = json.loads((tmp_path / "run" / "optishear_recipe.json").read_text())
    from optishear.objectives import DenseOutputs, reconstruction_error
    from optishear.recipe import recipe_plan

    model = tiny_llama(layers=4)
    dense = DenseOutputs(model, prompts, batch_size=2)
    prune(model, plan=recipe_plan(recipe), windows=calib, progress=False)
    assert reconstruction_error(model, dense, "kl") == pytest.approx(res.objective, rel=1e-6)
    assert reconstruction_error(model, DenseOutputs(tiny_llama(layers=4), calib), "kl") != pytest.approx(res.objective)


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    cfg = _cfg(generations=4)
    full = _run(tmp_path, "full", cfg)
    with pytest.raises(Killed):
        _run(tmp_path, "cut", cfg, on_trial=kill_after(7))
    lines = (tmp_path / "cut" / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 7  # every finished trial was on disk at the kill
    with pytest.raises(FileExistsError):
        _run(tmp_path, "cut", cfg)
    with (tmp_path / "cut" / "trials.jsonl").open("a") as f:
        f.write('{"stage": "joint", "key": "joint:0,1')  # a line cut short by a kill -9 mid-write
    rerun = []
    resumed = _run(tmp_path, "cut", cfg, resume=True, on_trial=rerun.append)
    done_keys = {json.loads(line)["key"] for line in lines}
    assert not done_keys & {r["key"] for r in rerun}, "a finished trial was evaluated again"
    assert (resumed.metric, resumed.block_sparsity, resumed.objective) == (full.metric, full.block_sparsity,
                                                                           full.objective)  # fmt: skip
    assert [h["best"] for h in resumed.history] == [h["best"] for h in full.history]
    assert resumed.pareto == full.pareto
    with pytest.raises(ValueError, match="different model, data or configuration"):
        _run(tmp_path, "cut", _cfg(generations=4, mutation_eta=20.0), resume=True)


def test_same_seed_same_search(tmp_path):
    a = _run(tmp_path, "a", _cfg(space="metric"))
    b = _run(tmp_path, "b", _cfg(space="metric"))
    assert (a.metric, a.objective, a.distinct) == (b.metric, b.objective, b.distinct)


DEDUPE_CLASSES = [
    # Per-row or global positive factors leave every per-row mask unchanged.
    [(0, 0, 0, 0), (1, 0, 0, 0), (4, 0, 0, 0), (5, 0, 0, 0), (6, 0, 0, 0), (0, 0, 1, 0), (0, 0, 4, 0), (0, 0, 5, 0),
     (0, 0, 6, 0), (1, 0, 4, 0)],
    # exp and softmax differ by a positive per-row factor (W side) or a global one (X side).
    [(0, 3, 0, 0), (0, 6, 0, 0), (1, 3, 0, 0)],
    [(0, 0, 0, 3), (0, 0, 0, 6), (0, 0, 4, 3)],
    # Equal power ratios: |W|^2 * X^(1/2) ranks like |W| * X^(1/4).
    [(0, 2, 0, 0), (0, 0, 0, 1)],
    # 1/X_j * (sqrt X_j)^2 = 1: the X side is constant, so this is magnitude.
    [(0, 0, 2, 2), (1, 0, 2, 2)],
    [(2, 0, 0, 0)],
    [(0, 1, 0, 0)],
    [(0, 4, 0, 0)],
]


def test_dedupe_classes_share_masks_and_differ_between_classes():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(24, 96, generator=g), torch.rand(96, generator=g) * 3 + 0.1
    class_masks = []
    for cls in DEDUPE_CLASSES:
        masks = population_prune(w, x, [MetricConfig(*c) for c in cls], [0.5] * len(cls))
        for i in range(1, len(cls)):
            assert torch.equal(masks[0], masks[i]), (cls[0], cls[i])
        class_masks.append(masks[0])
    for i in range(len(class_masks)):
        for j in range(i + 1, len(class_masks)):
            assert not torch.equal(class_masks[i], class_masks[j]), (DEDUPE_CLASSES[i][0], DEDUPE_CLASSES[j][0])


def test_trial_runner_shares_one_evaluation_per_mask_class():
    model, windows = tiny_llama(), random_windows(4, 32)
    runner = TrialRunner(model, windows, _cfg(space="metric"))
    known = {}
    a = _run_trial(runner, "w:none*none,x:none*none", [0.5, 0.5], known)
    b = _run_trial(runner, "w:row*none,x:total*none", [0.5, 0.5], known)
    c = _run_trial(runner, "w:none*sqrt,x:none*none", [0.5, 0.5], known)
    assert a["evaluated"] and not b["evaluated"] and c["evaluated"]
    assert a["mask_hash"] == b["mask_hash"] != c["mask_hash"] and a["objective"] == b["objective"]


@pytest.mark.parametrize("limit", [1, 2])
def test_repair_keeps_the_mean_sparsity_exact_for_every_candidate(limit):
    rng = np.random.RandomState(0)
    cfg = _cfg(space="blocks", band=0.05 * limit, step=0.05)
    enc = VectorSpace("blocks", cfg, [100] * 30, False, True, "wanda")
    X = enc.repair(rng.uniform(-limit - 1, limit + 1, size=(500, 30)))
    for x in X:
        d = enc.decode(x)
        blocks, target = d["block_sparsity"], d["target"]
        assert abs(np.mean(blocks) - target) < 1e-12
        assert all(abs(b - target) <= cfg.band + 1e-12 for b in blocks)
    assert repair_offsets(np.array([1, 1, 1]), np.array([1, 1, 1]), 1).sum() == 0


def test_bad_search_config():
    for kw, match in [(dict(space="everything"), "space must be"), (dict(sparsity=1.2), "sparsity"),
                      (dict(structure="2:4", space="blocks"), "only --space metric"),
                      (dict(objective="l1"), "objective"), (dict(pop_size=0), "pop_size")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _cfg(**kw).validate()


def test_owl_block_sparsity_mean_is_the_target():
    from optishear.allocation import owl_block_sparsity

    s = owl_block_sparsity([0.01, 0.05, 0.02, 0.03], 0.5, 0.08)
    assert abs(np.mean(s) - 0.5) < 1e-12 and max(s) - min(s) == pytest.approx(0.16)
    assert s[1] == min(s)  # the block with most outliers is pruned least
    model = tiny_llama(layers=3)
    res = prune(model, plan=PruneConfig(block_sparsity="owl", nsamples=4, seqlen=32, batch_size=2),
                windows=random_windows(), progress=False)  # fmt: skip
    assert len(set(res.block_sparsity)) > 1 and abs(np.mean(res.block_sparsity) - 0.5) < 1e-9
    for i, refs in enumerate(model_linears(model)):
        for r in refs:
            assert ((r.weight2d() == 0).sum(1) == int(r.in_features * res.block_sparsity[i])).all()


def test_population_op_hashes_agree_with_trials(tmp_path):
    """With the population op on, mask classes are known before pruning; the search is unchanged."""
    off = _run(tmp_path, "off", _cfg(space="metric", population="off"))
    on = _run(tmp_path, "on", _cfg(space="metric", population="on"))
    assert (on.metric, on.objective, on.distinct, on.pareto) == (off.metric, off.objective, off.distinct, off.pareto)
    read = lambda d: [json.loads(line) for line in (tmp_path / d / "trials.jsonl").read_text().splitlines()]  # noqa
    assert [(r["mask_hash"], r["evaluated"]) for r in read("on")] == [(r["mask_hash"], r["evaluated"])
                                                                       for r in read("off")]  # fmt: skip
    runner = TrialRunner(tiny_llama(), random_windows(4, 32), _cfg(space="metric"))
    members = [("w:none*none,x:none*none", [0.5, 0.4]), ("w:row*sqrt,x:col*log", [0.3, 0.6])]
    hashes = runner.population_hashes([runner.trial_plan(m, b) for m, b in members])
    assert hashes == [_run_trial(runner, m, b)["mask_hash"] for m, b in members]


def test_faithful_statistics_kl_objective_and_tradeoff_front(tmp_path):
    fast = _run(tmp_path, "fast", _cfg(space="metric", generations=1, objective="kl"))
    faithful = _run(tmp_path, "faithful", _cfg(space="metric", generations=1, objective="kl", stats="sequential"))
    read = lambda d: {json.loads(line)["metric"]: json.loads(line)["objective"]  # noqa: E731
                      for line in (tmp_path / d / "trials.jsonl").read_text().splitlines()}  # fmt: skip
    wanda = MetricConfig().spec
    assert read("fast")[wanda] != read("faithful")[wanda]  # block 1's statistics see pruned block 0
    assert fast.objective > 0 and faithful.objective > 0
    front = _run(tmp_path, "front", _cfg(space="metric", tradeoff=True, sparsity_levels=[0.3, 0.5, 0.7],
                                         pop_size=12, generations=3)).pareto  # fmt: skip
    sparsities = sorted({round(p["sparsity"], 2) for p in front})
    assert len(sparsities) >= 2
    by_s = {round(p["sparsity"], 2): p["objective"] for p in front}
    assert by_s[sparsities[0]] < by_s[sparsities[-1]]  # more sparsity costs more error on the front


def test_metric_genotypes_are_canonical_and_repeated_trials_are_free(tmp_path):
    res = _run(tmp_path, "run", _cfg(space="metric", pop_size=8, generations=6))
    logged = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert res.trials == 48
    for t in logged:
        cfg = MetricConfig.parse(t["metric"])
        assert cfg.canonical() == cfg, t["metric"]
    # Offspring may repeat known configurations: those trials are answered from the log, never pruned again.
    assert len({t["key"] for t in logged}) == len(logged) < res.trials
    assert res.distinct == sum(t["evaluated"] for t in logged)
    enc = VectorSpace("metric", _cfg(space="metric"), [1, 1], True, False, "wanda")
    X = enc.repair(np.array([[1.0, 6, 5, 6], [0, 2, 0, 2], [2.4, 0.6, 2, 1.2]]))
    assert X.tolist() == [[0, 3, 0, 3], [0, 0, 0, 0], [2, 1, 2, 1]]


def test_finalists_are_chosen_on_held_out_prompts_and_resume_reads_them_back(tmp_path):
    calib, prompts, held_out = random_windows(4, 32), random_windows(2, 24, seed=7), random_windows(3, 32, seed=9)
    cfg = _cfg(space="metric", pop_size=8, generations=3, validate_top=3)

    def run():
        return search(tiny_llama(layers=4), None, cfg, tmp_path / "run", windows=calib, objective_windows=prompts,
                      validation_windows=held_out, resume=(tmp_path / "run").exists(), progress=False)  # fmt: skip

    res = run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    trials = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    wanda = next(t for t in trials if t["metric"] == MetricConfig().spec)
    best3 = sorted({t["mask_hash"]: t["objective"] for t in trials}.items(), key=lambda kv: kv[1])[:3]
    assert {v["mask_hash"] for v in lines} == {h for h, _ in best3} | {wanda["mask_hash"]}
    chosen = min(lines, key=lambda v: v["validation"])
    assert (res.metric, res.validation, res.objective) == (chosen["metric"], chosen["validation"], chosen["objective"])
    # The held-out error is what the recipe's model shows on those prompts.
    from optishear.objectives import DenseOutputs, reconstruction_error
    from optishear.recipe import recipe_plan

    model = tiny_llama(layers=4)
    dense = DenseOutputs(model, held_out, batch_size=2)
    prune(model, plan=recipe_plan(res.recipe), windows=calib, progress=False)
    assert reconstruction_error(model, dense, cfg.objective) == pytest.approx(res.validation, rel=1e-6)
    again = run()  # resumed: nothing evaluated again, same answer
    assert len((tmp_path / "run" / "validation.jsonl").read_text().splitlines()) == len(lines)
    assert (again.metric, again.validation) == (res.metric, res.validation)
