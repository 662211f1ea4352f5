"""SparseGPT (Frantar & Alistarh, 2023): choose the mask and update the remaining weights from the layer input's
Hessian, column by column (``obs.obs_prune``; a block's layers side by side, ``obs.obs_prune_all``), as
IST-DASLab/sparsegpt ``fasterprune`` does.

``--metric sparsegpt`` prunes with SparseGPT's own mask; ``--update sparsegpt`` (``SparseGPTUpdate``) applies the
same update after any other method's mask. Both read the walk's ``hessian`` statistic, one per distinct input (q/k/v
share one, gate/up share one), and factor each once (``obs.cached_inverse``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from optishear_kernels import meta_score, pack_mask, unpack_mask

from ..calibrate import ACT_NORM, HESSIAN
from .base import BlockJob, MaskSink, Method
from .admm import admm_prune, cached_solver
from .obs import cached_inverse, obs_prune_all

logger = logging.getLogger(__name__)

UPDATES = ("none", "sparsegpt", "admm", "admm-gradual")


def _write(ref, new: torch.Tensor) -> None:
    w = ref.weight2d()
    w.copy_(new.to(device=w.device, dtype=w.dtype))


class SparseGPTMethod(Method):
    """SparseGPT's mask and update (unstructured at the block's or linear's sparsity, or the plan's N:M)."""

    name = "sparsegpt"

    @classmethod
    def handles(cls, metric: str) -> bool:
        return isinstance(metric, str) and metric.strip().lower() == "sparsegpt"

    def needs(self) -> frozenset[str]:
        return frozenset({HESSIAN})

    def prune_block(self, job: BlockJob) -> None:
        nm = self.plan.nm
        tasks = []
        for r in job.refs:  # every inverse first (each factored once, on all threads), then the layers side by side
            job.snapshot.save(r)
            tasks.append({"w": r.weight2d(), "inv": cached_inverse(job.stat(r, HESSIAN), r.full_name),
                          "sparsity": None if nm is not None else job.sparsity_for(r), "nm": nm})  # fmt: skip
        masks = {}
        for i, new, mask in obs_prune_all(tasks):
            _write(job.refs[i], new)
            masks[i] = pack_mask(mask)
        for i, r in enumerate(job.refs):  # reported in the block's order, whatever order the layers finished in
            job.masks.add(r.full_name, masks[i])


class AdmmMethod(Method):
    """ADMM's gradual mask and least-squares update (Boža 2024; ``admm.py``): unstructured over each layer at the
    block's or linear's sparsity, or the plan's N:M."""

    name = "admm"

    @classmethod
    def handles(cls, metric: str) -> bool:
        return isinstance(metric, str) and metric.strip().lower() == "admm"

    def needs(self) -> frozenset[str]:
        return frozenset({HESSIAN})

    def prune_block(self, job: BlockJob) -> None:
        nm = self.plan.nm
        for r in job.refs:
            job.snapshot.save(r)
            new, mask = admm_prune(r.weight2d(), cached_solver(job.stat(r, HESSIAN), r.full_name),
                                   sparsity=None if nm is not None else job.sparsity_for(r), nm=nm)  # fmt: skip
            _write(r, new)
            job.masks.add(r.full_name, pack_mask(mask))


