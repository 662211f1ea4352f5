"""Population select: P (metric, sparsity) members over the same W in one launch.

Each row of W is read once and scored and selected P times on chip; P bit-packed masks are written.
The operator choice of each member is read at run time (``_w_part_dyn``), so one compiled kernel serves
any population. Rows of up to ``launch.LONG_ROW`` columns (the row tile of ``prune_row``).
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton

if triton is not None:
    from .prune_common import _order_key, _select_row, _store_packed, _w_part_dyn

    @triton.jit
    def _population_kernel(
        w_ptr, xp_ptr, mode_ptr, uw_ptr, k_ptr, sc_ptr, packed_ptr,
        rsum_ptr, rrec_ptr, csum_ptr, crec_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, n_members, stride_w, stride_xp, stride_pm, stride_pr,
        BLOCK: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            m = cmask & live
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            rsum = tl.load(rsum_ptr + row, mask=live, other=1.0)
            rrec = tl.load(rrec_ptr + row, mask=live, other=1.0)
            rmax = tl.load(rmax_ptr + row, mask=live, other=0.0)
            rexp = tl.load(rexp_ptr + row, mask=live, other=1.0)
            for p in range(n_members):
                # Column operands are re-read per member rather than held: holding them spills registers.
                csum = tl.load(csum_ptr + cols, mask=cmask, other=1.0)
                crec = tl.load(crec_ptr + cols, mask=cmask, other=1.0)
                xp = tl.load(xp_ptr + p * stride_xp + cols, mask=cmask, other=0.0)
                wp = _w_part_dyn(a, rsum, rrec, csum, crec, tl.load(sc_ptr + p), rmax, rexp,
                                 tl.load(mode_ptr + p), tl.load(uw_ptr + p))  # fmt: skip
                pruned = _select_row(_order_key(wp * xp), m, tl.load(k_ptr + p))
                _store_packed(pruned, packed_ptr + p * stride_pm + row * stride_pr, n_cols, live, BLOCK)


def population_triton(w: torch.Tensor, xp: torch.Tensor, modes: torch.Tensor, transforms: torch.Tensor,
                      ks: torch.Tensor, scalars: torch.Tensor, row_sum, row_rec, col_sum, col_rec, row_max,
                      row_exp_sum) -> torch.Tensor:  # fmt: skip
    """Launch ``_population_kernel``.

    Args:
        w: [out, in] weight with unit column stride, ``in <= LONG_ROW``.
        xp: [P, in] float32 X part of each member.
        modes, transforms, ks: int32 [P]: each member's ``CoefMode``, W-side ``Transform`` and k.
        scalars: float32 [P]: each member's scalar coefficient (1 when it has none).
        row_sum, row_rec, col_sum, col_rec, row_max, row_exp_sum: the pre-pass statistics (all of them).

    Returns:
        uint8 [P, out, ceil(in / 8)] packed masks.
    """
    rows, cols = w.shape
    packed = torch.empty(xp.shape[0], rows, (cols + 7) // 8, dtype=torch.uint8, device=w.device)
    run = L.population(rows, cols)
    _population_kernel[run.grid](
        w_ptr=w, xp_ptr=xp, mode_ptr=modes, uw_ptr=transforms, k_ptr=ks, sc_ptr=scalars, packed_ptr=packed,
        rsum_ptr=row_sum, rrec_ptr=row_rec, csum_ptr=col_sum, crec_ptr=col_rec, rmax_ptr=row_max,
        rexp_ptr=row_exp_sum, n_rows=rows, n_cols=cols, n_members=xp.shape[0], stride_w=w.stride(0),
        stride_xp=xp.stride(0), stride_pm=packed.stride(0), stride_pr=packed.stride(1), **run.options(),
    )  # fmt: skip
    return packed
