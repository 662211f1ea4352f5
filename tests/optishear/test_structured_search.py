"""The structured-rate search: the parameter budget on every candidate, the plain and LLM operators, the LLM answer
parser, the journal, kill-and-resume, determinism."""

import json
import re

import numpy as np
import pytest
import torch

from optishear import Plan, prune
from optishear.methods.structured import Budget
from optishear.models.surgery import decoder_params, family_for
from optishear.search import SearchConfig, search
from optishear.search.evolution import EvolutionOptimizer, PlainOperators
from optishear.search.llm_operators import LLMOperators, ParseError, parse_genome, parse_parents
from optishear.search.structured_space import StructuredSpace

from ..conftest import Killed, kill_after, random_windows, tiny_llama, tiny_opt


def _cfg(rate=0.3, **kw):
    plan = Plan(structured=True, rate=rate, importance=kw.pop("importance", "flap"), nsamples=4, seqlen=32,
                batch_size=2, stats="dense", seed=kw.pop("seed", 0))  # fmt: skip
    return SearchConfig(plan=plan, space="structured", **{**dict(pop_size=4, generations=3, validate_top=2,
                                                                 objective_windows=0), **kw})  # fmt: skip


def _space(model, rate=0.3, steps=16, importance="flap"):
    cfg = _cfg(rate, mlp_steps=steps, importance=importance)
    return StructuredSpace("structured", cfg, Budget(model, family_for(model), importance == "flap"))


def _run(tmp_path, name, model=None, **kw):
    model = model or tiny_llama(layers=4, inter=256)
    return search(model, None, _cfg(**kw), tmp_path / name, windows=random_windows(4, 32),
                  validation_windows=random_windows(2, 32, seed=7), progress=False)  # fmt: skip


# ---- the budget on every candidate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build,rate,steps", [(tiny_llama, 0.3, 16), (tiny_llama, 0.2, 8), (tiny_opt, 0.5, 16)])
def test_every_candidate_holds_the_parameter_reduction(build, rate, steps):
    """Random genotypes, repaired and decoded, remove the target's parameters to within half an MLP channel; the
    surgery agrees with the accounting."""
    model = build()
    space = _space(model, rate, steps)
    half = space.unit / 2
    rng = np.random.RandomState(0)
    for _ in range(200):
        g = space.repair_one(rng.uniform(space.xl, space.xu + 0.999))
        assert abs(space.budget.total_removed(space.allocation(g)) - space.target) <= half
    for g in space.seed_population(rng, 6):
        m = build()
        before = decoder_params(m)
        prune(m, plan=Plan(rate=rate, importance="flap", **space.decode(g)),
              windows=random_windows(2, 16), progress=False)  # fmt: skip
        assert abs((before - decoder_params(m)) - space.target) <= half


def test_uniform_genotype_and_level_swaps():
    model = tiny_llama(layers=4, inter=256)
    space = _space(model, 0.3)
    u = space.allocation(space.uniform_genome())
    assert len(set(u.levels)) == 1 and max(u.channels_removed) - min(u.channels_removed) <= 1
    rng = np.random.RandomState(1)
    g = space.uniform_genome()
    for _ in range(50):  # an MLP level swap keeps the grid total: no repair needed, the reduction unchanged
        h = space.swap(g, rng, part="mlp")
        assert space.grid_removed(h) == space.grid_removed(g) or abs(space.grid_removed(h) - space.target) \
            <= space.tolerance  # fmt: skip


def _first_generation(run_dir):
    rows = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [r["key"] for r in rows if r["generation"] == 0]


def _uneven_llama():
    """A tiny LLaMA whose odd blocks carry 8 MLP channels with 30x larger down-projection columns, so that FLAP's
    adaptive allocation (standardized scores, ranked across blocks) differs from the uniform one."""
    model = tiny_llama(layers=4, inter=256)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i % 2 == 1:
                layer.mlp.down_proj.weight[:, :8] *= 30.0
    return model


