"""Model surgery: remove attention heads and MLP channels from decoder blocks, one adapter per architecture family.

A structured prune keeps, per decoder block, ``kv_heads`` KV groups with ``q_per_kv`` query heads each and
``channels`` MLP channels (``BlockShape``). The family adapter slices the projections (q/k/v rows and o columns
of the removed heads, gate/up rows and down columns of the removed channels), builds new modules with the kept
weights, and updates every attribute the family's forward reads (``num_key_value_groups``, ``num_heads``,
``split_size``), so that transformers' own forward runs on the smaller block. ``head_dim`` never changes.

Grouped-query attention: a kept KV group keeps the same number of query heads as every other kept group, and a
removed group takes its query heads with it; both moves are expressed by (``kv_heads``, ``q_per_kv``). Removing
every head turns the attention into ``NullAttention`` (its output is the output projection's bias, or zeros);
removing every channel leaves an MLP whose projections have zero rows/columns (its output is the down projection's
bias, or zeros). Both are explicit no-ops, not errors.

The originals are never modified: new modules replace them, and ``StructureSnapshot`` remembers every assignment so
that ``restore()`` puts the dense block back exactly (the search prunes and restores one loaded model per trial).

| family | model types | attention | MLP |
|---|---|---|---|
| ``llama`` | llama (SmolLM2), mistral, qwen2, gemma3_text | ``self_attn.{q,k,v,o}_proj`` (GQA) | ``mlp.*_proj`` |
| ``opt`` | opt | ``self_attn.{q,k,v,out}_proj`` | ``fc1``, ``fc2`` |
| ``gpt2`` | gpt2 | ``attn.c_attn`` (fused q/k/v, Conv1D), ``attn.c_proj`` | ``mlp.c_fc``, ``mlp.c_proj`` |
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .blocks import find_blocks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """A block's attention and MLP sizes.

    Attributes:
        n_q, n_kv: query and KV heads (MHA: equal); head_dim: per head; hidden: model width; channels: MLP width.
    """

    n_q: int
    n_kv: int
    head_dim: int
    hidden: int
    channels: int

    @property
    def q_per_kv(self) -> int:
        return self.n_q // self.n_kv if self.n_kv else 0


@dataclass(frozen=True)
class BlockShape:
    """What a pruned block keeps: ``kv_heads`` KV groups of ``q_per_kv`` query heads, ``channels`` MLP channels, and
    whether the attention / MLP output projections carry a bias (FLAP's compensation adds one where there was none)."""

    kv_heads: int
    q_per_kv: int
    channels: int
    attn_out_bias: bool
    mlp_out_bias: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BlockShape":
        return cls(**{k: d[k] for k in ("kv_heads", "q_per_kv", "channels", "attn_out_bias", "mlp_out_bias")})


class StructureSnapshot:
    """Attribute assignments (modules, sizes) remembered on first change and undone by ``restore()``."""

    def __init__(self):
        self._saved: dict[tuple[int, str], tuple[object, str, object]] = {}
        self._order: list[tuple[int, str]] = []

    def set(self, obj, name: str, value) -> None:
        key = (id(obj), name)
        if key not in self._saved:
            self._saved[key] = (obj, name, getattr(obj, name, _MISSING))
            self._order.append(key)
        setattr(obj, name, value)

    def restore(self) -> None:
        for key in reversed(self._order):
            obj, name, old = self._saved[key]
            if old is _MISSING:
                if hasattr(obj, name):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)
        self._saved.clear()
        self._order.clear()

    def __len__(self) -> int:
        return len(self._order)


_MISSING = object()


def _is_conv1d(module) -> bool:
    return type(module).__name__ in ("Conv1D", "ZeroInputConv1D") and hasattr(module, "nf")


def _weight2d(module) -> torch.Tensor:
    w = module.weight.data
    return w.t() if _is_conv1d(module) else w


