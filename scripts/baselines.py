"""Dense / magnitude / Wanda / RIA perplexities at 50% unstructured and 2:4 on one model, one load.

    python scripts/baselines.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw \
        --eval ../shared/data/wikitext-2-raw/wiki.test.raw --out runs/baselines.jsonl

Writes one JSON line per row as it finishes and prints a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from optishear import CalibSpec, Plan, WeightSnapshot, calibration_windows, eval_tokens, load_model
from optishear import model_linears, perplexity, prune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--metrics", nargs="*", default=["magnitude", "wanda", "ria"])
    ap.add_argument("--structures", nargs="*", default=["unstructured", "2:4"])
    ap.add_argument("--out", default="runs/baselines.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(args.model)
    windows = calibration_windows(CalibSpec(args.calib, args.nsamples, args.seqlen, 0), tok)
    tokens = eval_tokens(args.eval, tok)
    snap = WeightSnapshot().save_all(model_linears(model))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with out.open("w") as f:

        def emit(row):
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(row, flush=True)

        ppl, n = perplexity(model, tokens, args.seqlen, args.eval_windows, progress=False)
        emit({"method": "dense", "structure": "-", "ppl": ppl, "windows": n, "sparsity": 0.0})
        for structure in args.structures:
            for metric in args.metrics:
                t0 = time.perf_counter()
                res = prune(model, tok, Plan(metric=metric, sparsity=0.5, structure=structure,
                            nsamples=args.nsamples, seqlen=args.seqlen), windows=windows, progress=False)  # fmt: skip
                secs = time.perf_counter() - t0
                ppl, n = perplexity(model, tokens, args.seqlen, args.eval_windows, progress=False)
                emit({"method": metric, "structure": structure, "ppl": ppl, "windows": n, "sparsity": res.sparsity,
                      "prune_seconds": secs})  # fmt: skip
                snap.restore()
    print("\n| method | structure | sparsity | WikiText-2 ppl |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['structure']} | {r['sparsity']:.3f} | {r['ppl']:.2f} |")


if __name__ == "__main__":
    main()
