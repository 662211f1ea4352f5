"""Row select (rows of up to ``launch.LONG_ROW`` = 4,096 columns): score, select and prune, one tile per row.

Each row is held whole in registers; a program takes up to 32 rows, one after another, and reads the
column operands (X part, column coefficients) once for all of them, so W is read once per weight. The
k-th smallest score is found by a 32-pass binary radix select on the order-preserving uint32 image of
the float bits (``_select_row``); ties at the threshold go to the lowest columns.
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton
from .operators import CoefMode, Transform

if triton is not None:
    from .prune_common import _col_operands, _order_key, _row_operands, _select_row, _store_packed, _w_part

    @triton.jit
    def _row_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, k, stride_w, stride_o, stride_p,
        BLOCK: tl.constexpr, ROWS: tl.constexpr, COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # One program: ROWS rows, one at a time, each wholly on chip. The column operands (X part, column
        # coefficients) are read once per program and reused by every row: per weight, W is read once.
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        xp, cvec, sc = _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF_MODE)
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)  # int64 before multiplying by strides
            live = row < n_rows
            m = cmask & live
            rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF_MODE, W_TRANSFORM)
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            s = _w_part(a, rv, cvec, sc, rmax, rexp, COEF_MODE, W_TRANSFORM) * xp
            pruned = _select_row(_order_key(s), m, k)
            if WRITE_W:
                # out holds W already (in place, or the launcher's copy): only zeros are written, so W
                # need not stay in registers through the select.
                tl.store(out_ptr + row * stride_o + cols, tl.zeros_like(a).to(out_ptr.dtype.element_ty),
                         mask=m & pruned)  # fmt: skip
            if WRITE_MASK:
                _store_packed(pruned, packed_ptr + row * stride_p, n_cols, live, BLOCK)


def row_prune_triton(
    w: torch.Tensor,
    xp: torch.Tensor,
    operands: dict,
    out: torch.Tensor,
    packed: torch.Tensor,
    k: int,
    *,
    coef_mode: CoefMode,
    w_transform: Transform,
    write_w: bool,
    write_mask: bool,
) -> None:
    """Launch ``_row_prune_kernel`` (the dispatcher in ``prune`` has validated and allocated everything).

    Args:
        w: [out, in] weight with unit column stride, ``in <= LONG_ROW``; xp: [in] float32 X part.
        operands: the coefficient/softmax operand pointers (``rv_ptr`` ... ``rexp_ptr``).
        out: the weight to zero (holds W already) or a dummy; packed: uint8 [out, ceil(in / 8)] or a dummy.
        k: weights pruned per row.
    """
    rows, cols = w.shape
    run = L.row_prune(rows, cols, coef_mode=coef_mode, w_transform=w_transform, write_w=write_w,
                      write_mask=write_mask)  # fmt: skip
    _row_prune_kernel[run.grid](
        w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=packed, **operands,
        n_rows=rows, n_cols=cols, k=k, stride_w=w.stride(0), stride_o=out.stride(0) if write_w else 0,
        stride_p=packed.stride(0) if write_mask else 0, **run.options(),
    )  # fmt: skip
