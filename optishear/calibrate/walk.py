"""The one calibration walk: capture the first block's inputs, then run the blocks one by one on CPU-held
activations, collecting exactly the statistics asked for, sequentially (each block's inputs come from the
already pruned blocks before it: the Wanda/SparseGPT protocol) or from the dense model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from optishear_kernels import all_finite
from tqdm.auto import tqdm

from ..models import LinearRef, find_blocks
from .collectors import ACT_NORM, make_collectors

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the capture hook to end the forward at the first block."""


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class BlockInputs:
    """Hidden states entering the current block, per calibration batch, kept on CPU, with the
    non-hidden arguments (masks, rotary embeddings, positions) the model passed to its blocks."""

    hidden: list[torch.Tensor]
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)


@torch.no_grad()
def capture_block_inputs(model, windows: torch.Tensor, batch_size: int = 8) -> BlockInputs:
    """Run the model on ``windows`` [n, seqlen] up to its first decoder block and keep that block's inputs."""
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    got = BlockInputs(hidden=[])

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        got.hidden.append(hs.detach().to("cpu"))
        got.args.append(_to(tuple(args[1:]), "cpu"))
        got.kwargs.append(_to({k: v for k, v in kwargs.items() if k != "hidden_states"}, "cpu"))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    for i, hs in enumerate(got.hidden):
        if not all_finite(hs):
            raise FloatingPointError(f"NaN or inf in the inputs of decoder block 0 (calibration batch {i})")
    return got


def _run_block(block, inputs: BlockInputs, device) -> list[torch.Tensor]:
    outs = []
    for hs, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
        out = block(hs.to(device), *_to(args, device), **_to(kwargs, device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        outs.append(out.detach().to("cpu"))
    return outs


BlockStats = dict[str, dict[str, object]]  # linear name -> statistic name -> value
BlockFn = Callable[[int, list[LinearRef], BlockStats], None]


class _BlockCollectors:
    """The collectors of one block's linears, one set per distinct input.

    On the first calibration batch every linear's input is held (a strong reference, so that no two live
    inputs can share an address); linears whose inputs are the same tensor (q/k/v, gate/up) are grouped and
    share one set of collectors from then on. Later batches fold each input in once.
    """

    def __init__(self, refs: list[LinearRef], needs, device, backend: str | None):
        self.refs = refs
        self.needs = needs
        self.device = device
        self.backend = backend
        self.first: dict[str, list[torch.Tensor]] | None = {}
        self.leader: dict[str, str] = {}
        self.colls: dict[str, dict] = {}

    def hook_for(self, name: str):
        def hook(module, args):
            x = args[0]
            if self.first is not None:
                self.first.setdefault(name, []).append(x)
            elif self.leader[name] == name:
                for c in self.colls[name].values():
                    c.update(x)

        return hook

    def end_batch(self) -> None:
        if self.first is None:
            return
        groups: dict[tuple, str] = {}
        for r in self.refs:
            xs = self.first.get(r.name)
            if not xs:
                raise RuntimeError(f"layer {r.full_name} was not called by its block's forward")
            key = tuple((x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype) for x in xs)
            lead = groups.setdefault(key, r.name)
            self.leader[r.name] = lead
            if lead == r.name:
                self.colls[r.name] = make_collectors(self.needs, xs[0].shape[-1], self.device, self.backend)
                for x in xs:
                    for c in self.colls[r.name].values():
                        c.update(x)
            else:
                self.colls[r.name] = self.colls[lead]
        self.first = None

    def results(self) -> BlockStats:
        done: dict[str, dict] = {}
        out = {}
        for r in self.refs:
            lead = self.leader[r.name]
            if lead not in done:
                done[lead] = {k: c.result() for k, c in self.colls[lead].items()}
            out[r.name] = done[lead]  # shared inputs share one result object (one Hessian for q/k/v)
        return out


def _check_stats(refs: list[LinearRef], stats: BlockStats) -> None:
    for r in refs:
        x = stats[r.name].get(ACT_NORM)
        if x is not None and not all_finite(x):
            raise FloatingPointError(f"NaN or inf in the activations entering layer {r.full_name}")
        for key, value in stats[r.name].items():
            tensors = value.values() if isinstance(value, dict) else [value]
            if any(isinstance(t, torch.Tensor) and not all_finite(t) for t in tensors):
                raise FloatingPointError(f"NaN or inf in the {key} statistics of layer {r.full_name}")


@torch.no_grad()
def walk(
    model,
    windows: torch.Tensor,
    linears: list[list[LinearRef]],
    needs=(ACT_NORM,),
    on_block: BlockFn | None = None,
    *,
    batch_size: int = 8,
    backend: str | None = None,
    keep: bool = True,
    progress: bool = True,
) -> list[BlockStats]:
    """Walk the decoder blocks in order, collecting the statistics ``needs`` for every listed linear.

    For each block: a forward over all calibration batches with collector hooks on its linears, then
    ``on_block(index, linears, stats)`` (which prunes them), then, if it changed anything, a second forward
    whose outputs feed the next block (the Wanda/SparseGPT protocol). With ``on_block=None`` the walk collects
    the dense model's statistics in one forward per block.

    Args:
        needs: statistic names (``collectors.WALK_STATISTICS``).
        backend: the kernels backend chosen once by the caller (``torch`` / ``triton``).
        keep: return every block's statistics (dense mode); False drops each block's after ``on_block``
            (sequential mode: Hessians of every block would not fit for large models).

    Returns:
        Per block, ``{linear name: {statistic: value}}`` (empty dicts when ``keep`` is False).

    Raises:
        FloatingPointError: NaN or inf in a layer's statistics or a block's outputs (naming them).
    """
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    inputs = capture_block_inputs(model, windows, batch_size)
    all_stats: list[BlockStats] = []
    bar = tqdm(total=len(blocks), desc="calibrating", disable=not progress, leave=False)
    for i, block in enumerate(blocks):
        bar.set_description(f"({i + 1}/{len(blocks)}) calibrating")
        refs = linears[i]
        stats: BlockStats = {}
        if refs and needs:
            group = _BlockCollectors(refs, needs, device, backend)
            handles = [r.module.register_forward_pre_hook(group.hook_for(r.name)) for r in refs]
            try:
                outs = []
                for hs, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
                    out = block(hs.to(device), *_to(args, device), **_to(kwargs, device))
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    outs.append(out.detach().to("cpu"))
                    group.end_batch()
            finally:
                for h in handles:
                    h.remove()
            stats = group.results()
            _check_stats(refs, stats)
        else:
            outs = _run_block(block, inputs, device)
        all_stats.append(stats if keep else {})
        if on_block is not None and refs:
            on_block(i, refs, stats)
            outs = _run_block(block, inputs, device)
        for j, o in enumerate(outs):
            if not all_finite(o):
                raise FloatingPointError(f"NaN or inf in the outputs of decoder block {i} (calibration batch {j})")
        inputs.hidden = outs
        bar.update(1)
    bar.close()
    return all_stats
