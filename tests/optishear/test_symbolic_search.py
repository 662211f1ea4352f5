"""The symbolic space: GP over canonical trees, seeded and deterministic, resumable with its gradient cache."""

import json

import numpy as np
import pytest
from optishear import prune
from optishear.plan import Plan
from optishear.recipe import recipe_plan
from optishear.search import SearchConfig, search
from optishear.search.config import TREE_OPERATORS
from optishear.search.manifest import ADDED_LATER, manifest_differences
from optishear.search.symbolic import (OPERATOR_SETS, RIA_TREE, SEEDS, GPOptimizer, SymbolicSpace, common_region,
                                       gp_optimizer, replace_subtree, subtree_at, subtrees)
from optishear_kernels import Expr, canonical, parse_expr
from optishear_kernels.expr import ARITY, TERMINALS

from bench.gp_neighbours import point as point_neighbours

from ..conftest import Killed, kill_after, random_windows, tiny_llama

PLAN_FIELDS = set(Plan.__dataclass_fields__)


def _cfg(**kw):
    base = dict(space="symbolic", pop_size=6, generations=3, nsamples=4, seqlen=32, batch_size=2, seed=0,
                objective_windows=0, validate_top=0, stats="dense", objective="kl")  # fmt: skip
    base.update(kw)
    plan = Plan(**{k: v for k, v in base.items() if k in PLAN_FIELDS})
    return SearchConfig(plan=plan, **{k: v for k, v in base.items() if k not in PLAN_FIELDS})


def _run(tmp_path, name, cfg, **kw):
    return search(tiny_llama(layers=3), None, cfg, tmp_path / name, windows=random_windows(4, 32), progress=False,
                  **kw)  # fmt: skip


def _gp(seed=0, pop=12, gens=5, fitness=None, **kw):
    space = SymbolicSpace("symbolic", _cfg(), 3)
    opt = GPOptimizer(space, pop_size=pop, generations=gens, seed=seed, max_size=15, **kw)
    asked = []
    fitness = fitness or (lambda t: t.size + len(t.text) / 100)
    while opt.has_next():
        X = opt.ask()
        asked.append([t.text for t in X])
        F = np.array([[fitness(t)] for t in X])
        opt.tell(F, np.array([not t.text.startswith("exp") for t in X]))
    return opt, asked


def test_gp_is_seeded_canonical_bounded_and_deterministic():
    opt, asked = _gp()
    assert asked[0][: len(SEEDS)] == [canonical(s).text for s in SEEDS]  # Wanda first: the stage's baseline
    assert asked[0][0] == "mul(W,sqrt(X))"
    for gen in asked:
        trees = [parse_expr(t) for t in gen]
        assert len(gen) == 12 and all(canonical(t) == t for t in trees) and all(t.size <= 15 for t in trees)
    assert len(set(asked[0])) == 12  # the first population has no duplicates
    again, asked2 = _gp()
    assert asked2 == asked and again.front()[0][0] == opt.front()[0][0]
    _, other = _gp(seed=1)
    assert other != asked
    # elitism: the best tree so far is in every later generation
    best_so_far = None
    for gen in asked:
        if best_so_far is not None:
            assert best_so_far in gen
        best_so_far = min(gen + ([best_so_far] if best_so_far else []),
                          key=lambda t: (parse_expr(t).size + len(t) / 100, t) if not t.startswith("exp") else (1e9, t))


def test_relative_operators_are_drawn_only_when_asked():
    """The default grammar is Pruner-Zero's (no rsn/csn in any tree); ``relative`` draws them and seeds RIA."""

    def ops(asked):
        return {n.op for gen in asked for t in gen for n in parse_expr(t).nodes()}

    _, plain = _gp(pop=16, gens=6)
    assert not ops(plain) & {"rsn", "csn"}
    _, rel = _gp(pop=16, gens=6, operators=OPERATOR_SETS["relative"], seeds=SEEDS + (RIA_TREE,))
    assert {"rsn", "csn"} <= ops(rel)
    assert rel[0][len(SEEDS)] == canonical(RIA_TREE).text == RIA_TREE
    assert tuple(OPERATOR_SETS) == TREE_OPERATORS  # every --tree-operators choice has its operator set