class SparseGPTUpdate(Method):
    """Any method's mask, then a weight update with that mask fixed: SparseGPT's (``obs_prune(mask=...)``) or, with
    ``update="admm"``, the ADMM least-squares solve (``admm.admm_prune(mask=...)``).

    The inner method prunes the block as usual (its masks reported to a private sink); the dense weights are then
    put back and updated. Linears that share a Hessian (q/k/v, gate/up) are updated in one pass over the stacked
    rows: with a fixed mask every row's update is independent, so this equals one pass per linear. The masks
    reported are the inner method's; the digest also records the update.
    """

    name = "update"

    def __init__(self, inner: Method, update: str = "sparsegpt"):
        super().__init__(inner.plan)
        if update not in UPDATES[1:]:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if update == "admm-gradual" and getattr(getattr(inner, "metric", None), "config", None) is None:
            raise ValueError(f"update admm-gradual re-chooses the mask by a row-scoped metric (wanda, ria, "
                             f"magnitude-row, a meta-metric spec), not by {inner.plan.metric!r}")  # fmt: skip
        self.inner = inner
        self.update = update
        self.name = f"{inner.name}+{update}"

    def __getattr__(self, name):  # the inner method's own attributes (``metric`` for recipes)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def validate(self, plan) -> None:
        self.inner.validate(plan)

    def needs(self) -> frozenset[str]:
        return frozenset(self.inner.needs()) | {HESSIAN}

    def check_model(self, linears) -> None:
        self.inner.check_model(linears)

    def prune_block(self, job: BlockJob) -> None:
        if self.update == "admm-gradual":
            return self._gradual(job)
        dense = {}
        for r in job.refs:
            job.snapshot.save(r)
            dense[r.name] = r.weight2d().detach().clone()
        sink = MaskSink(keep=True)
        self.inner.prune_block(replace(job, masks=sink))
        by_input: dict[int, list] = {}
        for r in job.refs:
            by_input.setdefault(id(job.stat(r, HESSIAN)), []).append(r)
        groups = list(by_input.values())
        tasks = []
        for refs in groups:
            w = torch.cat([dense[r.name] for r in refs])
            cols = w.shape[1]
            mask = torch.cat([unpack_mask(sink.masks[r.full_name], cols).to(w.device) for r in refs])
            tasks.append({"w": w, "mask": mask})
        for i, new, _ in self._solve(job, tasks, groups):
            start = 0
            for r in groups[i]:
                rows = dense[r.name].shape[0]
                _write(r, new[start : start + rows])
                start += rows
        for name in sorted(sink.masks):
            job.masks.add(name, sink.masks[name])
        job.masks.note(f"update:{job.index}", self.update)

    def _gradual(self, job: BlockJob) -> None:
        """ADMM's gradual pruning with the inner metric choosing each mask from the iterate (per row)."""
        metric, nm = self.inner.metric, self.plan.nm
        for r in job.refs:
            job.snapshot.save(r)
            x = job.stat(r, ACT_NORM) if metric.needs_activations else None

            def score(v, x=x):
                return meta_score(v, x.to(v.device) if x is not None else torch.ones(v.shape[1], device=v.device),
                                  metric.config)  # fmt: skip

            new, mask = admm_prune(r.weight2d(), cached_solver(job.stat(r, HESSIAN), r.full_name),
                                   sparsity=None if nm is not None else job.sparsity_for(r), nm=nm, score=score)
            _write(r, new)
            job.masks.add(r.full_name, pack_mask(mask))
        job.masks.note(f"update:{job.index}", self.update)

    def _solve(self, job: BlockJob, tasks: list[dict], groups: list[list]):
        """(task index, new weights, mask) of each stacked group, in no fixed order."""
        stats = [(job.stat(refs[0], HESSIAN), refs[0].full_name) for refs in groups]
        if self.update == "sparsegpt":
            yield from obs_prune_all([dict(task, inv=cached_inverse(*st)) for task, st in zip(tasks, stats)])
            return
        for i, (task, st) in enumerate(zip(tasks, stats)):  # matmuls: torch's own threads, one layer at a time
            yield (i, *admm_prune(task["w"], cached_solver(*st), mask=task["mask"]))


def with_update(method: Method, update: str | None) -> Method:
    """``method`` followed by the plan's weight update (``none``: as it is; SparseGPT updates already)."""
    if update in (None, "none") or (update, type(method)) in (("sparsegpt", SparseGPTMethod), ("admm", AdmmMethod)):
        return method
    if update in UPDATES:
        return SparseGPTUpdate(method, update)
    raise ValueError(f"update must be one of {UPDATES}, got {update!r}")


__all__ = ["AdmmMethod", "SparseGPTMethod", "SparseGPTUpdate", "with_update", "UPDATES"]
