"""bench/gp_simulate.py: the GP answered from a table of tree objectives replays the symbolic search exactly."""

import json

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


class _Runner:
    """A stand-in for the search's ``TrialRunner``: an objective per tree, and a count of the trees it scored."""

    def __init__(self):
        self.ran = []

    def plan_for(self, point):
        return point["metric"]

    def run(self, metric, _):
        self.ran.append(metric)
        return {"objective": float(len(metric)), "mask_hash": metric, "status": "ok", "seconds": 0.0}


def test_two_simulations_on_one_cache_score_each_tree_once(tmp_path):
    """Two oracles on one cache file (two simulations side by side): a tree one of them scored is read from the file
    by the other, not scored again; a line cut by a kill is skipped, and the file stays one record per line."""
    from argparse import Namespace

    from optishear_kernels import parse_expr

    from bench.gp_simulate import Oracle

    path = tmp_path / "cache.jsonl"
    path.write_text('{"tree": "W", "objective": 3.0, "mask_hash": "w", "status": "ok"}\n{"tree": "mul(W,X')
    args = Namespace(cache=str(path), sparsity=0.5, structure="2:4")
    a, b = Oracle(args, None), Oracle(args, None)
    a.runner, b.runner = _Runner(), _Runner()
    wanda, ria = parse_expr("mul(W,sqrt(X))"), parse_expr("mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))")
    assert a(wanda)["objective"] == len("expr:mul(W,sqrt(X))") and a.runner.ran == ["expr:mul(W,sqrt(X))"]
    assert b(wanda)["objective"] == a(wanda)["objective"] and b.runner.ran == [] and b.scored == 0
    assert b(ria)["status"] == "ok" and a(ria) == b(ria) and a.runner.ran == ["expr:mul(W,sqrt(X))"]
    assert a(parse_expr("W"))["objective"] == 3.0 and b.scored == 1 and a.scored == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[1] == '{"tree": "mul(W,X'  # the cut line, ended and left as it was
    assert [json.loads(r)["tree"] for r in lines[2:]] == [wanda.text, ria.text]
    with path.open("a") as f:  # a line another process has only begun to write: read once it is ended
        f.write('{"tree": "X", "objective": 5.0, "mask_hash": "x",')
    b.refresh()
    assert "X" not in b.cache
    with path.open("a") as f:
        f.write(' "status": "ok"}\n')
    assert b(parse_expr("X"))["objective"] == 5.0 and b.scored == 1 and b.runner.ran == ["expr:" + ria.text]


def test_a_screened_simulation_is_the_screened_searchs_trajectory(tmp_path):
    """``--screen``: the simulated GP builds its screen on the oracle's runner (the same model, windows and gradient
    statistics as the search) and asks exactly the trees the screened search scored, in its order."""
    from optishear.search import TrialRunner, search_gradients

    cfg = _cfg(search_seed=1, tree_screen=3)
    windows = random_windows(4, 32)
    search(tiny_llama(layers=3), None, cfg, tmp_path / "run", windows=windows, progress=False)
    trials = read_jsonl(tmp_path / "run" / "trials.jsonl")
    table = {r["metric"].removeprefix("expr:"): r for r in trials}
    model = tiny_llama(layers=3)
    grads = search_gradients(cfg, model, windows, tmp_path / "run", False)  # reloaded from the run

    class Oracle:
        runner = TrialRunner(model, windows, cfg, gradients=grads)
        asked = []

        def _start(self):
            pass

        def __call__(self, tree):
            self.asked.append(tree.text)
            return table[tree.text]  # a tree the search never scored: KeyError, the trajectories differ

    oracle = Oracle()
    curve = run_curve(tmp_path / "run")
    out = simulate(oracle, cfg, seed=1, until=len(curve))
    assert out["curve"] == curve and out["phenotypes"] > len(oracle.asked) - cfg.pop_size
    first = list(dict.fromkeys(oracle.asked))  # the log holds a tree once: an elite asked again is answered from it
    assert first == list(dict.fromkeys(r["metric"].removeprefix("expr:") for r in trials))[: len(first)]
    assert len(first) > 2 * cfg.pop_size  # past the unscreened first generation
