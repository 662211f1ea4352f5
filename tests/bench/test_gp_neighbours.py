"""bench/gp_neighbours.py: its enumerated neighbourhoods are exactly the children the GP's own moves can make."""

import pytest
from optishear.plan import Plan
from optishear.search import SearchConfig
from optishear.search.symbolic import OPERATOR_SETS, GPOptimizer, SymbolicSpace, builtin_seeds
from optishear_kernels import parse_expr

from bench.gp_neighbours import crossover, insertion, point, shrink


def _gp(seed):
    cfg = SearchConfig(plan=Plan(nsamples=4, seqlen=32), space="symbolic", tree_operators="relative")
    return GPOptimizer(SymbolicSpace("symbolic", cfg, 3), pop_size=8, seed=seed, max_size=40,
                       operators=OPERATOR_SETS["relative"])  # fmt: skip


@pytest.mark.parametrize("move", ["point", "insertion", "shrink", "crossover"])
def test_every_random_child_is_in_the_enumeration_and_the_draws_cover_it(move):
    """2,000 draws (20,000 insertions) of the GP's move per seed (or seed pair) all land in the enumerated set (no
    child missed by the table), and they reach all of it (the set holds no child the move cannot make)."""
    ops = OPERATOR_SETS["relative"]
    seeds = [parse_expr(s) for s in builtin_seeds("relative")]
    gp = _gp(seed=7)
    pairs = [(a, b) for a in seeds for b in seeds if a != b] if move == "crossover" else [(a, None) for a in seeds]
    for a, b in pairs:
        if move == "crossover":
            want = set(crossover(a, b))
            drawn = {gp._crossover(a, b) for _ in range(2000)}
        else:
            want = set({"point": point, "insertion": insertion, "shrink": shrink}[move](a, ops))
            draw = getattr(gp, {"point": "_point", "insertion": "_insert", "shrink": "_shrink"}[move])
            drawn = {draw(a) for _ in range(20000 if move == "insertion" else 2000)}  # some insertions are 1/432
        assert drawn - {a} <= want, (move, a.text, sorted(t.text for t in drawn - want)[:3])  # shrink(W) is W
        share = len(drawn & want) / len(want) if want else 1.0
        assert share == 1.0, (move, a.text, share)
