"""Structured pruning: score attention heads and MLP channels, decide how many each block loses, cut them out.

    statistics -> head / channel scores (magnitude, Wanda-sp, FLAP) -> per-block allocation (uniform, FLAP-adaptive,
    or given rates) -> which heads and channels -> surgery (``optishear.models.surgery``) [-> FLAP's bias compensation]

**Budget.** ``rate`` is the fraction of the decoder blocks' parameters to remove (every parameter of the blocks,
norms and biases included; a bias added by FLAP's compensation counts as added). Attention moves in whole heads
under grouped-query attention (``attention_levels``), the MLP in single channels, so every allocation fills the
budget with MLP channels after the attention is set: the achieved reduction is the target to within one channel's
parameters, except for ``uniform``, where every block gets the same sizes (so the model stays a plain
transformers config) and the reduction is the nearest such. ``uniform`` takes the largest attention level not above
the rate (as FLAP's ``int(rate * heads)``) and lets the MLP make up the rest.

**Per-block rates** (``layer_rates``): ``{"attention": [...], "mlp": [...]}``, one value per block. An attention rate
is the fraction of the attention's weight parameters removed, ``1 - (kept query heads + kept KV heads) / (query
heads + KV heads)`` (for multi-head attention simply the fraction of heads); it must be one of the block's reachable
levels, since a GQA block keeps the same number of query heads in every kept group. An MLP rate is the fraction of
channels removed (rounded to a channel).

**Importance** (higher: keep):

- ``magnitude``: a head's score is the sum of |W| over its q rows and o columns (a KV head's: its k and v rows,
  added to its group); a channel's, over its gate/up rows and its down column. No statistics.
- ``wanda-sp``: the same sums of |W_ij| * ||X_j|| (``act_norm``: X_j = mean x_j^2 over the calibration tokens).
- ``flap``: FLAP's fluctuation of the o / down projections' input columns, var_c * ||W[:, c]||^2 (``moments``),
  squared and summed over a head's columns for heads, as FLAP does; k/v are not scored.

FLAP also adds ``W[:, removed] @ mean[removed]`` to the o / down projection's bias (adding a bias where the model has
none), so that the mean output over the calibration tokens is kept. ``adaptive`` allocation ranks heads and channels
across blocks by their scores standardized within each block (FLAP's AL-AM), parameter-weighted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..calibrate import ACT_NORM, MOMENTS, walk
from ..models import find_blocks, model_linears
from ..models.surgery import (BlockShape, Family, Layout, StructureSnapshot, block_params, current_shape, family_for,
                               head_rows)
from .base import BlockJob, MaskSink, Method

logger = logging.getLogger(__name__)

IMPORTANCE = ("flap", "wanda-sp", "magnitude")
ALLOCATIONS = ("uniform", "adaptive")
STRUCTURE_FORMAT = "optishear-structure/1"


# ---- attention levels under GQA ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttnLevel:
    """One reachable attention size: ``kv`` KV groups of ``q`` query heads each (0, 0: no attention left)."""

    kv: int
    q: int
    removed_units: int  # query heads + KV heads removed
    total_units: int

    @property
    def rate(self) -> float:
        return self.removed_units / self.total_units

    @property
    def q_heads(self) -> int:
        return self.kv * self.q


def attention_levels(layout: Layout) -> list[AttnLevel]:
    """Every attention size a block can be cut to, by removed weight parameters ascending.

    A kept KV group keeps the same number of query heads as the others (GQA); multi-head attention is the case of
    one query head per group. Sizes that remove the same number of heads-worth of parameters are one level: the
    one keeping most query heads (then most KV groups) stands for them.
    """
    G, Q = layout.n_kv, layout.q_per_kv
    total = G * Q + G
    best: dict[int, AttnLevel] = {}
    for g in range(G + 1):
        for q in range(1 if g else 0, Q + 1) if g else [0]:
            kept = g * q + g
            lv = AttnLevel(g, q, total - kept, total)
            old = best.get(lv.removed_units)
            if old is None or (lv.q_heads, lv.kv) > (old.q_heads, old.kv):
                best[lv.removed_units] = lv
    return [best[k] for k in sorted(best)]


def level_for_rate(levels: list[AttnLevel], rate: float, block: int, layout: Layout) -> int:
    """The level whose rate is ``rate`` (to 1e-6).

    Raises:
        ValueError: the rate cannot be reached evenly over the block's KV groups (naming the reachable rates).
    """
    for i, lv in enumerate(levels):
        if abs(lv.rate - rate) <= 1e-6:
            return i
    reach = ", ".join(f"{lv.rate:.6g}" for lv in levels)
    raise ValueError(f"block {block}: attention rate {rate:g} cannot be reached with {layout.n_q} query heads in "
                     f"{layout.n_kv} KV groups (the same number of query heads must stay in every kept group, or a "
                     f"group goes whole); reachable rates: {reach}")  # fmt: skip


# ---- layer rates: parsing ----------------------------------------------------------------------------------------


def read_layer_rates(source) -> dict | str:
    """``uniform`` / ``adaptive``, a dict ``{"attention": [...], "mlp": [...]}``, inline JSON, or a JSON file holding
    such a dict, ``{"layer_rates": {...}}``, or a recipe / search recipe (its plan's ``layer_rates``)."""
    if isinstance(source, dict):
        return _check_rates_dict(source, "layer rates")
    text = str(source).strip()
    if text in ALLOCATIONS:
        return text
    if text.startswith("{"):
        return _check_rates_dict(json.loads(text), "layer rates")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "optishear_recipe.json"
    if not path.is_file():
        raise FileNotFoundError(f"layer-rates file {path} does not exist (or give 'uniform' / 'adaptive')")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"layer-rates file {path} is not JSON: {err}") from err
    if isinstance(obj, dict) and isinstance(obj.get("plan"), dict) and isinstance(obj["plan"].get("layer_rates"), dict):
        obj = obj["plan"]["layer_rates"]
    elif isinstance(obj, dict) and isinstance(obj.get("layer_rates"), dict):
        obj = obj["layer_rates"]
    return _check_rates_dict(obj, f"layer-rates file {path}")


