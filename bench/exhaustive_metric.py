"""Every ranking class of the meta-metric space (318 of 2,401 points), scored on SmolLM2-135M with the search's own
objective: the ground truth that the metric search and its proxy are measured against.

    python bench/exhaustive_metric.py table --out bench/exhaustive_metric_50.jsonl [--update sparsegpt]
    python bench/exhaustive_metric.py ppl --table bench/exhaustive_metric_50.jsonl --top 20
    python bench/exhaustive_metric.py simulate --table bench/exhaustive_metric_50.jsonl --seeds 0 1 2 3 4
    python bench/exhaustive_metric.py report --table bench/exhaustive_metric_50.jsonl
    python bench/exhaustive_metric.py compare --table bench/exhaustive_metric_50.jsonl --runs RUN [RUN ..] --at 54
        [--gp-sims bench/gp_trees_50.jsonl.sim.jsonl]

``table``: one trial per class through the search's ``TrialRunner`` (the same windows as ``optishear search`` with
its defaults: statistics 32 x 512 from wiki.valid.raw seed 0, dense statistics, KL on 4 x 256 prompts drawn apart),
one JSON line per class as it finishes (resumable: classes already in the file are skipped).
``ppl``: the ``--top`` classes by objective pruned with the same statistics and evaluated on the first 40 windows of
512 tokens of wiki.test.raw (``<table>.ppl.jsonl``, resumable).
``simulate``: the metric search's NSGA-III (``PymooOptimizer`` over ``VectorSpace``; by default population 20, 15
generations as the README's metric searches, where ``optishear search`` defaults to 10; eta 5) answered from the
table instead of pruning: the objective of a class is deterministic, so this is the search's trajectory without its
cost. For each optimizer seed: the number of
distinct classes evaluated until the exhaustive optimum first appears (``<table>.sim.jsonl``).
``--eliminate-duplicates`` replays the search with that flag (its lines are marked and ``compare`` leaves them out).
``compare``: the best objective after ``--at`` distinct evaluations, the simulated metric searches (each optimizer
seed of one setting) beside real search runs (any space: a symbolic search's ``trials.jsonl``) and the GP's
simulated runs (``bench/gp_simulate.py``, one group per GP setting), seed by seed and the median; the question of
Pruner-Zero's goal "no worse than the meta-metric search at the same number of distinct evaluations"
(``<table>.compare.json``). The medians count the runs that made ``k`` distinct evaluations; ``median_all_*`` reads a
run that stopped short at its last best, and ``p_worse_<kind>_<k>`` is the one-sided Mann-Whitney U p-value that a
kind's best after k is larger (worse) than the metric search's, over those same values.
``report``: rank of Wanda, the optimum, the search's results and the Spearman correlation between objective and
perplexity over the top classes (``<table>.report.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from optishear.search.trials import append_jsonl, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw"


def classes() -> list[tuple[int, int, int, int]]:
    from optishear_kernels import all_configs

    return sorted({c.canonical().as_tuple() for c in all_configs()})


def search_config(args, space: str = "metric", **fields):
    """The search configuration the tables are scored with: ``optishear search``'s plan defaults with the args'
    sparsity, structure and update, calibration from wiki.valid.raw."""
    from optishear import Plan
    from optishear.search import SearchConfig, search_plan_defaults

    plan = Plan(**{**search_plan_defaults().to_dict(), "sparsity": args.sparsity, "structure": args.structure,
                   "calib": str(WIKI / "wiki.valid.raw"), "update": getattr(args, "update", "none")})  # fmt: skip
    return SearchConfig(plan=plan, space=space, **fields)


def trial_runner(cfg, gradients=None):
    """The search's ``TrialRunner`` for ``cfg`` on the bundled model (its statistics and objective windows, as
    ``optishear search`` draws them), and the tokenizer. ``gradients``: a directory of the search's gradient
    statistics for trees that read G (reloaded, computed there when absent)."""
    from optishear.models import load_model
    from optishear.search import TrialRunner, search_gradients, search_windows

    model, tok = load_model()
    sets = search_windows(cfg, tok, model)
    grads = None
    if gradients is not None:  # the run directory holding <run>/gradients: reloaded from there
        grads = search_gradients(cfg, model, sets["statistics"].tokens, Path(gradients).parent, False)
    runner = TrialRunner(model, sets["statistics"].tokens, cfg, objective_windows=sets["objective"].tokens,
                         gradients=grads)  # fmt: skip
    return runner, tok


def cmd_table(args) -> None:
    from optishear_kernels import MetricConfig

    out = Path(args.out)
    done = {tuple(r["class"]) for r in read_jsonl(out)}
    todo = [c for c in classes() if c not in done]
    if args.limit:
        todo = todo[: args.limit]
    runner, _ = trial_runner(search_config(args))
    known: dict = {}
    t0 = time.perf_counter()
    for i, c in enumerate(todo):
        spec = MetricConfig(*c).spec
        rec = runner.run(runner.plan_for({"metric": spec}), known)
        append_jsonl(out, {"class": list(c), "metric": spec, "objective": rec["objective"], "sparsity": rec["sparsity"],
                      "mask_hash": rec["mask_hash"], "evaluated": rec["evaluated"], "seconds": round(rec["seconds"], 3),
                      "status": rec["status"], "error": rec["error"], "sparsity_target": args.sparsity,
                      "structure": args.structure, "update": args.update})  # fmt: skip
        print(f"({i + 1}/{len(todo)}) {spec}: {rec['objective']} [{time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    runner.close()


def cmd_ppl(args) -> None:
    from optishear.data import eval_tokens
    from optishear.objectives import perplexity

    table = [r for r in read_jsonl(Path(args.table)) if r["status"] == "ok"]
    first = table[0]
    args.sparsity, args.structure, args.update = first["sparsity_target"], first["structure"], first["update"]
    out = Path(str(args.table) + ".ppl.jsonl")
    done = {r["metric"] for r in read_jsonl(out)}
    top = sorted(table, key=lambda r: (r["objective"], r["metric"]))[: args.top]
    wanda = next(r for r in table if r["metric"] == "w:none*none,x:none*none")
    if wanda not in top:
        top.append(wanda)
    runner, tok = trial_runner(search_config(args))
    tokens = eval_tokens(str(WIKI / "wiki.test.raw"), tok)
    for r in top:
        if r["metric"] in done:
            continue
        runner.apply(runner.plan_for({"metric": r["metric"]}))
        ppl, n = perplexity(runner.model, tokens, 512, 40, progress=False)
        append_jsonl(out, {"metric": r["metric"], "objective": r["objective"], "ppl": ppl, "windows": n})
        print(f"{r['metric']}: objective {r['objective']:.6f} ppl {ppl:.3f}", file=sys.stderr)
    runner.close()


def simulate(table: list[dict], seed: int, pop_size: int = 20, generations: int = 15, eta: float = 5.0,
             eliminate_duplicates: bool = False) -> dict:
    """The metric search's optimizer answered from ``table``; the order in which classes are first evaluated."""
    from optishear import Plan
    from optishear.search import SearchConfig
    from optishear.search.optimizers import PymooOptimizer
    from optishear.search.spaces import VectorSpace

    by_class = {tuple(r["class"]): r["objective"] for r in table if r["status"] == "ok"}
    best = min(by_class.values())
    cfg = SearchConfig(plan=Plan(seed=seed, stats="dense"), space="metric", pop_size=pop_size, generations=generations,
                       mutation_eta=eta, eliminate_duplicates=eliminate_duplicates)  # fmt: skip
    space = VectorSpace("metric", cfg, [1], True, False, "wanda")
    opt = PymooOptimizer(space, pop_size=pop_size, generations=generations, mutation_eta=eta, seed=seed,
                         eliminate_duplicates=eliminate_duplicates)  # fmt: skip
    order: list[tuple] = []
    curve: list[float] = []  # the best objective after each distinct evaluation
    trials = 0
    found_at = None
    while opt.has_next():
        X = opt.ask()
        F = np.zeros((len(X), 1))
        for j, x in enumerate(X):
            c = tuple(int(v) for v in x[:4])
            trials += 1
            if c not in order:
                order.append(c)
                curve.append(min(by_class[c], curve[-1] if curve else by_class[c]))
                if found_at is None and by_class[c] == best:
                    found_at = {"distinct": len(order), "trials": trials}
            F[j, 0] = by_class[c]
        opt.tell(F, np.ones(len(X), dtype=bool))
    best_found = min(by_class[c] for c in order)
    rank = sorted(by_class.values()).index(best_found) + 1
    return {"seed": seed, "distinct": len(order), "trials": trials, "found_optimum": found_at,
            "best_found": best_found, "best_found_rank": rank, "optimum": best, "curve": curve}  # fmt: skip