def _point_mutants(tree: Expr, operators) -> set[Expr]:
    """Every canonical tree one point mutation away from ``tree`` (all nodes, all replacements; the enumeration
    ``bench/gp_neighbours.py`` reports, tested there against the GP's own draws)."""
    return {canonical(t) for t in point_neighbours(tree, operators)}


def test_init_mutants_start_next_to_the_seeds():
    """``init_mutants``: after the seeds, that fraction of the rest is one mutation of a seed, point mutations
    first (each is one of the seed's exhaustively listed point mutants), none a seed or a duplicate; then the
    ramped half-and-half trees. 0 keeps the first generation of the searches before the option."""
    ops = OPERATOR_SETS["relative"]
    seeds = [canonical(parse_expr(s)) for s in SEEDS + (RIA_TREE,)]
    space = SymbolicSpace("symbolic", _cfg(), 3)
    opt = GPOptimizer(space, pop_size=20, seed=4, max_size=17, operators=ops, seeds=SEEDS + (RIA_TREE,),
                      init_mutants=0.5)  # fmt: skip
    pop = opt.ask()
    assert pop[:5] == seeds and len(set(pop)) == 20 and all(t.size <= 17 and canonical(t) == t for t in pop)
    mutants = pop[5 : 5 + round(0.5 * 15)]
    point = set().union(*(_point_mutants(s, ops) for s in seeds))
    assert not set(mutants) & set(seeds)
    assert len(set(mutants) & point) >= 4  # the first round is point mutations (a duplicate skips one)
    assert mutants[0] in _point_mutants(seeds[0], ops)  # Wanda's, first
    plain = GPOptimizer(space, pop_size=20, seed=4, max_size=17, operators=ops, seeds=SEEDS + (RIA_TREE,))
    assert GPOptimizer(space, pop_size=20, seed=4, max_size=17, operators=ops, seeds=SEEDS + (RIA_TREE,),
                       init_mutants=0.0).ask() == plain.ask()  # fmt: skip
    assert len(set(plain.ask()[5:]) & point) < len(mutants)  # random trees are rarely a seed's neighbours
    everything = GPOptimizer(space, pop_size=12, seed=4, max_size=17, operators=ops, seeds=SEEDS, init_mutants=1.0)
    assert len(everything.ask()) == 12 and not set(everything.ask()[4:]) & set(seeds)
    with pytest.raises(ValueError, match="init_mutants"):
        GPOptimizer(space, pop_size=20, init_mutants=1.5)
    with pytest.raises(ValueError, match="tree_init_mutants"):
        _cfg(tree_init_mutants=-0.1).validate()


def test_a_run_made_before_init_mutants_resumes_as_zero():
    """A manifest without ``tree_init_mutants`` (runs before the option) compares as 0.0, what those runs did."""
    old = {"config": {"space": "symbolic", "generations": 4}}
    new = {**ADDED_LATER, **old["config"]}  # the options added later, at the values of runs made before them
    assert manifest_differences(old, {"config": {**new, "tree_init_mutants": 0.0}}) == []
    diffs = manifest_differences(old, {"config": {**new, "tree_init_mutants": 0.5}})
    assert diffs == ["config.tree_init_mutants: 0.0 -> 0.5"]


