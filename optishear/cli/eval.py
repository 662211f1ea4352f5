"""``optishear eval``: perplexity and/or zero-shot accuracy of a model (the bundled one when ``--model`` is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "perplexity and zero-shot accuracy of a model"
ZEROSHOT_NAME = "optishear_zeroshot.json"


def add_arguments(p) -> None:
    p.add_argument("--ppl", default=None, help="evaluation text (WikiText-2 test split file)")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--windows", type=int, default=None)
    p.add_argument("--tasks", default=None,
                   help="zero-shot tasks through lm-eval, comma-separated: boolq,rte,hellaswag,winogrande,arc_easy,"
                        "arc_challenge,openbookqa,piqa,lambada_openai (needs optishear[eval])")  # fmt: skip
    p.add_argument("--tasks-data", default=None, help="directory of local task files (as shared/data/zero-shot)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    p.add_argument("--out", default=None,
                   help=f"zero-shot results JSON (default: {ZEROSHOT_NAME} beside the model, in its directory)")


def run(args) -> dict:
    from ..data import eval_tokens
    from ..models import load_model, resolve_model_path
    from ..objectives import perplexity
    from ..recipe import write_json_atomic

    if args.ppl is None and args.tasks is None:
        raise ValueError("nothing to evaluate: give --ppl TEXT and/or --tasks T1,T2 --tasks-data DIR")
    if args.ppl is not None and not Path(args.ppl).is_file():
        raise FileNotFoundError(f"evaluation text {args.ppl} does not exist")
    out_path = None
    if args.tasks is not None:
        from ..objectives.zeroshot import task_files

        if args.tasks_data is None:
            raise ValueError("--tasks needs --tasks-data DIR (local task files; nothing is downloaded)")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        task_files(args.tasks, args.tasks_data)  # unknown tasks and missing files fail before the model loads
        model_dir = Path(resolve_model_path(args.model))
        out_path = Path(args.out) if args.out else (model_dir / ZEROSHOT_NAME if model_dir.is_dir() else None)
        if out_path is None:
            raise ValueError("the model is not a local directory: give --out FILE for the zero-shot results")
    model, tok = load_model(args.model, device=args.device)
    out: dict = {}
    if args.ppl is not None:
        ppl, n = perplexity(model, eval_tokens(args.ppl, tok), args.seqlen, args.windows, progress=not args.quiet)
        print(f"perplexity {ppl:.3f} on {n} windows of {args.seqlen} tokens", file=sys.stderr)
        out.update(ppl=round(ppl, 4), windows=n, seqlen=args.seqlen)
    if args.tasks is not None:
        from ..objectives.zeroshot import zero_shot

        res = zero_shot(model, tok, args.tasks, args.tasks_data, limit=args.limit, batch_size=args.batch_size,
                        progress=not args.quiet)  # fmt: skip
        res["model"] = str(args.model) if args.model else "bundled SmolLM2-135M-Instruct"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_path, res)
        for t, row in res["tasks"].items():
            norm = f"  acc_norm {row['acc_norm']:.4f}" if "acc_norm" in row else ""
            print(f"{t:15s} acc {row['acc']:.4f}{norm}  (n={row['n']}, mean uses {row['mean_metric']})",
                  file=sys.stderr)  # fmt: skip
        print(f"zero-shot mean {res['mean']:.4f} over {len(res['tasks'])} tasks; saved {out_path}", file=sys.stderr)
        out.update(zeroshot=res, zeroshot_mean=round(res["mean"], 4), zeroshot_file=str(out_path))
    return out
