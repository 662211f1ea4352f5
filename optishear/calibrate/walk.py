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


def _to_memo(obj, device, memo: dict):
    """``_to`` that copies each distinct tensor once: blocks of one kind share their mask and rotary tables."""
    if isinstance(obj, torch.Tensor):
        key = id(obj)
        if key not in memo:
            memo[key] = (obj, obj.detach().to(device))  # keep obj alive so that its id is not reused
        return memo[key][1]
    if isinstance(obj, tuple):
        return tuple(_to_memo(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_to_memo(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_memo(v, device, memo) for k, v in obj.items()}
    return obj


@dataclass
class BlockInputs:
    """Hidden states entering the current block, per calibration batch, kept on CPU, and every block's own
    non-hidden arguments per batch (``args[batch][block]``, ``kwargs[batch][block]``): attention masks, rotary
    tables and positions. They differ between blocks in models that mix layer kinds (Gemma 3's sliding and
    full attention have other masks and other rotary bases; Qwen2 with sliding layers other masks)."""

    hidden: list[torch.Tensor]
    args: list[list[tuple]] = field(default_factory=list)
    kwargs: list[list[dict]] = field(default_factory=list)

    def block_args(self, batch: int, block: int) -> tuple[tuple, dict]:
        return self.args[batch][block], self.kwargs[batch][block]


class _Probe(torch.nn.Module):
    """Stands in for a decoder block while the inputs are captured: records the block's arguments and passes its
    hidden input through unchanged, in the block's own output format, so the capture costs no block compute; the
    last probe ends the forward. Attribute reads fall through to the real block (loops that read
    ``decoder_layer.attention_type`` see the real one)."""

    def __init__(self, real, index: int, sink, last: bool):
        super().__init__()
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_sink", sink)
        object.__setattr__(self, "_last", last)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_real"), name)

    def forward(self, *args, **kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        rest_args = tuple(args[1:])
        rest_kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        out = self._sink(self._index, hs, rest_args, rest_kwargs)
        if self._last:
            raise _Stop
        return out


@torch.no_grad()
def capture_block_inputs(model, windows: torch.Tensor, batch_size: int = 8) -> BlockInputs:
    """Run the model's embedding and preamble on ``windows`` [n, seqlen]; keep block 0's hidden inputs and every
    block's own arguments. The real block 0 runs once, on the first batch, to learn the blocks' output format
    (a tensor, or a tuple whose first element is the hidden state); every other block is a pass-through probe."""
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    got = BlockInputs(hidden=[])
    state = {"tuple": None, "memo": {}}

    def sink(i, hs, args, kwargs):
        if i == 0:
            got.hidden.append(hs.detach().to("cpu"))
            got.args.append([])
            got.kwargs.append([])
            state["memo"] = {}
            if state["tuple"] is None:
                out = blocks_real[0](hs, *args, **kwargs)
                state["tuple"] = isinstance(out, (tuple, list))
        got.args[-1].append(_to_memo(args, "cpu", state["memo"]))
        got.kwargs[-1].append(_to_memo(kwargs, "cpu", state["memo"]))
        return (hs,) if state["tuple"] else hs

    blocks_real = list(blocks)
    for i, real in enumerate(blocks_real):
        blocks[i] = _Probe(real, i, sink, last=i == len(blocks_real) - 1)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for i, real in enumerate(blocks_real):
            blocks[i] = real
    for i, hs in enumerate(got.hidden):
        if not all_finite(hs):
            raise FloatingPointError(f"NaN or inf in the inputs of decoder block 0 (calibration batch {i})")
        if len(got.args[i]) != len(blocks_real):
            raise RuntimeError(f"the model called {len(got.args[i])} of its {len(blocks_real)} decoder blocks")
    return got


def _call_block(block, index: int, inputs: BlockInputs, batch: int, device) -> torch.Tensor:
    args, kwargs = inputs.block_args(batch, index)
    out = block(inputs.hidden[batch].to(device), *_to(args, device), **_to(kwargs, device))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.detach().to("cpu")


def _run_block(block, index: int, inputs: BlockInputs, device) -> list[torch.Tensor]:
    return [_call_block(block, index, inputs, b, device) for b in range(len(inputs.hidden))]


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
                for b in range(len(inputs.hidden)):
                    outs.append(_call_block(block, i, inputs, b, device))
                    group.end_batch()
            finally:
                for h in handles:
                    h.remove()
            stats = group.results()
            _check_stats(refs, stats)
        else:
            outs = _run_block(block, i, inputs, device)
        all_stats.append(stats if keep else {})
        if on_block is not None and refs:
            on_block(i, refs, stats)
            outs = _run_block(block, i, inputs, device)
        for j, o in enumerate(outs):
            if not all_finite(o):
                raise FloatingPointError(f"NaN or inf in the outputs of decoder block {i} (calibration batch {j})")
        inputs.hidden = outs
        bar.update(1)
    bar.close()
    return all_stats
