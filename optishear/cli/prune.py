"""``optishear prune``: prune with one plan (flags, or a recipe with flags on top), save, evaluate."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("optishear")
HELP = "prune a model with one plan (unstructured, N:M, or --structured) and save it with its recipe"


def add_arguments(p) -> None:
    from ..plan import Plan

    Plan.add_arguments(p)
    p.add_argument("--recipe", default=None, help="start from a recipe (optishear_recipe.json or a saved model dir)")
    p.add_argument("--save", default=None, help="output directory for the pruned model and recipe")
    p.add_argument("--eval-ppl", default=None, help="evaluation text (WikiText-2 test split file)")
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--eval-windows", type=int, default=None)
    p.add_argument("--grad-cache", default=None,
                   help="directory of the gradient-statistics cache for metrics that read G "
                        "(default: $OPTISHEAR_CACHE/gradients)")  # fmt: skip


def run(args) -> dict:
    from ..data import eval_tokens
    from ..engine import prune
    from ..models import load_model
    from ..objectives import perplexity
    from ..plan import Plan
    from ..recipe import make_recipe, recipe_plan, save_pruned

    plan = Plan.from_args(args, recipe_plan(args.recipe) if args.recipe else Plan())
    plan.validate()
    if args.eval_ppl is not None and not Path(args.eval_ppl).exists():
        raise FileNotFoundError(f"evaluation text {args.eval_ppl} does not exist")
    model, tok = load_model(args.model, device=args.device)
    t0 = time.perf_counter()
    result = prune(model, tok, plan, progress=not args.quiet, grad_cache=args.grad_cache)
    out = {"metric": plan.metric, "update": plan.update, "structure": plan.structure, "target_sparsity": plan.sparsity,
           "sparsity": round(result.sparsity, 6), "mask_digest": result.mask_digest,
           "prune_seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if result.gradient_seconds:
        out["gradient_seconds"] = round(result.gradient_seconds, 2)
    if result.structure is not None:  # structured: parameters removed, not zeros
        st = result.structure
        out.update(target_rate=plan.rate, reduction=round(st["reduction"], 6), decoder_params=st["params_after"],
                   decoder_params_dense=st["params_before"], plain_loadable=st["plain_loadable"],
                   layer_rates=st["layer_rates"])  # fmt: skip
        logger.info("structured: decoder parameters %d -> %d (%.4f removed)", st["params_before"], st["params_after"],
                    st["reduction"])  # fmt: skip
    else:
        logger.info("pruned %d linears: achieved sparsity %.4f, masks %s", len(result.layer_sparsity), result.sparsity,
                    result.mask_digest)  # fmt: skip
    if args.save:
        out["saved"] = str(save_pruned(model, tok, args.save, make_recipe(plan, result, model)))
    if args.eval_ppl:
        ppl, n = perplexity(model, eval_tokens(args.eval_ppl, tok), args.eval_seqlen, args.eval_windows,
                            progress=not args.quiet)  # fmt: skip
        out.update(ppl=round(ppl, 4), windows=n, eval_seqlen=args.eval_seqlen)
        print(f"perplexity {ppl:.3f} on {n} windows of {args.eval_seqlen} tokens", file=sys.stderr)
    return out
