"""The pruning-method protocol: given a block, its statistics and the plan for it, prune it.

The engine (``optishear.engine.prune``) owns everything around a method: the plan's validation, the
calibration windows, the walk that collects the statistics the method declares (sequentially or from the
dense model), the per-block sparsity allocation (uniform, a list, OWL), restoring every weight on error, and
the result. A method only says what it needs and prunes one block: it may zero weights, update the remaining
ones, or change shapes. A new method is a new file in this package with a class like ``MetricMethod`` and
one line in ``methods/__init__.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from optishear_kernels import all_finite

from ..models import LinearRef, WeightSnapshot

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Plan


class MaskSink:
    """Where a method reports the masks it applied: one digest per layer (always), the bit-packed masks
    themselves when asked for. ``digest()`` combines the per-layer digests in name order, so it identifies
    the pruned model's masks whatever order the layers were pruned in."""

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.masks: dict[str, torch.Tensor] = {}
        self._digests: dict[str, bytes] = {}

    def add(self, full_name: str, packed: torch.Tensor) -> None:
        """``packed``: the pruned positions of layer ``full_name`` (uint8, bit-packed rows), or any tensor that
        identifies what the method removed (kept indices, for shape-changing methods)."""
        data = packed.detach().cpu().contiguous()
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(data.shape)).encode())
        h.update(data.numpy().tobytes())
        self._digests[full_name] = h.digest()
        if self.keep:
            self.masks[full_name] = data

    def note(self, key: str, value: str) -> None:
        """Make the digest depend on something besides the masks (a weight update applied after them), so that two
        models with equal masks but different weights never share a digest (the search answers equal digests
        from one evaluation). ``key`` must not be a layer name."""
        self._digests[f"#{key}"] = value.encode()

    def digest(self) -> str:
        return mask_digest_of(self._digests)

    def __len__(self) -> int:
        return len(self._digests)


def mask_digest_of(per_layer: dict[str, bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(per_layer):
        h.update(name.encode())
        h.update(per_layer[name])
    return h.hexdigest()


def mask_digest(masks: dict[str, torch.Tensor]) -> str:
    """The digest ``MaskSink`` gives for these packed masks (for masks kept by an earlier run)."""
    sink = MaskSink()
    for name, packed in masks.items():
        sink.add(name, packed)
    return sink.digest()


@dataclass
class BlockJob:
    """One block to prune.

    Attributes:
        index: the block's position; block: the block module; refs: its linears to prune.
        stats: ``{linear name: {statistic: value}}`` as the walk collected them (None when nothing was needed).
        sparsity: the block's target sparsity (unstructured; N:M plans carry their structure in ``plan``).
        layer_sparsity: per-linear targets (linear name -> sparsity) when the plan allocates per module; a method
            reads a linear's target through ``sparsity_for``.
        plan: the whole plan.
        backend: the kernels backend chosen once by the engine (``torch`` / ``triton``).
        snapshot: save a layer here before changing it (the engine restores everything on error).
        masks: report applied masks here.
    """

    index: int
    block: torch.nn.Module
    refs: list[LinearRef]
    stats: dict | None
    sparsity: float
    plan: "Plan"
    backend: str
    snapshot: WeightSnapshot
    masks: MaskSink = field(default_factory=MaskSink)
    layer_sparsity: dict[str, float] | None = None

    def sparsity_for(self, ref: LinearRef) -> float:
        """The target sparsity of linear ``ref``: its own when the plan allocates per module, else the block's."""
        if self.layer_sparsity is not None and ref.name in self.layer_sparsity:
            return self.layer_sparsity[ref.name]
        return self.sparsity

    def stat(self, ref: LinearRef, name: str):
        if self.stats is None or name not in self.stats.get(ref.name, {}):
            raise ValueError(f"layer {ref.full_name} has no {name!r} statistics: the method did not declare them")
        return self.stats[ref.name][name]


class Method:
    """Base class of pruning methods (subclass it; every hook has a default)."""

    name: ClassVar[str] = "method"

    @classmethod
    def handles(cls, metric: str) -> bool:
        """Whether the plan's ``metric`` names this method."""
        return False

    @classmethod
    def handles_plan(cls, plan: "Plan") -> bool:
        """Whether this method prunes with ``plan`` (default: ``handles(plan.metric)``; a method chosen by another
        plan field, such as ``structured``, overrides this)."""
        return cls.handles(plan.metric)

    def __init__(self, plan: "Plan"):
        self.plan = plan

    def validate(self, plan: "Plan") -> None:
        """Reject plan fields this method cannot honour (before any model is touched)."""

    def needs(self) -> frozenset[str]:
        """Statistic names (``optishear.calibrate``) the method reads; empty for data-free methods."""
        return frozenset()

    def check_model(self, linears: list[list[LinearRef]]) -> None:
        """Up-front checks on the model, before any weight changes: finite weights, N:M widths."""
        if not any(linears):
            raise ValueError("no linear layers selected for pruning (check targets / ignore)")
        nm = self.plan.nm
        for refs in linears:
            for r in refs:
                w = r.weight2d()
                if not all_finite(w):
                    raise ValueError(f"weights of layer {r.full_name} contain NaN or inf")
                if nm is not None and w.shape[1] % nm[1]:
                    raise ValueError(f"N:M {nm[0]}:{nm[1]} needs input features divisible by {nm[1]}, "
                                     f"but layer {r.full_name} has {w.shape[1]}")  # fmt: skip

    def prune_block(self, job: BlockJob) -> None:
        raise NotImplementedError


__all__ = ["Method", "BlockJob", "MaskSink", "mask_digest", "mask_digest_of"]