def test_plus_survival_breeds_from_the_best_so_far_and_asks_only_new_trees():
    """``survival="plus"``: every asked tree is new to the run, and the parents after each tell are the best distinct
    trees told so far (infeasible ones last); deterministic, and another search than the generational one."""
    fitness = lambda t: abs(t.size - 9) + len(t.text) / 1000  # noqa: E731
    space = SymbolicSpace("symbolic", _cfg(), 3)
    opt = GPOptimizer(space, pop_size=12, generations=6, seed=2, max_size=15, survival="plus")
    told: dict[str, float] = {}
    asked = []
    while opt.has_next():
        X = opt.ask()
        texts = [t.text for t in X]
        assert len(set(texts)) == len(texts) and not set(texts) & set(told), "a repeated tree was asked"
        asked.append(texts)
        ok = np.array([not t.startswith("exp") for t in texts])
        for t, good in zip(texts, ok):
            told[t] = fitness(parse_expr(t)) if good else float("inf")
        opt.tell(np.array([[fitness(t)] for t in X]), ok)
        if opt.has_next():
            best = sorted((v, t) for t, v in told.items() if np.isfinite(v))[:12]
            assert [(v, t.text) for t, v in opt.survivors] == best
    assert len(asked) == 6 and sum(map(len, asked)) == 72
    assert opt.front()[0][1][0] == min(told.values())
    _, again = _gp(pop=12, gens=6, seed=2, fitness=fitness, survival="plus")
    _, generational = _gp(pop=12, gens=6, seed=2, fitness=fitness)
    assert again[0] == generational[0] and again[1:] != generational[1:]  # the same first generation
    with pytest.raises(ValueError, match="survival"):
        GPOptimizer(space, survival="comma")
    with pytest.raises(ValueError, match="tree_survival"):
        _cfg(tree_survival="comma").validate()
    old = {"config": {"space": "symbolic", "generations": 4}}  # a run made before the option: generational
    new = {**ADDED_LATER, **old["config"]}  # the options added later, at the values of runs made before them
    assert manifest_differences(old, {"config": {**new, "tree_survival": "generational"}}) == []
    assert manifest_differences(old, {"config": {**new, "tree_survival": "plus"}}) == [
        'config.tree_survival: "generational" -> "plus"']  # fmt: skip


def test_insert_and_shrink_mutations_are_one_node_moves():
    """``_insert`` puts a new operator above one node below the root (the node one of its arguments, a binary's other
    argument a terminal); ``_shrink`` replaces one operator node by one of its arguments. Off by default: the GP with
    ``p_insert = p_shrink = 0`` asks what it asked before them; on, its children include such moves; probabilities
    that sum above 1 are refused."""
    opt = GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), seed=3, operators=OPERATOR_SETS["relative"])
    for text in ("mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))", "mul(W,sqrt(X))", "W"):
        tree = parse_expr(text)
        for _ in range(40):
            ins = opt._insert(tree)
            hits = [p for p, n in subtrees(ins) if n.args and (p or tree.size == 1) and any(
                replace_subtree(ins, p, a) == tree for a in n.args)]  # fmt: skip
            assert hits, (text, ins.text)
            new, old = dict(subtrees(ins))[hits[0]], dict(subtrees(tree))[hits[0]]
            assert ins.size == tree.size + ARITY[new.op]
            assert all(a == old or (not a.args and a.op in TERMINALS) for a in new.args)
            shr = opt._shrink(tree)
            if tree.size == 1:
                assert shr == tree
            else:
                assert shr.size < tree.size and any(replace_subtree(tree, p, a) == shr
                                                    for p, n in subtrees(tree) if n.args for a in n.args)  # fmt: skip
    _, plain = _gp(seed=5)
    _, zero = _gp(seed=5, p_insert=0.0, p_shrink=0.0)
    assert zero == plain
    _, local = _gp(seed=5, p_crossover=0.0, p_subtree=0.0, p_point=0.0, p_insert=0.5, p_shrink=0.5)
    assert local[0] == plain[0] and local[1:] != plain[1:]  # the same first generation, other children
    with pytest.raises(ValueError, match="operator probabilities"):
        GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), p_insert=0.3)  # 0.7 + 0.15 + 0.1 + 0.3 > 1
    with pytest.raises(ValueError, match="operator probabilities"):
        GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), p_shrink=-0.1)


