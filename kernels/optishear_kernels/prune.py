"""fused prune: the public dispatcher of the prune ops (validation, operands, backend choice).

Contract (both backends):
    w: [out, in] float32 | bfloat16 | float16, finite.
    x_sq: [in] float (mean of x^2 per input channel), finite and >= 0 (None for a symbolic metric without X).
    metric: a ``MetricConfig`` (any of the 2,401 points, or RIA's coefficient), or a symbolic metric (an ``Expr``
        or its text, ``expr.py``); then ``g``: [out, in] gradient statistic, finite and >= 0, when the tree uses G.
    Unstructured: exactly ``int(in * sparsity)`` weights pruned in every row.
    N:M (``nm=(n, m)``, 0 <= n < m <= 32, ``in % m == 0``): ``m - n`` pruned in every m consecutive columns.
    Tie rule: ascending (score, column), see ``select``.
    Outputs: the pruned weight (same dtype) and/or the pruned mask bit-packed as uint8 [out, ceil(in/8)].

The torch twin is ``meta_score`` + ``select``. The Triton kernels, one op family per module:
``prune_row`` (rows of up to 4,096 columns), ``prune_long_row`` (longer rows), ``prune_nm`` (N:M),
``prune_population`` (P members in one launch), ``w_stats`` (the whole-matrix pre-pass), with their
shared device helpers in ``prune_common`` and their launch settings in ``launch``. Scores never touch
global memory. With ``inplace=True`` only zeros are written.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch

from . import backend
from .expr import Expr, expr_score, looks_like_expr, parse
from .launch import LONG_ROW, MAX_M
from .metric import FLT_MIN, MetricConfig, _recip, all_finite, meta_score, w_coef_operands, x_part
from .prune_long_row import long_row_prune_triton
from .prune_nm import nm_prune_triton
from .prune_population import population_triton
from .prune_row import row_prune_triton
from .prune_symbolic import sym_host_prepass, sym_prune_triton, sym_reduce_triton
from .select import nm_mask, pack_mask, row_topk_mask
from .w_stats import w_stats_triton

_W_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PruneOutput(NamedTuple):
    weight: torch.Tensor | None
    packed_mask: torch.Tensor | None


def _selection(cols: int, sparsity, nm, want_weight, want_mask) -> int | None:
    """The checks every prune shares after its inputs': what to write and what to select. Returns the weights
    pruned per row (unstructured), or None for N:M."""
    if not (want_weight or want_mask):
        raise ValueError("ask for at least one of write_weight / write_mask")
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity (unstructured) or nm=(n, m)")
    if nm is not None:
        n, m = nm
        if not (isinstance(n, int) and isinstance(m, int)) or m < 1 or not 0 <= n < m:
            raise ValueError(f"N:M needs integers 0 <= N < M, got {n}:{m}")
        if cols % m:
            raise ValueError(f"N:M {n}:{m} needs the columns ({cols}) to be a multiple of M={m}")
        return None
    return _k(cols, sparsity)


def _validate(w, x_sq, sparsity, nm, want_weight, want_mask):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D tensor [out, in], got {getattr(w, 'shape', type(w))}")
    if w.dtype not in _W_DTYPES:
        raise ValueError(f"w must be float32, bfloat16 or float16, got {w.dtype}")
    cols = w.shape[1]
    if x_sq.dim() != 1 or x_sq.shape[0] != cols:
        raise ValueError(f"x_sq must have shape [{cols}] (the input channels of w), got {tuple(x_sq.shape)}")
    if not all_finite(x_sq):
        raise ValueError("x_sq (activation statistics) contains NaN or inf")
    if (x_sq < 0).any():
        raise ValueError("x_sq (mean of x^2) must be >= 0")
    if not all_finite(w):
        raise ValueError("w contains NaN or inf")
    return _selection(cols, sparsity, nm, want_weight, want_mask)


def _k(cols: int, sparsity) -> int:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return int(cols * float(sparsity))


_WS = threading.local()


def _workspace(shape, device) -> torch.Tensor:
    """A float32 scratch buffer reused across calls on this thread: fresh 100+ MB allocations cost more
    in page faults than the scoring itself on CPU. Only ever used for scores that do not escape."""
    numel = shape[0] * shape[1]
    buf = getattr(_WS, "buf", None)
    if buf is None or buf.device != torch.device(device) or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32, device=device)
        _WS.buf = buf
    return buf[:numel].view(shape)


def _validate_symbolic(w, g, x_sq, tree: Expr, sparsity, nm, want_weight, want_mask):
    """``_validate`` for a symbolic metric: G and X are checked only when the tree uses them."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D tensor [out, in], got {getattr(w, 'shape', type(w))}")
    cols = w.shape[1]
    for name, t, uses, shape in (("g", g, tree.uses_g, tuple(w.shape)), ("x_sq", x_sq, tree.uses_x, (cols,))):
        if not uses:
            continue
        what = "gradient statistics" if name == "g" else "activation statistics"
        if t is None:
            raise ValueError(f"metric {tree.text} uses {name[0].upper()} but no {what} ({name}) were given")
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} ({what}) must have shape {list(shape)}, got {tuple(getattr(t, 'shape', ()))}")
        if t.dtype not in _W_DTYPES:
            raise ValueError(f"{name} ({what}) must be float32, bfloat16 or float16, got {t.dtype}")
        lo, hi = torch.aminmax(t)  # one pass: NaN propagates, inf shows at an end
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} ({what}) contains NaN or inf")
        if bool(lo < 0):
            raise ValueError(f"{name} ({what}) must be >= 0")
    if w.dtype not in _W_DTYPES:
        raise ValueError(f"w must be float32, bfloat16 or float16, got {w.dtype}")
    if not all_finite(w):
        raise ValueError("w contains NaN or inf")
    return _selection(cols, sparsity, nm, want_weight, want_mask)


