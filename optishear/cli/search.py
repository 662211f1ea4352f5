"""``optishear search``: a search over the plan's space, written to ``--out`` as it runs."""

from __future__ import annotations

from pathlib import Path

HELP = ("search the metric and/or block sparsities (NSGA-III / NSGA-II), symbolic metrics (GP) or structured "
        "per-block rates, resumable")


def add_arguments(p) -> None:
    from ..search.config import SearchConfig
    from ..search.executor import ExecutorConfig

    SearchConfig.add_arguments(p)
    ExecutorConfig.add_arguments(p)
    p.add_argument("--out", required=True, help="run directory (trials.jsonl, manifest.json, recipe...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same model, data and config)")


def run(args) -> dict:
    from ..models import load_model
    from ..search import search
    from ..search.config import SearchConfig
    from ..search.executor import ExecutorConfig

    cfg = SearchConfig.from_args(args)
    if cfg.space == "structured" and not cfg.plan.structured:  # --space structured implies --structured
        cfg.plan.structured = True
    cfg.validate()
    executor = ExecutorConfig.from_args(args)
    executor.validate()  # before the model loads: a missing Ray or a malformed address fails at once
    model, tok = load_model(args.model, device=args.device)  # Ray workers load the same directory (on every node)
    res = search(model, tok, cfg, args.out, resume=args.resume, progress=not args.quiet, executor=executor)
    if cfg.space == "structured":
        rec = res.recipe or {}
        return {"space": "structured", "rate": cfg.plan.rate, "importance": cfg.plan.importance,
                "operators": cfg.operators, "objective": res.objective, "validation": res.validation,
                "reduction": rec.get("achieved", {}).get("sparsity"), "trials": res.trials, "distinct": res.distinct,
                "failed": res.failed, "seconds": round(res.seconds, 1),
                "layer_rates": rec.get("plan", {}).get("layer_rates"),
                "operator_stats": rec.get("search", {}).get("operators"), "out": res.out_dir,
                "recipe": str(Path(res.out_dir) / "optishear_recipe.json")}  # fmt: skip
    return {"metric": res.metric, "objective": res.objective, "validation": res.validation, "trials": res.trials,
            "distinct": res.distinct, "failed": res.failed, "seconds": round(res.seconds, 1),
            "block_sparsity": res.block_sparsity, "out": res.out_dir,
            "recipe": str(Path(res.out_dir) / "optishear_recipe.json"),
            **({"gradient_seconds": round(res.gradient_seconds, 1)} if res.gradient_seconds is not None else {})}
