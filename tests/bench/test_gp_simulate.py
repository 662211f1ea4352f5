"""bench/gp_simulate.py: the GP answered from a table of tree objectives replays the symbolic search exactly."""

import pytest
from optishear.plan import Plan
from optishear.search import SearchConfig, search
from optishear.search.trials import read_jsonl

from bench.exhaustive_metric import run_curve
from bench.gp_simulate import simulate

from ..conftest import random_windows, tiny_llama


def _cfg(**kw):
    plan = Plan(nsamples=4, seqlen=32, batch_size=2, seed=0, stats="dense")
    return SearchConfig(plan=plan, space="symbolic", pop_size=8, generations=4, objective_windows=0, validate_top=0,
                        tree_operators="relative", **kw)  # fmt: skip


@pytest.mark.parametrize("mutants", [0.0, 0.5])
def test_the_simulation_is_the_searchs_trajectory(tmp_path, mutants):
    """A real search's trial log as the oracle: the simulated GP asks only trees the search scored, in its order,
    and its best-after-k curve is the run's (``run_curve``), to the run's last distinct evaluation."""
    cfg = _cfg(tree_init_mutants=mutants, search_seed=2)
    search(tiny_llama(layers=3), None, cfg, tmp_path / "run", windows=random_windows(4, 32), progress=False)
    table = {r["metric"].removeprefix("expr:"): r for r in read_jsonl(tmp_path / "run" / "trials.jsonl")}
    asked = []

    def oracle(tree):
        asked.append(tree.text)
        return table[tree.text]  # a tree the search never scored: KeyError, the trajectories differ

    curve = run_curve(tmp_path / "run")
    out = simulate(oracle, cfg, seed=2, until=len(curve))
    assert out["curve"] == curve and out["best"] == min(r["objective"] for r in table.values() if r["objective"])
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    assert asked[: cfg.pop_size] == [r["metric"].removeprefix("expr:") for r in
                                      read_jsonl(tmp_path / "run" / "trials.jsonl")][: cfg.pop_size]  # fmt: skip
