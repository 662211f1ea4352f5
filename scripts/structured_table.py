"""The structured-pruning table: perplexity, parameters and file size of SmolLM2-135M pruned structurally.

    python scripts/structured_table.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw \
        --eval ../shared/data/wikitext-2-raw/wiki.test.raw --out runs/structured-table
    python scripts/structured_table.py ... --recipe runs/structured-30-ga/optishear_recipe.json --name searched-ga

Rows: dense, then for each rate magnitude / Wanda-sp / FLAP at uniform rates and FLAP adaptive; ``--recipe`` adds the
row a (search) recipe describes, applied with ``--stats`` (default: sequential, as the baselines). Calibration 32 x 512
from the calibration text (seed 0), perplexity on the first 40 windows of 512 tokens of the evaluation text. Each row
is saved (``save_pruned``) to measure its file, and written to ``results.jsonl`` as it finishes; rows already there are
skipped, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from optishear import Plan, eval_tokens, load_model, make_recipe, perplexity, prune, save_pruned
from optishear.models.surgery import decoder_params
from optishear.recipe import recipe_plan

logger = logging.getLogger("structured_table")
BASELINES = [("magnitude", "magnitude", None), ("wanda-sp", "wanda-sp", None), ("flap-uniform", "flap", None),
             ("flap-adaptive", "flap", "adaptive")]  # fmt: skip


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def run_row(name: str, plan: Plan | None, args, done: set, results: Path) -> None:
    if name in done:
        logger.info("%s: already in %s", name, results)
        return
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    before_dec, before_all = decoder_params(model), sum(p.numel() for p in model.parameters())
    row = {"name": name}
    if plan is not None:
        res = prune(model, tok, plan, progress=False)
        out = save_pruned(model, tok, Path(args.out) / name, make_recipe(plan, res, model))
        lr = plan.layer_rates
        row.update(importance=plan.importance, layer_rates="uniform" if lr is None else lr if isinstance(lr, str)
                   else "given", stats=plan.stats, target=plan.rate, reduction=res.sparsity,
                   plain_loadable=res.structure["plain_loadable"], prune_seconds=round(res.seconds, 1),
                   attention_rates=res.structure["layer_rates"]["attention"],
                   mlp_rates=res.structure["layer_rates"]["mlp"])  # fmt: skip
    else:
        out = Path(args.out) / name
        if not out.exists():
            save_pruned(model, tok, out, {"format": "dense"})
        row.update(reduction=0.0)
    ppl, n = perplexity(model, eval_tokens(args.eval, tok), args.eval_seqlen, args.eval_windows, progress=False)
    row.update(ppl=ppl, windows=n, decoder_params=decoder_params(model), decoder_params_dense=before_dec,
               params=sum(p.numel() for p in model.parameters()), params_dense=before_all, file_bytes=_size(out),
               seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    logger.info("%s: ppl %.3f, reduction %.4f, %d bytes", name, ppl, row["reduction"], row["file_bytes"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/structured-table")
    ap.add_argument("--rates", type=float, nargs="*", default=[0.2, 0.3])
    ap.add_argument("--stats", default="sequential", choices=("sequential", "dense"))
    ap.add_argument("--recipe", default=None, help="add the row this recipe describes (a search's result)")
    ap.add_argument("--name", default=None, help="the recipe row's name")
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {json.loads(line)["name"] for line in results.read_text().splitlines() if line.strip()} \
        if results.is_file() else set()  # fmt: skip
    base = dict(structured=True, calib=args.calib, nsamples=32, seqlen=512, seed=0, batch_size=4, stats=args.stats)
    if args.recipe:
        plan = recipe_plan(args.recipe)
        from dataclasses import replace

        plan = replace(plan, stats=args.stats, calib=args.calib, batch_size=4)
        run_row(args.name or Path(args.recipe).parent.name, plan, args, done, results)
        return
    run_row("dense", None, args, done, results)
    for rate in args.rates:
        for name, importance, layer_rates in BASELINES:
            run_row(f"{name}-{round(rate * 100)}", Plan(**base, rate=rate, importance=importance,
                                                       layer_rates=layer_rates), args, done, results)  # fmt: skip


if __name__ == "__main__":
    main()
