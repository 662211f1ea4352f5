"""Statistics pre-pass: the whole-matrix reductions over |W| that some metrics need (Triton).

Row sums, row sums of squares, row max and row softmax sums come from ``_row_stats_kernel`` (one program
per row); column sums from ``_col_sum_kernel`` (each program owns a block of columns and sweeps every
row: no atomics, deterministic). Sums accumulate in float64 and are rounded to float32 once, as the twin
(``metric.w_stats``) does, so both agree to the bit.
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton
from .metric import MetricConfig, WStats
from .operators import NEEDS_COL_SUM, NEEDS_ROW_MAX, NEEDS_ROW_SUM, NEEDS_SQ_SUM, NEEDS_TOTAL, Coefficient, Transform

if triton is not None:

    @triton.jit
    def _row_stats_kernel(
        w_ptr, rsum_ptr, rsq_ptr, rmax_ptr, rexp_ptr, n_cols, stride_w,
        BLOCK: tl.constexpr, NEED_EXP: tl.constexpr,
    ):  # fmt: skip
        # Per row: sum |W| and sum W^2 (float64), max |W|, and sum exp(|W| - max) for softmax, in BLOCK chunks.
        row = tl.program_id(0).to(tl.int64)
        s1 = tl.zeros((BLOCK,), dtype=tl.float64)
        s2 = tl.zeros((BLOCK,), dtype=tl.float64)
        mx = tl.zeros((BLOCK,), dtype=tl.float32)  # |W| >= 0, so 0 is a neutral start
        for c0 in range(0, n_cols, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=cols < n_cols, other=0.0).to(tl.float32))
            a64 = a.to(tl.float64)
            s1 += a64
            s2 += a64 * a64
            mx = tl.maximum(mx, a)
        tl.store(rsum_ptr + row, tl.sum(s1, axis=0))
        tl.store(rsq_ptr + row, tl.sum(s2, axis=0))
        rmax = tl.max(mx, axis=0)
        tl.store(rmax_ptr + row, rmax)
        if NEED_EXP:
            se = tl.zeros((BLOCK,), dtype=tl.float64)
            for c0 in range(0, n_cols, BLOCK):
                cols = c0 + tl.arange(0, BLOCK)
                cmask = cols < n_cols
                a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0).to(tl.float32))
                se += tl.where(cmask, tl.exp(a - rmax), 0.0).to(tl.float64)
            tl.store(rexp_ptr + row, tl.sum(se, axis=0).to(tl.float32))

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


def w_stats_triton(w: torch.Tensor, cfg: MetricConfig | None) -> WStats | None:
    """Pre-pass (Triton): the whole-matrix reductions of ``metric.w_stats``, same rounding (float64 -> float32).

    ``cfg=None`` computes every reduction (for population launches).
    """
    everything = cfg is None
    cw = None if everything else cfg.w_coef
    uw = None if everything else cfg.w_transform
    needs_soft = everything or uw in NEEDS_ROW_MAX
    if not everything and cw == Coefficient.NONE and not needs_soft:
        return None
    rows, cols = w.shape
    dev = w.device
    rsum = torch.empty(rows, dtype=torch.float64, device=dev)
    rsq = torch.empty(rows, dtype=torch.float64, device=dev)
    rmax = torch.empty(rows, dtype=torch.float32, device=dev)
    rexp = torch.empty(rows, dtype=torch.float32, device=dev)
    run = L.row_stats(rows, cols, need_exp=everything or uw == Transform.SOFTMAX)
    _row_stats_kernel[run.grid](
        w_ptr=w, rsum_ptr=rsum, rsq_ptr=rsq, rmax_ptr=rmax, rexp_ptr=rexp, n_cols=cols, stride_w=w.stride(0),
        **run.options(),
    )  # fmt: skip
    empty = torch.empty(0, dtype=torch.float32, device=dev)
    col_sum = empty
    if everything or cw in NEEDS_COL_SUM:
        col_sum = torch.empty(cols, dtype=torch.float32, device=dev)
        run = L.col_sum(rows, cols)
        _col_sum_kernel[run.grid](w_ptr=w, csum_ptr=col_sum, n_rows=rows, n_cols=cols, stride_w=w.stride(0),
                                  **run.options())  # fmt: skip
    return WStats(
        row_sum=rsum.to(torch.float32) if everything or cw in NEEDS_ROW_SUM else empty,
        col_sum=col_sum,
        total=rsum.sum().to(torch.float32) if everything or cw in NEEDS_TOTAL else empty,
        sq_sum=rsq.sum().to(torch.float32) if everything or cw in NEEDS_SQ_SUM else empty,
        row_max=rmax if needs_soft else empty,
        row_exp_sum=rexp if everything or uw == Transform.SOFTMAX else empty,
    )
