"""The sequential walk: capture the first block's inputs, then run blocks one by one on CPU-held activations."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from optishear_kernels import ActNorm, all_finite
from tqdm.auto import tqdm

from .models import LinearRef, find_blocks

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


BlockFn = Callable[[int, list[LinearRef], dict[str, torch.Tensor]], None]


@torch.no_grad()
def sequential_walk(
    model,
    windows: torch.Tensor,
    linears: list[list[LinearRef]],
    on_block: BlockFn | None = None,
    *,
    batch_size: int = 8,
    act_backend: str | None = None,
    progress: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Walk the blocks in order, collecting X (mean x^2 per input channel) for every listed linear.

    For each block: a forward over all calibration batches with act-norm hooks on its linears, then
    ``on_block(index, linears, stats)`` (which prunes them), then, if it pruned anything, a second
    forward whose outputs feed the next block (the Wanda/SparseGPT protocol). With ``on_block=None``
    the walk collects dense statistics in one forward per block.

    Returns:
        Per block, ``{linear name: X [in] float32}``.

    Raises:
        FloatingPointError: NaN or inf in a layer's activations (naming the layer).
    """
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    inputs = capture_block_inputs(model, windows, batch_size)
    all_stats = []
    bar = tqdm(total=len(blocks), desc="calibrating", disable=not progress, leave=False)
    for i, block in enumerate(blocks):
        bar.set_description(f"({i + 1}/{len(blocks)}) calibrating")
        refs = linears[i]
        acc = {r.name: ActNorm(r.in_features, device, backend_name=act_backend) for r in refs}
        handles = [r.module.register_forward_pre_hook(acc[r.name].hook) for r in refs]
        try:
            outs = _run_block(block, inputs, device)
        finally:
            for h in handles:
                h.remove()
        stats = {}
        for r in refs:
            x = acc[r.name].mean()
            if not all_finite(x):
                raise FloatingPointError(f"NaN or inf in the activations entering layer {r.full_name}")
            stats[r.name] = x.cpu()
        all_stats.append(stats)
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
