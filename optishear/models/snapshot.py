"""Dense weights kept aside so that a failed prune, or the next search trial, can put them back in place."""

from __future__ import annotations

import torch

from .blocks import LinearRef


class WeightSnapshot:
    """CPU copies of linear weights (and biases), taken lazily before each is first modified, restorable in place.

    The engine uses it to leave no half-pruned model behind on error; the search uses it to put the dense
    weights back between trials without reloading the model. A method that changes shapes restores through
    the same call: a saved tensor whose shape no longer matches is put back by assignment.
    """

    def __init__(self):
        self._saved: dict[int, tuple[LinearRef, torch.Tensor, torch.Tensor | None]] = {}
        self._undo: list = []

    def add_undo(self, fn) -> None:
        """Register ``fn()`` to run at the next ``restore()`` (once, latest first, before the weights are put back): a
        method that replaces whole modules (structured surgery) puts the dense ones back this way."""
        self._undo.append(fn)

    def save(self, ref: LinearRef) -> None:
        key = id(ref.module)
        if key not in self._saved:
            bias = getattr(ref.module, "bias", None)
            self._saved[key] = (ref, ref.module.weight.data.detach().to("cpu", copy=True),
                                None if bias is None else bias.data.detach().to("cpu", copy=True))  # fmt: skip

    def save_all(self, linears: list[list[LinearRef]]) -> "WeightSnapshot":
        for refs in linears:
            for r in refs:
                self.save(r)
        return self

    def saved(self, ref: LinearRef) -> torch.Tensor:
        """The CPU copy of ``ref``'s weight as it was first saved (the dense weight, for the search's runner)."""
        key = id(ref.module)
        if key not in self._saved:
            raise KeyError(f"no saved weight for layer {ref.full_name}")
        return self._saved[key][1]

    @staticmethod
    def _put(param: torch.Tensor, saved: torch.Tensor) -> None:
        if param.shape == saved.shape:
            param.data.copy_(saved)
        else:
            param.data = saved.to(param.device, param.dtype, copy=True)

    @torch.no_grad()
    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        for ref, w, b in self._saved.values():
            self._put(ref.module.weight, w)
            if b is not None and getattr(ref.module, "bias", None) is not None:
                self._put(ref.module.bias, b)

    def __len__(self) -> int:
        return len(self._saved)
