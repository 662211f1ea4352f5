"""The search driver: ask -> decode -> dedupe -> executor -> log -> tell, per generation, per stage.

The driver is the single writer of the run directory: ``manifest.json`` (what every trial depends on; a resume
that does not match it is refused), ``config.json``, ``trials.jsonl`` (one line per trial, flushed as it
finishes), ``validation.jsonl`` (held-out finalists), ``history.json``, ``pareto.json``,
``optishear_recipe.json`` (the chosen plan; apply it with ``optishear prune --recipe``) and ``search.png``.
A resumed run replays the same seeded search and reads finished trials back instead of running them again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import WindowSet, window_sets
from ..models import model_linears
from ..recipe import make_recipe, write_json_atomic
from .config import SearchConfig
from .executor import TrialRequest, describe_spec, make_executor
from .manifest import build_manifest, check_early, check_or_write, record_executor
from .report import plot
from .runner import TrialRunner
from .select import Validator, choose
from .stages import STAGES
from .trials import TrialLog, TrialRecord, append_jsonl, read_jsonl

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        metric: the chosen metric spec; block_sparsity: the chosen per-block sparsities.
        objective: its reconstruction error; pareto: the final non-dominated set (list of dicts).
        trials: trials proposed (including those answered from the log or an identical mask);
        distinct: distinct pruned models evaluated; failed: trials that failed; seconds: wall time;
        out_dir: where outputs are; history: one dict per generation.
        recipe: the chosen solution's recipe; validation: its held-out error (None when validation is off).
        gradient_seconds: how long the gradient pass took when it was computed (None: the search reads no G).
    """

    metric: str
    block_sparsity: list[float]
    objective: float
    pareto: list[dict]
    trials: int
    distinct: int
    seconds: float
    out_dir: str
    history: list[dict]
    recipe: dict | None = None
    validation: float | None = None
    failed: int = 0
    gradient_seconds: float | None = None


