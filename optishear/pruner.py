"""The engine: prune a causal LM layer by layer with any metric, at one sparsity or one per block."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from optishear_kernels import all_finite

from .calibrate import sequential_walk
from .config import PruneConfig, check_sparsity, parse_structure
from .data import CalibSpec, calibration_windows
from .metrics import Metric, prune_matrix, resolve_metric
from .models import LinearRef, model_linears

logger = logging.getLogger(__name__)


class WeightSnapshot:
    """CPU copies of linear weights, taken lazily before each is first modified, restorable in place.

    The engine uses it to leave no half-pruned model behind on error; the search uses it to put the
    dense weights back between trials without reloading the model.
    """

    def __init__(self):
        self._saved: dict[int, tuple[LinearRef, torch.Tensor]] = {}

    def save(self, ref: LinearRef) -> None:
        key = id(ref.module)
        if key not in self._saved:
            self._saved[key] = (ref, ref.module.weight.data.detach().to("cpu", copy=True))

    def save_all(self, linears: list[list[LinearRef]]) -> "WeightSnapshot":
        for refs in linears:
            for r in refs:
                self.save(r)
        return self

    @torch.no_grad()
    def restore(self) -> None:
        for ref, w in self._saved.values():
            ref.module.weight.data.copy_(w)

    def __len__(self) -> int:
        return len(self._saved)


@dataclass
class PruneResult:
    """What the engine did.

    Attributes:
        layer_sparsity: achieved fraction of zeros per linear (``"3.mlp.down_proj"``).
        block_sparsity: the sparsity each block was asked for.
        sparsity: achieved overall fraction of zeros over all pruned weights.
        masks: bit-packed pruned masks per linear (uint8 [out, ceil(in/8)]), when asked for.
        seconds: wall time of the pruning.
    """

    layer_sparsity: dict[str, float]
    block_sparsity: list[float]
    sparsity: float
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def _check_model(linears: list[list[LinearRef]], nm) -> None:
    """Up-front checks on the model, before any weight changes."""
    if not any(linears):
        raise ValueError("no linear layers selected for pruning (check targets / ignore)")
    for refs in linears:
        for r in refs:
            w = r.weight2d()
            if not all_finite(w):
                raise ValueError(f"weights of layer {r.full_name} contain NaN or inf")
            if nm is not None and w.shape[1] % nm[1]:
                raise ValueError(
                    f"N:M {nm[0]}:{nm[1]} needs input features divisible by {nm[1]}, "
                    f"but layer {r.full_name} has {w.shape[1]}"
                )


def resolve_block_sparsity(cfg: PruneConfig, n_blocks: int) -> list[float] | None:
    """Per-block sparsities; None for OWL (decided once dense statistics exist)."""
    if cfg.block_sparsity == "owl":
        return None
    if cfg.block_sparsity is None:
        return [float(cfg.sparsity)] * n_blocks
    if len(cfg.block_sparsity) != n_blocks:
        raise ValueError(
            f"block_sparsity has {len(cfg.block_sparsity)} values but the model has {n_blocks} decoder blocks"
        )
    return [check_sparsity(s, f"block_sparsity[{i}]") for i, s in enumerate(cfg.block_sparsity)]


def prune_block(
    refs: list[LinearRef],
    stats: dict[str, torch.Tensor] | None,
    metric: Metric,
    sparsity: float,
    nm,
    *,
    backend_name: str | None = None,
    snapshot: WeightSnapshot | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> None:
    """Prune the linears of one block in place (all through ``optishear_kernels``)."""
    for r in refs:
        if snapshot is not None:
            snapshot.save(r)
        x = stats[r.name] if stats is not None and metric.needs_activations else None
        packed = prune_matrix(
            r.weight2d(), x.to(r.module.weight.device) if x is not None else None, metric,
            sparsity=None if nm is not None else sparsity, nm=nm, backend_name=backend_name,
        )  # fmt: skip
        if masks is not None:
            masks[r.full_name] = packed


@torch.no_grad()
def prune(
    model,
    tokenizer=None,
    config: PruneConfig | None = None,
    *,
    windows: torch.Tensor | None = None,
    stats: list[dict[str, torch.Tensor]] | None = None,
    keep_masks: bool = False,
    backend_name: str | None = None,
    snapshot: WeightSnapshot | None = None,
    progress: bool = True,
    **overrides,
) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        model: a Hugging Face causal LM (its decoder blocks are found generically).
        tokenizer: needed to tokenize calibration text when ``windows`` is not given.
        config: a ``PruneConfig``; keyword ``overrides`` set its fields (``sparsity=0.6``).
        windows: ready calibration token windows [n, seqlen] (skips reading ``config.calib``).
        stats: precomputed per-block activation statistics (the search's fast mode); skips calibration.
        keep_masks: return bit-packed masks per layer.
        backend_name: kernels backend (auto / torch / triton).
        snapshot: a ``WeightSnapshot`` that already holds the weights as they are now (the search keeps the
            dense ones): the restore on error uses it instead of copying every weight again.
        progress: show progress bars.

    Returns:
        A ``PruneResult``. On any error the model's weights are restored and the error re-raised,
        so a failed call never leaves a half-pruned model.
    """
    cfg = PruneConfig.from_dict({**(config or PruneConfig()).to_dict(), **overrides})
    cfg.validate()
    metric = resolve_metric(cfg.metric)
    nm = parse_structure(cfg.structure)
    linears = model_linears(model, cfg.targets, cfg.ignore)
    per_block = resolve_block_sparsity(cfg, len(linears))
    _check_model(linears, nm)
    if stats is not None and len(stats) != len(linears):
        raise ValueError(f"stats cover {len(stats)} blocks but the model has {len(linears)}")

    t0 = time.perf_counter()
    snapshot = snapshot if snapshot is not None else WeightSnapshot()
    masks: dict[str, torch.Tensor] | None = {} if keep_masks else None

    def on_block(i, refs, block_stats):
        prune_block(refs, block_stats, metric, per_block[i], nm, backend_name=backend_name, snapshot=snapshot,
                    masks=masks)  # fmt: skip
        logger.log(logging.INFO if progress else logging.DEBUG, "block %d/%d pruned: %s at %s", i + 1, len(linears),
                   metric.name, cfg.structure if nm else f"{per_block[i]:.3f}")  # fmt: skip

    try:
        needs_stats = metric.needs_activations or per_block is None
        if needs_stats and windows is None and stats is None:
            spec = CalibSpec(cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed)
            windows = calibration_windows(spec, tokenizer, model)
        if per_block is None:  # OWL: outlier ratios from dense statistics
            from .owl import outlier_ratios, owl_block_sparsity

            if stats is None:
                stats = sequential_walk(model, windows, linears, None, batch_size=cfg.batch_size, progress=progress)
            per_block = owl_block_sparsity(outlier_ratios(linears, stats, cfg.owl_m), cfg.sparsity, cfg.owl_lambda)
            logger.info("OWL block sparsities: %s", ", ".join(f"{s:.3f}" for s in per_block))
            if cfg.stats == "sequential" and metric.needs_activations:
                stats = None  # the sequential protocol recomputes statistics through the pruned blocks
        if stats is None and metric.needs_activations:
            if cfg.stats == "dense":
                stats = sequential_walk(model, windows, linears, None, batch_size=cfg.batch_size, progress=progress)
            else:
                sequential_walk(model, windows, linears, on_block, batch_size=cfg.batch_size, progress=progress)
        if stats is not None or not metric.needs_activations:
            for i, refs in enumerate(linears):
                on_block(i, refs, stats[i] if stats is not None else None)
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
    return PruneResult(layer_sparsity, per_block, zeros / total, masks or {}, time.perf_counter() - t0)
