"""Triton device helpers shared by the prune kernels: scoring, the order key, the one-row select, bit
packing, and the operand loaders.

Scoring repeats the twin's order of operations (``metric.meta_score``): ``u = U_w(|W|)``,
``w_part = c_w * u``, ``score = w_part * x_part``. Operator choices are constexprs compared with the
named ``T_*`` (``Transform``) and ``MODE_*`` (``CoefMode``) globals of ``operators``, so each
configuration compiles to straight-line code.
"""

from __future__ import annotations

from ._triton import tl, triton

if triton is not None:
    from .operators import (
        FLT_MIN_F32,
        MODE_COL,
        MODE_INV_ROW_PLUS_COL,
        MODE_NONE,
        MODE_ROW,
        MODE_ROW_PLUS_COL,
        MODE_SCALAR,
        T_EXP,
        T_LOG,
        T_NONE,
        T_SIGMOID,
        T_SOFTMAX,
        T_SQRT,
        T_SQUARE,
    )

    @triton.jit
    def _w_part(a, rv, cvec, sc, rmax, rexp, COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr):
        """C_w * U_w for a tile ``a = |W|`` (float32) of one row, in the twin's order of operations.

        ``rv``: the row's coefficient operand; ``cvec``: the column operand tile; ``sc``: the scalar one;
        ``rmax``/``rexp``: the row's max and softmax sum. Only the operands COEF_MODE/W_TRANSFORM use are read.
        """
        if W_TRANSFORM == T_NONE:
            u = a
        elif W_TRANSFORM == T_SQRT:
            u = tl.sqrt_rn(a)
        elif W_TRANSFORM == T_SQUARE:
            u = a * a
        elif W_TRANSFORM == T_EXP:
            u = tl.exp(a - rmax)
        elif W_TRANSFORM == T_LOG:
            u = tl.log(tl.maximum(a, FLT_MIN_F32))
        elif W_TRANSFORM == T_SIGMOID:
            u = tl.sigmoid(a)
        else:  # T_SOFTMAX
            u = tl.math.div_rn(tl.exp(a - rmax), rexp)
        if COEF_MODE == MODE_NONE:
            wp = u
        elif COEF_MODE == MODE_ROW:
            wp = rv * u
        elif COEF_MODE == MODE_COL:
            wp = cvec * u
        elif COEF_MODE == MODE_INV_ROW_PLUS_COL:
            den = rv + cvec
            den = tl.where(den > 0, den, 1.0)
            wp = tl.math.div_rn(tl.full(den.shape, 1.0, tl.float32), den) * u
        elif COEF_MODE == MODE_SCALAR:
            wp = sc * u
        else:  # MODE_ROW_PLUS_COL
            wp = (rv + cvec) * u
        return wp

    @triton.jit
    def _w_part_dyn(a, rsum, rrec, csum, crec, sc, rmax, rexp, mode, uw):
        """``_w_part`` with the operator choice read at run time (population launches): every candidate is
        computed and one is picked with ``where``, so the chosen value is bit-identical to ``_w_part``.
        ``mode`` is a ``CoefMode``, ``uw`` a ``Transform``."""
        e = tl.exp(a - rmax)
        u = tl.where(uw == T_NONE, a, tl.where(uw == T_SQRT, tl.sqrt_rn(a), tl.where(uw == T_SQUARE, a * a, tl.where(
            uw == T_EXP, e, tl.where(uw == T_LOG, tl.log(tl.maximum(a, FLT_MIN_F32)), tl.where(
                uw == T_SIGMOID, tl.sigmoid(a), tl.math.div_rn(e, rexp)))))))  # fmt: skip
        den = rsum + csum
        den = tl.where(den > 0, den, 1.0)
        inv = tl.math.div_rn(tl.full(den.shape, 1.0, tl.float32), den)
        return tl.where(mode == MODE_NONE, u, tl.where(mode == MODE_ROW, rrec * u, tl.where(
            mode == MODE_COL, crec * u, tl.where(mode == MODE_INV_ROW_PLUS_COL, inv * u, tl.where(
                mode == MODE_SCALAR, sc * u, (rrec + crec) * u)))))  # fmt: skip

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
    def _col_coef(cv_ptr, cols, cmask, COEF_MODE: tl.constexpr, fallback):
        """The column coefficient tile when COEF_MODE reads one, else ``fallback`` (never used)."""
        cvec = fallback
        if COEF_MODE == MODE_COL or COEF_MODE == MODE_INV_ROW_PLUS_COL or COEF_MODE == MODE_ROW_PLUS_COL:
            cvec = tl.load(cv_ptr + cols, mask=cmask, other=1.0)
        return cvec

    @triton.jit
    def _scalar_coef(sc_ptr, COEF_MODE: tl.constexpr):
        """The scalar coefficient when COEF_MODE is SCALAR, else 1."""
        sc = 1.0
        if COEF_MODE == MODE_SCALAR:
            sc = tl.load(sc_ptr)
        return sc

    @triton.jit
    def _col_operands(xp_ptr, cv_ptr, sc_ptr, cols, cmask, COEF_MODE: tl.constexpr):
        """The operands shared by every row: X part, column coefficient tile, scalar coefficient."""
        xp = tl.load(xp_ptr + cols, mask=cmask, other=0.0)
        cvec = _col_coef(cv_ptr, cols, cmask, COEF_MODE, xp)
        sc = _scalar_coef(sc_ptr, COEF_MODE)
        return xp, cvec, sc

    @triton.jit
    def _row_operands(rv_ptr, rmax_ptr, rexp_ptr, row, live, COEF_MODE: tl.constexpr, W_TRANSFORM: tl.constexpr):
        """One row's operands: its coefficient, and its max / softmax sum for exp and softmax."""
        rv = 1.0
        if COEF_MODE == MODE_ROW or COEF_MODE == MODE_INV_ROW_PLUS_COL or COEF_MODE == MODE_ROW_PLUS_COL:
            rv = tl.load(rv_ptr + row, mask=live, other=1.0)
        rmax = 0.0
        if W_TRANSFORM == T_EXP or W_TRANSFORM == T_SOFTMAX:
            rmax = tl.load(rmax_ptr + row, mask=live, other=0.0)
        rexp = 1.0
        if W_TRANSFORM == T_SOFTMAX:
            rexp = tl.load(rexp_ptr + row, mask=live, other=1.0)
        return rv, rmax, rexp
