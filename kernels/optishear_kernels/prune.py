"""fused prune: meta-metric score + per-row selection + pruned weight / bit-packed mask, in one pass.

Contract (both backends):
    w: [out, in] float32 | bfloat16 | float16, finite.
    x_sq: [in] float (mean of x^2 per input channel), finite and >= 0.
    metric: a ``MetricConfig`` (any of the 2,401 points, or RIA's coefficient).
    Unstructured: exactly ``int(in * sparsity)`` weights pruned in every row.
    N:M (``nm=(n, m)``, 0 <= n < m <= 32, ``in % m == 0``): ``m - n`` pruned in every m consecutive columns.
    Tie rule: ascending (score, column), see ``select``.
    Outputs: the pruned weight (same dtype) and/or the pruned mask bit-packed as uint8 [out, ceil(in/8)].

Rows of up to 4,096 columns are held whole in registers (several rows per program, the column operands
read once per program); the k-th smallest score is found by a 32-pass binary radix select on the
order-preserving uint32 image of the float bits, ties at the threshold resolved by a prefix count.
Longer rows (11008, 14336, 28672 columns) take a chunked kernel: four 8-bit-digit histogram passes and
one writing pass over the row, which stays in L1/L2. Scores never touch global memory. Whole-matrix
coefficients (column sums, totals) come from one pre-pass. With ``inplace=True`` only zeros are written.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch

from . import backend
from .metric import FLT_MIN, MetricConfig, WStats, all_finite, meta_score, w_coef_operands, x_part
from .select import nm_mask, pack_mask, row_topk_mask

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by the no-triton import test
    triton = None

LONG_ROW = 4096  # rows longer than this take the chunked multi-pass kernel
LONG_CHUNK = 2048  # its chunk: 4096 spilled 20 bytes on sm_90 with the softmax + rowcol mix (bench/RESULTS.md)
MAX_M = 32
_W_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PruneOutput(NamedTuple):
    weight: torch.Tensor | None
    packed_mask: torch.Tensor | None


if triton is not None:

    @triton.jit
    def _w_part(a, rv, cvec, sc, rmax, rexp, COEF: tl.constexpr, UW: tl.constexpr):
        """C_w * U_w for a tile ``a = |W|`` (float32) of one row, in the twin's order of operations.

        ``rv``: the row's coefficient operand; ``cvec``: the column operand tile; ``sc``: the scalar one;
        ``rmax``/``rexp``: the row's max and softmax sum. Only the operands COEF/UW use are read.
        """
        if UW == 0:
            u = a
        elif UW == 1:
            u = tl.sqrt_rn(a)
        elif UW == 2:
            u = a * a
        elif UW == 3:
            u = tl.exp(a - rmax)
        elif UW == 4:
            u = tl.log(tl.maximum(a, 1.1754943508222875e-38))
        elif UW == 5:
            u = tl.sigmoid(a)
        else:
            u = tl.math.div_rn(tl.exp(a - rmax), rexp)
        if COEF == 0:
            wp = u
        elif COEF == 1:
            wp = rv * u
        elif COEF == 2:
            wp = cvec * u
        elif COEF == 3:
            den = rv + cvec
            den = tl.where(den > 0, den, 1.0)
            wp = tl.math.div_rn(tl.full(den.shape, 1.0, tl.float32), den) * u
        elif COEF == 4:
            wp = sc * u
        else:
            wp = (rv + cvec) * u
        return wp

    @triton.jit
    def _w_part_dyn(a, rsum, rrec, csum, crec, sc, rmax, rexp, mode, uw):
        """``_w_part`` with the operator choice read at run time (population launches): every candidate is
        computed and one is picked with ``where``, so the chosen value is bit-identical to ``_w_part``."""
        e = tl.exp(a - rmax)
        u = tl.where(uw == 0, a, tl.where(uw == 1, tl.sqrt_rn(a), tl.where(uw == 2, a * a, tl.where(
            uw == 3, e, tl.where(uw == 4, tl.log(tl.maximum(a, 1.1754943508222875e-38)), tl.where(
                uw == 5, tl.sigmoid(a), tl.math.div_rn(e, rexp)))))))  # fmt: skip
        den = rsum + csum
        den = tl.where(den > 0, den, 1.0)
        inv = tl.math.div_rn(tl.full(den.shape, 1.0, tl.float32), den)
        return tl.where(mode == 0, u, tl.where(mode == 1, rrec * u, tl.where(mode == 2, crec * u, tl.where(
            mode == 3, inv * u, tl.where(mode == 4, sc * u, (rrec + crec) * u)))))  # fmt: skip

    @triton.jit
    def _order_key(s):
        """Order-preserving uint32 image of float32 scores, with -0.0 folded onto +0.0."""
        s = tl.where(s == 0.0, 0.0, s)
        bits = s.to(tl.int32, bitcast=True)
        ubits = s.to(tl.uint32, bitcast=True)
        return tl.where(bits < 0, ubits ^ 0xFFFFFFFF, ubits | 0x80000000)

    @triton.jit
    def _select_row(key, valid, k):
        """Pruned positions of one row: the k smallest (key, column), by a 32-pass binary radix select.

        The largest T with #(valid, key < T) <= k - 1 is the k-th smallest key; ties at T go to the lowest
        columns, counted by a prefix sum. All passes run over the on-chip tile.
        """
        thr = tl.full((), 0, tl.uint32)
        for i in tl.static_range(32):
            cand = thr | tl.full((), 1 << (31 - i), tl.uint32)
            cnt = tl.sum((valid & (key < cand)).to(tl.int32), axis=0)
            thr = tl.where(cnt <= k - 1, cand, thr)
        lt = valid & (key < thr)
        eq = valid & (key == thr)
        need = k - tl.sum(lt.to(tl.int32), axis=0)
        return lt | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= need))

    @triton.jit
    def _store_packed(pruned, ptr, n_cols, live, BLOCK: tl.constexpr):
        """Bit-pack a row mask (column j -> bit j % 8 of byte j // 8) and store it."""
        bits = tl.reshape(pruned.to(tl.int32), (BLOCK // 8, 8))
        byte = tl.sum(bits << tl.arange(0, 8)[None, :], axis=1)
        bidx = tl.arange(0, BLOCK // 8)
        tl.store(ptr + bidx, byte.to(tl.uint8), mask=(bidx < (n_cols + 7) // 8) & live)

    @triton.jit
    def _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF: tl.constexpr):
        """The operands shared by every row: X part, column coefficient tile, scalar coefficient."""
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        cvec = xp
        if COEF == 2 or COEF == 3 or COEF == 7:
            cvec = tl.load(cv_ptr + cols, mask=cmask, other=1.0)
        sc = 1.0
        if COEF == 4:
            sc = tl.load(sc_ptr)
        return xp, cvec, sc

    @triton.jit
    def _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF: tl.constexpr, UW: tl.constexpr):
        """One row's operands: its coefficient, and its max / softmax sum for exp and softmax."""
        rv = 1.0
        if COEF == 1 or COEF == 3 or COEF == 7:
            rv = tl.load(rv_ptr + row, mask=live, other=1.0)
        rmax = 0.0
        if UW == 3 or UW == 6:
            rmax = tl.load(rmax_ptr + row, mask=live, other=0.0)
        rexp = 1.0
        if UW == 6:
            rexp = tl.load(rexp_ptr + row, mask=live, other=1.0)
        return rv, rmax, rexp

    @triton.jit
    def _row_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, k, stride_w, stride_o, stride_p,
        BLOCK: tl.constexpr, ROWS: tl.constexpr, COEF: tl.constexpr, UW: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # One program: ROWS rows, one at a time, each wholly on chip. The column operands (X part, column
        # coefficients) are read once per program and reused by every row: per weight, W is read once.
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        xp, cvec, sc = _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF)
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)  # int64 before multiplying by strides
            live = row < n_rows
            m = cmask & live
            rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF, UW)
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            s = _w_part(a, rv, cvec, sc, rmax, rexp, COEF, UW) * xp
            pruned = _select_row(_order_key(s), m, k)
            if WRITE_W:
                # out holds W already (in place, or the launcher's copy): only zeros are written, so W
                # need not stay in registers through the select.
                tl.store(out_ptr + row * stride_o + cols, tl.zeros_like(a).to(out_ptr.dtype.element_ty),
                         mask=m & pruned)  # fmt: skip
            if WRITE_MASK:
                _store_packed(pruned, packed_ptr + row * stride_p, n_cols, live, BLOCK)

    @triton.jit
    def _long_row_score(w_ptr, xp_ptr, cv_ptr, row, stride_w, c0, n_cols, rv, sc, rmax, rexp,
                        CHUNK: tl.constexpr, COEF: tl.constexpr, UW: tl.constexpr):  # fmt: skip
        cols = c0 + tl.arange(0, CHUNK)
        cmask = cols < n_cols
        a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=cmask, other=0.0).to(tl.float32))
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        cvec = xp
        if COEF == 2 or COEF == 3 or COEF == 7:
            cvec = tl.load(cv_ptr + cols, mask=cmask, other=1.0)
        return _order_key(_w_part(a, rv, cvec, sc, rmax, rexp, COEF, UW) * xp), cols, cmask

    @triton.jit
    def _long_row_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_cols, k, stride_w, stride_o, stride_p,
        CHUNK: tl.constexpr, COEF: tl.constexpr, UW: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # Rows longer than one register tile (11008, 14336, 28672 columns): one program per row walks it in
        # CHUNK-column pieces. Radix select with 8-bit digits: four histogram passes fix the k-th smallest
        # key digit by digit, counting the keys below it on the way; a fifth pass writes, resolving ties
        # at the threshold by a running prefix count. The row (22-56 KiB) stays in L1/L2 between passes,
        # so DRAM sees it once; scores are recomputed per pass and never stored.
        row = tl.program_id(0).to(tl.int64)
        rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, True, COEF, UW)
        sc = 1.0
        if COEF == 4:
            sc = tl.load(sc_ptr)
        prefix = tl.full((), 0, tl.uint32)
        n_below = tl.full((), 0, tl.int32)  # keys known to be < the threshold
        rank = k - 1  # 0-based rank of the threshold among keys still matching the prefix
        bins = tl.arange(0, 256)
        for d in tl.static_range(4):
            shift = 24 - 8 * d
            hist = tl.zeros((256,), dtype=tl.int32)
            for c0 in range(0, n_cols, CHUNK):
                key, cols, cmask = _long_row_score(w_ptr, xp_ptr, cv_ptr, row, stride_w, c0, n_cols, rv, sc, rmax,
                                                   rexp, CHUNK, COEF, UW)  # fmt: skip
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
                                               CHUNK, COEF, UW)  # fmt: skip
            eq = cmask & (key == prefix)
            ceq = tl.cumsum(eq.to(tl.int32), axis=0) + seen
            pruned = (cmask & (key < prefix)) | (eq & (ceq <= need))
            seen += tl.sum(eq.to(tl.int32), axis=0)
            if WRITE_W:
                tl.store(out_ptr + row * stride_o + cols, tl.zeros((CHUNK,), tl.float32).to(out_ptr.dtype.element_ty),
                         mask=pruned)  # fmt: skip
            if WRITE_MASK:
                _store_packed(pruned, packed_ptr + row * stride_p + c0 // 8, n_cols - c0, True, CHUNK)

    @triton.jit
    def _nm_prune_kernel(
        w_ptr, xp_ptr, out_ptr, packed_ptr,
        rv_ptr, cv_ptr, sc_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, stride_w, stride_o, stride_p,
        N_PRUNE: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_G: tl.constexpr, ROWS: tl.constexpr,
        COEF: tl.constexpr, UW: tl.constexpr, WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # Program (row block, group block): BLOCK_G groups of M columns (M padded to the power of two MP)
        # for ROWS rows; the column operands are read once per program.
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = tl.arange(0, MP)
        cols = g[:, None] * M + j[None, :]
        cmask = (j < M)[None, :] & (cols < n_cols)
        xp, cvec, sc = _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF)
        before_j = j[None, None, :] < j[None, :, None]
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            m = cmask & live
            rv, rmax, rexp = _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF, UW)
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            s = _w_part(a, rv, cvec, sc, rmax, rexp, COEF, UW) * xp
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
                # Groups of M straddle bytes when 8 % M != 0: OR the bits into int32 words atomically.
                bit = pruned.to(tl.int32) << (cols % 32).to(tl.int32)
                tl.atomic_or(packed_ptr + row * stride_p + (cols // 32).to(tl.int64), bit, mask=pruned)

    @triton.jit
    def _population_kernel(
        w_ptr, xp_ptr, mode_ptr, uw_ptr, k_ptr, sc_ptr, packed_ptr,
        rsum_ptr, rrec_ptr, csum_ptr, crec_ptr, rmax_ptr, rexp_ptr,
        n_rows, n_cols, n_members, stride_w, stride_xp, stride_pm, stride_pr,
        BLOCK: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        # P members (metric, sparsity) over the same W: each row of W is read once and scored and selected
        # P times on chip; P bit-packed masks are written. Operators are chosen at run time (_w_part_dyn).
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


def _warps(block: int) -> int:
    return max(4, min(32, block // 512))


def _rows_per_program(block: int, rows: int) -> int:
    # Enough rows per program that the column operands (read once per program) cost <= 1/16 of W's bytes,
    # but no more than there are rows (rows past the end would still run the select).
    return min(32, rows)


def w_stats_triton(w: torch.Tensor, cfg: MetricConfig | None) -> WStats | None:
    """Pre-pass (Triton): the whole-matrix reductions of ``metric.w_stats``, same rounding (float64 -> float32).

    ``cfg=None`` computes every reduction (for population launches).
    """
    everything = cfg is None
    cw = -1 if everything else cfg.cw
    uw = -1 if everything else cfg.uw
    needs_soft = everything or uw in (3, 6)
    if not everything and cw == 0 and not needs_soft:
        return None
    rows, cols = w.shape
    dev = w.device
    rsum = torch.empty(rows, dtype=torch.float64, device=dev)
    rsq = torch.empty(rows, dtype=torch.float64, device=dev)
    rmax = torch.empty(rows, dtype=torch.float32, device=dev)
    rexp = torch.empty(rows, dtype=torch.float32, device=dev)
    block = min(LONG_ROW, triton.next_power_of_2(cols))
    _row_stats_kernel[(rows,)](
        w_ptr=w, rsum_ptr=rsum, rsq_ptr=rsq, rmax_ptr=rmax, rexp_ptr=rexp, n_cols=cols, stride_w=w.stride(0),
        BLOCK=block, NEED_EXP=everything or uw == 6, num_warps=_warps(block),
    )  # fmt: skip
    empty = torch.empty(0, dtype=torch.float32, device=dev)
    col_sum = empty
    if everything or cw in (2, 3, 7):
        col_sum = torch.empty(cols, dtype=torch.float32, device=dev)
        block_c = min(128, triton.next_power_of_2(cols))
        _col_sum_kernel[(triton.cdiv(cols, block_c),)](
            w_ptr=w, csum_ptr=col_sum, n_rows=rows, n_cols=cols, stride_w=w.stride(0),
            BLOCK_R=min(64, triton.next_power_of_2(rows)), BLOCK_C=block_c,
        )  # fmt: skip
    return WStats(
        row_sum=rsum.to(torch.float32) if everything or cw in (1, 3, 7) else empty,
        col_sum=col_sum,
        total=rsum.sum().to(torch.float32) if everything or cw in (4, 5) else empty,
        sq_sum=rsq.sum().to(torch.float32) if everything or cw == 6 else empty,
        row_max=rmax if needs_soft else empty,
        row_exp_sum=rexp if everything or uw == 6 else empty,
    )


def _validate(w, x_sq, sparsity, nm, want_weight, want_mask):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D tensor [out, in], got {getattr(w, 'shape', type(w))}")
    if w.dtype not in _W_DTYPES:
        raise ValueError(f"w must be float32, bfloat16 or float16, got {w.dtype}")
    rows, cols = w.shape
    if x_sq.dim() != 1 or x_sq.shape[0] != cols:
        raise ValueError(f"x_sq must have shape [{cols}] (the input channels of w), got {tuple(x_sq.shape)}")
    if not all_finite(x_sq):
        raise ValueError("x_sq (activation statistics) contains NaN or inf")
    if (x_sq < 0).any():
        raise ValueError("x_sq (mean of x^2) must be >= 0")
    if not all_finite(w):
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
    return _k(cols, sparsity)


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


def fused_prune_torch(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                      inplace=False):
    """Twin of ``fused_prune`` (the CPU path and the test oracle)."""
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
    return dict(
        rv_ptr=rv if rv is not None else dummy,
        cv_ptr=cv if cv is not None else dummy,
        sc_ptr=sc.reshape(1) if sc is not None else dummy,
        rmax_ptr=stats.row_max if has and stats.row_max.numel() else dummy,
        rexp_ptr=stats.row_exp_sum if has and stats.row_exp_sum.numel() else dummy,
    ), mode


def fused_prune_triton(w, x_sq, metric, *, sparsity=None, nm=None, write_weight=True, write_mask=False,
                       inplace=False):
    """Triton launcher of ``fused_prune``."""
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
    nbytes = (cols + 7) // 8
    if nm is None and cols > LONG_ROW:
        packed = torch.empty(rows, nbytes, dtype=torch.uint8, device=w.device) if write_mask else dummy
        _long_row_prune_kernel[(rows,)](
            w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=packed, **ops,
            n_cols=cols, k=k, stride_w=w.stride(0), stride_o=out.stride(0) if write_weight else 0,
            stride_p=packed.stride(0) if write_mask else 0,
            CHUNK=LONG_CHUNK, COEF=mode, UW=cfg.uw, WRITE_W=write_weight, WRITE_MASK=write_mask, num_warps=8,
        )  # fmt: skip
    elif nm is None:
        block = max(8, triton.next_power_of_2(cols))
        n_rows_prog = _rows_per_program(block, rows)
        packed = torch.empty(rows, nbytes, dtype=torch.uint8, device=w.device) if write_mask else dummy
        _row_prune_kernel[(triton.cdiv(rows, n_rows_prog),)](
            w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=packed, **ops,
            n_rows=rows, n_cols=cols, k=k, stride_w=w.stride(0), stride_o=out.stride(0) if write_weight else 0,
            stride_p=packed.stride(0) if write_mask else 0,
            BLOCK=block, ROWS=n_rows_prog, COEF=mode, UW=cfg.uw, WRITE_W=write_weight, WRITE_MASK=write_mask,
            num_warps=_warps(block),
        )  # fmt: skip
    else:
        n, m = nm
        mp = triton.next_power_of_2(m)
        block_g = max(1, min(triton.next_power_of_2(cols // m), 4096 // (mp * mp) or 1))
        n_rows_prog = min(16, rows)
        words = torch.zeros(rows, (cols + 31) // 32, dtype=torch.int32, device=w.device) if write_mask else dummy
        _nm_prune_kernel[(triton.cdiv(rows, n_rows_prog), triton.cdiv(cols // m, block_g))](
            w_ptr=w, xp_ptr=xp, out_ptr=out, packed_ptr=words, **ops,
            n_rows=rows, n_cols=cols, stride_w=w.stride(0), stride_o=out.stride(0) if write_weight else 0,
            stride_p=words.stride(0) if write_mask else 0,
            N_PRUNE=m - n, M=m, MP=mp, BLOCK_G=block_g, ROWS=n_rows_prog, COEF=mode, UW=cfg.uw,
            WRITE_W=write_weight, WRITE_MASK=write_mask,
        )  # fmt: skip
        # Little-endian int32 words are exactly the packed bytes, in order.
        packed = words.view(torch.uint8)[:, :nbytes].contiguous() if write_mask else None
    if write_weight and inplace and out is not target:
        target.copy_(out)  # a non-contiguous view (GPT-2's Conv1D weight.t()) was pruned through a copy
        out = target
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
    inplace: bool = False,
    backend_name: str | None = None,
) -> PruneOutput:
    """Score, select and prune one weight matrix.

    Args:
        w: [out, in] weight (float32/bfloat16/float16). Modified only with ``inplace=True``.
        x_sq: [in] mean of x^2 per input channel (``ActNorm.mean()``).
        metric: a ``MetricConfig``, a spec string or four option indices (default: Wanda).
        sparsity: unstructured fraction in [0, 1): ``int(in * sparsity)`` pruned per row.
        nm: ``(n, m)``: keep n of every m consecutive weights in a row (instead of ``sparsity``).
        write_weight: return the pruned weight [out, in] (same dtype as w).
        write_mask: return the pruned-positions mask packed as uint8 [out, ceil(in / 8)].
        inplace: prune ``w`` itself (then ``weight`` is ``w``); only the zeros are written.
        backend_name: "auto" | "torch" | "triton".

    Returns:
        ``PruneOutput(weight, packed_mask)``; fields not asked for are None.

    Example (Wanda in one call):
        >>> out = fused_prune(layer.weight, act.mean(), "w:none*none,x:none*none", sparsity=0.5)
        >>> layer.weight.data.copy_(out.weight)
    """
    fn = fused_prune_triton if backend.choose(w, backend_name) == "triton" else fused_prune_torch
    return fn(w, x_sq, metric, sparsity=sparsity, nm=nm, write_weight=write_weight, write_mask=write_mask,
              inplace=inplace)


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
    rows, cols = w.shape
    ks = [_validate(w, x_sq, s, None, False, True) for s in sparsities]
    if cols > LONG_ROW:  # one row no longer fits the registers: one chunked launch per member
        return torch.stack([fused_prune_triton(w, x_sq, c, sparsity=s, write_weight=False, write_mask=True).packed_mask
                            for c, s in zip(configs, sparsities)])  # fmt: skip
    w = w if w.stride(1) == 1 else w.contiguous()
    dev = w.device
    stats = w_stats_triton(w, None)
    xp = torch.stack([x_part(x_sq.to(dev), c) for c in configs]).contiguous()
    modes, scs = [], []
    for c in configs:
        _, _, sc, mode = w_coef_operands(stats, c, w.numel())
        modes.append(mode)
        scs.append(sc.reshape(()) if sc is not None else torch.ones((), device=dev))
    from .metric import _recip

    block = max(8, triton.next_power_of_2(cols))
    n_rows_prog = _rows_per_program(block, rows)
    packed = torch.empty(len(configs), rows, (cols + 7) // 8, dtype=torch.uint8, device=dev)
    _population_kernel[(triton.cdiv(rows, n_rows_prog),)](
        w_ptr=w, xp_ptr=xp,
        mode_ptr=torch.tensor(modes, dtype=torch.int32, device=dev),
        uw_ptr=torch.tensor([c.uw for c in configs], dtype=torch.int32, device=dev),
        k_ptr=torch.tensor(ks, dtype=torch.int32, device=dev),
        sc_ptr=torch.stack(scs).to(torch.float32).contiguous(), packed_ptr=packed,
        rsum_ptr=stats.row_sum, rrec_ptr=_recip(stats.row_sum), csum_ptr=stats.col_sum, crec_ptr=_recip(stats.col_sum),
        rmax_ptr=stats.row_max, rexp_ptr=stats.row_exp_sum,
        n_rows=rows, n_cols=cols, n_members=len(configs), stride_w=w.stride(0), stride_xp=xp.stride(0),
        stride_pm=packed.stride(0), stride_pr=packed.stride(1), BLOCK=block, ROWS=n_rows_prog,
        num_warps=_warps(block),
    )  # fmt: skip
    return packed


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


__all__ = ["PruneOutput", "fused_prune", "fused_prune_torch", "fused_prune_triton", "population_prune",
           "population_prune_torch", "population_prune_triton", "w_stats_triton", "FLT_MIN"]  # fmt: skip
