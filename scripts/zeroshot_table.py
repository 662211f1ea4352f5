"""The README's zero-shot table: dense, Wanda, SparseGPT and a searched policy on SmolLM2-135M, all nine tasks.

    python scripts/zeroshot_table.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw \
        --tasks-data ../shared/data/zero-shot --limit 100 --out runs12/zeroshot.jsonl \
        [--recipe runs12/search-policy50/optishear_recipe.json]

Each model is pruned in memory with the README's protocol (calibration 32 x 512 from the valid split, seed 0,
sequential statistics; a recipe's plan with ``stats=sequential``), then evaluated by ``optishear.zero_shot`` on the
first ``--limit`` documents of every task. One JSON line per model as it finishes (resumable: models already in
the file are skipped), with the pruning and the evaluation times apart.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", required=True)
    ap.add_argument("--tasks-data", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default=None, help="a searched policy's recipe (its plan, sequential statistics)")
    ap.add_argument("--models", default="dense,wanda,sparsegpt,policy")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    from optishear import Plan, load_model, prune, zero_shot
    from optishear.objectives.zeroshot import TASKS
    from optishear.recipe import recipe_plan

    base = Plan(sparsity=0.5, calib=args.calib, nsamples=32, seqlen=512, seed=0, batch_size=4)
    plans = {"dense": None, "wanda": replace(base, metric="wanda"), "sparsegpt": replace(base, metric="sparsegpt")}
    if args.recipe:
        plans["policy"] = replace(recipe_plan(args.recipe), stats="sequential")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = out.read_text().splitlines() if out.exists() else []
    done = {json.loads(line)["model"] for line in lines if line.strip()}
    for name in args.models.split(","):
        if name in done or name not in plans:
            continue
        model, tok = load_model()
        t0 = time.perf_counter()
        sparsity = 0.0
        if plans[name] is not None:
            sparsity = prune(model, tok, plans[name], progress=False).sparsity
        t1 = time.perf_counter()
        res = zero_shot(model, tok, TASKS, args.tasks_data, limit=args.limit, batch_size=args.batch_size,
                        progress=False)  # fmt: skip
        row = {"model": name, "plan": plans[name].to_dict() if plans[name] else None, "sparsity": sparsity,
               "prune_seconds": round(t1 - t0, 1), "eval_seconds": round(time.perf_counter() - t1, 1), **res}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: mean {res['mean']:.4f} ({row['eval_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
