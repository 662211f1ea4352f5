"""The symbolic GP's screen: phenotypes are the engine's own masks on sampled rows, and the children it keeps are
the best predicted new ones (then repeats, then failing trees), deterministically."""

import numpy as np
import pytest
from optishear.calibrate.gradients import GradientStats, compute_gradients
from optishear.search import TrialRunner
from optishear.search.screen import MaskPhenotype, Screen, hamming
from optishear.search.symbolic import GPOptimizer, SymbolicSpace
from optishear_kernels import canonical, parse_expr

from ..conftest import random_windows, tiny_llama
from .test_symbolic_search import _cfg, _run


def _runner(structure="unstructured", grads=True):
    model = tiny_llama(layers=3)
    windows = random_windows(4, 32)
    g = None
    if grads:
        per_block, _ = compute_gradients(model, windows, progress=False)
        g = GradientStats(per_block=per_block, key="test", digest="test")
    return TrialRunner(model, windows, _cfg(structure=structure), gradients=g)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_a_phenotype_is_the_rows_of_the_mask_the_trial_makes(structure):
    """On a tiny model whose weights a trial has just pruned: a tree's phenotype equals the sampled rows of the
    masks ``runner.apply`` makes with that tree (read from the dense weights, not the pruned ones)."""
    runner = _runner(structure)
    runner.apply(runner.plan_for({"metric": "expr:W"}))  # the model now holds pruned weights
    ph = MaskPhenotype(runner, blocks=2, rows=3, seed=1)
    assert [n for n, *_ in ph.layers][0].startswith("0.") and [n for n, *_ in ph.layers][-1].startswith("2.")
    for text in ("mul(W,sqrt(X))", "mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))", "mul(G,W)", "div(W,mms(G))"):
        tree = canonical(parse_expr(text))
        masks = runner.apply(runner.plan_for({"metric": f"expr:{text}"})).masks
        want = np.concatenate([masks[name][rows.cpu()].reshape(-1).numpy() for name, _, _, _, rows in ph.layers])
        got = ph(tree)
        assert got.dtype == np.uint8 and got.shape == (ph.nbytes,) and np.array_equal(got, want), text
    bad = "mul(exp(exp(exp(exp(W)))),exp(exp(exp(exp(G)))))"  # overflows float32 on every row
    assert ph(parse_expr(bad)) is None  # the trial would fail
    again = MaskPhenotype(runner, blocks=2, rows=3, seed=1)
    other = MaskPhenotype(runner, blocks=2, rows=3, seed=2)
    assert [r.tolist() for *_, r in again.layers] == [r.tolist() for *_, r in ph.layers]
    assert [r.tolist() for *_, r in other.layers] != [r.tolist() for *_, r in ph.layers]
    no_g = MaskPhenotype(_runner(grads=False), blocks=1, rows=2)
    assert no_g(parse_expr("mul(G,W)")) is None and no_g(parse_expr("W")) is not None
    with pytest.raises(ValueError, match="at least one block"):
        MaskPhenotype(runner, blocks=0)


def _bits(*v):
    return np.packbits(np.array(v, dtype=bool))


def test_the_screen_keeps_new_phenotypes_best_predicted_first_then_repeats_then_failing():
    a, b, c, d, e, f, g = (parse_expr(t) for t in ("W", "X", "G", "mul(W,X)", "mul(W,G)", "add(W,X)", "sqr(W)"))
    table = {a: _bits(1, 1, 1, 1, 0, 0, 0, 0), b: _bits(0, 0, 0, 0, 1, 1, 1, 1),
             c: _bits(1, 1, 1, 1, 0, 0, 0, 1),  # one bit from a
             d: _bits(0, 0, 0, 0, 1, 1, 1, 0),  # one bit from b
             e: _bits(1, 1, 1, 1, 0, 0, 0, 0),  # a's phenotype
             f: None,  # non-finite
             g: _bits(1, 1, 1, 1, 0, 0, 0, 1)}  # c's phenotype  # fmt: skip
    assert hamming(table[a], np.stack([table[b], table[c], table[e]])).tolist() == [8, 1, 0]
    s = Screen(table.__getitem__, 3)
    assert s.predict(c) == float("inf") and s.pick([a, b], 1) == [a]  # an empty archive: bred order
    s.tell([a, b, f], [2.0, 1.0, 0.5])  # f failed: not archived
    assert (s.predict(c), s.predict(d), s.predict(e), s.predict(f)) == (2.0, 1.0, 2.0, float("inf"))
    # d (near b: 1.0) before c (near a: 2.0); g repeats c kept before it, e repeats a: after the new; f last
    assert s.pick([f, e, c, g, d], 5) == [d, c, e, g, f]
    assert s.pick([f, e, c, g, d], 2) == [d, c]
    s.tell([e], [0.2])  # a phenotype told again keeps the lower objective
    assert s.predict(c) == pytest.approx(0.2) and s.computed == 7
    with pytest.raises(ValueError, match="at least 2"):
        Screen(table.__getitem__, 1)