def test_first_population_holds_the_adaptive_allocation(tmp_path):
    """With ``seed_adaptive`` (the default) the second member of the first population is the genotype of what
    ``prune(layer_rates="adaptive")`` allocates on the same windows; without it, every member starts from the uniform
    allocation, as the space's own seeding gives."""
    windows = random_windows(4, 32)
    model = _uneven_llama()
    res = prune(model, plan=Plan(structured=True, rate=0.3, importance="flap", layer_rates="adaptive", stats="dense",
                                 nsamples=4, seqlen=32, batch_size=2),
                windows=windows, progress=False)  # fmt: skip
    space = _space(_uneven_llama(), 0.3)
    adaptive = space.key(space.genome_of(space.budget.from_rates(res.structure["layer_rates"])))
    assert adaptive != space.key(space.uniform_genome())  # the test tells the two seedings apart

    _run(tmp_path, "seeded", model=_uneven_llama(), generations=1)
    keys = _first_generation(tmp_path / "seeded")
    assert keys[0] == space.key(space.uniform_genome()) and keys[1] == adaptive and len(set(keys)) == 4

    _run(tmp_path, "plain", model=_uneven_llama(), generations=1, seed_adaptive=False)
    expect = [space.key(g) for g in space.seed_population(np.random.RandomState(0), 4)]
    assert _first_generation(tmp_path / "plain") == expect and adaptive not in expect


def test_search_trials_all_hold_the_budget_and_the_answer_reapplies(tmp_path):
    res = _run(tmp_path, "ga")
    trials = [json.loads(line) for line in (tmp_path / "ga" / "trials.jsonl").read_text().splitlines()]
    model = tiny_llama(layers=4, inter=256)
    budget = Budget(model, family_for(model), True)
    half = budget.mlp[0]["ch_unit"] / 2 / budget.total
    assert len(trials) == 4 * 3 and res.distinct == 12  # every offspring new: pop_size distinct per generation
    for t in trials:
        assert abs(t["sparsity"] - 0.3) <= half, t["sparsity"]
    recipe = res.recipe
    assert recipe["plan"]["structured"] and isinstance(recipe["plan"]["layer_rates"], dict)
    assert abs(recipe["achieved"]["sparsity"] - 0.3) <= half
    assert recipe["search"]["operators"]["operators"] == "ga"
    assert res.objective == min(t["objective"] for t in trials) or res.validation is not None