def test_one_point_crossover_swaps_a_subtree_at_the_same_place_in_both_parents():
    """``crossover="one-point"`` (Poli and Langdon): the point is drawn from the parents' common region (the paths
    where both have a node and every ancestor has the same arity in both), never the root when there is another,
    and the child is the first parent with the second's subtree at that path. ``mul(A,B) x mul(C,D)`` gives only
    ``mul(C,B)``, ``mul(A,D)`` or deeper swaps: the W side or the X side recombined as the meta metric's genes are.
    The default stays subtree crossover, whose children include other places."""
    a, b = parse_expr("mul(add(csn(W),rsn(W)),sqrt(X))"), parse_expr("mul(mul(csn(W),W),X)")
    assert list(common_region(a, b)) == [(), (0,), (0, 0), (0, 0, 0), (0, 1), (1,)]
    assert list(common_region(a, parse_expr("W"))) == [()]
    assert list(common_region(parse_expr("sqrt(W)"), parse_expr("log(G)"))) == [(), (0,)]
    opt = GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), seed=1, crossover="one-point")
    region = list(common_region(a, b))[1:]
    want = {replace_subtree(a, p, subtree_at(b, p)) for p in region}
    got = {opt._crossover(a, b) for _ in range(200)}
    assert got == want  # every point below the root is drawn, and nothing else
    assert parse_expr("mul(mul(csn(W),W),sqrt(X))") in got and parse_expr("mul(add(csn(W),rsn(W)),X)") in got
    assert opt._crossover(a, parse_expr("X")) == parse_expr("X")  # only the root is shared: the second parent
    plain = GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), seed=1)
    assert plain.crossover == "subtree" and {plain._crossover(a, b) for _ in range(200)} - want
    _, default = _gp(seed=4)
    _, subtree = _gp(seed=4, crossover="subtree")
    _, one_point = _gp(seed=4, crossover="one-point")
    assert subtree == default and one_point[0] == default[0] and one_point[1:] != default[1:]
    with pytest.raises(ValueError, match="crossover must be one of"):
        GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), crossover="uniform")


def test_gp_improves_a_fitness_it_can_see():
    """A fitness that rewards trees close to a target in size selects towards it."""
    target = 9
    opt, asked = _gp(pop=16, gens=8, fitness=lambda t: abs(t.size - target))
    first = min(abs(parse_expr(t).size - target) for t in asked[0])
    assert opt.front()[0][1][0] <= first and opt.front()[0][1][0] == 0


def test_symbolic_search_end_to_end_and_its_recipe_replays(tmp_path):
    res = _run(tmp_path, "run", _cfg(validate_top=2), validation_windows=random_windows(2, 32, seed=3))
    out = tmp_path / "run"
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert res.trials == 18 and res.distinct <= len(trials) and res.gradient_seconds > 0
    assert all(t["metric"].startswith("expr:") for t in trials)
    assert all(canonical(t["metric"]).text == t["metric"][5:] for t in trials)
    wanda = next(t for t in trials if t["metric"] == "expr:mul(W,sqrt(X))")
    assert res.objective <= wanda["objective"] or res.validation is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gradients"]["key"] and manifest["gradients"]["digest"]
    assert len(list((out / "gradients").glob("gradients-*.pt"))) == 1
    recipe = json.loads((out / "optishear_recipe.json").read_text())
    assert recipe["search"]["space"] == "symbolic" and recipe["search"]["algorithm"] == "gp"
    replay = prune(tiny_llama(layers=3), plan=recipe_plan(recipe), windows=random_windows(4, 32), keep_masks=True,
                   progress=False, grad_cache=out / "gradients")  # fmt: skip
    assert replay.mask_digest == recipe["mask_digest"]
    for f in ("history.json", "pareto.json", "search.png", "validation.jsonl"):
        assert (out / f).is_file(), f


