"""How well the symbolic GP's screen (``--tree-screen``) predicts a tree's objective from its sampled mask.

    python bench/gp_screen_quality.py --cache bench/gp_trees_24.jsonl --structure 2:4 --gradients RUN/gradients \
        [--trees 1000] [--archive 60] [--rows 4 1] [--blocks 3] [--repeats 20]

``--trees`` trees of the cache (drawn with seed 0 among those that scored) get their phenotype (``MaskPhenotype``
on the search's runner, the windows of ``gp_simulate.py``; ``--rows`` rows per linear of ``--blocks`` blocks); then,
``--repeats`` times, ``--archive`` of them are drawn as the evaluated trees and each other tree's objective is
predicted as the nearest archived phenotype's (``Screen.predict``). Printed per row count: the mean Spearman
correlation between prediction and objective, and the median true objective of the 20 trees a screen keeps out of 80
drawn, beside the median of the 80 (what an unscreened generation would score), and the seconds per phenotype.
JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    from bench.exhaustive_metric import search_config, spearman, trial_runner
except ImportError:  # run as a script
    from exhaustive_metric import search_config, spearman, trial_runner


def main(argv=None) -> None:
    from optishear.search.screen import MaskPhenotype, Screen
    from optishear.search.trials import read_jsonl
    from optishear_kernels import parse_expr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--structure", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--gradients", required=True, help="a directory of gradient statistics (<run>/gradients)")
    ap.add_argument("--trees", type=int, default=1000)
    ap.add_argument("--archive", type=int, default=60)
    ap.add_argument("--rows", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    cfg = search_config(args, "symbolic", tree_operators="relative", validate_top=0)
    scored = [r for r in read_jsonl(Path(args.cache)) if r["status"] == "ok" and r["objective"] is not None]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(scored), min(args.trees, len(scored)), replace=False)
    trees = [parse_expr(scored[i]["tree"]) for i in pick]
    y = np.array([scored[i]["objective"] for i in pick])
    runner, _ = trial_runner(cfg, gradients=args.gradients)
    out = {"cache": args.cache, "structure": args.structure, "trees": len(trees), "archive": args.archive}
    for rows in args.rows:
        ph = MaskPhenotype(runner, blocks=args.blocks, rows=rows, seed=0)
        t0 = time.perf_counter()
        bits = [ph(t) for t in trees]
        each = (time.perf_counter() - t0) / len(trees)
        ok = np.array([b is not None for b in bits])
        rhos, kept, pools = [], [], []
        for _ in range(args.repeats):
            idx = rng.permutation(np.flatnonzero(ok))
            arch, rest = idx[: args.archive], idx[args.archive :]
            screen = Screen(lambda t, m={trees[i]: bits[i] for i in idx}: m[t], 2)
            screen.tell([trees[i] for i in arch], list(y[arch]))
            pred = np.array([screen.predict(trees[i]) for i in rest])
            rhos.append(spearman(pred, y[rest]))
            pool = rest[:80]
            where = {trees[i]: i for i in pool}
            kept.append(float(np.median([y[where[t]] for t in screen.pick([trees[i] for i in pool], 20)])))
            pools.append(float(np.median(y[pool])))
        out[f"rows_{rows}"] = {"bytes": ph.nbytes, "spearman": float(np.mean(rhos)),
                               "kept_median": float(np.mean(kept)), "pool_median": float(np.mean(pools)),
                               "phenotype_seconds": round(each, 4)}  # fmt: skip
        print(json.dumps({rows: out[f"rows_{rows}"]}), file=sys.stderr)
    runner.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
