"""Finding a model's decoder blocks and the linear layers to prune in them, for any causal LM."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # GPT-2's transposed linear


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest ``ModuleList`` of same-type modules that contain linear layers.

    Raises:
        ValueError: when the model has no such list (no decoder blocks).
    """
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        if not any(_is_linear(m) for m in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ValueError(
            f"no decoder blocks found in {type(model).__name__}: expected a ModuleList of identical blocks "
            "containing Linear/Conv1D layers"
        )
    return best


@dataclass
class LinearRef:
    """A prunable linear layer of block ``block`` named ``name`` (relative to the block)."""

    block: int
    name: str
    module: nn.Module

    @property
    def full_name(self) -> str:
        return f"{self.block}.{self.name}"

    @property
    def transposed(self) -> bool:
        return not isinstance(self.module, nn.Linear)

    def weight2d(self) -> torch.Tensor:
        """The weight as [out, in] (a view: Conv1D stores [in, out])."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight2d().shape[1]


def find_linears(block: nn.Module, index: int, targets=None, ignore=None) -> list[LinearRef]:
    """Linear layers of a block, filtered by fnmatch patterns on their names (``"mlp.*"``, ``"*q_proj"``)."""
    out = []
    for name, mod in block.named_modules():
        if not name or not _is_linear(mod):
            continue
        full = f"{index}.{name}"
        if targets and not any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(full, p) for p in targets):
            continue
        if ignore and any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(full, p) for p in ignore):
            continue
        out.append(LinearRef(index, name, mod))
    return out


def model_linears(model: nn.Module, targets=None, ignore=None) -> list[list[LinearRef]]:
    """Per block, the linear layers to prune. Embeddings and the LM head are outside the blocks."""
    _, blocks = find_blocks(model)
    return [find_linears(b, i, targets, ignore) for i, b in enumerate(blocks)]
