"""One trial on one loaded model: restore the dense weights, prune with the trial's plan, measure the objective.

Everything that does not change between trials is computed once: the dense outputs the objective compares
against, and (``stats="dense"``) the dense statistics every trial prunes with. Trials whose masks equal an
earlier trial's (same mask digest) share its evaluation. A trial that fails is returned as a failed record
with the model restored; the driver decides what a failure means for the search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
from optishear_kernels import choose_backend

from ..calibrate import GRADIENT, merge_gradients, walk
from ..engine import prune
from ..methods import MaskSink, method_for
from ..models import WeightSnapshot, model_linears
from ..objectives import DenseOutputs, reconstruction_error
from ..plan import Plan
from .config import SearchConfig

logger = logging.getLogger(__name__)


class TrialRunner:
    """Evaluates plans on one loaded model.

    Args:
        model: the dense model (its weights are restored after every trial and at ``close``).
        windows: statistics windows [n, seqlen].
        config: the search configuration (its plan is every trial's base).
        objective_windows: the prompts the objective is measured on (default: ``windows``).
        backend: kernels backend, resolved once (``auto`` / ``torch`` / ``triton``).
        state: another runner's ``shared_state()`` (a remote worker's): its dense outputs, statistics and gradient
            statistics are used as they are instead of being computed again, so every worker measures against the
            same reference.
        gradients: the dense model's gradient statistics (``calibrate.GradientStats``), for metrics that read G.
    """

    def __init__(self, model, windows: torch.Tensor, config: SearchConfig, *, objective_windows=None,
                 backend: str | None = None, progress: bool = False, state: dict | None = None,
                 gradients=None):  # fmt: skip
        self.model = model
        self.windows = windows
        self.objective_windows = windows if objective_windows is None else objective_windows
        self.cfg = config
        self.plan = config.plan
        self.progress = progress
        self.gradients = gradients if gradients is not None else (state or {}).get("gradients")
        self._with_grads: list[dict] | None = None
        self.linears = model_linears(model, self.plan.targets, self.plan.ignore)
        if not any(self.linears):
            raise ValueError("no linear layers selected for pruning (check targets / ignore)")
        self.snapshot = WeightSnapshot().save_all(self.linears)
        first = next(r for refs in self.linears for r in refs)
        self.backend = choose_backend(first.module.weight, backend)
        t0 = time.perf_counter()
        self._stats: list[dict] | None = None
        self._stats_needs: frozenset[str] = frozenset()
        if state is not None:
            self.dense = state["dense"]
            self._stats, self._stats_needs = state["stats"], frozenset(state["stats_needs"])
        else:
            self.dense = DenseOutputs(model, self.objective_windows, batch_size=self.plan.batch_size,
                                      objective=config.objective, progress=progress)  # fmt: skip
        if self.plan.stats == "dense" and state is None:
            self.dense_stats(method_for(self.plan).needs())
        self.setup_seconds = time.perf_counter() - t0

    def dense_stats(self, needs) -> list[dict] | None:
        """The dense model's statistics for ``needs``, collected once (again only for new statistic names); gradient
        statistics come from ``gradients``, added to every linear's entry."""
        needs = frozenset(needs)
        walk_needs = needs - {GRADIENT}
        if walk_needs and not walk_needs <= self._stats_needs:
            self._stats_needs = self._stats_needs | walk_needs
            self.snapshot.restore()
            self._stats = walk(self.model, self.windows, self.linears, self._stats_needs,
                               batch_size=self.plan.batch_size, backend=self.backend,
                               progress=self.progress)  # fmt: skip
            self._with_grads = None
        if GRADIENT not in needs:
            return self._stats
        if self.gradients is None:
            raise ValueError("this search computed no gradient statistics, but a trial's metric reads G")
        if self._with_grads is None:
            base = self._stats if self._stats is not None else [{} for _ in self.linears]
            self._with_grads = [merge_gradients(b, refs, self.gradients, GRADIENT)
                                for b, refs in zip(base, self.linears)]  # fmt: skip
        return self._with_grads

    def shared_state(self) -> dict:
        """What a remote runner needs to evaluate trials exactly as this one does, computed once here: the
        windows, the dense outputs (``dense``), the dense statistics collected so far (``stats``, with the
        statistic names they cover) and the gradient statistics (``gradients``, or None). Pass it as
        ``TrialRunner(..., state=...)``."""
        return {"windows": self.windows, "objective_windows": self.objective_windows, "dense": self.dense,
                "stats": self._stats, "stats_needs": sorted(self._stats_needs),
                "gradients": self.gradients}  # fmt: skip

    def plan_for(self, changes: dict) -> Plan:
        """The base plan with a space's decoded changes (Plan fields; other keys, like ``target``, are ignored).
        Uniform block sparsities become the plan's ``sparsity``; the base plan's own allocation (a list, or OWL)
        is kept when the changes leave it at the target."""
        changes = {k: v for k, v in changes.items() if k in Plan.__dataclass_fields__}
        blocks = changes.get("block_sparsity")
        if blocks is not None and len(set(blocks)) == 1:
            if self.plan.block_sparsity is not None and blocks[0] == self.plan.sparsity:
                changes.pop("block_sparsity")
            else:
                changes.update(sparsity=blocks[0], block_sparsity=None)
        elif blocks is not None:
            changes["block_sparsity"] = list(blocks)
        return replace(self.plan, **changes)

    def trial_plan(self, metric: str, blocks: list[float]) -> Plan:
        """``plan_for`` a metric and per-block sparsities."""
        return self.plan_for({"metric": metric, "block_sparsity": blocks})

    def apply(self, plan: Plan):
        """Restore the dense weights, then prune with ``plan``; returns the PruneResult."""
        self.snapshot.restore()
        stats = self.dense_stats(method_for(plan).needs()) if plan.stats == "dense" else None
        return prune(self.model, plan=plan, windows=self.windows, stats=stats, keep_masks=True, backend=self.backend,
                     snapshot=self.snapshot, progress=False, gradients=self.gradients)  # fmt: skip

    def run(self, plan: Plan, known: dict | None = None, known_hash: str | None = None) -> dict:
        """One trial. ``known``: mask digest -> (objective, sparsity) of earlier trials (the driver's table; an
        evaluated trial adds itself to it); ``known_hash``: this trial's digest when already known
        (``population_hashes``), answered without pruning when it is in ``known``.

        Returns:
            ``{sparsity, objective, mask_hash, evaluated, seconds, status, error}``; a failure (any
            ``Exception``) gives ``status="failed"`` and its message, with the dense weights restored.
        """
        known = {} if known is None else known
        t0 = time.perf_counter()
        if known_hash is not None and known_hash in known:
            err, sparsity = known[known_hash]
            return {"sparsity": sparsity, "objective": err, "mask_hash": known_hash, "evaluated": False,
                    "seconds": time.perf_counter() - t0, "status": "ok", "error": None}  # fmt: skip
        try:
            res = self.apply(plan)
            h = res.mask_digest
            if h in known:
                err, sparsity = known[h]
                return {"sparsity": sparsity, "objective": err, "mask_hash": h, "evaluated": False,
                        "seconds": time.perf_counter() - t0, "status": "ok", "error": None}  # fmt: skip
            err = reconstruction_error(self.model, self.dense, self.cfg.objective)
        except Exception as exc:  # a failed trial must not end the search: the driver records it
            self.snapshot.restore()
            logger.warning("trial failed (%s %s): %s: %s", plan.metric, plan.block_sparsity, type(exc).__name__, exc)
            return {"sparsity": None, "objective": None, "mask_hash": None, "evaluated": True,
                    "seconds": time.perf_counter() - t0, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        known[h] = (err, res.sparsity)
        return {"sparsity": res.sparsity, "objective": err, "mask_hash": h, "evaluated": True,
                "seconds": time.perf_counter() - t0, "status": "ok", "error": None}  # fmt: skip

    def population_hashes(self, plans: list[Plan]) -> list[str] | None:
        """Mask digests of a whole population from the kernels' population op, without pruning anything: one
        launch per layer reads W once for all members (dense statistics, unstructured, row-scoped metrics,
        uniform or listed block sparsities). Equal to the digests ``run`` computes. None where the op does not
        apply."""
        from optishear_kernels import population_prune

        from ..calibrate import ACT_NORM

        methods = [method_for(p) for p in plans]
        metrics = [getattr(m, "metric", None) for m in methods]
        if (self.plan.stats != "dense" or self.plan.nm is not None
                or any(m is None or m.config is None for m in metrics)
                or len({m.needs_activations for m in metrics}) > 1
                or any(p.block_sparsity == "owl" for p in plans)
                # the op knows masks only: not per-module targets, not a weight update after the mask
                or any(p.module_sparsity is not None or p.update != "none" for p in plans)):  # fmt: skip
            return None
        stats = self.dense_stats(methods[0].needs())
        self.snapshot.restore()
        per_block = [p.block_sparsities(len(self.linears)) for p in plans]
        sinks = [MaskSink() for _ in plans]
        for refs in self.linears:
            for r in refs:
                w = r.weight2d()
                x = stats[r.block][r.name][ACT_NORM] if metrics[0].needs_activations else torch.ones(w.shape[1])
                packed = population_prune(w, x.to(w.device), [m.config for m in metrics],
                                          [b[r.block] for b in per_block], backend_name=self.backend)  # fmt: skip
                for sink, p in zip(sinks, packed):
                    sink.add(r.full_name, p)
        return [sink.digest() for sink in sinks]

    def close(self) -> None:
        self.snapshot.restore()


__all__ = ["TrialRunner"]