def test_symbolic_search_with_relative_operators_replays(tmp_path):
    res = _run(tmp_path, "rel", _cfg(tree_operators="relative", generations=2))
    out = tmp_path / "rel"
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert res.trials == 12 and any(t["metric"] == f"expr:{RIA_TREE}" for t in trials)
    assert json.loads((out / "config.json").read_text())["tree_operators"] == "relative"
    recipe = json.loads((out / "optishear_recipe.json").read_text())
    replay = prune(tiny_llama(layers=3), plan=recipe_plan(recipe), windows=random_windows(4, 32), keep_masks=True,
                   progress=False, grad_cache=out / "gradients")  # fmt: skip
    assert replay.mask_digest == recipe["mask_digest"]


@pytest.mark.parametrize("survival", ["generational", "plus"])
def test_symbolic_kill_and_resume_equals_an_uninterrupted_run_and_reloads_gradients(tmp_path, monkeypatch, survival):
    cfg = _cfg(generations=4, structure="2:4", tree_survival=survival)
    full = _run(tmp_path, "full", cfg)
    with pytest.raises(Killed):
        _run(tmp_path, "cut", cfg, on_trial=kill_after(9))
    lines = (tmp_path / "cut" / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 9
    import optishear.calibrate.gradients as gm

    monkeypatch.setattr(gm, "compute_gradients", lambda *a, **k: pytest.fail("a resume recomputed the gradients"))
    rerun = []
    resumed = _run(tmp_path, "cut", cfg, resume=True, on_trial=rerun.append)
    assert not {json.loads(line)["key"] for line in lines} & {r["key"] for r in rerun}
    assert (resumed.metric, resumed.objective, resumed.trials, resumed.distinct) == (
        full.metric, full.objective, full.trials, full.distinct)  # fmt: skip
    assert [h["best"] for h in resumed.history] == [h["best"] for h in full.history]
    assert resumed.gradient_seconds == full.gradient_seconds or resumed.gradient_seconds > 0
    a = [json.loads(x) for x in (tmp_path / "full" / "trials.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "trials.jsonl").read_text().splitlines()]
    strip = lambda t: {k: v for k, v in t.items() if k != "seconds"}  # noqa: E731
    assert [strip(t) for t in a] == [strip(t) for t in b]


def test_a_resume_with_another_gradient_cache_is_refused(tmp_path):
    cfg = _cfg(generations=1)
    _run(tmp_path, "run", cfg)
    manifest = tmp_path / "run" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["gradients"]["digest"] = "0" * 32  # as if the cache had been computed elsewhere, or replaced
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"gradients\.digest"):
        _run(tmp_path, "run", cfg, resume=True)


def test_overflowing_trees_are_infeasible_not_fatal(tmp_path, monkeypatch):
    from optishear.search import symbolic

    bad = "mul(exp(exp(exp(exp(W)))),exp(exp(exp(exp(G)))))"  # e^88 * e^88 overflows float32 on every row
    orig = symbolic.GPOptimizer.__init__

    def init(self, space, **kw):
        orig(self, space, **{**kw, "seeds": ("mul(W,sqrt(X))", bad, "W")})

    monkeypatch.setattr(symbolic.GPOptimizer, "__init__", init)
    cfg = _cfg(generations=2, max_failures=0)
    res = _run(tmp_path, "run", cfg)
    trials = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    failed = [t for t in trials if t["status"] == "failed"]
    assert failed and all("NaN or infinite" in t["error"] for t in failed)
    assert res.failed >= 1 and res.metric != "expr:" + bad


def test_search_seed_moves_the_optimizer_not_the_objective(tmp_path):
    """``search_seed`` seeds the GP alone: unset it is the plan's seed (same trials as before the option), another
    value gives another trajectory over the same windows, and a resume with another search seed is refused."""

    def trials(name, **kw):
        _run(tmp_path, name, _cfg(generations=2, **kw))
        rows = [json.loads(line) for line in (tmp_path / name / "trials.jsonl").read_text().splitlines()]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        return [(r["metric"], r["objective"]) for r in rows], manifest

    plain, m_plain = trials("plain")
    same, m_same = trials("same", search_seed=0)
    other, m_other = trials("other", search_seed=1)
    assert same == plain
    assert [m for m, _ in other] != [m for m, _ in plain]
    assert m_other["data"] == m_plain["data"] and m_other["config"]["plan"] == m_plain["config"]["plan"]
    assert m_other["config"]["search_seed"] == 1 and m_plain["config"]["search_seed"] is None
    # one tree scored in both runs has the same objective: the objective did not move
    shared = dict(plain).keys() & dict(other).keys()
    assert shared and all(dict(plain)[k] == dict(other)[k] for k in shared)
    with pytest.raises(ValueError, match="search_seed"):
        _run(tmp_path, "other", _cfg(generations=2, search_seed=2), resume=True)
    with pytest.raises(ValueError, match="search_seed"):
        _cfg(search_seed=-1).validate()


def test_symbolic_config_checks():
    with pytest.raises(ValueError, match="tradeoff"):
        _cfg(tradeoff=True).validate()
    _cfg(structure="2:4").validate()  # N:M: a metric search
    with pytest.raises(ValueError, match="tree_size"):
        _cfg(tree_size=0).validate()


def test_tree_seeds_join_the_first_generation_after_the_builtin_ones(tmp_path):
    """``tree_seeds``: the user's trees, canonical, follow the built-in seeds in the first generation (before any
    mutant or random tree), and the run records them: a resume with other seeds is refused, one from before the option
    compares as none."""
    extra = ["mul(W,G)", "mul(W,add(sqrt(X),G))"]
    cfg = _cfg(tree_operators="relative", tree_seeds=extra, tree_init_mutants=0.5, pop_size=10, generations=1)
    cfg.validate()
    builtin = [canonical(s).text for s in SEEDS + (RIA_TREE,)]
    want = builtin + [canonical(t).text for t in extra]
    space = SymbolicSpace("symbolic", cfg, 3)
    assert [t.text for t in gp_optimizer(cfg, space).ask()][: len(want)] == want
    plain = [t.text for t in gp_optimizer(_cfg(tree_operators="relative", tree_init_mutants=0.5, pop_size=10),
                                          space).ask()]  # fmt: skip
    assert plain[: len(builtin)] == builtin and not set(want[len(builtin):]) & set(plain)
    _run(tmp_path, "seeded", cfg)
    trials = [json.loads(line)["metric"] for line in (tmp_path / "seeded" / "trials.jsonl").read_text().splitlines()]
    assert trials[: len(want)] == [f"expr:{t}" for t in want]
    recorded = json.loads((tmp_path / "seeded" / "manifest.json").read_text())
    assert recorded["config"]["tree_seeds"] == extra
    other = {**recorded, "config": {**recorded["config"], "tree_seeds": extra[:1]}}
    want_diff = f"config.tree_seeds: {json.dumps(extra)} -> {json.dumps(extra[:1])}"
    assert manifest_differences(recorded, other) == [want_diff]
    before = {**recorded, "config": {k: v for k, v in recorded["config"].items() if k != "tree_seeds"}}
    assert manifest_differences(before, {**before, "config": {**before["config"], "tree_seeds": []}}) == []


@pytest.mark.parametrize("seeds, match", [
    (["mul(W,"], r"tree_seeds\[0\] 'mul\(W,'"),
    (["mul(W,G)", "frob(W)"], r"tree_seeds\[1\] 'frob\(W\)': unknown operator 'frob'"),
    (["mul(csn(W),G)"], "uses csn, which --tree-operators pruner-zero does not have"),
    (["sqr(mul(W,sqrt(X)))"], r"is the built-in seed mul\(W,sqrt\(X\)\)"),
    (["mul(W,G)", "mul(sqr(G),sqr(W))"], r"tree_seeds\[1\] .* is tree_seeds entry 'mul\(W,G\)'"),
    (["add(mul(W,G),add(mul(W,X),add(G,add(X,sqrt(W)))))"], "14 nodes .* over --tree-size 9"),
])  # fmt: skip
def test_bad_tree_seeds_are_refused_naming_the_entry(seeds, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tree_seeds=seeds, tree_size=9).validate()


def test_tree_rates_reach_the_gp_and_names_not_given_keep_their_defaults():
    """``tree_rates`` sets GPOptimizer's p_<name>: the same GP as those keywords, another than the defaults."""
    rates = ["crossover=0.5", "subtree=0.1", "point=0.15", "insert=0.15", "shrink=0.05"]
    cfg = _cfg(tree_operators="relative", tree_rates=rates, pop_size=8)
    cfg.validate()
    assert cfg.gp_rates() == {"p_crossover": 0.5, "p_subtree": 0.1, "p_point": 0.15, "p_insert": 0.15,
                              "p_shrink": 0.05}  # fmt: skip
    assert _cfg(tree_rates=["insert=0.05"]).gp_rates() == {"p_crossover": 0.7, "p_subtree": 0.15, "p_point": 0.1,
                                                          "p_insert": 0.05, "p_shrink": 0.0}  # fmt: skip

    def children(gp):
        first = gp.ask()
        gp.tell(np.arange(len(first), dtype=float)[:, None], np.ones(len(first), dtype=bool))
        return [t.text for t in gp.ask()]

    space = SymbolicSpace("symbolic", cfg, 3)
    by_flag = children(gp_optimizer(cfg, space))
    by_keywords = children(gp_optimizer(_cfg(tree_operators="relative", pop_size=8), space, p_crossover=0.5,
                                        p_subtree=0.1, p_point=0.15, p_insert=0.15, p_shrink=0.05))  # fmt: skip
    default = children(gp_optimizer(_cfg(tree_operators="relative", pop_size=8), space))
    assert by_flag == by_keywords
    assert by_flag != default
    before = {"config": {"space": "symbolic"}}  # a run made before the option resumes as the defaults, []
    now = {**ADDED_LATER, "space": "symbolic"}
    assert manifest_differences(before, {"config": now}) == []
    changed = manifest_differences(before, {"config": {**now, "tree_rates": ["insert=0.05"]}})
    assert changed == ['config.tree_rates: [] -> ["insert=0.05"]']


@pytest.mark.parametrize("rates, match", [
    (["crossover"], r"tree_rates\[0\] 'crossover': expected name=value with name one of crossover, subtree"),
    (["point=0.1", "mutate=0.1"], r"tree_rates\[1\] 'mutate=0.1': expected name=value"),
    (["point=a lot"], r"tree_rates\[0\] 'point=a lot': 'a lot' is not a number"),
    (["shrink=-0.1"], r"tree_rates\[0\] 'shrink=-0.1': a probability is in \[0, 1\]"),
    (["point=0.1", "point=0.2"], r"tree_rates\[1\] 'point=0.2': point is given twice"),
    (["insert=0.15"], r"crossover=0.7 subtree=0.15 point=0.1 insert=0.15 shrink=0 sum to 1.1, more than 1"),
])  # fmt: skip
def test_bad_tree_rates_are_refused_naming_the_entry(rates, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tree_rates=rates).validate()


def test_tree_rates_need_the_symbolic_space():
    with pytest.raises(ValueError, match="--space metric has none"):
        _cfg(space="metric", tree_rates=["insert=0.05"]).validate()


def test_tree_seeds_need_the_symbolic_space_and_room_in_the_population():
    with pytest.raises(ValueError, match="--space metric has no trees"):
        _cfg(space="metric", tree_seeds=["mul(W,G)"]).validate()
    with pytest.raises(ValueError, match="6 seeds .* a population of 5"):
        _cfg(pop_size=5, tree_seeds=["mul(W,G)", "G"]).validate()
    _cfg(pop_size=6, tree_seeds=["mul(W,G)", "G"]).validate()