class _Run:
    """State shared by the stages of one search."""

    def __init__(self, cfg: SearchConfig, runner: TrialRunner, executor, log: TrialLog, cache: dict,
                 on_trial, population: bool):  # fmt: skip
        self.cfg = cfg
        self.runner = runner
        self.executor = executor
        self.log = log
        self.cache: dict[str, TrialRecord] = cache
        self.on_trial = on_trial
        self.population = population
        self.known: dict[str, tuple[float, float]] = {r.mask_hash: (r.objective, r.sparsity) for r in cache.values()
                                                      if r.ok and r.evaluated}  # fmt: skip
        self.history: list[dict] = []
        self.proposed = 0
        self.hashes: set[str] = set()
        self.failed: set[str] = set()
        self.tolerated: set[str] = set()  # failures the space expects (overflowing trees): not held against the limit
        self.operator_stats: dict | None = None

    def stage(self, space, opt):
        """Run one stage to the end: ask -> decode -> dedupe -> executor -> log -> tell, per generation.

        Returns:
            (pareto, ok records as dicts, the baseline's record or None): the baseline is the first member of
            the first generation (Wanda, uniform blocks), which the held-out check always includes.
        """
        cfg, runner, stage = self.cfg, self.runner, space.stage
        records: dict[str, TrialRecord] = {}
        baseline = None
        journal = self.log.path.parent / "operators.jsonl"  # an optimizer's own record (the LLM's answers)
        if hasattr(opt, "replay"):
            opt.replay([r for r in read_jsonl(journal) if r.get("stage", stage) == stage])
        while opt.has_next():
            X = opt.ask()
            for rec in getattr(opt, "drain_journal", list)():
                append_jsonl(journal, {"stage": stage, **rec})
            keys = [space.key(x) for x in X]
            baseline = baseline or keys[0]
            t_gen = time.perf_counter()
            # One trial per new key: a key repeated within the generation is answered by its first occurrence.
            todo = [j for j, k in enumerate(keys) if k not in self.cache and keys.index(k) == j]
            decoded = {j: space.decode(X[j]) for j in todo}
            plans = {j: runner.plan_for(d) for j, d in decoded.items()}
            known_hashes = {}
            if todo and self.population:
                hashes = runner.population_hashes([plans[j] for j in todo])
                known_hashes = dict(zip(todo, hashes)) if hashes is not None else {}
            requests = [TrialRequest(j, plans[j], known_hashes.get(j)) for j in todo]
            busy = 0.0
            for j, result in self.executor.run(requests, self.known):
                busy += result.get("seconds") or 0.0
                rec = TrialRecord(stage=stage, key=keys[j], generation=opt.generation, metric=plans[j].metric,
                                  block_sparsity=plans[j].block_sparsities(len(runner.linears)) or [],
                                  changes=_jsonable(decoded[j]), **result)  # fmt: skip
                self.cache[rec.key] = rec
                self.log.write(rec)
                if rec.ok and rec.evaluated:
                    self.known.setdefault(rec.mask_hash, (rec.objective, rec.sparsity))
                if self.on_trial is not None:
                    self.on_trial(rec.to_dict())
            F = np.zeros((len(X), space.n_obj))
            feasible = np.ones(len(X), dtype=bool)
            for j, key in enumerate(keys):
                rec = self.cache[key]
                records[key] = rec
                self.proposed += 1
                if not rec.ok:
                    feasible[j] = False
                    self.failed.add(key)
                    if not getattr(space, "counts_failure", lambda r: True)(rec):
                        self.tolerated.add(key)
                    continue
                self.hashes.add(rec.mask_hash)
                F[j, 0] = rec.objective
                if space.n_obj == 2:
                    F[j, 1] = -rec.sparsity
            if len(self.failed - self.tolerated) > cfg.max_failures:
                last = next(self.cache[k] for k in reversed(list(self.cache)) if not self.cache[k].ok)
                raise RuntimeError(f"{len(self.failed)} trials failed (max_failures={cfg.max_failures}); the last: "
                                   f"{last.metric} {last.block_sparsity}: {last.error}. Finished trials are in the "
                                   "log: fix the cause or raise --max-failures, then --resume")  # fmt: skip
            opt.tell(F, feasible)
            self._progress(stage, opt.generation - 1, F[feasible, 0], opt, time.perf_counter() - t_gen, len(X),
                           len(todo), busy)  # fmt: skip
        front = opt.front()
        if not front:
            raise RuntimeError(f"[{stage}] every trial failed: no solution (see the errors in trials.jsonl)")
        pareto = []
        for x, f in front:
            rec = records[space.key(x)]
            pareto.append({"metric": rec.metric, "block_sparsity": rec.block_sparsity, "sparsity": rec.sparsity,
                           "objective": float(f[0]), "changes": rec.changes, "mask_hash": rec.mask_hash})  # fmt: skip
        pareto.sort(key=lambda r: (-r["sparsity"], r["objective"]))
        ok = [r.to_dict() for r in records.values() if r.ok]
        base = records[baseline]
        return pareto, ok, base.to_dict() if base.ok else None

    def _progress(self, stage, gen, feasible_f, opt, wall, n, new, busy=0.0) -> None:
        """The generation's line; ``busy``: worker-seconds its trials took (``/ wall``: workers busy on average)."""
        seen = [float(v) for v in feasible_f] + [h["best"] for h in self.history if h["stage"] == stage]
        best = min(seen) if seen else float("nan")
        secs, per_new = wall / n, wall / new if new else 0.0
        workers = self.executor.describe().get("workers", 1)
        per_min, busy_avg = 60.0 * new / wall if wall > 0 else 0.0, busy / wall if wall > 0 else 0.0
        self.history.append({"stage": stage, "generation": gen, "trials": self.proposed, "distinct": len(self.hashes),
                             "failed": len(self.failed), "best": best, "pareto": len(opt.front()),
                             "seconds_per_trial": secs, "seconds_per_new_trial": per_new, "workers": workers,
                             "workers_busy": busy_avg, "trials_per_minute": per_min})  # fmt: skip
        if getattr(opt, "stats", None) is not None:  # the optimizer's own counts (LLM answers valid / fallen back)
            self.history[-1]["operators"] = opt.stats
            self.operator_stats = opt.stats
        logger.info("[%s] gen %d/%d  trials %d  distinct %d  failed %d  best %.6g  pareto %d  %.2f s/trial "
                    "(%d new, %.2f s each)  workers %.1f/%d busy  %.1f trials/min", stage, gen + 1,
                    self.cfg.generations, self.proposed, len(self.hashes), len(self.failed), best, len(opt.front()),
                    secs, new, per_new, busy_avg, workers, per_min)  # fmt: skip