def _check_rates_dict(obj, what: str) -> dict:
    if not isinstance(obj, dict) or set(obj) != {"attention", "mlp"}:
        raise ValueError(f"{what} must hold exactly the lists 'attention' and 'mlp', got "
                         f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")  # fmt: skip
    out = {}
    for key in ("attention", "mlp"):
        vals = obj[key]
        if not isinstance(vals, (list, tuple)):
            raise ValueError(f"{what}: '{key}' must be a list of numbers, got {type(vals).__name__}")
        for i, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{what}: {key}[{i}] must be a number in [0, 1], got {v!r}")
        out[key] = [float(v) for v in vals]
    if len(out["attention"]) != len(out["mlp"]):
        raise ValueError(f"{what}: 'attention' has {len(out['attention'])} values but 'mlp' has {len(out['mlp'])}")
    return out


# ---- budget: parameter accounting --------------------------------------------------------------------------------


@dataclass
class Allocation:
    """Per block: the attention level and the MLP channels removed."""

    levels: list[int]
    channels_removed: list[int]


class Budget:
    """Parameter accounting of structured pruning on a model's decoder blocks (as they are now).

    Args:
        model: the model; family: its surgery adapter; compensate: FLAP's bias compensation adds an o / down bias to
            every block whose projection has none (counted as added parameters).
    """

    def __init__(self, model, family: Family, compensate: bool):
        _, blocks = find_blocks(model)
        self.family = family
        self.compensate = compensate
        self.layouts, self.levels, self.attn, self.mlp, self.block_total = [], [], [], [], []
        for i, b in enumerate(blocks):
            if current_shape(family, b).kv_heads == 0:
                raise ValueError(f"block {i} has no attention left: structured pruning needs every block's heads")
            lay = family.layout(b)
            self.layouts.append(lay)
            self.levels.append(attention_levels(lay))
            self.attn.append(family.attn_params(b))
            self.mlp.append(family.mlp_params(b))
            self.block_total.append(block_params(b))
        self.total = sum(self.block_total)
        self.n = len(blocks)

    def added_bias(self, i: int) -> int:
        """Parameters the compensation adds to block ``i`` (an o and a down bias where there was none)."""
        if not self.compensate:
            return 0
        h = self.layouts[i].hidden
        return (0 if self.attn[i]["o_bias"] else h) + (0 if self.mlp[i]["out_bias"] else h)

    def attn_removed(self, i: int, level: int) -> int:
        lv, a = self.levels[i][level], self.attn[i]
        if lv.kv == 0:  # NullAttention keeps only the o bias
            return a["total"] - a["o_bias"]
        lay = self.layouts[i]
        return (lay.n_q - lv.q_heads) * a["q_unit"] + (lay.n_kv - lv.kv) * a["kv_unit"]

    def removed(self, i: int, level: int, channels: int) -> int:
        """Parameters block ``i`` loses at attention ``level`` with ``channels`` MLP channels removed (net of the
        compensation's added biases)."""
        return self.attn_removed(i, level) + channels * self.mlp[i]["ch_unit"] - self.added_bias(i)

    def total_removed(self, alloc: Allocation) -> int:
        return sum(self.removed(i, lv, c) for i, (lv, c) in enumerate(zip(alloc.levels, alloc.channels_removed)))

    def reduction(self, alloc: Allocation) -> float:
        return self.total_removed(alloc) / self.total

    def target(self, rate: float) -> int:
        return int(round(rate * self.total))

    def rates(self, alloc: Allocation) -> dict:
        """The allocation as ``layer_rates`` (attention level rates, removed channel fractions)."""
        return {"attention": [self.levels[i][lv].rate for i, lv in enumerate(alloc.levels)],
                "mlp": [c / self.layouts[i].channels for i, c in enumerate(alloc.channels_removed)]}  # fmt: skip

    def shapes(self, alloc: Allocation) -> list[BlockShape]:
        out = []
        for i, (lv_i, c) in enumerate(zip(alloc.levels, alloc.channels_removed)):
            lv, lay = self.levels[i][lv_i], self.layouts[i]
            out.append(BlockShape(lv.kv, lv.q, lay.channels - c, bool(self.attn[i]["o_bias"]) or self.compensate,
                                  bool(self.mlp[i]["out_bias"]) or self.compensate))  # fmt: skip
        return out

    # -- allocations ----------------------------------------------------------------------------------------------
    def from_rates(self, rates: dict) -> Allocation:
        """Explicit per-block rates (``read_layer_rates``).

        Raises:
            ValueError: a list of the wrong length, or an attention rate a block cannot reach evenly under GQA.
        """
        for key in ("attention", "mlp"):
            if len(rates[key]) != self.n:
                raise ValueError(f"layer rates: '{key}' has {len(rates[key])} values but the model has {self.n} "
                                 "decoder blocks")  # fmt: skip
        levels = [level_for_rate(self.levels[i], r, i, self.layouts[i]) for i, r in enumerate(rates["attention"])]
        chans = [int(round(r * self.layouts[i].channels)) for i, r in enumerate(rates["mlp"])]
        return Allocation(levels, chans)

    def floor_level(self, i: int, rate: float) -> int:
        """The largest attention level whose rate does not exceed ``rate`` (FLAP's uniform structure takes
        ``int(rate * heads)`` heads, rounding down the same way)."""
        return max(k for k, lv in enumerate(self.levels[i]) if lv.rate <= rate + 1e-9)

    def uniform(self, rate: float) -> Allocation:
        """Every block alike: the largest attention level not above ``rate`` (GQA allows few: for SmolLM2 0, 1/4,
        1/3, 1/2...), and the channel count that brings the block nearest ``rate`` of its parameters (the same for
        every block with the same sizes)."""
        levels, chans = [], []
        for i in range(self.n):
            lv = self.floor_level(i, rate)
            need = rate * self.block_total[i] - self.attn_removed(i, lv) + self.added_bias(i)
            c = int(round(need / self.mlp[i]["ch_unit"]))
            levels.append(lv)
            chans.append(min(max(c, 0), self.layouts[i].channels))
        return Allocation(levels, chans)

    def fill(self, levels: list[int], rate: float, order: list[tuple[int, int]] | None = None,
             base: list[int] | None = None) -> Allocation:  # fmt: skip
        """MLP channels that bring the total to the target after the attention levels are set.

        Args:
            order: (block, channel) pairs in the order channels are removed (adaptive: by standardized score); None:
                spread evenly over the blocks, starting from ``base`` (channels already removed per block).
        """
        target = self.target(rate)
        chans = list(base) if base is not None else [0] * self.n
        remaining = target - self.total_removed(Allocation(levels, chans))
        if order is not None:
            chans = [0] * self.n
            remaining = target - self.total_removed(Allocation(levels, chans))
            for blk, _ in order:
                unit = self.mlp[blk]["ch_unit"]
                if remaining < unit / 2:
                    break
                if chans[blk] < self.layouts[blk].channels:
                    chans[blk] += 1
                    remaining -= unit
            return Allocation(list(levels), chans)
        return Allocation(list(levels), self.spread(chans, remaining))

    def spread(self, chans: list[int], remaining: int) -> list[int]:
        """Add (``remaining`` > 0) or give back MLP channels worth ``remaining`` parameters, one per block in turn from
        block 0, within each block's bounds: the total lands within half a channel of the target."""
        chans = list(chans)
        unit = self.mlp[0]["ch_unit"]
        k = int(round(remaining / unit))
        step = 1 if k > 0 else -1
        guard = 0
        i = 0
        while k and guard < 4 * self.n * max(1, abs(k)):
            c = chans[i] + step
            if 0 <= c <= self.layouts[i].channels:
                chans[i] = c
                k -= step
            i = (i + 1) % self.n
            guard += 1
        return chans


# ---- importance --------------------------------------------------------------------------------------------------


@dataclass
class BlockScores:
    """Scores of one block (higher: keep).

    Attributes:
        q: [n_q] per query head; kv: [n_kv] per KV head (added to a kept group's score); channels: [C].
        q_std, ch_std: the same standardized within the block (what ``adaptive`` ranks across blocks).
    """

    q: torch.Tensor
    kv: torch.Tensor
    channels: torch.Tensor
    q_std: torch.Tensor
    ch_std: torch.Tensor


def _standardize(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    sd = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / sd if float(sd) > 0 else torch.zeros_like(x)


def _per_head(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.reshape(-1, head_dim).sum(dim=1)


def importance_needs(importance: str) -> frozenset[str]:
    return {"flap": frozenset({MOMENTS}), "wanda-sp": frozenset({ACT_NORM}), "magnitude": frozenset()}[importance]


def block_scores(family: Family, block, stats: dict | None, importance: str) -> BlockScores:
    """Head and channel scores of one block from its weights and (``stats``) its linears' input statistics.

    Wanda-sp and magnitude sum ``|W_ij| * s_j`` (``s = ||X_j||``, or 1) over every weight of the structure: a query
    head's q rows and o columns, a KV head's k and v rows, a channel's gate/up rows and its down column. FLAP scores
    the o / down projections' input columns by their fluctuation ``var_c * ||W[:, c]||^2`` (squared for heads, as
    FLAP does); it does not score k/v.
    """
    lay = family.layout(block)
    aw, mw = family.attn_weights(block), family.mlp_weights(block)
    hd = lay.head_dim

    def stat(name, key):
        if stats is None or key not in stats.get(name, {}):
            raise ValueError(f"block statistics lack {key!r} of {name}: the importance {importance!r} needs them")
        return stats[name][key]

    if importance == "flap":
        mo, md = stat(aw.out_name, MOMENTS), stat(mw.out_name, MOMENTS)
        o_col = mo["var"].double() * aw.o.double().square().sum(dim=0)  # [n_q * hd]
        d_col = md["var"].double() * mw.out.double().square().sum(dim=0)  # [C]
        o_sq = o_col.square()
        q = _per_head(o_sq, hd)
        q_std = _standardize(o_sq).reshape(-1, hd).mean(dim=1)
        kv = torch.zeros(lay.n_kv, dtype=torch.float64)
        return BlockScores(q, kv, d_col, q_std, _standardize(d_col))
    if importance not in ("wanda-sp", "magnitude"):
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")

    def scale(name, n):
        if importance == "magnitude":
            return torch.ones(n, dtype=torch.float64)
        return stat(name, ACT_NORM).double().clamp_min(0).sqrt()

    s_in = scale(aw.in_name, lay.hidden)
    s_o = scale(aw.out_name, aw.o.shape[1])
    q_rows = aw.q.double().abs() @ s_in  # [n_q * hd]
    o_cols = aw.o.double().abs().sum(dim=0) * s_o  # [n_q * hd]
    q = _per_head(q_rows, hd) + _per_head(o_cols, hd)
    kv = _per_head(aw.k.double().abs() @ s_in, hd) + _per_head(aw.v.double().abs() @ s_in, hd)
    m_in = scale(mw.in_name, lay.hidden)
    m_out = scale(mw.out_name, mw.out.shape[1])
    ch = sum(w.double().abs() @ m_in for w in mw.ins) + mw.out.double().abs().sum(dim=0) * m_out
    return BlockScores(q, kv, ch, _standardize(q), _standardize(ch))


def select_heads(scores: BlockScores, layout: Layout, level: AttnLevel) -> tuple[list[int], list[int]]:
    """The heads to keep at ``level``: in every group its ``level.q`` best query heads; then the ``level.kv`` groups
    with the best sum of those and their KV score. Ties go to the lower index; kept heads stay in model order.

    Returns:
        (query heads kept, grouped by kept group; KV heads kept).
    """
    G, Q = layout.n_kv, layout.q_per_kv
    if level.kv == 0:
        return [], []
    per_group, group_score = [], []
    for g in range(G):
        heads = list(range(g * Q, (g + 1) * Q))
        best = sorted(heads, key=lambda h: (-float(scores.q[h]), h))[: level.q]
        per_group.append(sorted(best))
        group_score.append(sum(float(scores.q[h]) for h in best) + float(scores.kv[g]))
    groups = sorted(sorted(range(G), key=lambda g: (-group_score[g], g))[: level.kv])
    return [h for g in groups for h in per_group[g]], groups


def select_channels(scores: BlockScores, n_keep: int) -> torch.Tensor:
    """The ``n_keep`` best channels, in model order (ties: the lower index)."""
    c = scores.channels
    order = sorted(range(c.numel()), key=lambda j: (-float(c[j]), j))
    return torch.tensor(sorted(order[:n_keep]), dtype=torch.long)


def adaptive_allocation(budget: Budget, scores: list[BlockScores], rate: float) -> Allocation:
    """FLAP's adaptive structure (AL-AM) made GQA-aware.

    Heads and channels of every block are ranked together by their standardized scores, each weighing its
    parameters, and removed lowest first until the target; each block's query-head count is then moved to the
    nearest reachable attention level, and the MLP channels are re-ranked to fill the budget to one channel.
    """
    target = budget.target(rate)
    items = []
    for i, s in enumerate(scores):
        items += [(float(v), 0, i, h) for h, v in enumerate(s.q_std)]
        items += [(float(v), 1, i, c) for c, v in enumerate(s.ch_std)]
    items.sort()
    q_removed = [0] * budget.n
    acc = -sum(budget.added_bias(i) for i in range(budget.n))
    for _, kind, i, _ in items:
        if acc >= target:
            break
        if kind == 0:
            q_removed[i] += 1
            acc += budget.attn[i]["q_unit"]
        else:
            acc += budget.mlp[i]["ch_unit"]
    levels = []
    for i in range(budget.n):
        n_q = budget.layouts[i].n_q
        levels.append(min(range(len(budget.levels[i])),
                          key=lambda k: (abs((n_q - budget.levels[i][k].q_heads) - q_removed[i]), k)))  # fmt: skip
    chan_order = sorted(((float(v), i, c) for i, s in enumerate(scores) for c, v in enumerate(s.ch_std)))
    return budget.fill(levels, rate, order=[(i, c) for _, i, c in chan_order])


def model_adaptive_allocation(model, budget: Budget, stats: list[dict] | None, importance: str,
                              rate: float) -> Allocation:
    """``adaptive_allocation`` over every block of ``model``, scored by ``importance`` on ``stats`` (the dense model's
    statistics per block, or None when the importance needs none)."""
    family = family_for(model)
    _, blocks = find_blocks(model)
    scores = [block_scores(family, b, stats[i] if stats else None, importance) for i, b in enumerate(blocks)]
    return adaptive_allocation(budget, scores, rate)


# ---- the method --------------------------------------------------------------------------------------------------


def _compensation(w: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor, bias) -> torch.Tensor:
    """FLAP's bias: the old bias (or 0) + ``W[:, removed] @ mean[removed]``, in float64, cast to W's dtype."""
    extra = w.double()[:, removed] @ mean.double().to(w.device)[removed]
    old = bias.double() if bias is not None else torch.zeros_like(extra)
    return (old + extra).to(w.dtype)


class StructuredMethod(Method):
    """Remove whole heads and MLP channels (``plan.structured``). It prunes the whole model itself
    (``prune_model``): the allocation across blocks comes first, from every block's sizes and (adaptive) scores."""

    name = "structured"

    @classmethod
    def handles_plan(cls, plan) -> bool:
        return bool(getattr(plan, "structured", False))

    def validate(self, plan) -> None:
        from ..plan import check_sparsity

        check_sparsity(plan.rate, "rate")
        if plan.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {IMPORTANCE}, got {plan.importance!r}")
        rates = plan.layer_rates
        if rates is not None and not isinstance(rates, dict) and rates not in ALLOCATIONS:
            raise ValueError(f"layer_rates must be 'uniform', 'adaptive' or per-block rates, got {rates!r}")
        if isinstance(rates, dict):
            _check_rates_dict(rates, "layer rates")
        if plan.nm is not None:
            raise ValueError("structured pruning removes whole heads and channels: structure must be 'unstructured'")
        if plan.block_sparsity is not None:
            raise ValueError("structured pruning takes per-block rates from layer_rates, not block_sparsity")
        if plan.targets or plan.ignore:
            raise ValueError("structured pruning cuts every block's heads and channels: targets/ignore do not apply")

    def needs(self) -> frozenset[str]:
        return importance_needs(self.plan.importance)

    @property
    def allocation(self) -> str | dict:
        return self.plan.layer_rates if self.plan.layer_rates is not None else "uniform"

    def prune_block(self, job: BlockJob) -> None:  # the engine calls prune_model instead
        raise NotImplementedError("StructuredMethod prunes the whole model (prune_model)")

    @torch.no_grad()
    def prune_model(self, model, tokenizer=None, *, windows=None, stats=None, snapshot=None, keep_masks=False,
                    backend=None, progress=True, window_fn=None):  # fmt: skip
        """Prune ``model`` in place; returns the engine's ``PruneResult`` (``structure`` holds the block shapes).

        Args:
            windows: calibration windows (or ``window_fn()`` draws them when statistics are needed).
            stats: dense statistics per block (the search's, computed once).
            snapshot: the engine's ``WeightSnapshot``: the surgery registers its undo there, so that the engine's
                restore on error, and the search's restore between trials, put the dense modules back.
        """
        from ..engine import PruneResult

        t0 = time.perf_counter()
        plan = self.plan
        family = family_for(model)
        compensate = plan.importance == "flap"
        budget = Budget(model, family, compensate)
        _, blocks = find_blocks(model)
        needs = self.needs()
        linears = model_linears(model)
        alloc_kind = self.allocation
        if isinstance(alloc_kind, dict):
            alloc = budget.from_rates(alloc_kind)
        elif alloc_kind == "uniform":
            alloc = budget.uniform(plan.rate)
        else:
            alloc = None
        snap = StructureSnapshot()
        if snapshot is not None:
            snapshot.add_undo(snap.restore)
        sink = MaskSink(keep=keep_masks)
        before = [block_params(b) for b in blocks]

        def collect(what):
            nonlocal windows
            if windows is None:
                windows = window_fn()
            return walk(model, windows, linears, what, batch_size=plan.batch_size, backend=backend, progress=progress)

        def prune_one(i: int, block_stats) -> None:
            block = blocks[i]
            sc = block_scores(family, block, block_stats, plan.importance)
            self._cut(family, block, i, sc, budget, alloc, block_stats, compensate, snap, sink)

        try:
            dense = stats
            if alloc is None:  # adaptive: every block's scores first, from the dense model
                if dense is None and needs:
                    dense = collect(needs)
                alloc = model_adaptive_allocation(model, budget, dense, plan.importance, plan.rate)
            logger.info("structured allocation: attention rates %s; MLP channels removed %s",
                        [round(r, 4) for r in budget.rates(alloc)["attention"]], alloc.channels_removed)  # fmt: skip
            if not needs:
                for i in range(len(blocks)):
                    prune_one(i, None)
            elif dense is not None and (plan.stats == "dense" or stats is not None):
                for i in range(len(blocks)):
                    prune_one(i, dense[i])
            elif plan.stats == "dense":
                dense = collect(needs)
                for i in range(len(blocks)):
                    prune_one(i, dense[i])
            else:
                if windows is None:
                    windows = window_fn()
                walk(model, windows, linears, needs, lambda i, refs, st: prune_one(i, st), batch_size=plan.batch_size,
                     backend=backend, keep=False, progress=progress)  # fmt: skip
            shapes = [current_shape(family, b) for b in blocks]
            record = structure_record(model, family, shapes)
            snap.set(model.config, "optishear_structure", record)
            plain = record["plain_config"]
            if plain:
                for k, v in plain.items():
                    snap.set(model.config, k, v)
        except BaseException:
            snap.restore()
            raise
        after = [block_params(b) for b in blocks]
        block_red = [1 - a / b for a, b in zip(after, before)]
        reduction = 1 - sum(after) / sum(before)
        layer = {}
        for refs, now in zip(linears, model_linears(model)):
            sizes = {r.name: r.weight2d().numel() for r in now}
            for r in refs:
                layer[r.full_name] = 1 - sizes.get(r.name, 0) / r.weight2d().numel()
        structure = {"layers": [s.to_dict() for s in shapes], "layer_rates": budget.rates(alloc),
                     "params_before": sum(before), "params_after": sum(after), "reduction": reduction,
                     "target": plan.rate, "plain_loadable": bool(record["plain_config"])}  # fmt: skip
        logger.info("structured: decoder parameters %d -> %d (%.4f removed, target %.4f)", sum(before), sum(after),
                    reduction, plan.rate)  # fmt: skip
        return PruneResult(layer, block_red, reduction, sink.digest(), sink.masks, time.perf_counter() - t0,
                           structure=structure)  # fmt: skip

    def _cut(self, family, block, i, sc: BlockScores, budget: Budget, alloc: Allocation, block_stats, compensate,
             snap, sink) -> None:  # fmt: skip
        lay = budget.layouts[i]
        level = budget.levels[i][alloc.levels[i]]
        q_keep, kv_keep = select_heads(sc, lay, level)
        aw = family.attn_weights(block)
        o_bias = "keep"
        if compensate:
            removed_q = sorted(set(range(lay.n_q)) - set(q_keep))
            cols = head_rows(removed_q, lay.head_dim) if removed_q else torch.zeros(0, dtype=torch.long)
            o_bias = _compensation(aw.o, block_stats[aw.out_name][MOMENTS]["mean"], cols,
                                   getattr(aw.o_module, "bias", None))  # fmt: skip
        if level.kv != lay.n_kv or level.q != lay.q_per_kv or compensate:
            family.shrink_attention(block, q_keep, kv_keep, o_bias if compensate else "keep", snap, i)
        keep = select_channels(sc, lay.channels - alloc.channels_removed[i])
        mw = family.mlp_weights(block)
        d_bias = "keep"
        if compensate:
            removed_c = torch.tensor(sorted(set(range(lay.channels)) - set(keep.tolist())), dtype=torch.long)
            d_bias = _compensation(mw.out, block_stats[mw.out_name][MOMENTS]["mean"], removed_c,
                                   getattr(mw.out_module, "bias", None))  # fmt: skip
        if keep.numel() != lay.channels or compensate:
            family.shrink_mlp(block, keep, d_bias, snap)
        sink.add(f"{i}.attention", torch.tensor(q_keep + [-1] + kv_keep, dtype=torch.long))
        sink.add(f"{i}.mlp", keep)


def structure_record(model, family: Family, shapes: list[BlockShape]) -> dict:
    """What ``config.optishear_structure`` holds: the family, every block's shape, and the plain config fields when
    every block is alike and the family's config can say so (then plain ``from_pretrained`` loads the model)."""
    _, blocks = find_blocks(model)
    plain = None
    if len(set(shapes)) == 1:
        lay = family.layout(blocks[0]) if shapes[0].kv_heads else None
        if lay is not None:
            plain = family.plain_config(model.config, shapes[0], lay)
    return {"format": STRUCTURE_FORMAT, "family": family.name, "layers": [s.to_dict() for s in shapes],
            "plain_config": plain, "load_with": "optishear.load_model(path)"}  # fmt: skip


__all__ = ["IMPORTANCE", "ALLOCATIONS", "AttnLevel", "attention_levels", "level_for_rate", "read_layer_rates", "Budget",
           "Allocation", "BlockScores", "block_scores", "select_heads", "select_channels", "adaptive_allocation",
           "model_adaptive_allocation",
           "StructuredMethod", "structure_record", "importance_needs"]  # fmt: skip
