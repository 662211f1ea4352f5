"""The engine: prune a causal LM block by block with any method, at one sparsity or one per block.

    plan -> method (what it needs) -> calibration windows -> the walk (statistics, sequential or dense)
         -> method.prune_block per block -> PruneResult (achieved sparsity, mask digest)

Gradient statistics (``GRADIENT``) are not collected by the walk: when a method declares them, the engine runs the
backward pass (``calibrate.gradients``, cached on disk) on the dense model first and adds G to every linear's
statistics.

The backend of the kernels is chosen here, once, and passed down to the walk and the method.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import torch
from optishear_kernels import choose_backend

from .allocation import outlier_ratios, owl_block_sparsity
from .calibrate import ACT_NORM, GRADIENT, GradientStats, gradient_statistics, merge_gradients, walk
from .data import CalibSpec, calibration_windows
from .methods import BlockJob, MaskSink, method_for
from .models import WeightSnapshot, find_blocks, model_linears
from .plan import Plan

logger = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """What the engine did.

    Attributes:
        layer_sparsity: achieved fraction of zeros per linear (``"3.mlp.down_proj"``).
        block_sparsity: the sparsity each block was asked for.
        sparsity: achieved overall fraction of zeros over all pruned weights.
        mask_digest: a digest of every layer's mask (compare two runs without their perplexities).
        masks: bit-packed pruned masks per linear (uint8 [out, ceil(in/8)]), when asked for.
        seconds: wall time of the pruning.
        gradient_seconds: wall time of the gradient pass (0 when none ran, or it was loaded from the cache).
        structure: for methods that change shapes (structured), what every block kept and the parameter counts.
    """

    layer_sparsity: dict[str, float]
    block_sparsity: list[float]
    sparsity: float
    mask_digest: str = ""
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    gradient_seconds: float = 0.0
    structure: dict | None = None


def plan_windows(plan: Plan, tokenizer, model) -> torch.Tensor:
    """The calibration windows a plan names."""
    return calibration_windows(CalibSpec(plan.calib, plan.nsamples, plan.seqlen, plan.seed), tokenizer, model)


@torch.no_grad()
def prune(
    model,
    tokenizer=None,
    plan: Plan | None = None,
    *,
    windows: torch.Tensor | None = None,
    stats: list[dict] | None = None,
    keep_masks: bool = False,
    backend: str | None = None,
    snapshot: WeightSnapshot | None = None,
    progress: bool = True,
    gradients: GradientStats | None = None,
    grad_cache=None,
    **overrides,
) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        model: a Hugging Face causal LM (its decoder blocks are found generically).
        tokenizer: needed to tokenize calibration text when ``windows`` is not given.
        plan: a ``Plan``; keyword ``overrides`` set its fields (``sparsity=0.6``).
        windows: ready calibration token windows [n, seqlen] (skips reading ``plan.calib``).
        stats: precomputed per-block statistics of the dense model (the search's); skips calibration.
        keep_masks: return bit-packed masks per layer.
        backend: kernels backend (``auto`` / ``torch`` / ``triton``), resolved once here.
        snapshot: a ``WeightSnapshot`` that already holds the weights as they are now (the search keeps the
            dense ones): the restore on error uses it instead of copying every weight again.
        progress: show progress bars.
        gradients: precomputed gradient statistics of the dense model (the search's); otherwise, when the method
            reads G, they are computed (or loaded) from the calibration windows.
        grad_cache: directory of the gradient cache (default ``$OPTISHEAR_CACHE/gradients``; False: no cache).

    Returns:
        A ``PruneResult``. On any error the model's weights are restored and the error re-raised,
        so a failed call never leaves a half-pruned model.
    """
    plan = replace(plan or Plan(), **overrides)
    plan.validate()
    method = method_for(plan)
    if hasattr(method, "prune_model"):  # methods that decide across blocks before cutting any (structured)
        snapshot = snapshot if snapshot is not None else WeightSnapshot()
        try:
            return method.prune_model(model, tokenizer, windows=windows, stats=stats, snapshot=snapshot,
                                      keep_masks=keep_masks, backend=backend, progress=progress,
                                      window_fn=lambda: plan_windows(plan, tokenizer, model))  # fmt: skip
        except BaseException:
            snapshot.restore()
            raise
    linears = model_linears(model, plan.targets, plan.ignore)
    per_block = plan.block_sparsities(len(linears))
    method.check_model(linears)
    if stats is not None and len(stats) != len(linears):
        raise ValueError(f"stats cover {len(stats)} blocks but the model has {len(linears)}")
    first = next(r for refs in linears for r in refs)
    backend = choose_backend(first.module.weight, backend)
    needs = method.needs()
    walk_needs = frozenset(needs) - {GRADIENT}
    _, blocks = find_blocks(model)

    t0 = time.perf_counter()
    snapshot = snapshot if snapshot is not None else WeightSnapshot()
    sink = MaskSink(keep=keep_masks)

    grads = None

    def on_block(i, refs, block_stats):
        if grads is not None:
            block_stats = merge_gradients(block_stats, refs, grads, GRADIENT)
        method.prune_block(BlockJob(i, blocks[i], refs, block_stats, per_block[i], plan, backend, snapshot, sink,
                                    plan.layer_sparsities(i, refs, len(linears))))
        logger.log(logging.INFO if progress else logging.DEBUG, "block %d/%d pruned: %s at %s", i + 1, len(linears),
                   plan.metric, plan.structure if plan.nm else f"{per_block[i]:.3f}")  # fmt: skip

    def collect(what):
        what = frozenset(what) - {GRADIENT}
        if not what:
            return [{} for _ in linears]
        return walk(model, windows, linears, what, batch_size=plan.batch_size, backend=backend, progress=progress)

    try:
        stats_have_grads = stats is not None and all(GRADIENT in stats[i].get(r.name, {}) for i, refs in
                                                     enumerate(linears) for r in refs[:1])  # fmt: skip
        need_windows = (needs or per_block is None) and stats is None
        need_windows = need_windows or (GRADIENT in needs and not stats_have_grads and gradients is None)
        if need_windows and windows is None:
            windows = plan_windows(plan, tokenizer, model)
        if GRADIENT in needs and not stats_have_grads:
            if gradients is None:
                from .models.loading import cache_dir

                cache = None if grad_cache is False else (grad_cache or cache_dir() / "gradients")
                gradients = gradient_statistics(model, windows, dtype=plan.grad_dtype, cache_dir=cache,
                                                progress=progress)  # fmt: skip
            if gradients.dtype != plan.grad_dtype:
                raise ValueError(f"the given gradient statistics are {gradients.dtype}, the plan asks for "
                                 f"{plan.grad_dtype}")  # fmt: skip
            grads = gradients
        if per_block is None:  # OWL: outlier ratios from dense statistics
            owl_stats = stats if stats is not None else collect({ACT_NORM} | set(needs))
            per_block = owl_block_sparsity(outlier_ratios(linears, owl_stats, plan.owl_m), plan.sparsity,
                                           plan.owl_lambda)  # fmt: skip
            logger.info("OWL block sparsities: %s", ", ".join(f"{s:.3f}" for s in per_block))
            if plan.stats == "dense" and stats is None:
                stats = owl_stats
        if not needs:
            for i, refs in enumerate(linears):
                on_block(i, refs, None)
        elif stats is not None:
            for i, refs in enumerate(linears):
                missing = [n for n in needs for r in refs[:1] if n not in stats[i].get(r.name, {})
                           and not (n == GRADIENT and grads is not None)]  # fmt: skip
                if missing:
                    raise ValueError(f"the given statistics of block {i} lack {missing}, which {method.name} needs")
                on_block(i, refs, stats[i])
        elif plan.stats == "dense" or not walk_needs:  # gradients alone: nothing to walk for
            for i, (refs, block_stats) in enumerate(zip(linears, collect(walk_needs))):
                on_block(i, refs, block_stats)
        else:
            walk(model, windows, linears, walk_needs, on_block, batch_size=plan.batch_size, backend=backend,
                 keep=False, progress=progress)  # fmt: skip
    except BaseException:
        snapshot.restore()
        raise

    layer_sparsity, zeros, total = {}, 0, 0
    for refs in linears:
        for r in refs:
            w = r.module.weight.data
            z = w.numel() - int(torch.count_nonzero(w))
            layer_sparsity[r.full_name] = z / w.numel()
            zeros += z
            total += w.numel()
    return PruneResult(layer_sparsity, per_block, zeros / total, sink.digest(), sink.masks,
                       time.perf_counter() - t0, grads.seconds if grads is not None else 0.0)  # fmt: skip


__all__ = ["PruneResult", "prune", "plan_windows"]
