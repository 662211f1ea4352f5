"""How good are the trees one move from the GP's seeds? Every one-move neighbour, looked up in a tree cache.

    python bench/gp_neighbours.py --cache bench/gp_trees_24.jsonl --structure 2:4 --below 1.78
        [--table bench/exhaustive_metric_24.jsonl] [--score --gradients RUN/gradients]

The symbolic search's first generation is its seeds plus trees a mutation away from them (``--tree-init-mutants``),
and at a budget of 54 distinct evaluations a run is mostly decided there. This lists, for each of the GP's moves
(point mutation, insertion, shrink, and subtree crossover between two seeds), every distinct canonical child of the
seeds (``--tree-operators relative``: five seeds), how many of them the cache (``gp_simulate.py``'s, one JSON line
per canonical tree) has scored, how many distinct masks those make (the search's dedupe; failed trees left out) and
how many of the masks score below ``--below``; with ``--table``, the same among the meta-metric space's points and
classes (``exhaustive_metric.py``'s table) for comparison. A child the cache does not hold is counted as unknown, or
with ``--score`` scored once by the search's ``TrialRunner`` and appended to the cache (``gp_simulate.Oracle``: the
same windows, ``--sparsity``/``--structure``, G from ``--gradients``). Subtree mutation is left out (its fresh random
subtrees are not a finite neighbourhood).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from optishear_kernels import Expr, canonical, parse_expr
from optishear_kernels.expr import ARITY, BINARY, TERMINALS

from optishear.search.symbolic import OPERATOR_SETS, builtin_seeds, replace_subtree, subtrees

try:
    from bench.gp_simulate import Oracle, search_config
except ImportError:  # run as a script: its own directory is on the path
    from gp_simulate import Oracle, search_config


def point(tree: Expr, operators) -> list[Expr]:
    unary = [o for o in operators if ARITY[o] == 1]
    out = []
    for path, node in subtrees(tree):
        pool = TERMINALS if not node.args else unary if ARITY[node.op] == 1 else BINARY
        out += [replace_subtree(tree, path, Expr(op, node.args)) for op in pool if op != node.op]
    return out


def insertion(tree: Expr, operators) -> list[Expr]:  # below the root (above it for a lone terminal), as _insert
    out = []
    nodes = list(subtrees(tree))
    for path, node in nodes[1:] or nodes:
        for op in operators:
            if ARITY[op] == 1:
                out.append(replace_subtree(tree, path, Expr(op, (node,))))
                continue
            for t in TERMINALS:
                leaf = Expr(t, ())
                out += [replace_subtree(tree, path, Expr(op, (node, leaf))),
                        replace_subtree(tree, path, Expr(op, (leaf, node)))]  # fmt: skip
    return out


def shrink(tree: Expr, operators) -> list[Expr]:
    return [replace_subtree(tree, path, a) for path, node in subtrees(tree) for a in node.args]


def crossover(a: Expr, b: Expr) -> list[Expr]:
    return [replace_subtree(a, path, sub) for path, _ in subtrees(a) for _, sub in subtrees(b)]


def objective(rec: dict) -> float:
    """A cached tree's objective; a failed tree (NaN or infinite scores) as infinite."""
    v = rec.get("objective")
    return v if rec.get("status") == "ok" and v is not None else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--below", type=float, required=True, help="an objective threshold: the share of trees below it")
    ap.add_argument("--table", default=None, help="exhaustive_metric.py's table of the meta-metric space")
    ap.add_argument("--tree-size", type=int, default=17)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--structure", default="unstructured")
    ap.add_argument("--score", action="store_true", help="score the children the cache does not hold")
    ap.add_argument("--gradients", default=None, help="a directory of gradient statistics (<run>/gradients)")
    args = ap.parse_args()
    oracle = Oracle(args, search_config(args, "symbolic", tree_operators="relative", validate_top=0))
    operators = OPERATOR_SETS["relative"]
    seeds = [canonical(parse_expr(s)) for s in builtin_seeds("relative")]
    moves = {"point": [c for s in seeds for c in point(s, operators)],
             "insertion": [c for s in seeds for c in insertion(s, operators)],
             "shrink": [c for s in seeds for c in shrink(s, operators)],
             "crossover of two seeds": [c for a in seeds for b in seeds if a != b
                                        for c in crossover(a, b)]}  # fmt: skip
    print(f"| move | distinct children | in the cache | distinct masks | masks below {args.below:g} | share |")
    print("|---|---|---|---|---|---|")
    good: dict[str, float] = {}
    for name, children in moves.items():
        trees = {t for t in map(canonical, children) if t.size <= args.tree_size} - set(seeds)
        if args.score:
            for t in sorted(trees, key=lambda t: t.text):
                oracle(t)
        recs = [oracle.cache[t.text] for t in trees if t.text in oracle.cache]
        masks = {r["mask_hash"]: objective(r) for r in recs if objective(r) < float("inf")}  # as the search dedupes
        hits = sum(v < args.below for v in masks.values())
        good.update({r["tree"]: objective(r) for r in recs if objective(r) < args.below})
        print(f"| {name} | {len(trees)} | {len(recs)} | {len(masks)} | {hits} | {hits / max(1, len(masks)):.1%} |")
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines()]
        objectives = {r["mask_hash"]: r["objective"] for r in rows}  # one per canonical class
        n = sum(v < args.below for v in objectives.values())
        print(f"| (meta-metric space) | {len(rows)} | {len(rows)} | {len(objectives)} | {n} | "
              f"{n / len(objectives):.1%} |")  # fmt: skip
    for text, v in sorted(good.items(), key=lambda kv: kv[1]):
        print(f"  {v:.4f}  {text}")
    if oracle.runner is not None:
        oracle.runner.close()


if __name__ == "__main__":
    main()