def cmd_simulate(args) -> None:
    table = read_jsonl(Path(args.table))
    out = Path(str(args.table) + ".sim.jsonl")
    setting = (args.pop_size, args.generations, args.eta, args.eliminate_duplicates)
    kept = [r for r in read_jsonl(out)
            if (r["pop_size"], r["generations"], r["eta"], r.get("eliminate_duplicates", False)) != setting
            or r["seed"] not in args.seeds]  # fmt: skip
    for s in args.seeds:  # a seed simulated again replaces its line (the simulation is deterministic)
        r = simulate(table, s, args.pop_size, args.generations, args.eta, args.eliminate_duplicates)
        r.update(pop_size=args.pop_size, generations=args.generations, eta=args.eta)
        if args.eliminate_duplicates:  # lines without the key are the default's
            r["eliminate_duplicates"] = True
        kept.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), file=sys.stderr)
    rewrite_jsonl(out, kept)


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` by ``rows``, one JSON line each, through a temporary file (never half-written)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def run_curve(run_dir: Path) -> list[float]:
    """A search run's best objective after each distinct evaluation (a new mask digest, in the order of its trial
    log), failed trials not counting."""
    seen: set[str] = set()
    curve: list[float] = []
    for r in read_jsonl(Path(run_dir) / "trials.jsonl"):
        if r.get("evaluated") and r["status"] == "ok" and r["mask_hash"] not in seen:
            seen.add(r["mask_hash"])
            curve.append(min(r["objective"], curve[-1] if curve else r["objective"]))
    return curve


def best_at(curve: list[float], k: int) -> float | None:
    """The best after ``k`` distinct evaluations; None when the run made fewer."""
    return curve[k - 1] if len(curve) >= k else None


def cmd_compare(args) -> None:
    sims = meta_replays(Path(str(args.table) + ".sim.jsonl"), args.pop_size, args.generations, args.seeds)
    rows = [{"name": f"metric search (simulated), seed {s['seed']}", "kind": "metric", "curve": s["curve"]}
            for s in sims]  # fmt: skip
    rows += [{"name": str(r), "kind": "run", "curve": run_curve(Path(r))} for r in args.runs]
    for path in args.gp_sims:  # bench/gp_simulate.py's trajectories, one kind per GP setting
        for g in read_jsonl(Path(path)):
            if args.seeds and g["seed"] not in args.seeds:
                continue
            kind = "gp " + json.dumps(g["setting"], sort_keys=True)
            rows.append({"name": f"GP (simulated), seed {g['seed']}", "kind": kind, "curve": g["curve"]})
    out: dict = {"at": args.at, "setting": f"pop {args.pop_size} x {args.generations}", "rows": []}
    for r in rows:
        out["rows"].append({"name": r["name"], "kind": r["kind"], "distinct": len(r["curve"]),
                            **{str(k): best_at(r["curve"], k) for k in args.at}, "curve": r["curve"]})  # fmt: skip
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for k in args.at:
            vals = [best_at(r["curve"], k) for r in rows if r["kind"] == kind]
            vals = [v for v in vals if v is not None]
            out[f"median_{kind}_{k}"] = float(np.median(vals)) if vals else None
            out[f"n_{kind}_{k}"] = len(vals)
            if kind != "metric":
                out.update(worse_than_metric(rows, kind, k))
    Path(str(args.table) + ".compare.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def meta_replays(path: Path, pop_size: int, generations: int, seeds: list[int]) -> list[dict]:
    """The simulated metric searches ``compare`` measures against: ``path``'s lines of the given setting (without
    ``--eliminate-duplicates``), only ``seeds`` when given. Every number ``compare`` reports is relative to them, so
    none found is an error naming the file, the setting asked for and the settings the file holds, never a table of
    nulls."""
    lines = read_jsonl(path)
    sims = [s for s in lines
            if (s["pop_size"], s["generations"]) == (pop_size, generations) and "curve" in s
            and not s.get("eliminate_duplicates") and (not seeds or s["seed"] in seeds)]  # fmt: skip
    if not sims:
        held = sorted({(s["pop_size"], s["generations"]) for s in lines if "curve" in s})
        raise SystemExit(
            f"compare: no metric-search replays of pop {pop_size} x {generations} generations"
            + (f" for seeds {seeds}" if seeds else "") + f" in {path}"
            + (f" (it holds pop x generations {held}); pass --pop-size/--generations/--seeds to match"
               if held else " (missing or empty); copy the table's .sim.jsonl beside it or run "
               "`exhaustive_metric.py simulate --table` first"))  # fmt: skip
    return sims


def by_k(curve: list[float], k: int) -> float:
    """The best after ``k`` distinct evaluations, a run that stopped short (a stalled search) read at its last best."""
    return curve[min(k, len(curve)) - 1]


def worse_than_metric(rows: list[dict], kind: str, k: int) -> dict:
    """Whether the runs of ``kind`` are worse after ``k`` distinct evaluations than the simulated metric searches:
    every seed of each (``by_k``), their medians and the one-sided Mann-Whitney U test's p-values for "``kind``'s best
    is larger" (``p_worse``) and "smaller" (``p_better``) (``scipy``, pymoo's own dependency); None with fewer than
    two runs on either side."""
    from scipy.stats import mannwhitneyu

    a = [by_k(r["curve"], k) for r in rows if r["kind"] == kind]
    m = [by_k(r["curve"], k) for r in rows if r["kind"] == "metric"]
    enough = len(a) >= 2 and len(m) >= 2
    p = {side: float(mannwhitneyu(a, m, alternative=side).pvalue) if enough else None for side in ("greater", "less")}
    return {f"median_all_{kind}_{k}": float(np.median(a)), f"median_all_metric_{k}": float(np.median(m)) if m else None,
            f"p_worse_{kind}_{k}": p["greater"], f"p_better_{kind}_{k}": p["less"]}  # fmt: skip


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def median_found(found: list) -> float | None:
    """The median over all seeds of the distinct evaluations to the optimum, a seed that never found it (None)
    counting as more than any that did; None when half the seeds or more never found it."""
    ranked = sorted(found, key=lambda f: (f is None, f or 0))
    mid = ranked[(len(ranked) - 1) // 2 : len(ranked) // 2 + 1]
    return None if any(f is None for f in mid) else float(np.mean(mid))


def cmd_report(args) -> None:
    table = [r for r in read_jsonl(Path(args.table)) if r["status"] == "ok"]
    table.sort(key=lambda r: (r["objective"], r["metric"]))
    rep: dict = {"classes": len(table), "distinct_masks": len({r["mask_hash"] for r in table})}
    names = [r["metric"] for r in table]
    rep["optimum"] = {k: table[0][k] for k in ("metric", "objective")}
    wanda = names.index("w:none*none,x:none*none")
    rep["wanda"] = {"rank": wanda + 1, "objective": table[wanda]["objective"]}
    rep["top10"] = [{k: r[k] for k in ("metric", "objective")} for r in table[:10]]
    ppl = read_jsonl(Path(str(args.table) + ".ppl.jsonl"))
    if ppl:
        ppl = sorted(ppl, key=lambda r: (r["objective"], r["metric"]))[: args.top]
        rep["top_ppl"] = [{k: r[k] for k in ("metric", "objective", "ppl")} for r in ppl]
        if len(ppl) >= 3:
            rep["spearman_objective_vs_ppl"] = spearman([r["objective"] for r in ppl], [r["ppl"] for r in ppl])
            rep["spearman_n"] = len(ppl)
    groups: dict[str, list[dict]] = {}
    for s in read_jsonl(Path(str(args.table) + ".sim.jsonl")):  # one entry per optimizer setting, its seeds together
        groups.setdefault(f"pop {s['pop_size']} x {s['generations']} generations, eta {s['eta']:g}", []).append(s)
    rep["search"] = {}
    for name, sims in groups.items():
        found = [s["found_optimum"]["distinct"] if s["found_optimum"] else None for s in sims]
        rep["search"][name] = {"seeds": [s["seed"] for s in sims], "distinct_to_optimum": found,
                               "median_distinct_to_optimum": median_found(found),
                               "found_in": sum(f is not None for f in found),
                               "distinct": [s["distinct"] for s in sims], "trials": sims[0]["trials"],
                               "best_found_rank": [s["best_found_rank"] for s in sims]}  # fmt: skip
    out = Path(str(args.table) + ".report.json")
    out.write_text(json.dumps(rep, indent=2))
    print(json.dumps(rep, indent=2))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--out", required=True)
    t.add_argument("--limit", type=int, default=0, help="at most this many new classes (0: all)")
    p = sub.add_parser("ppl")
    p.add_argument("--table", required=True)
    p.add_argument("--top", type=int, default=20)
    s = sub.add_parser("simulate")
    s.add_argument("--table", required=True)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    s.add_argument("--pop-size", type=int, default=20)
    s.add_argument("--generations", type=int, default=15)
    s.add_argument("--eta", type=float, default=5.0)
    s.add_argument("--eliminate-duplicates", action="store_true", help="the search's --eliminate-duplicates")
    r = sub.add_parser("report")
    r.add_argument("--table", required=True)
    r.add_argument("--top", type=int, default=20)
    c = sub.add_parser("compare")
    c.add_argument("--table", required=True)
    c.add_argument("--runs", nargs="*", default=[])
    c.add_argument("--gp-sims", nargs="*", default=[], help="bench/gp_simulate.py's <cache>.sim.jsonl files")
    c.add_argument("--at", type=int, nargs="+", default=[54])
    c.add_argument("--seeds", type=int, nargs="*", default=[], help="only these optimizer seeds of the simulations")
    c.add_argument("--pop-size", type=int, default=20)
    c.add_argument("--generations", type=int, default=15)
    for q in (t, p):
        q.add_argument("--sparsity", type=float, default=0.5)
        q.add_argument("--structure", default="unstructured")
        q.add_argument("--update", default="none", choices=("none", "sparsegpt"))
    args = ap.parse_args(argv)
    {"table": cmd_table, "ppl": cmd_ppl, "simulate": cmd_simulate, "report": cmd_report,
     "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    main()
