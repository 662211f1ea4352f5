"""The exhaustive-table tools: the search simulation answered from a table, and the report's statistics."""

import numpy as np

from bench.exhaustive_metric import classes, median_found, simulate, spearman


def _table(seed=0):
    rng = np.random.RandomState(seed)
    return [{"class": list(c), "metric": str(c), "objective": float(v), "status": "ok"}
            for c, v in zip(classes(), rng.uniform(0.7, 2.0, size=318))]  # fmt: skip


def test_318_classes():
    assert len(classes()) == 318


def test_simulation_counts_distinct_classes_and_finds_the_optimum_on_an_easy_landscape():
    table = _table()
    for r in table:  # a smooth landscape: distance from one class
        r["objective"] = 1.0 + float(np.abs(np.array(r["class"]) - np.array([3, 0, 2, 1])).sum())
    out = simulate(table, seed=0, pop_size=20, generations=15)
    assert out["trials"] == 300 and 1 <= out["distinct"] <= 300
    assert out["found_optimum"] is not None and out["found_optimum"]["distinct"] <= out["distinct"]
    assert out["best_found_rank"] == 1
    assert simulate(table, seed=0, pop_size=20, generations=15) == out  # same seed, same trajectory


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_median_counts_a_seed_that_never_found_the_optimum_as_the_longest():
    assert median_found([59, 78, 62, 56, None]) == 62.0
    assert median_found([3, 5]) == 4.0
    assert median_found([10, None, None]) is None and median_found([None] * 5) is None
    assert median_found([7, 9, None, None]) is None  # the middle pair holds a seed that never found it