def _raise_nonfinite(tree: Expr, bad_rows: torch.Tensor) -> None:
    rows = torch.nonzero(bad_rows).flatten()
    raise FloatingPointError(f"metric {tree.text} gives NaN or infinite scores in {rows.numel()} row(s) "
                             f"(first: row {int(rows[0])})")  # fmt: skip


def symbolic_prune_torch(w, g, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                         inplace=False):  # fmt: skip
    """Twin of the symbolic ``fused_prune``: ``expr_score`` + ``select``. Raises before writing anything."""
    tree = parse(metric)
    k = _validate_symbolic(w, g, x_sq, tree, sparsity, nm, write_weight, write_mask)
    score = expr_score(w, g if tree.uses_g else None, x_sq if tree.uses_x else None, tree,
                       out=_workspace(w.shape, w.device))  # fmt: skip
    if not all_finite(score):
        _raise_nonfinite(tree, ~torch.isfinite(score).all(dim=1))
    mask = row_topk_mask(score, k) if nm is None else nm_mask(score, nm[0], nm[1])
    weight = None
    if write_weight:
        weight = w.masked_fill_(mask, 0) if inplace else w.masked_fill(mask, 0)
    return PruneOutput(weight, pack_mask(mask) if write_mask else None)


def symbolic_prune_triton(w, g, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                          inplace=False):  # fmt: skip
    """Triton launcher of the symbolic ``fused_prune``: host reductions over X, the pre-pass levels over W and G, then
    the row, long-row or N:M kernel with the generated scoring function."""
    from .symbolic import compile_expr

    tree = parse(metric)
    k = _validate_symbolic(w, g, x_sq, tree, sparsity, nm, write_weight, write_mask)
    rows, cols = w.shape
    if nm is not None and nm[1] > MAX_M:
        raise ValueError(f"the Triton N:M path supports M <= {MAX_M}, got M={nm[1]}")
    prog = compile_expr(tree)
    target = w
    w = w if w.stride(1) == 1 else w.contiguous()
    g = (g if g.stride(1) == 1 else g.contiguous()).to(w.device) if tree.uses_g else None
    x = x_sq.to(w.device, torch.float32).contiguous() if tree.uses_x else None
    r = torch.zeros(max(prog.n_slots, 1), dtype=torch.float32, device=w.device)
    v = sym_host_prepass(prog, w, g, x, r)  # X-only reductions, or all of them and the sums (rsn/csn/rcn)
    for stage in range(1, prog.n_stages + 1):
        sym_reduce_triton(prog, stage, w, g, x, r)
    dummy = torch.empty(1, dtype=torch.float32, device=w.device)
    out = (w if inplace else w.clone()) if write_weight else dummy
    if nm is None:
        packed = torch.empty(rows, (cols + 7) // 8, dtype=torch.uint8, device=w.device) if write_mask else dummy
    else:
        packed = torch.zeros(rows, (cols + 31) // 32, dtype=torch.int32, device=w.device) if write_mask else dummy
    bad = sym_prune_triton(prog, w, g, x, r, out, packed, k=k, nm=nm, write_w=write_weight, write_mask=write_mask,
                           v=v)  # fmt: skip
    if bool(bad.any()):
        _raise_nonfinite(tree, bad)
    if write_mask and nm is not None:  # little-endian int32 words are exactly the packed bytes
        packed = packed.view(torch.uint8)[:, : (cols + 7) // 8].contiguous()
    if write_weight and inplace and out is not target:
        target.copy_(out)
        out = target
    return PruneOutput(out if write_weight else None, packed if write_mask else None)


def fused_prune_torch(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                      inplace=False, g=None):  # fmt: skip
    """Twin of ``fused_prune`` (the CPU path and the test oracle)."""
    if looks_like_expr(metric):
        return symbolic_prune_torch(w, g, x_sq, metric, sparsity=sparsity, nm=nm, write_weight=write_weight,
                                    write_mask=write_mask, inplace=inplace)  # fmt: skip
    cfg = MetricConfig.parse(metric)
    k = _validate(w, x_sq, sparsity, nm, write_weight, write_mask)
    score = meta_score(w, x_sq, cfg, out=_workspace(w.shape, w.device))
    if not all_finite(score):  # cannot happen by construction; never return a silently wrong mask
        raise FloatingPointError(f"metric {cfg.spec} produced non-finite scores")
    mask = row_topk_mask(score, k) if nm is None else nm_mask(score, nm[0], nm[1])
    weight = None
    if write_weight:
        weight = w.masked_fill_(mask, 0) if inplace else w.masked_fill(mask, 0)
    return PruneOutput(weight, pack_mask(mask) if write_mask else None)


def _operands(w, cfg, stats):
    rv, cv, sc, mode = w_coef_operands(stats, cfg, w.numel())
    dummy = torch.empty(1, dtype=torch.float32, device=w.device)
    has = stats is not None
    return {
        "rv_ptr": rv if rv is not None else dummy,
        "cv_ptr": cv if cv is not None else dummy,
        "sc_ptr": sc.reshape(1) if sc is not None else dummy,
        "rmax_ptr": stats.row_max if has and stats.row_max.numel() else dummy,
        "rexp_ptr": stats.row_exp_sum if has and stats.row_exp_sum.numel() else dummy,
    }, mode


def fused_prune_triton(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                       inplace=False, g=None):  # fmt: skip
    """Triton launcher of ``fused_prune``: one op family per shape (row, long row, N:M)."""
    if looks_like_expr(metric):
        return symbolic_prune_triton(w, g, x_sq, metric, sparsity=sparsity, nm=nm, write_weight=write_weight,
                                     write_mask=write_mask, inplace=inplace)  # fmt: skip
    cfg = MetricConfig.parse(metric)
    k = _validate(w, x_sq, sparsity, nm, write_weight, write_mask)
    rows, cols = w.shape
    if nm is not None and nm[1] > MAX_M:
        raise ValueError(f"the Triton N:M path supports M <= {MAX_M}, got M={nm[1]}")
    target = w
    w = w if w.stride(1) == 1 else w.contiguous()
    xp = x_part(x_sq.to(w.device), cfg).contiguous()
    ops, mode = _operands(w, cfg, w_stats_triton(w, cfg))
    dummy = torch.empty(1, dtype=torch.float32, device=w.device)
    # The kernels write only the zeros: out starts as W (itself when in place).
    out = (w if inplace else w.clone()) if write_weight else dummy
    choice = {"coef_mode": mode, "w_transform": cfg.w_transform, "write_w": write_weight, "write_mask": write_mask}
    if nm is None:
        packed = torch.empty(rows, (cols + 7) // 8, dtype=torch.uint8, device=w.device) if write_mask else dummy
        launcher = long_row_prune_triton if cols > LONG_ROW else row_prune_triton
        launcher(w, xp, ops, out, packed, k, **choice)
    else:
        packed = nm_prune_triton(w, xp, ops, out, nm[0], nm[1], **choice)
    if write_weight and inplace and out is not target:
        target.copy_(out)  # a non-contiguous view (GPT-2's Conv1D weight.t()) was pruned through a copy
        out = target
    return PruneOutput(out if write_weight else None, packed if write_mask else None)


def fused_prune(
    w: torch.Tensor,
    x_sq: torch.Tensor | None,
    metric: MetricConfig | Expr | str | tuple = MetricConfig(),
    *,
    g: torch.Tensor | None = None,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    write_weight: bool = True,
    write_mask: bool = False,
    inplace: bool = False,
    backend_name: str | None = None,
) -> PruneOutput:
    """Score, select and prune one weight matrix.

    Args:
        w: [out, in] weight (float32/bfloat16/float16). Modified only with ``inplace=True``.
        x_sq: [in] mean of x^2 per input channel (``ActNorm.mean()``); None for a symbolic metric without X.
        metric: a ``MetricConfig``, a spec string or four option indices (default: Wanda); or a symbolic metric,
            an ``Expr`` or its text (``"mul(W,sqrt(X))"``, ``"expr:..."``), scored exactly as written (pass
            ``canonical(tree)`` to score a ranking class's simplest member; one kernel is generated per text).
        g: [out, in] gradient statistic (float32/bfloat16/float16, >= 0) for symbolic metrics that use G.
        sparsity: unstructured fraction in [0, 1): ``int(in * sparsity)`` pruned per row.
        nm: ``(n, m)``: keep n of every m consecutive weights in a row (instead of ``sparsity``).
        write_weight: return the pruned weight [out, in] (same dtype as w).
        write_mask: return the pruned-positions mask packed as uint8 [out, ceil(in / 8)].
        inplace: prune ``w`` itself (then ``weight`` is ``w``); only the zeros are written.
        backend_name: "auto" | "torch" | "triton".

    Returns:
        ``PruneOutput(weight, packed_mask)``; fields not asked for are None.

    Raises:
        ValueError: bad arguments (named). FloatingPointError: a symbolic metric's scores are NaN or infinite; the
            twin raises before writing, the Triton path leaves those rows unwritten but may have pruned the others
            of an in-place ``w``.

    Example (Wanda in one call):
        >>> out = fused_prune(layer.weight, act.mean(), "w:none*none,x:none*none", sparsity=0.5)
        >>> layer.weight.data.copy_(out.weight)
    """
    fn = fused_prune_triton if backend.choose(w, backend_name) == "triton" else fused_prune_torch
    return fn(w, x_sq, metric, sparsity=sparsity, nm=nm, write_weight=write_weight, write_mask=write_mask,
              inplace=inplace, g=g)


def _population_members(configs, sparsities):
    configs = [MetricConfig.parse(c) for c in (configs if isinstance(configs, (list, tuple)) and configs
                                               and not isinstance(configs[0], int) else [configs])]  # fmt: skip
    sparsities = list(sparsities) if isinstance(sparsities, (list, tuple)) else [sparsities]
    if len(configs) == 1:
        configs = configs * len(sparsities)
    if len(sparsities) == 1:
        sparsities = sparsities * len(configs)
    if len(configs) != len(sparsities):
        raise ValueError(f"population: {len(configs)} metrics but {len(sparsities)} sparsities")
    return configs, sparsities


def population_prune_torch(w, x_sq, configs, sparsities):
    """Twin of ``population_prune``: one ``fused_prune_torch`` per member."""
    configs, sparsities = _population_members(configs, sparsities)
    return torch.stack([fused_prune_torch(w, x_sq, c, sparsity=s, write_weight=False, write_mask=True).packed_mask
                        for c, s in zip(configs, sparsities)])  # fmt: skip


def population_prune_triton(w, x_sq, configs, sparsities):
    """Triton launcher of ``population_prune``: one launch for all members."""
    configs, sparsities = _population_members(configs, sparsities)
    ks = [_validate(w, x_sq, s, None, False, True) for s in sparsities]
    if w.shape[1] > LONG_ROW:  # one row no longer fits the registers: one chunked launch per member
        return torch.stack([fused_prune_triton(w, x_sq, c, sparsity=s, write_weight=False, write_mask=True).packed_mask
                            for c, s in zip(configs, sparsities)])  # fmt: skip
    w = w if w.stride(1) == 1 else w.contiguous()
    dev = w.device
    stats = w_stats_triton(w, None)
    xp = torch.stack([x_part(x_sq.to(dev), c) for c in configs]).contiguous()
    modes, scs = [], []
    for c in configs:
        _, _, sc, mode = w_coef_operands(stats, c, w.numel())
        modes.append(int(mode))
        scs.append(sc.reshape(()) if sc is not None else torch.ones((), device=dev))
    return population_triton(
        w, xp, modes=torch.tensor(modes, dtype=torch.int32, device=dev),
        transforms=torch.tensor([c.uw for c in configs], dtype=torch.int32, device=dev),
        ks=torch.tensor(ks, dtype=torch.int32, device=dev), scalars=torch.stack(scs).to(torch.float32).contiguous(),
        row_sum=stats.row_sum, row_rec=_recip(stats.row_sum), col_sum=stats.col_sum, col_rec=_recip(stats.col_sum),
        row_max=stats.row_max, row_exp_sum=stats.row_exp_sum,
    )  # fmt: skip


def population_prune(w, x_sq, configs, sparsities, *, backend_name: str | None = None) -> torch.Tensor:
    """Masks of P (metric, sparsity) members over the same W, for population searches.

    Args:
        w: [out, in] weight; x_sq: [in] activation statistics.
        configs: one metric or a list of P; sparsities: one sparsity or a list of P (unstructured).

    Returns:
        uint8 [P, out, ceil(in / 8)]: member p's pruned mask, bit-packed as in ``pack_mask``.
    """
    if backend.choose(w, backend_name) == "triton":
        return population_prune_triton(w, x_sq, configs, sparsities)
    return population_prune_torch(w, x_sq, configs, sparsities)


__all__ = ["FLT_MIN", "PruneOutput", "fused_prune", "fused_prune_torch", "fused_prune_triton", "symbolic_prune_torch",
           "symbolic_prune_triton", "population_prune",
           "population_prune_torch", "population_prune_triton", "w_stats_triton"]  # fmt: skip
