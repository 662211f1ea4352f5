"""Command line: a thin wrapper over the Python API. ``optishear prune | eval | search``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

logger = logging.getLogger("optishear")


def _add_model(p):
    p.add_argument("--model", default=None, help="local HF model directory or hub id (default: packaged SmolLM2-135M)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_calib(p):
    p.add_argument("--calib", default=None, help="calibration text: file/dir, or wikitext2 / c4 (default: generated)")
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="optishear", description="Prune Hugging Face causal LMs without retraining.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prune", help="prune a model with one metric and save it with its recipe")
    _add_model(p)
    _add_calib(p)
    p.add_argument("--metric", default=None, help="wanda | magnitude | magnitude-row | ria | 'w:<c>*<u>,x:<c>*<u>'")
    p.add_argument("--sparsity", type=float, default=None)
    p.add_argument("--structure", default=None, help="unstructured (default) or N:M such as 2:4")
    p.add_argument("--block-sparsity", default=None,
                   help="'owl', or a file: JSON list, recipe, or one number per line")  # fmt: skip
    p.add_argument("--owl-m", type=float, default=None, help="OWL outlier threshold M (default 5)")
    p.add_argument("--owl-lambda", type=float, default=None, help="OWL spread lambda (default 0.08)")
    p.add_argument("--recipe", default=None, help="apply a recipe (optishear_recipe.json or a saved model dir)")
    p.add_argument("--targets", nargs="*", default=None, help="fnmatch patterns of linears to prune")
    p.add_argument("--ignore", nargs="*", default=None, help="fnmatch patterns of linears to leave dense")
    p.add_argument("--stats", choices=("sequential", "dense"), default=None)
    p.add_argument("--save", default=None, help="output directory for the pruned model and recipe")
    p.add_argument("--eval-ppl", default=None, help="evaluation text (WikiText-2 test split file)")
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--eval-windows", type=int, default=None)

    e = sub.add_parser("eval", help="perplexity of a model")
    _add_model(e)
    e.add_argument("--ppl", required=True, help="evaluation text (WikiText-2 test split file)")
    e.add_argument("--seqlen", type=int, default=2048)
    e.add_argument("--windows", type=int, default=None)

    try:
        from .search import add_search_parser
    except ImportError:  # pragma: no cover
        add_search_parser = None
    if add_search_parser is not None:
        add_search_parser(sub, _add_model, _add_calib)
    return ap


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for k, v in obj.items():
            if not isinstance(v, (dict, list)):
                print(f"{k}: {v}")


def cmd_prune(args) -> dict:
    from .config import PruneConfig, read_block_sparsity
    from .data import eval_tokens
    from .evaluate import perplexity
    from .models import load_model
    from .pruner import prune
    from .recipe import make_recipe, recipe_config, save_pruned

    cfg = recipe_config(args.recipe) if args.recipe else PruneConfig()
    for name in ("metric", "sparsity", "structure", "calib", "nsamples", "seqlen", "seed", "targets", "ignore",
                 "stats"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.block_sparsity is not None:
        cfg.block_sparsity = "owl" if args.block_sparsity == "owl" else read_block_sparsity(args.block_sparsity)
    for name in ("owl_m", "owl_lambda"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.validate()
    if args.eval_ppl is not None:
        from pathlib import Path

        if not Path(args.eval_ppl).exists():
            raise FileNotFoundError(f"evaluation text {args.eval_ppl} does not exist")
    model, tok = load_model(args.model, device=args.device)
    t0 = time.perf_counter()
    result = prune(model, tok, cfg, progress=not args.quiet)
    out = {"metric": cfg.metric, "structure": cfg.structure, "target_sparsity": cfg.sparsity,
           "sparsity": round(result.sparsity, 6), "prune_seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    logger.info("pruned %d linears: achieved sparsity %.4f", len(result.layer_sparsity), result.sparsity)
    if args.save:
        out["saved"] = str(save_pruned(model, tok, args.save, make_recipe(cfg, result, model)))
    if args.eval_ppl:
        ppl, n = perplexity(model, eval_tokens(args.eval_ppl, tok), args.eval_seqlen, args.eval_windows,
                            progress=not args.quiet)  # fmt: skip
        out.update(ppl=round(ppl, 4), windows=n, eval_seqlen=args.eval_seqlen)
        print(f"perplexity {ppl:.3f} on {n} windows of {args.eval_seqlen} tokens", file=sys.stderr)
    return out


def cmd_eval(args) -> dict:
    from .data import eval_tokens
    from .evaluate import perplexity
    from .models import load_model

    model, tok = load_model(args.model, device=args.device)
    ppl, n = perplexity(model, eval_tokens(args.ppl, tok), args.seqlen, args.windows, progress=not args.quiet)
    print(f"perplexity {ppl:.3f} on {n} windows of {args.seqlen} tokens", file=sys.stderr)
    return {"ppl": round(ppl, 4), "windows": n, "seqlen": args.seqlen}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    handlers = {"prune": cmd_prune, "eval": cmd_eval}
    if args.cmd == "search":
        from .search import cmd_search

        handlers["search"] = cmd_search
    try:
        out = handlers[args.cmd](args)
    except (ValueError, FileNotFoundError, FloatingPointError, FileExistsError) as err:
        print(f"optishear {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    _emit(out, args.json)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
