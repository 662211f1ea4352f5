"""N:M select: in every group of M consecutive columns of a row, the M - N smallest scores are pruned.

Programs of (row block, group block): ``BLOCK_G`` groups of M columns (M padded to the power of two MP)
for ``ROWS`` rows, the column operands read once per program. The rank inside a group is a pairwise
comparison of its M keys (ties: the lower column first). Masks are ORed into int32 words atomically,
because groups straddle bytes when 8 % M != 0; little-endian words are exactly the packed bytes.
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton
from .operators import CoefMode, Transform

if triton is not None:
    from .prune_common import _col_operands, _order_key, _row_operands, _w_part

    @triton.jit
    def _nm_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, stride_w, stride_o, stride_p,
        N_PRUNE: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_G: tl.constexpr, ROWS: tl.constexpr,
        COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr, WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = tl.arange(0, MP)
        cols = g[:, None] * M + j[None, :]
        cmask = (j < M)[None, :] & (cols < n_cols)
        xp, cvec, sc = _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF_MODE)
        before_j = j[None, None, :] < j[None, :, None]
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            m = cmask & live
            rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF_MODE, W_TRANSFORM)
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            s = _w_part(a, rv, cvec, sc, rmax, rexp, COEF_MODE, W_TRANSFORM) * xp
            key = tl.where(cmask, _order_key(s), tl.full(s.shape, 0xFFFFFFFF, tl.uint32))
            # rank of j in its group = #(l: key_l < key_j, or key_l == key_j and l < j); padding ranks last.
            kj = key[:, :, None]
            kl = key[:, None, :]
            rank = tl.sum(((kl < kj) | ((kl == kj) & before_j)).to(tl.int32), axis=2)
            pruned = m & (rank < N_PRUNE)
            if WRITE_W:
                tl.store(out_ptr + row * stride_o + cols, tl.zeros_like(a).to(out_ptr.dtype.element_ty),
                         mask=pruned)  # fmt: skip
            if WRITE_MASK:
                bit = pruned.to(tl.int32) << (cols % 32).to(tl.int32)
                tl.atomic_or(packed_ptr + row * stride_p + (cols // 32).to(tl.int64), bit, mask=pruned)


def nm_prune_triton(
    w: torch.Tensor,
    xp: torch.Tensor,
    operands: dict,
    out: torch.Tensor,
    n: int,
    m: int,
    *,
    coef_mode: CoefMode,
    w_transform: Transform,
    write_w: bool,
    write_mask: bool,
) -> torch.Tensor | None:
    """Launch ``_nm_prune_kernel``; returns the packed mask uint8 [out, ceil(in / 8)] when ``write_mask``.

    Args as ``prune_row.row_prune_triton``; ``n`` kept of every ``m`` (m <= ``launch.MAX_M``, in % m == 0).
    """
    rows, cols = w.shape
    words = (torch.zeros(rows, (cols + 31) // 32, dtype=torch.int32, device=w.device) if write_mask
             else torch.empty(1, dtype=torch.float32, device=w.device))  # fmt: skip
    run = L.nm_prune(rows, cols, n, m, coef_mode=coef_mode, w_transform=w_transform, write_w=write_w,
                     write_mask=write_mask)  # fmt: skip
    _nm_prune_kernel[run.grid](
        w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=words, **operands,
        n_rows=rows, n_cols=cols, stride_w=w.stride(0), stride_o=out.stride(0) if write_w else 0,
        stride_p=words.stride(0) if write_mask else 0, **run.options(),
    )  # fmt: skip
    # Little-endian int32 words are exactly the packed bytes, in order.
    return words.view(torch.uint8)[:, : (cols + 7) // 8].contiguous() if write_mask else None