class ZeroInputConv1D(nn.Module):
    """GPT-2's Conv1D with no input features left (its MLP lost every channel): the output is the bias.
    (``Conv1D.forward`` reshapes with -1, which an empty input cannot do.)"""

    def __init__(self, nf: int, bias: torch.Tensor):
        super().__init__()
        self.nf, self.nx = nf, 0
        self.weight = nn.Parameter(bias.new_zeros(0, nf), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return self.bias.expand(*x.shape[:-1], self.nf).to(x.dtype)


def sliced(module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None, *,
           bias: torch.Tensor | None | str = "keep"):  # fmt: skip
    """A new Linear/Conv1D holding ``module``'s weights at rows ``out_idx`` and columns ``in_idx`` of its [out, in]
    view (None: all). ``bias``: ``"keep"`` (the module's own, sliced to ``out_idx``), a tensor [out'] (the new bias),
    or None (no bias). The original is not modified."""
    w = _weight2d(module)
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    w = w.contiguous() if out_idx is not None or in_idx is not None else w.clone()  # always a copy of its own
    if isinstance(bias, str):
        old = getattr(module, "bias", None)
        b = None if old is None else (old.data if out_idx is None else old.data.index_select(0, out_idx.to(w.device)))
    else:
        b = bias
    grad = module.weight.requires_grad
    if _is_conv1d(module):
        from transformers.pytorch_utils import Conv1D

        if b is None:
            b = w.new_zeros(w.shape[0])
        if w.shape[1] == 0:
            return ZeroInputConv1D(w.shape[0], b.to(w.dtype))
        new = Conv1D.__new__(Conv1D)
        nn.Module.__init__(new)
        new.nf, new.nx = w.shape[0], w.shape[1]
        new.weight = nn.Parameter(w.t().contiguous(), requires_grad=grad)
        new.bias = nn.Parameter(b.to(w.dtype).clone(), requires_grad=grad)
        return new
    with warnings.catch_warnings():  # zero-size layers (a block that lost every head or channel) warn on init
        warnings.simplefilter("ignore", UserWarning)
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    new.weight = nn.Parameter(w, requires_grad=grad)
    if b is not None:
        new.bias = nn.Parameter(b.to(w.dtype).clone(), requires_grad=grad)
    return new


def head_rows(heads, head_dim: int) -> torch.Tensor:
    """Row indices [len(heads) * head_dim] of ``heads`` in a projection laid out head after head."""
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


class NullAttention(nn.Module):
    """An attention whose every head was removed: it returns the output projection's bias (zeros without one).

    It keeps the family's projections, with zero rows or columns, under their original names, so the state dict
    still names the structure (and a plain ``from_pretrained`` fails on the shapes instead of loading random heads),
    and calls the input projections so that calibration hooks see the block as before. It still updates the KV
    cache with empty keys and values: the cache counts tokens by layer, and generation reads that count.
    """

    def __init__(self, projections: dict[str, nn.Module], out_name: str, layer_idx: int | None, head_dim: int,
                 cache_kwarg: str = "cache"):  # fmt: skip
        super().__init__()
        for name, mod in projections.items():
            setattr(self, name, mod)
        self.in_names = [n for n in projections if n != out_name]
        self.out_name = out_name
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.cache_kwarg = cache_kwarg

    def forward(self, hidden_states, *args, **kwargs):
        for name in self.in_names:
            getattr(self, name)(hidden_states)
        out = getattr(self, self.out_name)(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))
        cache = kwargs.get(self.cache_kwarg, kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            b, t = hidden_states.shape[0], hidden_states.shape[1]
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        return out, None


# ---- family adapters ---------------------------------------------------------------------------------------------


@dataclass
class AttnWeights:
    """Views [out, in] of a block's attention weights, head after head.

    Attributes:
        q: [n_q * head_dim, hidden]; k, v: [n_kv * head_dim, hidden]; o: [hidden, n_q * head_dim].
        in_name / out_name: the linears whose input statistics score q/k/v rows and o columns.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    in_name: str
    out_name: str
    o_module: nn.Module


@dataclass
class MlpWeights:
    """Views [out, in] of a block's MLP weights: ``ins`` [channels, hidden] each (gate, up / fc1 / c_fc),
    ``out`` [hidden, channels]; ``in_name`` / ``out_name`` name their linears for statistics."""

    ins: list[torch.Tensor]
    out: torch.Tensor
    in_name: str
    out_name: str
    out_module: nn.Module


class Family:
    """How one architecture family's blocks are measured and cut."""

    name = "family"
    model_types: tuple[str, ...] = ()
    attn_attr = "self_attn"

    def attention(self, block):
        return getattr(block, self.attn_attr)

    def layout(self, block) -> Layout:
        raise NotImplementedError

    def attn_weights(self, block) -> AttnWeights:
        raise NotImplementedError

    def mlp_weights(self, block) -> MlpWeights:
        raise NotImplementedError

    def attn_params(self, block) -> dict:
        """Parameter counts: per query head (q rows + o columns), per KV head (k + v rows), the rest of the attention
        (biases of o, norms), and whether o has a bias."""
        lay, attn = self.layout(block), self.attention(block)
        w = self.attn_weights(block)
        hd, h = lay.head_dim, lay.hidden
        q_bias, kv_bias = self._qkv_bias(block)
        total = sum(p.numel() for p in attn.parameters())
        q_unit = 2 * h * hd + (hd if q_bias else 0)
        kv_unit = 2 * h * hd + (2 * hd if kv_bias else 0)
        o_bias = getattr(w.o_module, "bias", None)
        o_bias_n = 0 if o_bias is None else o_bias.numel()
        return {"q_unit": q_unit, "kv_unit": kv_unit, "total": total, "o_bias": o_bias_n,
                "rest": total - lay.n_q * q_unit - lay.n_kv * kv_unit}  # fmt: skip

    def mlp_params(self, block) -> dict:
        m = self.mlp_weights(block)
        lay = self.layout(block)
        in_bias = self._mlp_in_bias(block)
        ch_unit = len(m.ins) * (lay.hidden + (1 if in_bias else 0)) + lay.hidden
        out_bias = getattr(m.out_module, "bias", None)
        out_bias_n = 0 if out_bias is None else out_bias.numel()
        return {"ch_unit": ch_unit, "out_bias": out_bias_n, "total": lay.channels * ch_unit + out_bias_n}

    def _qkv_bias(self, block) -> tuple[bool, bool]:
        raise NotImplementedError

    def _mlp_in_bias(self, block) -> bool:
        raise NotImplementedError

    def shrink_attention(self, block, q_keep: list[int], kv_keep: list[int], out_bias, snap: StructureSnapshot,
                         layer_idx: int) -> None:  # fmt: skip
        """Keep query heads ``q_keep`` (grouped: kept group j's heads are ``q_keep[j*Q':(j+1)*Q']``) and KV heads
        ``kv_keep``; ``out_bias``: the o projection's new bias [hidden] ("keep": its own; None: none)."""
        raise NotImplementedError

    def shrink_mlp(self, block, keep: torch.Tensor, out_bias, snap: StructureSnapshot) -> None:
        raise NotImplementedError

    # -- config ---------------------------------------------------------------------------------------------------
    def plain_config(self, config, shape: BlockShape, layout: Layout) -> dict | None:
        """Config fields under which plain ``from_pretrained`` builds blocks of ``shape`` (every block alike), or None
        when the family's config cannot express it."""
        return None


def _replace_attention(block, family: Family, attn, modules: dict, out_name: str, layer_idx: int, head_dim: int,
                       snap: StructureSnapshot, attrs: dict | None) -> None:  # fmt: skip
    """Put the sliced projections ``modules`` and the head-count ``attrs`` into ``attn``; ``attrs`` None (no query head
    kept): the block's attention becomes a ``NullAttention`` holding the (zero-size) projections instead."""
    if attrs is None:
        snap.set(block, family.attn_attr, NullAttention(dict(modules), out_name, layer_idx, head_dim))
        return
    for name, mod in modules.items():
        snap.set(attn, name, mod)
    for name, value in attrs.items():
        snap.set(attn, name, value)


class LlamaFamily(Family):
    """LLaMA, SmolLM2, Mistral, Qwen2, Gemma 3 (text): ``self_attn.{q,k,v,o}_proj`` with GQA, gated MLP."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "gemma3_text")

    def layout(self, block) -> Layout:
        a = block.self_attn
        hd = a.head_dim
        return Layout(_weight2d(a.q_proj).shape[0] // hd, _weight2d(a.k_proj).shape[0] // hd, hd,
                      _weight2d(a.q_proj).shape[1], _weight2d(block.mlp.gate_proj).shape[0])  # fmt: skip

    def attn_weights(self, block) -> AttnWeights:
        a = block.self_attn
        return AttnWeights(_weight2d(a.q_proj), _weight2d(a.k_proj), _weight2d(a.v_proj), _weight2d(a.o_proj),
                           "self_attn.q_proj", "self_attn.o_proj", a.o_proj)  # fmt: skip

    def mlp_weights(self, block) -> MlpWeights:
        m = block.mlp
        return MlpWeights([_weight2d(m.gate_proj), _weight2d(m.up_proj)], _weight2d(m.down_proj), "mlp.gate_proj",
                          "mlp.down_proj", m.down_proj)  # fmt: skip

    def _qkv_bias(self, block):
        a = block.self_attn
        return a.q_proj.bias is not None, a.k_proj.bias is not None

    def _mlp_in_bias(self, block):
        return block.mlp.gate_proj.bias is not None

    def shrink_attention(self, block, q_keep, kv_keep, out_bias, snap, layer_idx):
        a = block.self_attn
        hd = a.head_dim
        rq, rkv = head_rows(q_keep, hd), head_rows(kv_keep, hd)
        mods = {"q_proj": sliced(a.q_proj, rq), "k_proj": sliced(a.k_proj, rkv), "v_proj": sliced(a.v_proj, rkv),
                "o_proj": sliced(a.o_proj, None, rq, bias=out_bias)}  # fmt: skip
        attrs = {"num_key_value_groups": len(q_keep) // len(kv_keep)} if q_keep else None
        _replace_attention(block, self, a, mods, "o_proj", layer_idx, hd, snap, attrs)

    def shrink_mlp(self, block, keep, out_bias, snap):
        m = block.mlp
        snap.set(m, "gate_proj", sliced(m.gate_proj, keep))
        snap.set(m, "up_proj", sliced(m.up_proj, keep))
        snap.set(m, "down_proj", sliced(m.down_proj, None, keep, bias=out_bias))
        if hasattr(m, "intermediate_size"):
            snap.set(m, "intermediate_size", int(keep.numel()))

    def plain_config(self, config, shape, layout):
        if shape.kv_heads == 0 or shape.channels == 0:
            return None
        if shape.attn_out_bias != bool(getattr(config, "attention_bias", False)) and config.model_type != "qwen2":
            return None
        if config.model_type == "qwen2" and shape.attn_out_bias:
            return None
        if shape.mlp_out_bias != bool(getattr(config, "mlp_bias", False)):
            return None
        return {"num_attention_heads": shape.kv_heads * shape.q_per_kv, "num_key_value_heads": shape.kv_heads,
                "head_dim": layout.head_dim, "intermediate_size": shape.channels}  # fmt: skip


class OptFamily(Family):
    """OPT: ``self_attn.{q,k,v,out}_proj`` (multi-head), ``fc1`` / ``fc2`` on the block itself."""

    name = "opt"
    model_types = ("opt",)

    def layout(self, block) -> Layout:
        a = block.self_attn
        n = _weight2d(a.q_proj).shape[0] // a.head_dim
        return Layout(n, n, a.head_dim, _weight2d(a.q_proj).shape[1], _weight2d(block.fc1).shape[0])

    def attn_weights(self, block) -> AttnWeights:
        a = block.self_attn
        return AttnWeights(_weight2d(a.q_proj), _weight2d(a.k_proj), _weight2d(a.v_proj), _weight2d(a.out_proj),
                           "self_attn.q_proj", "self_attn.out_proj", a.out_proj)  # fmt: skip

    def mlp_weights(self, block) -> MlpWeights:
        return MlpWeights([_weight2d(block.fc1)], _weight2d(block.fc2), "fc1", "fc2", block.fc2)

    def _qkv_bias(self, block):
        a = block.self_attn
        return a.q_proj.bias is not None, a.k_proj.bias is not None

    def _mlp_in_bias(self, block):
        return block.fc1.bias is not None

    def shrink_attention(self, block, q_keep, kv_keep, out_bias, snap, layer_idx):
        a = block.self_attn
        rows = head_rows(q_keep, a.head_dim)
        mods = {"q_proj": sliced(a.q_proj, rows), "k_proj": sliced(a.k_proj, rows), "v_proj": sliced(a.v_proj, rows),
                "out_proj": sliced(a.out_proj, None, rows, bias=out_bias)}  # fmt: skip
        attrs = {"num_heads": len(q_keep)} if q_keep else None
        _replace_attention(block, self, a, mods, "out_proj", layer_idx, a.head_dim, snap, attrs)

    def shrink_mlp(self, block, keep, out_bias, snap):
        snap.set(block, "fc1", sliced(block.fc1, keep))
        snap.set(block, "fc2", sliced(block.fc2, None, keep, bias=out_bias))

    def plain_config(self, config, shape, layout):
        if shape.kv_heads != config.num_attention_heads or shape.channels == 0:
            return None  # OPT derives head_dim from hidden / heads: fewer heads cannot be expressed
        if not getattr(config, "enable_bias", True):
            return None
        return {"ffn_dim": shape.channels}


class Gpt2Family(Family):
    """GPT-2: fused ``attn.c_attn`` (q, k, v side by side; Conv1D stores [in, out]), ``attn.c_proj``, ``mlp.c_fc`` /
    ``mlp.c_proj``."""

    name = "gpt2"
    model_types = ("gpt2",)
    attn_attr = "attn"

    def layout(self, block) -> Layout:
        a = block.attn
        w = _weight2d(a.c_attn)
        n = w.shape[0] // 3 // a.head_dim
        return Layout(n, n, a.head_dim, w.shape[1], _weight2d(block.mlp.c_fc).shape[0])

    def attn_weights(self, block) -> AttnWeights:
        a = block.attn
        w = _weight2d(a.c_attn)
        s = w.shape[0] // 3
        return AttnWeights(w[:s], w[s : 2 * s], w[2 * s :], _weight2d(a.c_proj), "attn.c_attn", "attn.c_proj", a.c_proj)

    def mlp_weights(self, block) -> MlpWeights:
        m = block.mlp
        return MlpWeights([_weight2d(m.c_fc)], _weight2d(m.c_proj), "mlp.c_fc", "mlp.c_proj", m.c_proj)

    def _qkv_bias(self, block):
        return True, True

    def _mlp_in_bias(self, block):
        return True

    def shrink_attention(self, block, q_keep, kv_keep, out_bias, snap, layer_idx):
        a = block.attn
        s = _weight2d(a.c_attn).shape[0] // 3
        rows = head_rows(q_keep, a.head_dim)
        fused = torch.cat([rows, rows + s, rows + 2 * s])
        mods = {"c_attn": sliced(a.c_attn, fused), "c_proj": sliced(a.c_proj, None, rows, bias=out_bias)}
        attrs = {"num_heads": len(q_keep), "split_size": len(q_keep) * a.head_dim} if q_keep else None
        _replace_attention(block, self, a, mods, "c_proj", layer_idx, a.head_dim, snap, attrs)

    def shrink_mlp(self, block, keep, out_bias, snap):
        m = block.mlp
        snap.set(m, "c_fc", sliced(m.c_fc, keep))
        snap.set(m, "c_proj", sliced(m.c_proj, None, keep, bias=out_bias))

    def plain_config(self, config, shape, layout):
        if shape.kv_heads != config.n_head or shape.channels == 0:
            return None  # GPT-2 derives head_dim from n_embd / n_head
        return {"n_inner": shape.channels}


FAMILIES: list[Family] = [LlamaFamily(), OptFamily(), Gpt2Family()]


def family_for(model) -> Family:
    """The surgery adapter of ``model``'s architecture.

    Raises:
        ValueError: an architecture the surgery does not know (naming it and the known ones).
    """
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES:
        if mtype in fam.model_types:
            return fam
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ValueError(f"structured pruning does not know the architecture {mtype!r} ({type(model).__name__}); "
                     f"it knows {known}")  # fmt: skip


def current_shape(family: Family, block) -> BlockShape:
    """The ``BlockShape`` a block has now (a dense block, or one already cut)."""
    attn = family.attention(block)
    mlp = family.mlp_weights(block)
    if isinstance(attn, NullAttention):
        out = getattr(attn, attn.out_name)
        return BlockShape(0, 0, mlp.out.shape[1], getattr(out, "bias", None) is not None,
                          getattr(mlp.out_module, "bias", None) is not None)  # fmt: skip
    lay = family.layout(block)
    w = family.attn_weights(block)
    return BlockShape(lay.n_kv, lay.q_per_kv, lay.channels, getattr(w.o_module, "bias", None) is not None,
                      getattr(mlp.out_module, "bias", None) is not None)  # fmt: skip


def shape_block(family: Family, block, shape: BlockShape, snap: StructureSnapshot, layer_idx: int) -> None:
    """Give a dense block the sizes of ``shape`` (the first heads and channels; values to be loaded after), with the
    output biases ``shape`` records. What ``load_structured`` does before reading the weights."""
    lay = family.layout(block)
    q_keep = [g * lay.q_per_kv + j for g in range(shape.kv_heads) for j in range(shape.q_per_kv)]
    o = family.attn_weights(block).o_module
    o_bias = "keep" if (getattr(o, "bias", None) is not None) == shape.attn_out_bias else (
        torch.zeros(lay.hidden, dtype=o.weight.dtype, device=o.weight.device) if shape.attn_out_bias else None)
    if shape.kv_heads != lay.n_kv or shape.q_per_kv != lay.q_per_kv or not isinstance(o_bias, str):
        family.shrink_attention(block, q_keep, list(range(shape.kv_heads)), o_bias, snap, layer_idx)
    d = family.mlp_weights(block).out_module
    d_bias = "keep" if (getattr(d, "bias", None) is not None) == shape.mlp_out_bias else (
        torch.zeros(lay.hidden, dtype=d.weight.dtype, device=d.weight.device) if shape.mlp_out_bias else None)
    if shape.channels != lay.channels or not isinstance(d_bias, str):
        family.shrink_mlp(block, torch.arange(shape.channels), d_bias, snap)


def block_params(block) -> int:
    return sum(p.numel() for p in block.parameters())


def decoder_params(model) -> int:
    """Parameters of the decoder blocks (embeddings, final norm and head excluded)."""
    _, blocks = find_blocks(model)
    return sum(block_params(b) for b in blocks)


__all__ = ["Layout", "BlockShape", "StructureSnapshot", "NullAttention", "ZeroInputConv1D", "AttnWeights",
           "MlpWeights", "Family", "LlamaFamily", "OptFamily", "Gpt2Family", "FAMILIES", "family_for", "sliced",
           "head_rows", "current_shape", "shape_block", "block_params", "decoder_params"]  # fmt: skip
