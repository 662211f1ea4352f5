"""The symbolic search's GP replayed over many optimizer seeds at the cost of the trees no seed has scored yet.

    python bench/gp_simulate.py --cache bench/gp_trees_50.jsonl --seeds 0 1 2 3 4 --until 85 [--init-mutants 0.5]
        [--survival plus] [--tree-seeds TREE ..] [--prefill RUN ..] [--structure 2:4] [--gradients DIR]

A tree's objective is deterministic (the search's windows and statistics with ``--seed 0``), so a search is its
optimizer's trajectory over one function: ``GPOptimizer`` with ``--search-seed S`` asks, each asked tree is answered
from the cache (``--cache``, one JSON line per canonical tree: objective, mask digest, status), and a tree that is not
there is scored once through the search's own ``TrialRunner`` (the same windows as ``optishear search --space
symbolic --seed 0``: statistics 32 x 512 from wiki.valid.raw, dense statistics, KL on 4 x 256 prompts drawn apart)
and appended. ``--prefill`` reads the trees of earlier real searches (their ``trials.jsonl``) into the cache first.
The run stops at ``--until`` distinct evaluations (new mask digests, failed trees not counting, as
``exhaustive_metric.run_curve`` counts a real run). Each seed's best-after-k curve is written beside the cache
(``<cache>.sim.jsonl``, one line per GP setting and seed, a seed simulated again replacing its line), in the form
``exhaustive_metric.py compare`` reads (``--gp-sims``). Two simulations may share one cache file: each reads the
trees the other appended before it scores a tree it lacks.

Trees reading G need the gradient statistics of the search's windows: ``--gradients DIR`` is a directory holding them
(a symbolic search's ``<out>/gradients``), reloaded and never recomputed; without it, they are computed once there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from optishear.search.trials import append_jsonl, jsonl_records, read_jsonl

try:
    from bench.exhaustive_metric import rewrite_jsonl, search_config, trial_runner
except ImportError:  # run as a script: its own directory is on the path
    from exhaustive_metric import rewrite_jsonl, search_config, trial_runner

# GPOptimizer settings not in SearchConfig
GP_KNOBS = ("p_crossover", "p_subtree", "p_point", "p_insert", "p_shrink", "tournament", "elitism", "crossover")


class Oracle:
    """Objective of a canonical tree: from the cache, else scored once by the search's ``TrialRunner``."""

    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.path = Path(args.cache)
        self.cache: dict[str, dict] = {}
        self._read = 0  # bytes of the cache file read so far
        self.refresh()
        self.runner = None
        self.scored = 0

    def refresh(self) -> None:
        """Read the cache lines appended since the last read, by this process or another one simulating beside it
        on the same file (each line is one ``write``; a line not ended yet is left for the next read)."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self._read)
            tail = f.read()
        done = tail.rfind(b"\n") + 1
        self._read += done
        for rec in jsonl_records(tail[:done].decode(), self.path):  # a cut line's tree is scored again if asked
            self.cache.setdefault(rec["tree"], rec)

    def prefill(self, runs: list[str]) -> None:
        for run in runs:
            for r in read_jsonl(Path(run) / "trials.jsonl"):
                tree = r["metric"].removeprefix("expr:")
                if tree not in self.cache:  # answered by an earlier tree's mask digest too: the same objective
                    self._add({"tree": tree, "objective": r["objective"], "mask_hash": r["mask_hash"],
                               "status": r["status"], "source": str(run)})  # fmt: skip

    def _add(self, rec: dict) -> None:
        rec.update(sparsity_target=self.args.sparsity, structure=self.args.structure)
        append_jsonl(self.path, rec)
        self.cache[rec["tree"]] = rec

    def _start(self) -> None:
        if self.runner is None:
            self.runner, _ = trial_runner(self.cfg, gradients=self.args.gradients)

    def __call__(self, tree) -> dict:
        if tree.text not in self.cache:
            self.refresh()  # another process may have scored it meanwhile
        if tree.text not in self.cache:
            self._start()
            rec = self.runner.run(self.runner.plan_for({"metric": f"expr:{tree.text}"}), {})
            self.scored += 1
            self._add({"tree": tree.text, "objective": rec["objective"], "mask_hash": rec["mask_hash"],
                       "status": rec["status"], "seconds": round(rec["seconds"], 3),
                       "source": "gp_simulate"})  # fmt: skip
            print(f"  scored {tree.text}: {rec['objective']}", file=sys.stderr)
        return self.cache[tree.text]


def simulate(oracle, cfg, seed: int, until: int, settings: dict | None = None) -> dict:
    """One GP trajectory (``--space symbolic``'s GP for ``cfg`` with optimizer seed ``seed``, ``settings`` overriding
    its other settings), stopped after ``until`` distinct evaluations; its best-after-k curve. With
    ``cfg.tree_screen``, the screen's phenotypes come from the oracle's runner (the model is loaded even when every
    tree is cached)."""
    from dataclasses import replace

    from optishear.search.symbolic import SymbolicSpace, gp_optimizer, screen_for

    cfg = replace(cfg, search_seed=seed, generations=10**6)
    settings = dict(settings or {})
    if cfg.tree_screen:
        oracle._start()
        settings["screen"] = screen_for(cfg, oracle.runner)
    opt = gp_optimizer(cfg, SymbolicSpace("symbolic", cfg, 1), **settings)
    masks: set[str] = set()
    curve: list[float] = []
    trials = 0
    best_tree = None
    while len(curve) < until:
        pop = opt.ask()
        F = np.zeros((len(pop), 1))
        ok = np.ones(len(pop), dtype=bool)
        for j, t in enumerate(pop):
            r = oracle(t)
            trials += 1
            if r["status"] != "ok" or r["objective"] is None or not math.isfinite(r["objective"]):
                ok[j] = False
                continue
            F[j, 0] = r["objective"]
            if r["mask_hash"] not in masks and len(curve) < until:
                masks.add(r["mask_hash"])
                if not curve or r["objective"] < curve[-1]:
                    best_tree = t.text
                curve.append(min(r["objective"], curve[-1] if curve else r["objective"]))
        opt.tell(F, ok)
    out = {"seed": seed, "trials": trials, "generations": opt.generation, "best": curve[-1], "best_tree": best_tree,
           "curve": curve}  # fmt: skip
    if cfg.tree_screen:
        out.update(phenotypes=settings["screen"].computed, screen_seconds=round(settings["screen"].seconds, 1))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--prefill", nargs="*", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--until", type=int, default=85)
    ap.add_argument("--pop-size", type=int, default=20)
    ap.add_argument("--tree-size", type=int, default=17)
    ap.add_argument("--tree-operators", default="relative")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--structure", default="unstructured")
    ap.add_argument("--gradients", default=None, help="a directory of gradient statistics (<run>/gradients)")
    ap.add_argument("--init-mutants", type=float, default=None)
    ap.add_argument("--survival", default=None, help="the GP's survival (--tree-survival): generational, plus")
    ap.add_argument("--p-crossover", type=float, default=None)
    ap.add_argument("--p-subtree", type=float, default=None)
    ap.add_argument("--p-point", type=float, default=None)
    ap.add_argument("--p-insert", type=float, default=None)
    ap.add_argument("--p-shrink", type=float, default=None)
    ap.add_argument("--tournament", type=int, default=None)
    ap.add_argument("--elitism", type=int, default=None)
    ap.add_argument("--crossover", default=None, help="the GP's crossover: subtree (the default), one-point")
    ap.add_argument("--screen", type=int, default=0, help="the search's --tree-screen K (0: off)")
    ap.add_argument("--tree-seeds", nargs="+", default=[],
                    help="the search's --tree-seeds: trees after the built-in seeds")  # fmt: skip
    args = ap.parse_args(argv)
    cfg = search_config(args, "symbolic", pop_size=args.pop_size, tree_size=args.tree_size,
                        tree_operators=args.tree_operators, tree_init_mutants=args.init_mutants or 0.0,
                        tree_survival=args.survival or "generational", tree_seeds=args.tree_seeds,
                        tree_screen=args.screen,
                        validate_top=0)  # fmt: skip
    cfg.validate()
    oracle = Oracle(args, cfg)
    oracle.prefill(args.prefill)
    knobs = {k: getattr(args, k) for k in GP_KNOBS if getattr(args, k) is not None}
    setting = {"pop_size": args.pop_size, "tree_size": args.tree_size, "tree_operators": args.tree_operators, **knobs}
    if args.tree_seeds:
        setting["tree_seeds"] = args.tree_seeds
    if args.init_mutants is not None:  # the key the sims were recorded under
        setting["init_mutants"] = args.init_mutants
    if args.survival is not None:
        setting["survival"] = args.survival
    if args.screen:
        setting["screen"] = args.screen
    out = Path(str(args.cache) + ".sim.jsonl")
    for s in args.seeds:
        t0 = time.perf_counter()
        r = simulate(oracle, cfg, s, args.until, knobs)
        r.update(setting=setting, scored=oracle.scored, seconds=round(time.perf_counter() - t0, 1))
        rewrite_jsonl(out, [x for x in read_jsonl(out) if (x["setting"], x["seed"]) != (setting, s)] + [r])
        at = {k: r["curve"][k - 1] for k in (20, 54, 85) if len(r["curve"]) >= k}
        print(json.dumps({"seed": s, "setting": setting, "at": at, "best_tree": r["best_tree"],
                          "generations": r["generations"], "scored": oracle.scored}), file=sys.stderr)  # fmt: skip
    if oracle.runner is not None:
        oracle.runner.close()


if __name__ == "__main__":
    main()
