"""Does the search objective rank metrics as perplexity does? Score metrics with both objectives, one load.

    python scripts/proxy_check.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw \
        --eval ../shared/data/wikitext-2-raw/wiki.test.raw \
        --metrics wanda "w:rowcol*square,x:mean*sqrt" "w:mean*none,x:rowcol*none"

For each metric: the Frobenius and KL objectives exactly as a search with these settings computes them (fast
statistics), and the WikiText-2 perplexity of the same metric applied as ``optishear prune`` applies it
(sequential statistics on the calibration windows). One JSON line per metric, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging

from optishear import CalibSpec, Plan, calibration_windows, eval_tokens, load_model, perplexity, prune
from optishear.search import SearchConfig, TrialRunner, search_plan_defaults


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--metrics", nargs="+", required=True)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--objective-windows", type=int, default=4)
    ap.add_argument("--objective-seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objectives", nargs="+", choices=("fro", "kl"), default=["fro", "kl"])
    ap.add_argument("--no-ppl", action="store_true", help="objectives only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(args.model)
    windows = calibration_windows(CalibSpec(args.calib, args.nsamples, args.seqlen, args.seed), tok)
    prompts = (calibration_windows(CalibSpec(args.calib, args.objective_windows, args.objective_seqlen,
                                             args.seed + 1), tok) if args.objective_windows else None)  # fmt: skip
    tokens = eval_tokens(args.eval, tok)
    rows = {m: {"metric": m} for m in args.metrics}
    for objective in args.objectives:
        base = search_plan_defaults()
        plan = Plan(**{**base.to_dict(), "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed})
        runner = TrialRunner(model, windows, SearchConfig(plan=plan, objective=objective), objective_windows=prompts)
        for m in args.metrics:
            rows[m][objective] = runner.run(runner.trial_plan(m, [args.sparsity] * len(runner.linears)))["objective"]
        runner.close()
    for m in args.metrics:
        if args.no_ppl:
            print(json.dumps(rows[m]), flush=True)
            continue
        cfg = Plan(metric=m, sparsity=args.sparsity, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        prune(model, plan=cfg, windows=windows, progress=False)
        rows[m]["ppl"] = perplexity(model, tokens, 512, args.eval_windows, progress=False)[0]
        runner.snapshot.restore()
        print(json.dumps(rows[m]), flush=True)
    cols = [*args.objectives, *([] if args.no_ppl else ["ppl"])]
    print("\n| metric | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for r in rows.values():
        print(f"| `{r['metric']}` | " + " | ".join(f"{r[c]:.6g}" for c in cols) + " |")


if __name__ == "__main__":
    main()
