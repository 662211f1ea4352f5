"""The exhaustive-table tools: the search simulation answered from a table, and the report's statistics."""

import json

import numpy as np
import pytest

from bench.exhaustive_metric import best_at, classes, median_found, run_curve, simulate, spearman


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
    curve = out["curve"]  # best after each distinct class: non-increasing, ends at the best found
    assert len(curve) == out["distinct"] and curve[-1] == out["best_found"]
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    longer = simulate(table, seed=0, pop_size=20, generations=30)  # the same trajectory, run on
    assert longer["curve"][: len(curve)] == curve
    # --eliminate-duplicates: pymoo's offspring must differ from the population, so a converged run keeps
    # evaluating new classes where the default repeats known ones
    fresh = simulate(table, seed=0, pop_size=20, generations=15, eliminate_duplicates=True)
    assert fresh["trials"] <= 300 and fresh["distinct"] > out["distinct"] and fresh["curve"] != curve  # pymoo may
    # come a few offspring short when it cannot find enough new ones


def test_a_runs_curve_counts_new_masks_only_and_best_at_needs_enough_of_them(tmp_path):
    rows = [("a", 0.9, True, "ok"), ("b", 0.8, True, "ok"), ("a", 0.8, False, "ok"), ("c", None, True, "failed"),
            ("d", 0.85, True, "ok"), ("b", 0.7, True, "ok")]  # fmt: skip
    (tmp_path / "trials.jsonl").write_text("".join(
        json.dumps({"mask_hash": h, "objective": o, "evaluated": e, "status": s}) + "\n" for h, o, e, s in rows))
    curve = run_curve(tmp_path)
    assert curve == [0.9, 0.8, 0.8]
    assert best_at(curve, 2) == 0.8 and best_at(curve, 4) is None


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_median_counts_a_seed_that_never_found_the_optimum_as_the_longest():
    assert median_found([59, 78, 62, 56, None]) == 62.0
    assert median_found([3, 5]) == 4.0
    assert median_found([10, None, None]) is None and median_found([None] * 5) is None
    assert median_found([7, 9, None, None]) is None  # the middle pair holds a seed that never found it


def test_compare_puts_gp_simulations_beside_the_metric_search_by_setting_and_seed(tmp_path):
    from bench.exhaustive_metric import main

    table = tmp_path / "t.jsonl"
    table.write_text("")
    sims = [{"seed": s, "pop_size": 20, "generations": 60, "curve": [1.0 - 0.1 * s] * 60} for s in range(3)]
    (tmp_path / "t.jsonl.sim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sims))
    gp = [{"seed": s, "setting": {"init_mutants": m}, "curve": [2.0 - 0.1 * s - m] * (50 + 10 * s)}
          for m in (0.0, 0.5) for s in range(3)]  # fmt: skip
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gp))
    args = ["compare", "--table", str(table), "--generations", "60", "--at", "54",
            "--gp-sims", str(tmp_path / "g.jsonl")]
    main(args)
    out = json.loads((tmp_path / "t.jsonl.compare.json").read_text())
    assert out["median_metric_54"] == pytest.approx(0.9)
    # seeds 1 and 2 made 54 distinct evaluations, seed 0 did not
    assert out['median_gp {"init_mutants": 0.5}_54'] == pytest.approx(1.35)
    assert out['n_gp {"init_mutants": 0.0}_54'] == 2
    main(args + ["--seeds", "0", "1"])
    out = json.loads((tmp_path / "t.jsonl.compare.json").read_text())
    assert out["median_metric_54"] == pytest.approx(0.95)
    assert out['median_gp {"init_mutants": 0.5}_54'] == pytest.approx(1.4)


def test_compare_tests_whether_a_kind_is_worse_than_the_metric_search(tmp_path):
    """``p_worse``, ``p_better``: one-sided Mann-Whitney U on every seed's best after k, a run that stopped short read
    at its last best. Three seeds each: all worse gives p_worse 1/20 (the smallest p of 3 against 3), all better 1,
    ties in between; p_better the other way round."""
    from bench.exhaustive_metric import by_k, main

    assert by_k([3.0, 2.0, 1.5], 2) == 2.0 and by_k([3.0, 2.0, 1.5], 54) == 1.5
    table = tmp_path / "t.jsonl"
    table.write_text("")
    sims = [{"seed": s, "pop_size": 20, "generations": 60, "curve": [1.0 + 0.01 * s] * (40 + 10 * s)}
            for s in range(3)]  # fmt: skip
    (tmp_path / "t.jsonl.sim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sims))
    kinds = (("worse", 2.0), ("better", 0.5), ("same", 1.0))
    gp = [{"seed": s, "setting": {"g": g}, "curve": [v + 0.01 * s] * 60} for g, v in kinds for s in range(3)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gp))
    main(["compare", "--table", str(table), "--generations", "60", "--at", "54",
          "--gp-sims", str(tmp_path / "g.jsonl")])  # fmt: skip
    out = json.loads((tmp_path / "t.jsonl.compare.json").read_text())
    assert out["n_metric_54"] == 1 and out["median_all_metric_54"] == pytest.approx(1.01)  # seeds 0, 1 stopped short
    assert out['p_worse_gp {"g": "worse"}_54'] == pytest.approx(0.05)
    assert out['p_worse_gp {"g": "better"}_54'] == pytest.approx(1.0)
    assert out['p_better_gp {"g": "better"}_54'] == pytest.approx(0.05)
    assert out['p_better_gp {"g": "worse"}_54'] == pytest.approx(1.0)
    assert 0.05 < out['p_worse_gp {"g": "same"}_54'] < 1.0
    assert out['median_all_gp {"g": "worse"}_54'] == pytest.approx(2.01)


def test_compare_refuses_without_metric_search_replays_and_names_the_file(tmp_path):
    """Every number compare reports is relative to the simulated metric searches: a table with no ``.sim.jsonl``
    beside it, or one holding only another setting, is an error naming the file and writes no compare.json."""
    from bench.exhaustive_metric import main

    table = tmp_path / "t.jsonl"
    table.write_text("")
    gp = [{"seed": 0, "setting": {"g": 1}, "curve": [1.0] * 60}]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gp))
    args = ["compare", "--table", str(table), "--generations", "60", "--gp-sims", str(tmp_path / "g.jsonl")]
    with pytest.raises(SystemExit, match=r"t\.jsonl\.sim\.jsonl \(missing or empty\)"):
        main(args)
    sims = [{"seed": 0, "pop_size": 20, "generations": 15, "curve": [1.0] * 60}]
    (tmp_path / "t.jsonl.sim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sims))
    with pytest.raises(SystemExit, match=r"pop 20 x 60 generations.*holds pop x generations \[\(20, 15\)\]"):
        main(args)
    with pytest.raises(SystemExit, match=r"for seeds \[3\]"):
        main(args[:4] + ["15", *args[5:], "--seeds", "3"])
    assert not (tmp_path / "t.jsonl.compare.json").exists()
    main(args[:4] + ["15", *args[5:]])
    assert json.loads((tmp_path / "t.jsonl.compare.json").read_text())["median_metric_54"] == pytest.approx(1.0)
