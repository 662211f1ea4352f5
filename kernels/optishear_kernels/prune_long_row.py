"""Long-row select (rows of more than ``launch.LONG_ROW`` columns: 11008, 14336, 28672).

One program per row walks it in ``LONG_CHUNK``-column pieces. Radix select with 8-bit digits: four
histogram passes fix the k-th smallest key digit by digit, counting the keys below it on the way; a fifth
pass writes, resolving ties at the threshold by a running prefix count. The row (22-56 KiB) stays in
L1/L2 between passes, so DRAM sees it once; scores are recomputed per pass and never stored.
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton
from .operators import CoefMode, Transform

if triton is not None:
    from .prune_common import _col_coef, _order_key, _row_operands, _scalar_coef, _store_packed, _w_part

    @triton.jit
    def _long_row_score(w_ptr, xp_ptr, cv_ptr, row, stride_w, c0, n_cols, rv, sc, rmax, rexp,
                        CHUNK: tl.constexpr, COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr):  # fmt: skip
        """Order keys of one chunk of the row, with its columns and their mask."""
        cols = c0 + tl.arange(0, CHUNK)
        cmask = cols < n_cols
        a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0).to(tl.float32))
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        cvec = _col_coef(cv_ptr, cols, cmask, COEF_MODE, xp)
        return _order_key(_w_part(a, rv, cvec, sc, rmax, rexp, COEF_MODE, W_TRANSFORM) * xp), cols, cmask

    @triton.jit
    def _long_row_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_cols, k, stride_w, stride_o, stride_p,
        CHUNK: tl.constexpr, COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, True, COEF_MODE, W_TRANSFORM)
        sc = _scalar_coef(sc_ptr, COEF_MODE)
        prefix = tl.full((), 0, tl.uint32)
        n_below = tl.full((), 0, tl.int32)  # keys known to be < the threshold
        rank = k - 1  # 0-based rank of the threshold among keys still matching the prefix
        bins = tl.arange(0, 256)
        for d in tl.static_range(4):
            shift = 24 - 8 * d
            hist = tl.zeros((256,), dtype=tl.int32)
            for c0 in range(0, n_cols, CHUNK):
                key, cols, cmask = _long_row_score(w_ptr, xp_ptr, cv_ptr, row, stride_w, c0, n_cols, rv, sc, rmax,
                                                   rexp, CHUNK, COEF_MODE, W_TRANSFORM)  # fmt: skip
                if d == 0:
                    match = cmask
                else:
                    match = cmask & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
                digit = ((key >> shift) & 0xFF).to(tl.int32)
                hist += tl.histogram(digit, 256, mask=match)
            cum = tl.cumsum(hist, axis=0)
            bucket = tl.sum((cum <= rank).to(tl.int32), axis=0)  # first bin whose cumulative count > rank
            below = tl.sum(tl.where(bins < bucket, hist, 0), axis=0)
            n_below += below
            rank -= below
            prefix = prefix | (bucket.to(tl.uint32) << shift)
        need = k - n_below  # how many keys equal to the threshold are pruned (lowest columns first)
        seen = tl.full((), 0, tl.int32)
        for c0 in range(0, n_cols, CHUNK):
            key, cols, cmask = _long_row_score(w_ptr, xp_ptr, cv_ptr, row, stride_w, c0, n_cols, rv, sc, rmax, rexp,
                                               CHUNK, COEF_MODE, W_TRANSFORM)  # fmt: skip
            eq = cmask & (key == prefix)
            ceq = tl.cumsum(eq.to(tl.int32), axis=0) + seen
            pruned = (cmask & (key < prefix)) | (eq & (ceq <= need))
            seen += tl.sum(eq.to(tl.int32), axis=0)
            if WRITE_W:
                tl.store(out_ptr + row * stride_o + cols, tl.zeros((CHUNK,), tl.float32).to(out_ptr.dtype.element_ty),
                         mask=pruned)  # fmt: skip
            if WRITE_MASK:
                _store_packed(pruned, packed_ptr + row * stride_p + c0 // 8, n_cols - c0, True, CHUNK)


def long_row_prune_triton(w: torch.Tensor, xp: torch.Tensor, operands: dict, out: torch.Tensor,
                          packed: torch.Tensor, k: int, *, coef_mode: CoefMode, w_transform: Transform,
                          write_w: bool, write_mask: bool) -> None:  # fmt: skip
    """Launch ``_long_row_prune_kernel``; arguments as ``prune_row.row_prune_triton``, any number of columns."""
    rows, cols = w.shape
    run = L.long_row_prune(rows, coef_mode=coef_mode, w_transform=w_transform, write_w=write_w,
                           write_mask=write_mask)  # fmt: skip
    _long_row_prune_kernel[run.grid](
        w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=packed, **operands,
        n_cols=cols, k=k, stride_w=w.stride(0), stride_o=out.stride(0) if write_w else 0,
        stride_p=packed.stride(0) if write_mask else 0, **run.options(),
    )  # fmt: skip
