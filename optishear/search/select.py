"""Choosing a stage's answer: the lowest error, or the finalists re-scored on held-out prompts.

A few prompts cannot separate metrics that differ by 1% in perplexity, and the search's best is the one most
flattered by them; so (by default) the stage's best distinct candidates and its seeded baseline are scored
again on held-out prompts (a third window set, disjoint from the statistics and objective windows), and the
lowest held-out error wins. Each score is written to ``validation.jsonl`` as it finishes and read back on resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..objectives import DenseOutputs
from .trials import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)


def at_target(solutions: list[dict], cfg) -> list[dict]:
    """In trade-off mode, the solutions at (or nearest) the target sparsity; otherwise all of them."""
    if not cfg.tradeoff or not solutions:
        return solutions
    nearest = min(abs(p["sparsity"] - cfg.plan.sparsity) for p in solutions)
    return [p for p in solutions if abs(p["sparsity"] - cfg.plan.sparsity) == nearest]


def choose(pareto: list[dict], cfg) -> dict:
    """Lowest error; in trade-off mode, lowest error among solutions at (or nearest) the target sparsity."""
    return min(at_target(pareto, cfg), key=lambda p: (p["objective"], p["metric"]))


class Validator:
    """Scores a stage's finalists on held-out prompts (``validation.jsonl``, resumable)."""

    def __init__(self, runner, windows: torch.Tensor, path: Path, resume: bool, progress: bool):
        self.runner = runner
        self.dense = DenseOutputs(runner.model, windows, batch_size=runner.plan.batch_size,
                                  objective=runner.cfg.objective, progress=progress)  # fmt: skip
        self.path = path
        self.done = {r["mask_hash"]: r["validation"] for r in read_jsonl(path)} if resume else {}

    def choose(self, stage: str, records: list[dict], baseline: dict | None, cfg) -> dict:
        pool = at_target(records, cfg)
        finalists, seen = [], set()
        for r in sorted(pool, key=lambda r: (r["objective"], r["metric"])):
            if r["mask_hash"] not in seen and len(finalists) < cfg.validate_top:
                finalists.append(r)
                seen.add(r["mask_hash"])
        if baseline is not None and baseline["mask_hash"] not in seen and baseline in pool:
            finalists.append(baseline)
        scored = []
        for r in finalists:
            value = self.done.get(r["mask_hash"])
            if value is None:
                self.runner.apply(self.runner.plan_for(r["changes"]))
                value = self.dense.error(self.runner.model, cfg.objective)
                self.done[r["mask_hash"]] = value
                append_jsonl(self.path, {"stage": stage, "metric": r["metric"], "block_sparsity": r["block_sparsity"],
                                         "changes": r["changes"], "mask_hash": r["mask_hash"],
                                         "objective": r["objective"], "validation": value})  # fmt: skip
            scored.append({**r, "validation": value})
            logger.info("[%s] held-out %s: %.6g (search objective %.6g)", stage, r["metric"], value, r["objective"])
        return min(scored, key=lambda r: (r["validation"], r["objective"], r["metric"]))


__all__ = ["Validator", "at_target", "choose"]