def _screened(seed, factor, survival="generational"):
    """A GP on a fitness that is a function of the phenotype (the bits of a hash of the tree's size and depth)."""
    def pheno(t):
        return np.packbits(np.unpackbits(np.array([t.size % 16, len(t.text) % 7], dtype=np.uint8)))

    def fitness(t):
        return abs(t.size - 9) + (len(t.text) % 7) / 10

    screen = Screen(pheno, factor) if factor else None
    opt = GPOptimizer(SymbolicSpace("symbolic", _cfg(), 3), pop_size=10, generations=5, seed=seed, max_size=15,
                      survival=survival, screen=screen)  # fmt: skip
    asked = []
    while opt.has_next():
        X = opt.ask()
        asked.append([t.text for t in X])
        opt.tell(np.array([[fitness(t)] for t in X]), np.ones(len(X), dtype=bool))
    return asked, screen


@pytest.mark.parametrize("survival", ["generational", "plus"])
def test_a_screened_gp_is_deterministic_and_asks_what_the_screen_picked(survival):
    asked, screen = _screened(3, 4, survival)
    again, _ = _screened(3, 4, survival)
    plain, _ = _screened(3, 0, survival)
    assert again == asked
    assert asked[0] == plain[0] and asked[1:] != plain[1:]  # the first generation is not screened
    assert screen.computed > sum(map(len, asked))  # candidates that were never asked had phenotypes computed
    assert all(len(g) == 10 for g in asked)


def test_tree_screen_config_checks():
    _cfg(tree_screen=4).validate()
    for bad in (1, -2):
        with pytest.raises(ValueError, match="tree_screen"):
            _cfg(tree_screen=bad).validate()
    with pytest.raises(ValueError, match="tree_screen screens the symbolic search"):
        _cfg(space="metric", tree_screen=4).validate()


def test_a_screened_search_runs_end_to_end_and_resumes_to_the_same_trials(tmp_path):
    """``--tree-screen 3`` through the search driver: deterministic, another trajectory than unscreened, and a
    killed run resumed gives the uninterrupted run's trial log."""
    import json

    from ..conftest import Killed, kill_after

    cfg = _cfg(generations=3, structure="2:4", tree_screen=3)
    full = _run(tmp_path, "full", cfg)
    _run(tmp_path, "plain", _cfg(generations=3, structure="2:4"))
    strip = lambda t: {k: v for k, v in json.loads(t).items() if k != "seconds"}  # noqa: E731
    a = [strip(x) for x in (tmp_path / "full" / "trials.jsonl").read_text().splitlines()]
    p = [strip(x) for x in (tmp_path / "plain" / "trials.jsonl").read_text().splitlines()]
    assert [t["key"] for t in a[:6]] == [t["key"] for t in p[:6]] and [t["key"] for t in a] != [t["key"] for t in p]
    with pytest.raises(Killed):
        _run(tmp_path, "cut", cfg, on_trial=kill_after(8))
    resumed = _run(tmp_path, "cut", cfg, resume=True)
    b = [strip(x) for x in (tmp_path / "cut" / "trials.jsonl").read_text().splitlines()]
    assert a == b and (resumed.metric, resumed.objective) == (full.metric, full.objective)
