"""OptiShear search: pymoo NSGA-III over the meta metric and the per-block sparsities.

Each trial prunes the already-loaded model (dense weights restored in place between trials), scores it by
the model-wise reconstruction error against dense outputs computed once, and is written to
``trials.jsonl`` as soon as it finishes. Trials whose masks coincide with an earlier trial's (found by
hashing the masks the kernels produce) share that trial's evaluation. A run re-started with ``resume``
replays the same seeded search and reads finished trials back instead of evaluating them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from optishear_kernels import COEFFICIENTS, TRANSFORMS, MetricConfig

from .calibrate import sequential_walk
from .config import PruneConfig, check_sparsity, parse_structure
from .data import CalibSpec, calibration_windows
from .evaluate import DenseOutputs, reconstruction_error
from .metrics import resolve_metric
from .models import model_linears
from .pruner import WeightSnapshot, prune
from .recipe import make_recipe, write_json_atomic

logger = logging.getLogger(__name__)

SPACES = ("metric", "blocks", "joint", "metric-then-blocks")


@dataclass
class SearchConfig:
    """A search run.

    Attributes:
        space: ``metric`` (the 2,401-point meta metric), ``blocks`` (one sparsity per block, ``metric``
            fixed), ``joint`` (both at once) or ``metric-then-blocks`` (the paper's order).
        sparsity: target mean sparsity over all pruned weights (held exactly by the repair).
        structure: ``unstructured`` or ``N:M`` (then only the metric is searched).
        objective: ``kl`` (mean KL(dense || pruned) of next-token distributions, the default: on SmolLM2 it
            ranks metrics as perplexity does, where ``fro`` inverted two of three, see the README) or ``fro``
            (Frobenius norm of the logits difference, OptiShear v1).
        objective_windows, objective_seqlen: the prompts the objective compares dense and pruned outputs on,
            drawn from the calibration text apart from the statistics windows (OptiShear's "example
            prompts"); 0 windows: the calibration windows themselves.
        tradeoff: add the mean sparsity as a second objective over ``sparsity_levels`` (error vs sparsity).
        band, step: block sparsities lie on ``target + step * j`` within ``target +- band``.
        validate_top, validate_windows, validate_seqlen: after each stage, the ``validate_top`` best distinct
            candidates and the stage's seeded baseline (Wanda, or uniform blocks) are scored again on
            ``validate_windows`` held-out prompts of ``validate_seqlen`` tokens (a third draw from the
            calibration text), and the lowest held-out error is chosen: a few prompts cannot separate metrics
            that differ by 1%, and the search's best is the one most flattered by them. 0 turns it off.
        stats: ``fast`` (dense activation statistics, computed once) or ``faithful`` (the sequential
            protocol in every trial).
        metric: the fixed metric of the ``blocks`` space.
        mutation_eta: polynomial mutation's distribution index (smaller: bolder steps).
        eliminate_duplicates: pymoo's duplicate elimination (offspring must differ from the population).
            Off by default: an offspring that repeats a known configuration is answered from the trial
            cache for free, as OptiShear's sampler repeats trials; on, every generation must evaluate new
            points. Measured in bench/RESULTS.md: at an equal number of distinct evaluations both find
            metrics as good, and a 300-trial metric search costs 4-5x fewer evaluations with it off.
        population: ``on``: each generation's masks come from the kernels' population op first, so that
            trials whose masks were seen are answered without pruning; ``auto``: on when the kernels run
            in Triton (one read of W for the whole population); ``off``. On the CPU twin the op costs as
            much as pruning each member, so auto leaves it off there.
    """

    space: str = "metric"
    sparsity: float = 0.5
    structure: str = "unstructured"
    objective: str = "kl"
    tradeoff: bool = False
    sparsity_levels: list[float] = field(default_factory=lambda: [0.4, 0.45, 0.5, 0.55, 0.6])
    pop_size: int = 20
    generations: int = 10
    band: float = 0.05
    step: float = 0.05
    metric: str = "wanda"
    stats: str = "fast"
    mutation_eta: float = 5.0
    eliminate_duplicates: bool = False
    population: str = "auto"
    calib: str | None = None
    nsamples: int = 32
    seqlen: int = 512
    objective_windows: int = 4
    objective_seqlen: int = 256
    validate_top: int = 4
    validate_windows: int = 16
    validate_seqlen: int = 512
    seed: int = 0
    batch_size: int = 4
    targets: list[str] | None = None
    ignore: list[str] | None = None

    def validate(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        check_sparsity(self.sparsity)
        nm = parse_structure(self.structure)
        if nm is not None and self.space != "metric":
            raise ValueError("N:M fixes every block's sparsity: only --space metric applies")
        if self.objective not in ("fro", "kl"):
            raise ValueError(f"objective must be 'fro' or 'kl', got {self.objective!r}")
        if self.population not in ("auto", "on", "off"):
            raise ValueError(f"population must be auto, on or off, got {self.population!r}")
        if self.stats not in ("fast", "faithful"):
            raise ValueError(f"stats must be 'fast' or 'faithful', got {self.stats!r}")
        if not self.mutation_eta > 0:
            raise ValueError(f"mutation_eta must be > 0, got {self.mutation_eta}")
        if not (self.step > 0 and self.band >= 0):
            raise ValueError(f"band must be >= 0 and step > 0, got band={self.band}, step={self.step}")
        if self.sparsity - self.band < 0 or self.sparsity + self.band >= 1:
            raise ValueError(f"sparsity +- band must stay in [0, 1): {self.sparsity} +- {self.band}")
        for name in ("objective_windows", "validate_top"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("pop_size", "generations", "nsamples", "seqlen", "objective_seqlen", "validate_windows",
                     "validate_seqlen", "batch_size"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.tradeoff:
            for s in self.sparsity_levels:
                check_sparsity(s, "sparsity_levels")
                if self.space != "metric" and (s - self.band < 0 or s + self.band >= 1):
                    raise ValueError(f"sparsity level {s} +- band {self.band} leaves [0, 1)")
        resolve_metric(self.metric)

    @property
    def n_offsets(self) -> int:
        return int(round(self.band / self.step + 1e-9))

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SearchConfig fields {sorted(unknown)}")
        return cls(**data)


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        metric: the chosen metric spec; block_sparsity: the chosen per-block sparsities.
        objective: its reconstruction error; pareto: the final non-dominated set (list of dicts).
        trials: trials run (including those answered from the dedupe cache or a resumed log);
        distinct: distinct pruned models evaluated; seconds: wall time; out_dir: where outputs are.
        history: one dict per generation (best objective, evaluations, distinct, Pareto size).
        validation: the chosen solution's error on the held-out prompts (None when validation is off).
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


def repair_offsets(offsets: np.ndarray, sizes: np.ndarray, limit: int) -> np.ndarray:
    """Make the size-weighted sum of integer level offsets zero (the mean sparsity exactly the target).

    Offsets are clipped to [-limit, limit]; while the weighted sum is positive the largest offset (lowest
    block index first) steps down, while negative the smallest steps up, as long as that brings the sum
    closer to zero. With equal block sizes (every decoder stack we know) the result is exactly balanced.
    """
    o = np.clip(np.round(offsets), -limit, limit).astype(np.int64)
    w = np.asarray(sizes, dtype=np.int64)
    while True:
        total = int((o * w).sum())
        if total == 0:
            break
        step = -1 if total > 0 else 1
        cand = np.where(o > -limit)[0] if step < 0 else np.where(o < limit)[0]
        if not len(cand):
            break
        i = cand[np.argmax(o[cand])] if step < 0 else cand[np.argmin(o[cand])]
        if abs(total + step * int(w[i])) >= abs(total):
            break
        o[i] += step
    return o


class _Encoding:
    """Decision vector layout: [cw, uw, cx, ux] if the metric is searched, one level offset per block
    if blocks are, and a sparsity-level index in trade-off mode. All integers."""

    def __init__(self, cfg: SearchConfig, n_blocks: int, block_sizes: list[int], search_metric: bool,
                 search_blocks: bool):  # fmt: skip
        self.cfg = cfg
        self.n_blocks = n_blocks
        self.sizes = np.asarray(block_sizes)
        self.search_metric = search_metric
        self.search_blocks = search_blocks
        lo, hi = [], []
        if search_metric:
            lo += [0, 0, 0, 0]
            hi += [len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1, len(COEFFICIENTS) - 1, len(TRANSFORMS) - 1]
        if search_blocks:
            lo += [-cfg.n_offsets] * n_blocks
            hi += [cfg.n_offsets] * n_blocks
        if cfg.tradeoff:
            lo += [0]
            hi += [len(cfg.sparsity_levels) - 1]
        self.xl, self.xu = np.array(lo, dtype=float), np.array(hi, dtype=float)

    def repair(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(np.round(X), self.xl, self.xu)
        if self.search_metric:  # one genotype per exact ranking class (MetricConfig.canonical)
            for row in X:
                row[:4] = MetricConfig(*(int(v) for v in row[:4])).canonical().as_tuple()
        if self.search_blocks:
            a = 4 if self.search_metric else 0
            for row in X:
                row[a : a + self.n_blocks] = repair_offsets(row[a : a + self.n_blocks], self.sizes, self.cfg.n_offsets)
        return X

    def decode(self, x, fixed_metric: str) -> tuple[str, list[float], float]:
        x = [int(v) for v in x]
        i = 0
        metric = fixed_metric
        if self.search_metric:
            metric = MetricConfig(*x[:4]).spec
            i = 4
        target = self.cfg.sparsity_levels[x[-1]] if self.cfg.tradeoff else self.cfg.sparsity
        if self.search_blocks:
            blocks = [round(target + self.cfg.step * o, 10) for o in x[i : i + self.n_blocks]]
        else:
            blocks = [target] * self.n_blocks
        return metric, blocks, target

    def seed_population(self, rng: np.random.RandomState, n: int, wanda_first: bool) -> np.ndarray:
        X = np.stack([rng.randint(int(lo), int(hi) + 1, size=n) for lo, hi in zip(self.xl, self.xu)], axis=1)
        X = X.astype(float)
        if wanda_first:
            X[0, :] = 0  # Wanda, uniform sparsity at the target level (offsets 0)
            if self.cfg.tradeoff:
                X[0, -1] = self.cfg.sparsity_levels.index(self.cfg.sparsity) if (
                    self.cfg.sparsity in self.cfg.sparsity_levels) else 0  # fmt: skip
        return self.repair(X)


class TrialRunner:
    """Evaluates pruning configurations on one loaded model: restore dense weights, prune, measure."""

    def __init__(self, model, windows: torch.Tensor, cfg: SearchConfig, *, objective_windows=None,
                 progress: bool = False):  # fmt: skip
        """``windows``: calibration windows (statistics); ``objective_windows``: the prompts the objective is
        measured on (default: ``windows``)."""
        self.model = model
        self.windows = windows
        self.objective_windows = windows if objective_windows is None else objective_windows
        self.cfg = cfg
        self.linears = model_linears(model, cfg.targets, cfg.ignore)
        self.snapshot = WeightSnapshot().save_all(self.linears)
        t0 = time.perf_counter()
        self.dense = DenseOutputs(model, self.objective_windows, batch_size=cfg.batch_size, objective=cfg.objective,
                                  progress=progress)  # fmt: skip
        self.stats = None
        if cfg.stats == "fast":
            self.stats = sequential_walk(model, windows, self.linears, None, batch_size=cfg.batch_size,
                                         progress=progress)  # fmt: skip
        self.setup_seconds = time.perf_counter() - t0
        from optishear_kernels import choose_backend

        self.kernels_backend = choose_backend(next(model.parameters()))
        self.by_hash: dict[str, tuple[float, float]] = {}  # mask hash -> (objective, achieved sparsity)

    def prune_config(self, metric: str, blocks: list[float]) -> PruneConfig:
        c = self.cfg
        uniform = len(set(blocks)) == 1
        return PruneConfig(metric=metric, sparsity=blocks[0] if uniform else c.sparsity, structure=c.structure,
                           block_sparsity=None if uniform else list(blocks), targets=c.targets, ignore=c.ignore,
                           calib=c.calib, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed,
                           stats="dense" if c.stats == "fast" else "sequential", batch_size=c.batch_size)  # fmt: skip

    def apply(self, metric: str, blocks: list[float]):
        """Restore the dense weights, then prune with (metric, blocks); returns the PruneResult."""
        self.snapshot.restore()
        return prune(self.model, config=self.prune_config(metric, blocks), windows=self.windows, stats=self.stats,
                     keep_masks=True, snapshot=self.snapshot, progress=False)  # fmt: skip

    @staticmethod
    def mask_hash(masks: dict[str, torch.Tensor]) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(masks):
            h.update(name.encode())
            h.update(masks[name].cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def run(self, metric: str, blocks: list[float], known_hash: str | None = None) -> dict:
        """One trial. ``known_hash``: its mask hash when already known (``population_hashes``): a trial whose
        masks were evaluated before is then answered without pruning."""
        t0 = time.perf_counter()
        if known_hash is not None and known_hash in self.by_hash:
            h = known_hash
        else:
            res = self.apply(metric, blocks)
            h = self.mask_hash(res.masks)
            if h not in self.by_hash:
                err = reconstruction_error(self.model, self.dense, self.cfg.objective)
                self.by_hash[h] = (err, res.sparsity)
                return {"metric": metric, "block_sparsity": blocks, "sparsity": res.sparsity, "objective": err,
                        "mask_hash": h, "evaluated": True, "seconds": time.perf_counter() - t0}  # fmt: skip
        err, sparsity = self.by_hash[h]
        return {"metric": metric, "block_sparsity": blocks, "sparsity": sparsity, "objective": err, "mask_hash": h,
                "evaluated": False, "seconds": time.perf_counter() - t0}  # fmt: skip

    def population_hashes(self, members: list[tuple[str, list[float]]]) -> list[str] | None:
        """Mask hashes of a whole population from the kernels' population op, without pruning anything:
        one launch per layer reads W once for all members (fast statistics, unstructured, row-scoped
        metrics). Equal to the hashes ``run`` computes. None where the op does not apply."""
        from optishear_kernels import population_prune

        metrics = [resolve_metric(m) for m, _ in members]
        if (self.stats is None or parse_structure(self.cfg.structure) is not None
                or any(m.config is None for m in metrics)
                or len({m.needs_activations for m in metrics}) > 1):  # fmt: skip
            return None
        self.snapshot.restore()
        hashers = [hashlib.blake2b(digest_size=16) for _ in members]
        refs = {r.full_name: r for block in self.linears for r in block}
        for name in sorted(refs):
            r = refs[name]
            w = r.weight2d()
            x = self.stats[r.block][r.name] if metrics[0].needs_activations else torch.ones(w.shape[1])
            packed = population_prune(w, x.to(w.device), [m.config for m in metrics],
                                      [blocks[r.block] for _, blocks in members])  # fmt: skip
            for h, p in zip(hashers, packed):
                h.update(name.encode())
                h.update(p.cpu().contiguous().numpy().tobytes())
        return [h.hexdigest() for h in hashers]


def _read_trials(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: that trial is simply run again
            logger.warning("ignoring a truncated line in %s", path)
    return out


def _stage(runner: TrialRunner, cfg: SearchConfig, stage: str, search_metric: bool, search_blocks: bool,
           fixed_metric: str, log, cache: dict, history: list, counters: dict, on_trial=None):  # fmt: skip
    population = cfg.population == "on" or (cfg.population == "auto" and runner.kernels_backend == "triton")
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.util.ref_dirs import get_reference_directions

    sizes = [sum(r.weight2d().numel() for r in refs) for refs in runner.linears]
    enc = _Encoding(cfg, len(runner.linears), sizes, search_metric, search_blocks)
    n_obj = 2 if cfg.tradeoff else 1

    class _Repair(Repair):
        def _do(self, problem, X, **kwargs):
            return enc.repair(X)

    problem = Problem(n_var=len(enc.xl), n_obj=n_obj, xl=enc.xl, xu=enc.xu, vtype=int)
    ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=1 if n_obj == 1 else 12)
    rng = np.random.RandomState(cfg.seed)
    algo = NSGA3(ref_dirs=ref_dirs, pop_size=cfg.pop_size,
                 sampling=enc.seed_population(rng, cfg.pop_size, wanda_first=search_metric or stage == "blocks"),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=cfg.mutation_eta, vtype=float, repair=RoundingRepair()), repair=_Repair(),
                 eliminate_duplicates=cfg.eliminate_duplicates)  # fmt: skip
    algo.setup(problem, termination=("n_gen", cfg.generations), seed=cfg.seed, verbose=False)
    records = {}
    baseline = None
    gen = 0
    while algo.has_next():
        pop = algo.ask()
        X = pop.get("X")
        if baseline is None:  # the seeded first member: Wanda (metric) or uniform blocks
            baseline = f"{stage}:" + ",".join(str(int(v)) for v in X[0])
        F = np.zeros((len(X), n_obj))
        t_gen, new_trials = time.perf_counter(), 0
        keys = [f"{stage}:" + ",".join(str(int(v)) for v in x) for x in X]
        for key in keys:  # what earlier (or resumed) trials already know about mask classes
            if key in cache:
                runner.by_hash.setdefault(cache[key]["mask_hash"], (cache[key]["objective"], cache[key]["sparsity"]))
        todo = [j for j, key in enumerate(keys) if key not in cache]
        known = {}
        if todo and population:
            hashes = runner.population_hashes([enc.decode(X[j], fixed_metric)[:2] for j in todo])
            known = dict(zip(todo, hashes)) if hashes is not None else {}
        for j, x in enumerate(X):
            key = keys[j]
            rec = cache.get(key)
            if rec is None:
                metric, blocks, _ = enc.decode(x, fixed_metric)
                rec = {"stage": stage, "key": key, "generation": gen, **runner.run(metric, blocks, known.get(j))}
                cache[key] = rec
                log.write(json.dumps(rec) + "\n")
                log.flush()
                new_trials += 1
                if on_trial is not None:
                    on_trial(rec)
            counters["trials"] += 1
            counters["hashes"].add(rec["mask_hash"])
            records[key] = rec
            F[j, 0] = rec["objective"]
            if n_obj == 2:
                F[j, 1] = -rec["sparsity"]
        pop.set("F", F)
        algo.tell(infills=pop)
        opt = algo.opt
        best = float(np.min(opt.get("F")[:, 0]))
        wall = time.perf_counter() - t_gen
        secs, per_new = wall / len(X), wall / new_trials if new_trials else 0.0
        history.append({"stage": stage, "generation": gen, "trials": counters["trials"],
                        "distinct": len(counters["hashes"]), "best": best, "pareto": len(opt),
                        "seconds_per_trial": secs, "seconds_per_new_trial": per_new})  # fmt: skip
        logger.info("[%s] gen %d/%d  trials %d  distinct %d  best %.6g  pareto %d  %.2f s/trial (%d new, %.2f s each)",
                    stage, gen + 1, cfg.generations, counters["trials"], len(counters["hashes"]), best, len(opt), secs,
                    new_trials, per_new)  # fmt: skip
        gen += 1
    pareto = []
    for x, f in zip(algo.opt.get("X"), algo.opt.get("F")):
        rec = records[f"{stage}:" + ",".join(str(int(v)) for v in x)]
        pareto.append({"metric": rec["metric"], "block_sparsity": rec["block_sparsity"], "sparsity": rec["sparsity"],
                       "objective": float(f[0])})  # fmt: skip
    pareto.sort(key=lambda r: (-r["sparsity"], r["objective"]))
    return pareto, list(records.values()), records[baseline]


class _Validator:
    """Scores a stage's finalists on held-out prompts; results go to ``validation.jsonl`` as they finish."""

    def __init__(self, runner: TrialRunner, windows: torch.Tensor, path: Path, resume: bool, progress: bool):
        self.runner = runner
        self.dense = DenseOutputs(runner.model, windows, batch_size=runner.cfg.batch_size,
                                  objective=runner.cfg.objective, progress=progress)  # fmt: skip
        self.path = path
        self.done = {r["mask_hash"]: r["validation"] for r in _read_trials(path)} if resume else {}

    def choose(self, stage: str, records: list[dict], baseline: dict, cfg: SearchConfig) -> dict:
        pool = _at_target(records, cfg)
        finalists, seen = [], set()
        for r in sorted(pool, key=lambda r: (r["objective"], r["metric"])):
            if r["mask_hash"] not in seen and len(finalists) < cfg.validate_top:
                finalists.append(r)
                seen.add(r["mask_hash"])
        if baseline["mask_hash"] not in seen and baseline in pool:
            finalists.append(baseline)
        scored = []
        with self.path.open("a") as log:
            for r in finalists:
                value = self.done.get(r["mask_hash"])
                if value is None:
                    self.runner.apply(r["metric"], r["block_sparsity"])
                    value = self.dense.error(self.runner.model, cfg.objective)
                    self.done[r["mask_hash"]] = value
                    log.write(json.dumps({"stage": stage, "metric": r["metric"], "block_sparsity": r["block_sparsity"],
                                          "mask_hash": r["mask_hash"], "objective": r["objective"],
                                          "validation": value}) + "\n")  # fmt: skip
                    log.flush()
                scored.append({**r, "validation": value})
                logger.info("[%s] held-out %s: %.6g (search objective %.6g)", stage, r["metric"], value, r["objective"])
        return min(scored, key=lambda r: (r["validation"], r["objective"], r["metric"]))


def _at_target(solutions: list[dict], cfg: SearchConfig) -> list[dict]:
    """In trade-off mode, the solutions at (or nearest) the target sparsity; otherwise all of them."""
    if not cfg.tradeoff:
        return solutions
    nearest = min(abs(p["sparsity"] - cfg.sparsity) for p in solutions)
    return [p for p in solutions if abs(p["sparsity"] - cfg.sparsity) == nearest]


def _choose(pareto: list[dict], cfg: SearchConfig) -> dict:
    """Lowest error; in trade-off mode, lowest error among solutions at (or nearest) the target sparsity."""
    return min(_at_target(pareto, cfg), key=lambda p: (p["objective"], p["metric"]))


def plot(history: list[dict], pareto: list[dict], path: Path) -> bool:
    """Best objective per generation and the Pareto front, as one PNG. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in dict.fromkeys(h["stage"] for h in history):
        hs = [h for h in history if h["stage"] == stage]
        a.plot([h["generation"] + 1 for h in hs], [h["best"] for h in hs], marker="o", label=stage)
    a.set_xlabel("generation")
    a.set_ylabel("best reconstruction error")
    a.set_title("search progress")
    a.legend()
    b.scatter([p["sparsity"] for p in pareto], [p["objective"] for p in pareto])
    b.set_xlabel("achieved sparsity")
    b.set_ylabel("reconstruction error")
    b.set_title(f"Pareto set ({len(pareto)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def search(model, tokenizer, config: SearchConfig, out_dir, *, resume: bool = False, windows=None,
           objective_windows=None, validation_windows=None, progress: bool = True,
           on_trial=None) -> SearchResult:  # fmt: skip
    """Run an OptiShear search and write its outputs to ``out_dir``.

    Outputs: ``config.json``; ``trials.jsonl`` (one line per trial, flushed as it finishes);
    ``history.json``; ``pareto.json``; ``optishear_recipe.json`` for the chosen solution (apply it with
    ``optishear prune --recipe``); ``search.png``.

    Args:
        resume: continue a run in ``out_dir``: finished trials are read back, never evaluated again.
        windows: calibration windows for the statistics (else read from ``config.calib``).
        objective_windows: the objective's prompts (else drawn per ``config.objective_windows``).
        validation_windows: the held-out prompts (else drawn per ``config.validate_windows``).
        on_trial: called with each newly evaluated trial record (tests use it to interrupt a run).
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    trials_path = out / "trials.jsonl"
    if resume and cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old != asdict(config):
            raise ValueError(f"--resume: the run in {out} was made with a different configuration: {old}")
    elif not resume and trials_path.exists() and trials_path.stat().st_size:
        raise FileExistsError(f"{out} holds a search already: pass resume=True (--resume) or another directory")
    write_json_atomic(cfg_path, asdict(config))
    t0 = time.perf_counter()
    if windows is None:
        windows = calibration_windows(CalibSpec(config.calib, config.nsamples, config.seqlen, config.seed), tokenizer,
                                      model)  # fmt: skip
    if objective_windows is None and config.objective_windows:
        # Apart from the statistics windows: another seed draws other positions of the same text.
        spec = CalibSpec(config.calib, config.objective_windows, config.objective_seqlen, config.seed + 1)
        objective_windows = calibration_windows(spec, tokenizer, model)
    runner = TrialRunner(model, windows, config, objective_windows=objective_windows, progress=progress)
    validator = None
    if config.validate_top:
        if validation_windows is None:
            spec = CalibSpec(config.calib, config.validate_windows, config.validate_seqlen, config.seed + 2)
            validation_windows = calibration_windows(spec, tokenizer, model)
        validator = _Validator(runner, validation_windows, out / "validation.jsonl", resume, progress)
    cache = {r["key"]: r for r in _read_trials(trials_path)} if resume else {}
    if cache:
        logger.info("resuming: %d finished trials read from %s", len(cache), trials_path)
    history: list[dict] = []
    counters = {"trials": 0, "hashes": set()}

    def pick(stage, staged):
        pareto, records, baseline = staged
        return validator.choose(stage, records, baseline, config) if validator else _choose(pareto, config)

    with trials_path.open("a") as log:
        if config.space == "metric-then-blocks":
            p1 = _stage(runner, config, "metric", True, False, config.metric, log, cache, history, counters, on_trial)
            best_metric = pick("metric", p1)["metric"]
            staged = _stage(runner, config, "blocks", False, True, best_metric, log, cache, history, counters,
                            on_trial)  # fmt: skip
            stage = "blocks"
        else:
            staged = _stage(runner, config, config.space, config.space in ("metric", "joint"),
                            config.space in ("blocks", "joint"), config.metric, log, cache, history, counters,
                            on_trial)  # fmt: skip
            stage = config.space
    pareto = staged[0]
    chosen = pick(stage, staged)
    result = runner.apply(chosen["metric"], chosen["block_sparsity"])
    recipe = make_recipe(runner.prune_config(chosen["metric"], chosen["block_sparsity"]), result, model)
    recipe["search"] = {"objective": config.objective, "value": chosen["objective"], "space": config.space,
                        "trials": counters["trials"], "distinct": len(counters["hashes"]),
                        "validation": chosen.get("validation")}  # fmt: skip
    write_json_atomic(out / "optishear_recipe.json", recipe)
    write_json_atomic(out / "pareto.json", pareto)
    write_json_atomic(out / "history.json", history)
    plot(history, pareto, out / "search.png")
    runner.snapshot.restore()
    return SearchResult(metric=chosen["metric"], block_sparsity=chosen["block_sparsity"],
                        objective=chosen["objective"], pareto=pareto, trials=counters["trials"],
                        distinct=len(counters["hashes"]), seconds=time.perf_counter() - t0, out_dir=str(out),
                        history=history, recipe=recipe, validation=chosen.get("validation"))  # fmt: skip


def add_search_parser(sub, add_model, add_calib) -> None:
    d = SearchConfig()  # one source of truth for the defaults
    s = sub.add_parser("search", help="NSGA-III search over the meta metric and/or block sparsities")
    add_model(s)
    add_calib(s)
    s.add_argument("--space", choices=SPACES, default=d.space)
    s.add_argument("--sparsity", type=float, default=d.sparsity)
    s.add_argument("--structure", default=d.structure)
    s.add_argument("--objective", choices=("fro", "kl"), default=d.objective)
    s.add_argument("--objective-windows", type=int, default=d.objective_windows, help="objective prompts (0: calib)")
    s.add_argument("--objective-seqlen", type=int, default=d.objective_seqlen)
    s.add_argument("--validate-top", type=int, default=d.validate_top, help="held-out finalists (0: none)")
    s.add_argument("--validate-windows", type=int, default=d.validate_windows)
    s.add_argument("--validate-seqlen", type=int, default=d.validate_seqlen)
    s.add_argument("--tradeoff", action="store_true", help="second objective: sparsity (error vs sparsity front)")
    s.add_argument("--pop-size", type=int, default=d.pop_size)
    s.add_argument("--generations", type=int, default=d.generations)
    s.add_argument("--band", type=float, default=d.band)
    s.add_argument("--step", type=float, default=d.step)
    s.add_argument("--metric", default=d.metric, help="the fixed metric of --space blocks")
    s.add_argument("--stats", choices=("fast", "faithful"), default=d.stats)
    s.add_argument("--mutation-eta", type=float, default=d.mutation_eta, help="polynomial mutation index")
    s.add_argument("--eliminate-duplicates", action="store_true", help="offspring must be new (pymoo's default)")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true")


def cmd_search(args) -> dict:
    from .models import load_model

    cfg = SearchConfig(space=args.space, sparsity=args.sparsity, structure=args.structure, objective=args.objective,
                       tradeoff=args.tradeoff, pop_size=args.pop_size, generations=args.generations, band=args.band,
                       step=args.step, metric=args.metric, stats=args.stats, mutation_eta=args.mutation_eta,
                       eliminate_duplicates=args.eliminate_duplicates, calib=args.calib,
                       nsamples=args.nsamples or SearchConfig.nsamples, seqlen=args.seqlen or SearchConfig.seqlen,
                       objective_windows=args.objective_windows, objective_seqlen=args.objective_seqlen,
                       validate_top=args.validate_top, validate_windows=args.validate_windows,
                       validate_seqlen=args.validate_seqlen,
                       seed=args.seed if args.seed is not None else SearchConfig.seed)  # fmt: skip
    cfg.validate()
    model, tok = load_model(args.model, device=args.device)
    res = search(model, tok, cfg, args.out, resume=args.resume, progress=not args.quiet)
    return {"metric": res.metric, "objective": res.objective, "validation": res.validation, "trials": res.trials,
            "distinct": res.distinct,
            "seconds": round(res.seconds, 1), "block_sparsity": res.block_sparsity, "out": res.out_dir,
            "recipe": str(Path(res.out_dir) / "optishear_recipe.json")}  # fmt: skip


__all__ = ["SearchConfig", "SearchResult", "TrialRunner", "search", "repair_offsets"]