def _jsonable(obj):
    """Plan changes as plain JSON values (numpy scalars from a genotype become Python numbers)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def search_windows(cfg: SearchConfig, tokenizer, model, windows=None, objective_windows=None, validation_windows=None):
    """The statistics, objective and validation windows ``search`` uses: given ones as they are, the rest drawn
    disjointly from the calibration text (``data.window_sets``: the objective and validation sets overlap no other
    window). Public so that a script can score trees or metrics on a search's own windows (``bench/``)."""
    p = cfg.plan
    wanted = [("statistics", p.nsamples, p.seqlen, p.seed)]
    if cfg.objective_windows:
        wanted.append(("objective", cfg.objective_windows, cfg.objective_seqlen, p.seed + 1))
    if cfg.validate_top:
        wanted.append(("validation", cfg.validate_windows, cfg.validate_seqlen, p.seed + 2))
    given = {"statistics": windows, "objective": objective_windows, "validation": validation_windows}
    out: dict[str, WindowSet] = {}
    if any(given[name] is None for name, *_ in wanted):
        out = window_sets(p.calib, tokenizer, wanted, model)
    for name, seed in (("statistics", p.seed), ("objective", p.seed + 1), ("validation", p.seed + 2)):
        if given[name] is not None:
            out[name] = WindowSet(name, given[name], None, seed)
    return out


def search_gradients(config: SearchConfig, model, windows, out: Path, progress: bool):
    """The gradient statistics a search reads (``--space symbolic``, or a plan whose metric reads G), computed once
    into ``<out>/gradients/`` and reloaded from there by a resume (or by a script given the run's directory ``out``);
    None when nothing reads G."""
    from ..calibrate import GRADIENT, gradient_statistics
    from ..methods import method_for

    if config.space != "symbolic" and GRADIENT not in method_for(config.plan).needs():
        return None
    return gradient_statistics(model, windows, dtype=config.plan.grad_dtype, cache_dir=out / "gradients",
                               progress=progress)  # fmt: skip