def test_same_seed_same_search(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert a.recipe["plan"]["layer_rates"] == b.recipe["plan"]["layer_rates"] and a.objective == b.objective
    ta = (tmp_path / "a" / "trials.jsonl").read_text().splitlines()
    tb = (tmp_path / "b" / "trials.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in ta] == [json.loads(x)["key"] for x in tb]


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    full = _run(tmp_path, "full")
    model = tiny_llama(layers=4, inter=256)
    with pytest.raises(Killed):
        search(model, None, _cfg(), tmp_path / "cut", windows=random_windows(4, 32),
               validation_windows=random_windows(2, 32, seed=7), progress=False, on_trial=kill_after(7))  # fmt: skip
    assert len((tmp_path / "cut" / "trials.jsonl").read_text().splitlines()) == 7
    ran = {"n": 0}
    again = search(model, None, _cfg(), tmp_path / "cut", resume=True, windows=random_windows(4, 32),
                   validation_windows=random_windows(2, 32, seed=7), progress=False,
                   on_trial=lambda r: ran.__setitem__("n", ran["n"] + 1))  # fmt: skip
    assert ran["n"] == 12 - 7  # only the trials the kill lost
    assert again.recipe["plan"]["layer_rates"] == full.recipe["plan"]["layer_rates"]
    assert again.objective == full.objective and again.distinct == full.distinct
    with pytest.raises(ValueError, match=r"config\.plan\.rate"):
        search(model, None, _cfg(rate=0.25), tmp_path / "cut", resume=True, windows=random_windows(4, 32),
               validation_windows=random_windows(2, 32, seed=7), progress=False)  # fmt: skip


# ---- the LLM operators ------------------------------------------------------------------------------------------


class ScriptedChat:
    """Stands in for the instruct model: answers from a function of (operator, prompt), counting calls."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.seconds = 0.0

    def answer(self, system, user, *, prefix="", max_new_tokens, seed, done=None):
        self.calls += 1
        op = "select" if "Choose two" in user else "crossover" if "combines the parents" in user else "mutate"
        return self.fn(op, user, prefix)


def _lines(user):
    return re.findall(r"^block (\d+): A=(\d+) M=(\d+)", user, flags=re.MULTILINE)


def good_answers(op, user, prefix):
    """Well-formed answers: the last two candidates as parents; crossover copies parent 1; mutation moves one MLP
    level from block 0 to block 1 (when it can)."""
    if op == "select":
        ids = [int(x) for x in re.findall(r"^#(\d+)", user, flags=re.MULTILINE)]
        return f"Parents: #{ids[-1]}, #{ids[-2]}"
    rows = [(int(b), int(a), int(m)) for b, a, m in _lines(user)]
    if op == "mutate" and rows[0][2] > 0 and rows[1][2] < 16:
        rows[0] = (0, rows[0][1], rows[0][2] - 1)
        rows[1] = (1, rows[1][1], rows[1][2] + 1)
    return "\n".join(f"block {b}: A={a} M={m}" for b, a, m in rows)


def test_llm_operators_use_valid_answers_and_fall_back_on_bad_ones():
    model = tiny_llama(layers=4, inter=256)
    space = _space(model)
    rng = np.random.RandomState(0)
    pop = list(space.seed_population(rng, 4))
    fit = [0.1, 0.2, 0.3, 0.4]
    ops = LLMOperators(space, ScriptedChat(good_answers), seed=0)
    assert ops.select(pop, fit, rng, 1) == (3, 2)
    child = ops.crossover(pop[1], pop[2], 0.2, 0.3, rng, 1)
    assert space.key(child) == space.key(pop[1])
    mut = ops.mutate(pop[0], rng, 1, best=(pop[0], 0.1))
    assert mut[space.n] == pop[0][space.n] - 1 and mut[space.n + 1] == pop[0][space.n + 1] + 1
    assert ops.stats["select"] == {"calls": 1, "valid": 1, "invalid": 0, "repaired": 0}
    assert ops.stats["valid_fraction"] == 1.0

    bad = LLMOperators(space, ScriptedChat(lambda op, u, p: p + " I think the model is great!"), seed=0)
    i, j = bad.select(pop, fit, rng, 1)
    assert i != j and 0 <= i < 4 and 0 <= j < 4
    child = bad.crossover(pop[1], pop[2], 0.2, 0.3, rng, 1)
    assert child.shape == pop[1].shape
    bad.mutate(pop[0], rng, 1)
    st = bad.stats
    assert st["valid_fraction"] == 0.0 and all(st[k]["invalid"] == 1 for k in ("select", "crossover", "mutate"))
    assert "select: expected two parent numbers, got N" in st["errors"]


def test_llm_search_counts_answers_and_resume_replays_them(tmp_path, monkeypatch):
    import optishear.search.llm_operators as lo

    chats = []

    def fake_loader(path=None, temperature=0.7):
        chats.append(ScriptedChat(good_answers))
        return chats[-1]

    monkeypatch.setattr(lo, "load_chat_model", fake_loader)
    full = _run(tmp_path, "llm", operators="llm")
    st = full.recipe["search"]["operators"]
    assert st["operators"] == "llm" and st["select"]["calls"] == 4 * 2 and st["valid_fraction"] == 1.0
    journal = (tmp_path / "llm" / "operators.jsonl").read_text().splitlines()
    assert len(journal) == chats[0].calls == 3 * 4 * 2
    # same run again, resumed from its finished state: every answer is replayed from the journal, none asked
    again = search(tiny_llama(layers=4, inter=256), None, _cfg(operators="llm"), tmp_path / "llm", resume=True,
                   windows=random_windows(4, 32), validation_windows=random_windows(2, 32, seed=7), progress=False)
    assert chats[-1].calls == 0
    assert again.recipe["plan"]["layer_rates"] == full.recipe["plan"]["layer_rates"]
    assert len((tmp_path / "llm" / "operators.jsonl").read_text().splitlines()) == len(journal)


def test_duplicate_children_fall_back_to_a_level_swap():
    model = tiny_llama(layers=4, inter=256)
    space = _space(model)
    copy_parent = ScriptedChat(lambda op, u, p: "Parents: #0, #1" if op == "select" else "\n".join(
        f"block {b}: A={a} M={m}" for b, a, m in _lines(u)))  # fmt: skip
    opt = EvolutionOptimizer(space, LLMOperators(space, copy_parent, seed=0), pop_size=4, generations=3, seed=0)
    X = opt.ask()
    opt.tell(np.arange(4, dtype=float)[:, None], np.ones(4, bool))
    kids = opt.ask()  # every child copies parent 0 (crossover and mutation echo it): all must be replaced
    keys = {space.key(x) for x in X}
    assert len({space.key(k) for k in kids}) == 4 and not keys & {space.key(k) for k in kids}
    assert opt.stats["duplicates"] == 4


@pytest.mark.parametrize(
    "answer,error",
    [
        ("", "no 'Parents:' line"),
        ("Parents: 1", "expected two parent numbers, got 1"),
        ("Parents: #2, #2", "the same parent twice"),
        ("Parents: 0, 9", "parent 9 is not in the population"),
        ("Parents: 1.5, 2", "1.5 is not a whole number"),
        ("I pick the best ones", "no 'Parents:' line"),
    ],
)
def test_parent_parser_rejects_malformed_answers(answer, error):
    with pytest.raises(ParseError, match=re.escape(error)):
        parse_parents(answer, 4)


def test_parent_parser_accepts_the_asked_forms():
    assert parse_parents("Parents: #3, #1", 4) == (3, 1)
    assert parse_parents("parents = 0 and 2\nbecause they are good", 4) == (0, 2)


GOOD = "block 0: A=1 M=5\nblock 1: A=2 M=4\nblock 2: A=0 M=16"


@pytest.mark.parametrize(
    "answer,error",
    [
        ("", "3 blocks missing"),
        ("block 0: A=1 M=5\nblock 1: A=2 M=4", "1 blocks missing (first: block 2)"),
        (GOOD + "\nblock 1: A=0 M=0", "block 1 is given twice"),
        (GOOD.replace("block 2", "block 7"), "block 7 is not a block of the model"),
        (GOOD.replace("A=2", "A=9"), "block 1: A=9 is outside 0..7"),
        (GOOD.replace("M=16", "M=17"), "block 2: M=17 is outside 0..16"),
        (GOOD.replace("M=4", "M=4.5"), "4.5 is not a whole number"),
        (GOOD.replace("A=1", "A=-1"), "block 0: A=-1 is outside"),
        ("A: 1 2 0\nM: 5 4 16", "3 blocks missing"),
        ("block 0: A=1\nblock 1: A=2 M=4\nblock 2: A=0 M=16", "1 blocks missing (first: block 0)"),
    ],
)
def test_genome_parser_rejects_malformed_answers(answer, error):
    with pytest.raises(ParseError, match=re.escape(error)):
        parse_genome(answer, 3, 7, 16)


def test_genome_parser_accepts_the_asked_form_and_variants():
    assert parse_genome(GOOD, 3, 7, 16) == ([1, 2, 0], [5, 4, 16])
    noisy = "Here is the child:\n- Block #0: A 1, M 5\n* block 1: A=2, M=4\nblock 2) A=0 M=16 (kept)\nThanks"
    assert parse_genome(noisy, 3, 7, 16) == ([1, 2, 0], [5, 4, 16])


def test_prompts_are_package_files_with_every_field_filled():
    from optishear.search.llm_operators import load_prompt

    model = tiny_llama(layers=4, inter=256)
    space = _space(model)
    seen = []
    ops = LLMOperators(space, ScriptedChat(lambda op, u, p: seen.append((op, u, p)) or good_answers(op, u, p)), seed=0)
    rng = np.random.RandomState(0)
    pop = list(space.seed_population(rng, 4))
    ops.select(pop, [0.1, 0.2, 0.3, 0.4], rng, 1)
    ops.crossover(pop[0], pop[1], 0.1, 0.2, rng, 1)
    ops.mutate(pop[0], rng, 1, best=(pop[0], 0.1))
    for op, user, prefix in seen:
        assert "$" not in user and "30%" in user and prefix == load_prompt(op)[1]
    assert "block 3: A=" in seen[1][1] and "(parent 2: A=" in seen[1][1]


def test_plain_operators_alone():
    model = tiny_llama(layers=4, inter=256)
    space = _space(model)
    ops = PlainOperators(space)
    rng = np.random.RandomState(0)
    pop = list(space.seed_population(rng, 4))
    i, j = ops.select(pop, [0.1, 0.2, 0.3, 0.4], rng, 1)
    assert i != j
    child = ops.crossover(pop[0], pop[1], 0.1, 0.2, rng, 1)
    for b in range(space.n):  # a block takes both its levels from the same parent
        assert (child[b], child[space.n + b]) in ((pop[0][b], pop[0][space.n + b]), (pop[1][b], pop[1][space.n + b]))


def test_search_config_refuses_mixed_structured_settings():
    with pytest.raises(ValueError, match="needs a structured plan"):
        SearchConfig(plan=Plan(structured=False), space="structured").validate()
    with pytest.raises(ValueError, match="needs a structured plan"):
        SearchConfig(plan=Plan(structured=True), space="blocks").validate()
    with pytest.raises(ValueError, match="must not fix them"):
        SearchConfig(plan=Plan(structured=True, layer_rates="adaptive"), space="structured").validate()
    with pytest.raises(ValueError, match="rate must be a number in"):
        SearchConfig(plan=Plan(structured=True, rate=1.2), space="structured").validate()
    torch.manual_seed(0)
