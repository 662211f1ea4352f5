"""fused prune: meta-metric score + per-row selection + pruned weight / bit-packed mask, in one pass.

Contract (both backends):
    w: [out, in] float32 | bfloat16 | float16, finite.
    x_sq: [in] float (mean of x^2 per input channel), finite and >= 0.
    metric: a ``MetricConfig`` (any of the 2,401 points, or RIA's coefficient).
    Unstructured: exactly ``int(in * sparsity)`` weights pruned in every row.
    N:M (``nm=(n, m)``, 0 <= n < m <= 32, ``in % m == 0``): ``m - n`` pruned in every m consecutive columns.
    Tie rule: ascending (score, column), see ``select``.
    Outputs: the pruned weight (same dtype) and/or the pruned mask bit-packed as uint8 [out, ceil(in/8)].

The Triton kernel keeps a whole row on chip (one tile of ``next_power_of_2(in)`` elements, up to
65,536 columns), finds the k-th smallest score by a 32-pass binary radix select on the order-preserving
uint32 image of the float bits, and resolves ties at the threshold by a prefix count. Scores never touch
global memory. Whole-matrix coefficients (column sums, totals) come from one pre-pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import backend
from .metric import FLT_MIN, MetricConfig, WStats, meta_score, w_coef_operands, w_stats, x_part
from .select import nm_mask, pack_mask, row_topk_mask

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by the no-triton import test
    triton = None

MAX_COLS = 65536
MAX_M = 32
_W_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PruneOutput(NamedTuple):
    weight: torch.Tensor | None
    packed_mask: torch.Tensor | None


if triton is not None:

    @triton.jit
    def _w_part(a, row, cols, cmask, rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr, COEF: tl.constexpr, UW: tl.constexpr):
        """C_w * U_w for a tile ``a = |W|`` (float32) of one row; same operation order as the twin."""
        if UW == 0:
            u = a
        elif UW == 1:
            u = tl.sqrt_rn(a)
        elif UW == 2:
            u = a * a
        elif UW == 3:
            u = tl.exp(a - tl.load(rmax_ptr + row))
        elif UW == 4:
            u = tl.log(tl.maximum(a, 1.1754943508222875e-38))
        elif UW == 5:
            u = tl.sigmoid(a)
        else:
            u = tl.math.div_rn(tl.exp(a - tl.load(rmax_ptr + row)), tl.load(rexp_ptr + row))
        if COEF == 0:
            wp = u
        elif COEF == 1:
            wp = tl.load(rv_ptr + row) * u
        elif COEF == 2:
            wp = tl.load(cv_ptr + cols, mask=cmask, other=1.0) * u
        elif COEF == 3:
            den = tl.load(rv_ptr + row) + tl.load(cv_ptr + cols, mask=cmask, other=1.0)
            den = tl.where(den > 0, den, 1.0)
            wp = tl.math.div_rn(tl.full(den.shape, 1.0, tl.float32), den) * u
        elif COEF == 4:
            wp = tl.load(sc_ptr) * u
        else:
            wp = (tl.load(rv_ptr + row) + tl.load(cv_ptr + cols, mask=cmask, other=1.0)) * u
        return wp

    @triton.jit
    def _order_key(s):
        """Order-preserving uint32 image of float32 scores, with -0.0 folded onto +0.0."""
        s = tl.where(s == 0.0, 0.0, s)
        bits = s.to(tl.int32, bitcast=True)
        ubits = s.to(tl.uint32, bitcast=True)
        return tl.where(bits < 0, ubits ^ 0xFFFFFFFF, ubits | 0x80000000)

    @triton.jit
    def _row_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_cols, k, stride_w, stride_o, stride_p,
        BLOCK: tl.constexpr, COEF: tl.constexpr, UW: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)  # int64 before multiplying by strides
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        w = tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0)
        a = tl.abs(w.to(tl.float32))
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        s = _w_part(a, row, cols, cmask, rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr, COEF, UW) * xp
        key = _order_key(s)
        # Binary radix select: the largest T with #(key < T) <= k - 1 is the k-th smallest key.
        thr = tl.full((), 0, tl.uint32)
        for i in tl.static_range(32):
            cand = thr | tl.full((), 1 << (31 - i), tl.uint32)
            cnt = tl.sum((cmask & (key < cand)).to(tl.int32), axis=0)
            thr = tl.where(cnt <= k - 1, cand, thr)
        lt = cmask & (key < thr)
        eq = cmask & (key == thr)
        need = k - tl.sum(lt.to(tl.int32), axis=0)
        pruned = lt | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= need))
        if WRITE_W:
            kept = tl.where(pruned, 0.0, w.to(tl.float32))  # exact: a kept value is already representable
            tl.store(out_ptr + row * stride_o + cols, kept.to(out_ptr.dtype.element_ty), mask=cmask)
        if WRITE_MASK:
            bits = tl.reshape(pruned.to(tl.int32), (BLOCK // 8, 8))
            byte = tl.sum(bits << tl.arange(0, 8)[None, :], axis=1)
            bidx = tl.arange(0, BLOCK // 8)
            tl.store(packed_ptr + row * stride_p + bidx, byte.to(tl.uint8), mask=bidx < (n_cols + 7) // 8)

    @triton.jit
    def _nm_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_cols, stride_w, stride_o, stride_p,
        N_PRUNE: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_G: tl.constexpr,
        COEF: tl.constexpr, UW: tl.constexpr, WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # Program (row, group block): BLOCK_G groups of M columns, M padded to the power of two MP.
        row = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = tl.arange(0, MP)
        cols = g[:, None] * M + j[None, :]
        cmask = (j < M)[None, :] & (cols < n_cols)
        w = tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0)
        a = tl.abs(w.to(tl.float32))
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        s = _w_part(a, row, cols, cmask, rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr, COEF, UW) * xp
        key = tl.where(cmask, _order_key(s), tl.full(s.shape, 0xFFFFFFFF, tl.uint32))
        # rank of j in its group = #(l: key_l < key_j or key_l == key_j and l < j); padded lanes rank last.
        kj = key[:, :, None]
        kl = key[:, None, :]
        before = (kl < kj) | ((kl == kj) & (j[None, None, :] < j[None, :, None]))
        rank = tl.sum(before.to(tl.int32), axis=2)
        pruned = cmask & (rank < N_PRUNE)
        if WRITE_W:
            kept = tl.where(pruned, 0.0, w.to(tl.float32))
            tl.store(out_ptr + row * stride_o + cols, kept.to(out_ptr.dtype.element_ty), mask=cmask)
        if WRITE_MASK:
            # Bytes straddle groups when M is not a multiple of 8: OR bits in with atomics on int32 words.
            bit = pruned.to(tl.int32) << (cols % 32).to(tl.int32)
            word = (cols // 32).to(tl.int64)
            tl.atomic_or(packed_ptr + row * stride_p + word, bit, mask=pruned)

    @triton.jit
    def _row_stats_kernel(
        w_ptr, rsum_ptr, rsq_ptr, rmax_ptr, rexp_ptr, n_cols, stride_w,
        BLOCK: tl.constexpr, NEED_EXP: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0).to(tl.float32))
        a64 = a.to(tl.float64)
        tl.store(rsum_ptr + row, tl.sum(a64, axis=0))
        tl.store(rsq_ptr + row, tl.sum(a64 * a64, axis=0))
        rmax = tl.max(a, axis=0)  # a >= 0 and padding is 0, so padding never wins
        tl.store(rmax_ptr + row, rmax)
        if NEED_EXP:
            e = tl.where(cmask, tl.exp(a - rmax), 0.0)
            tl.store(rexp_ptr + row, tl.sum(e.to(tl.float64), axis=0).to(tl.float32))

    @triton.jit
    def _col_sum_kernel(w_ptr, csum_ptr, n_rows, n_cols, stride_w, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < n_cols
        acc = tl.zeros((BLOCK_C,), dtype=tl.float64)
        for r0 in range(0, n_rows, BLOCK_R):
            rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            m = (rows < n_rows)[:, None] & cmask[None, :]
            a = tl.abs(tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=m, other=0.0).to(tl.float32))
            acc += tl.sum(a.to(tl.float64), axis=0)
        tl.store(csum_ptr + cols, acc.to(tl.float32), mask=cmask)


def _warps(block: int) -> int:
    return max(4, min(32, block // 512))


def w_stats_triton(w: torch.Tensor, cfg: MetricConfig) -> WStats | None:
    """Pre-pass (Triton): the whole-matrix reductions of ``metric.w_stats``, same rounding (float64 -> float32)."""
    needs_coef = cfg.cw != 0
    needs_soft = cfg.uw in (3, 6)
    if not (needs_coef or needs_soft):
        return None
    rows, cols = w.shape
    dev = w.device
    rsum = torch.empty(rows, dtype=torch.float64, device=dev)
    rsq = torch.empty(rows, dtype=torch.float64, device=dev)
    rmax = torch.empty(rows, dtype=torch.float32, device=dev)
    rexp = torch.empty(rows, dtype=torch.float32, device=dev)
    block = triton.next_power_of_2(cols)
    _row_stats_kernel[(rows,)](
        w_ptr=w, rsum_ptr=rsum, rsq_ptr=rsq, rmax_ptr=rmax, rexp_ptr=rexp, n_cols=cols, stride_w=w.stride(0),
        BLOCK=block, NEED_EXP=cfg.uw == 6, num_warps=_warps(block),
    )  # fmt: skip
    empty = torch.empty(0, dtype=torch.float32, device=dev)
    col_sum = empty
    if cfg.cw in (2, 3, 7):
        col_sum = torch.empty(cols, dtype=torch.float32, device=dev)
        block_c = min(128, triton.next_power_of_2(cols))
        _col_sum_kernel[(triton.cdiv(cols, block_c),)](
            w_ptr=w, csum_ptr=col_sum, n_rows=rows, n_cols=cols, stride_w=w.stride(0),
            BLOCK_R=min(64, triton.next_power_of_2(rows)), BLOCK_C=block_c,
        )  # fmt: skip
    return WStats(
        row_sum=rsum.to(torch.float32) if cfg.cw in (1, 3, 7) else empty,
        col_sum=col_sum,
        total=rsum.sum().to(torch.float32) if cfg.cw in (4, 5) else empty,
        sq_sum=rsq.sum().to(torch.float32) if cfg.cw == 6 else empty,
        row_max=rmax if needs_soft else empty,
        row_exp_sum=rexp if cfg.uw == 6 else empty,
    )


def _validate(w, x_sq, sparsity, nm, want_weight, want_mask):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D tensor [out, in], got {getattr(w, 'shape', type(w))}")
    if w.dtype not in _W_DTYPES:
        raise ValueError(f"w must be float32, bfloat16 or float16, got {w.dtype}")
    rows, cols = w.shape
    if x_sq.dim() != 1 or x_sq.shape[0] != cols:
        raise ValueError(f"x_sq must have shape [{cols}] (the input channels of w), got {tuple(x_sq.shape)}")
    if not torch.isfinite(x_sq).all():
        raise ValueError("x_sq (activation statistics) contains NaN or inf")
    if (x_sq < 0).any():
        raise ValueError("x_sq (mean of x^2) must be >= 0")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or inf")
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
    if not (isinstance(sparsity, (int, float)) and 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return int(cols * float(sparsity))


def fused_prune_torch(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False):
    """Twin of ``fused_prune`` (the CPU path and the test oracle)."""
    cfg = MetricConfig.parse(metric)
    k = _validate(w, x_sq, sparsity, nm, write_weight, write_mask)
    score = meta_score(w, x_sq, cfg)
    if not torch.isfinite(score).all():  # cannot happen by construction; never return a silently wrong mask
        raise FloatingPointError(f"metric {cfg.spec} produced non-finite scores")
    mask = row_topk_mask(score, k) if nm is None else nm_mask(score, nm[0], nm[1])
    weight = w.masked_fill(mask, 0) if write_weight else None
    return PruneOutput(weight, pack_mask(mask) if write_mask else None)


def fused_prune_triton(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False):
    """Triton launcher of ``fused_prune``."""
    cfg = MetricConfig.parse(metric)
    k = _validate(w, x_sq, sparsity, nm, write_weight, write_mask)
    rows, cols = w.shape
    if cols > MAX_COLS:
        raise ValueError(f"the Triton row path holds a row on chip: at most {MAX_COLS} columns, got {cols}")
    if nm is not None and nm[1] > MAX_M:
        raise ValueError(f"the Triton N:M path supports M <= {MAX_M}, got M={nm[1]}")
    w = w if w.stride(1) == 1 else w.contiguous()
    xp = x_part(x_sq.to(w.device), cfg).contiguous()
    stats = w_stats_triton(w, cfg)
    rv, cv, sc, mode = w_coef_operands(stats, cfg, w.numel())
    dummy = torch.empty(1, dtype=torch.float32, device=w.device)
    ops = dict(
        rv_ptr=rv if rv is not None else dummy,
        cv_ptr=cv if cv is not None else dummy,
        sc_ptr=sc.reshape(1) if sc is not None else dummy,
        rmax_ptr=stats.row_max if stats is not None and stats.row_max.numel() else dummy,
        rexp_ptr=stats.row_exp_sum if stats is not None and stats.row_exp_sum.numel() else dummy,
    )
    out = torch.empty_like(w) if write_weight else w
    nbytes = (cols + 7) // 8
    if nm is None:
        block = max(8, triton.next_power_of_2(cols))
        packed = torch.empty(rows, nbytes, dtype=torch.uint8, device=w.device) if write_mask else dummy
        _row_prune_kernel[(rows,)](
            w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=packed, **ops,
            n_cols=cols, k=k, stride_w=w.stride(0), stride_o=out.stride(0),
            stride_p=packed.stride(0) if write_mask else 0,
            BLOCK=block, COEF=mode, UW=cfg.uw, WRITE_W=write_weight, WRITE_MASK=write_mask, num_warps=_warps(block),
        )  # fmt: skip
    else:
        n, m = nm
        mp = triton.next_power_of_2(m)
        block_g = max(1, min(triton.next_power_of_2(cols // m), 4096 // (mp * mp) or 1))
        words = torch.zeros(rows, (cols + 31) // 32, dtype=torch.int32, device=w.device) if write_mask else dummy
        _nm_prune_kernel[(rows, triton.cdiv(cols // m, block_g))](
            w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=words, **ops,
            n_cols=cols, stride_w=w.stride(0), stride_o=out.stride(0), stride_p=words.stride(0) if write_mask else 0,
            N_PRUNE=m - n, M=m, MP=mp, BLOCK_G=block_g, COEF=mode, UW=cfg.uw,
            WRITE_W=write_weight, WRITE_MASK=write_mask,
        )  # fmt: skip
        # Little-endian int32 words are exactly the packed bytes, in order.
        packed = words.view(torch.uint8)[:, :nbytes].contiguous() if write_mask else None
    return PruneOutput(out if write_weight else None, packed if write_mask else None)


def fused_prune(
    w: torch.Tensor,
    x_sq: torch.Tensor,
    metric: MetricConfig | str | tuple = MetricConfig(),
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    write_weight: bool = True,
    write_mask: bool = False,
    backend_name: str | None = None,
) -> PruneOutput:
    """Score, select and prune one weight matrix.

    Args:
        w: [out, in] weight (float32/bfloat16/float16). Not modified.
        x_sq: [in] mean of x^2 per input channel (``ActNorm.mean()``).
        metric: a ``MetricConfig``, a spec string or four option indices (default: Wanda).
        sparsity: unstructured fraction in [0, 1): ``int(in * sparsity)`` pruned per row.
        nm: ``(n, m)``: keep n of every m consecutive weights in a row (instead of ``sparsity``).
        write_weight: return the pruned weight [out, in] (same dtype as w).
        write_mask: return the pruned-positions mask packed as uint8 [out, ceil(in / 8)].
        backend_name: "auto" | "torch" | "triton".

    Returns:
        ``PruneOutput(weight, packed_mask)``; fields not asked for are None.

    Example (Wanda in one call):
        >>> out = fused_prune(layer.weight, act.mean(), "w:none*none,x:none*none", sparsity=0.5)
        >>> layer.weight.data.copy_(out.weight)
    """
    fn = fused_prune_triton if backend.choose(w, backend_name) == "triton" else fused_prune_torch
    return fn(w, x_sq, metric, sparsity=sparsity, nm=nm, write_weight=write_weight, write_mask=write_mask)


__all__ = ["PruneOutput", "fused_prune", "fused_prune_torch", "fused_prune_triton", "w_stats_triton", "FLT_MIN"]