def search(model, tokenizer, config: SearchConfig, out_dir, *, resume: bool = False, windows=None,
           objective_windows=None, validation_windows=None, executor=None, backend: str | None = None,
           progress: bool = True, on_trial=None) -> SearchResult:  # fmt: skip
    """Run a search and write its outputs to ``out_dir``.

    Args:
        resume: continue the run in ``out_dir``: finished trials are read back, never run again; refused when the
            model, tokenizer, data or configuration differ from the run's manifest.
        windows / objective_windows / validation_windows: token windows to use as they are (tests); otherwise
            drawn from ``config.plan.calib``, pairwise disjoint.
        executor: where trials run: None or ``"local"`` (this process), ``"ray"``, an ``ExecutorConfig``
            (``executor="ray", workers=N, ray_address=...``) or an executor object (``executor.make_executor``).
            The run's trials do not depend on it: a log written with one resumes with any other.
        backend: kernels backend (auto / torch / triton), resolved once.
        on_trial: called with each newly written trial record (tests use it to interrupt a run).
    """
    config.validate()
    if config.plan.structured and describe_spec(executor).get("kind") not in ("local", None):
        raise ValueError("the structured search runs on the local executor only for now (its trials change shapes, "
                         "which the Ray workers' restore between trials is not tested with): drop --executor")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = TrialLog(out / "trials.jsonl")
    existing = log.read()
    if not resume and existing:
        raise FileExistsError(f"{out} holds a search already: pass resume=True (--resume) or another directory")
    if not any(model_linears(model, config.plan.targets, config.plan.ignore)):
        raise ValueError("no linear layers selected for pruning (check targets / ignore)")
    sets = search_windows(config, tokenizer, model, windows, objective_windows, validation_windows)
    manifest = build_manifest(model, tokenizer, config, sets, executor=describe_spec(executor))
    if resume:  # a refused resume costs one read of the weights: checked before the gradient pass and the workers
        check_early(out, manifest)
    grads = search_gradients(config, model, sets["statistics"].tokens, out, progress)
    if grads is not None:
        manifest["gradients"] = grads.describe()
    check_or_write(out, manifest, resume, bool(existing))
    runner = TrialRunner(model, sets["statistics"].tokens, config,
                         objective_windows=sets["objective"].tokens if "objective" in sets else None, backend=backend,
                         progress=progress, gradients=grads)  # fmt: skip
    executor = make_executor(executor, runner)
    try:  # a Ray executor holds workers (and maybe a local Ray instance): stop them if the run cannot start
        record_executor(out, executor.describe())
        write_json_atomic(out / "config.json", config.to_dict())
        validator = None
        if config.validate_top:
            validator = Validator(runner, sets["validation"].tokens, out / "validation.jsonl", resume, progress)
    except BaseException:
        executor.close()
        raise
    cache = {r.key: r for r in existing} if resume else {}
    if cache:
        logger.info("resuming: %d finished trials read from %s", len(cache), log.path)
    population = config.population == "on" or (config.population == "auto" and runner.backend == "triton")

    def pick(stage, staged):
        pareto, records, baseline = staged
        return validator.choose(stage, records, baseline, config) if validator else choose(pareto, config)

    try:
        with log:
            run = _Run(config, runner, executor, log, cache, on_trial, population)
            chosen = None
            for build in STAGES[config.space](config, runner):
                space, opt = build(chosen)
                staged = run.stage(space, opt)
                chosen = pick(space.stage, staged)
        pareto = staged[0]
        plan = runner.plan_for(chosen["changes"])
        result = runner.apply(plan)
        recipe = make_recipe(plan, result, model, windows=runner.windows)
        recipe["search"] = {"objective": config.objective, "value": chosen["objective"], "space": config.space,
                            "algorithm": config.algorithm if config.space != "symbolic" else "gp",
                            "trials": run.proposed, "distinct": len(run.hashes), "failed": len(run.failed),
                            "validation": chosen.get("validation"),
                            "gradient_seconds": grads.computed_seconds if grads is not None else None}  # fmt: skip
        if run.operator_stats is not None:
            recipe["search"]["operators"] = run.operator_stats
        write_json_atomic(out / "optishear_recipe.json", recipe)
        write_json_atomic(out / "pareto.json", pareto)
        write_json_atomic(out / "history.json", run.history)
        plot(run.history, pareto, out / "search.png")
    finally:
        runner.close()
        executor.close()
    return SearchResult(metric=chosen["metric"], block_sparsity=chosen["block_sparsity"],
                        objective=chosen["objective"], pareto=pareto, trials=run.proposed, distinct=len(run.hashes),
                        seconds=time.perf_counter() - t0, out_dir=str(out), history=run.history, recipe=recipe,
                        validation=chosen.get("validation"), failed=len(run.failed),
                        gradient_seconds=grads.computed_seconds if grads is not None else None)  # fmt: skip


__all__ = ["SearchResult", "search"]
