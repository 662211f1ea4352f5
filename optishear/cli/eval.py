"""``optishear eval``: perplexity of a model."""

from __future__ import annotations

import sys

HELP = "perplexity of a model"


def add_arguments(p) -> None:
    p.add_argument("--ppl", required=True, help="evaluation text (WikiText-2 test split file)")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--windows", type=int, default=None)


def run(args) -> dict:
    from ..data import eval_tokens
    from ..models import load_model
    from ..objectives import perplexity

    model, tok = load_model(args.model, device=args.device)
    ppl, n = perplexity(model, eval_tokens(args.ppl, tok), args.seqlen, args.windows, progress=not args.quiet)
    print(f"perplexity {ppl:.3f} on {n} windows of {args.seqlen} tokens", file=sys.stderr)
    return {"ppl": round(ppl, 4), "windows": n, "seqlen": args.seqlen}
