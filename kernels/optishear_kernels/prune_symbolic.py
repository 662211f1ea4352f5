"""Symbolic-metric prune kernels: any expression tree (``expr``), compiled to a scoring function (``symbolic``) that
these kernels take as the constexpr ``SCORE``, inside the same per-row select and N:M selection as the meta metric.

- ``_sym_row_prune_kernel``: rows of up to ``launch.LONG_ROW`` columns, one register tile per row, ``ROWS`` rows per
  program, X read once per program.
- ``_sym_long_row_prune_kernel``: longer rows (11008, 14336, ...) held on chip as ``NCH`` chunks of ``CHUNK`` keys,
  scored once, then a 32-pass radix select over all chunks; ``ROWS`` rows per program share the X chunks.
- ``_sym_nm_prune_kernel``: N:M, (row block, group block) tiles, rank inside each group by pairwise comparison.
- ``_sym_reduce_kernel``: one pre-pass level; per tile, the float64 sum and sum of squares and the float32 min and
  max of each of the level's reduction arguments.

Every weight of W and G is read once by the prune kernels (the long-row kernel too: its earlier form re-read the row
five times, once per radix digit and once to write). A row whose scores are NaN or infinite is not written and is
flagged in ``bad`` (int32 ``[out]``); the launcher raises ``FloatingPointError`` naming how many rows, so an in-place
weight may have its other rows pruned when that happens (the engine restores every weight on error).
"""

from __future__ import annotations

import torch

from . import launch as L
from ._triton import tl, triton

if triton is not None:
    from .prune_common import _order_key, _select_row, _store_packed

    @triton.jit
    def _nonfinite(s, m):
        """How many live elements of the tile ``s`` are NaN or infinite."""
        return tl.sum((m & ((s != s) | (tl.abs(s) == float("inf")))).to(tl.int32), axis=0)

    @triton.jit
    def _sym_row_prune_kernel(
        w_ptr, g_ptr, x_ptr, r_ptr, v_ptr, out_ptr, packed_ptr, bad_ptr,
        n_rows, n_cols, k, stride_w, stride_g, stride_o, stride_p,
        SCORE: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_G: tl.constexpr, HAS_X: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        cols = tl.arange(0, BLOCK)
        cmask = cols < n_cols
        if HAS_X:
            x = tl.load(x_ptr + cols, mask=cmask, other=0.0)  # once per program, shared by its rows
        else:
            x = tl.zeros((BLOCK,), tl.float32)
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            m = cmask & live
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            if HAS_G:
                g = tl.load(g_ptr + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
            else:
                g = a
            s = SCORE(a, g, x, r_ptr, v_ptr, row, cols, n_rows, n_cols)
            n_bad = _nonfinite(s, m)
            pruned = _select_row(_order_key(s), m, k) & (n_bad == 0)
            if WRITE_W:
                tl.store(out_ptr + row * stride_o + cols, tl.zeros_like(a).to(out_ptr.dtype.element_ty),
                         mask=m & pruned)  # fmt: skip
            if WRITE_MASK:
                _store_packed(pruned, packed_ptr + row * stride_p, n_cols, live, BLOCK)
            tl.store(bad_ptr + row, (n_bad > 0).to(tl.int32), mask=live)

    @triton.jit
    def _sym_long_row_prune_kernel(
        w_ptr, g_ptr, x_ptr, r_ptr, v_ptr, out_ptr, packed_ptr, bad_ptr,
        n_rows, n_cols, k, stride_w, stride_g, stride_o, stride_p,
        SCORE: tl.constexpr, CHUNK: tl.constexpr, NCH: tl.constexpr, ROWS: tl.constexpr, HAS_G: tl.constexpr,
        HAS_X: tl.constexpr, WRITE_W: tl.constexpr, WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        # The row lives on chip as NCH chunk tiles of keys (a tuple, unrolled at compile time): W and G are read once,
        # scored once; the select then runs over the tiles. X is read once per program, for its ROWS rows.
        base = tl.arange(0, CHUNK)
        xs = ()
        for c in tl.static_range(NCH):
            cols = c * CHUNK + base
            if HAS_X:
                xs = xs + (tl.load(x_ptr + cols, mask=cols < n_cols, other=0.0),)
            else:
                xs = xs + (tl.zeros((CHUNK,), tl.float32),)
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            keys = ()
            n_bad = tl.full((), 0, tl.int32)
            for c in tl.static_range(NCH):
                cols = c * CHUNK + base
                m = (cols < n_cols) & live
                a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
                if HAS_G:
                    g = tl.load(g_ptr + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
                else:
                    g = a
                s = SCORE(a, g, xs[c], r_ptr, v_ptr, row, cols, n_rows, n_cols)
                n_bad += _nonfinite(s, m)
                keys = keys + (_order_key(s),)
            # 32-pass binary radix select over all chunks: the largest T with #(key < T) <= k - 1.
            thr = tl.full((), 0, tl.uint32)
            for i in tl.static_range(32):
                cand = thr | tl.full((), 1 << (31 - i), tl.uint32)
                below = tl.zeros((CHUNK,), tl.int32)
                for c in tl.static_range(NCH):
                    valid = ((c * CHUNK + base) < n_cols) & live
                    below += (valid & (keys[c] < cand)).to(tl.int32)
                thr = tl.where(tl.sum(below, axis=0) <= k - 1, cand, thr)
            n_lt = tl.zeros((CHUNK,), tl.int32)
            for c in tl.static_range(NCH):
                valid = ((c * CHUNK + base) < n_cols) & live
                n_lt += (valid & (keys[c] < thr)).to(tl.int32)
            need = k - tl.sum(n_lt, axis=0)  # keys equal to the threshold to prune, lowest columns first
            seen = tl.full((), 0, tl.int32)
            for c in tl.static_range(NCH):
                cols = c * CHUNK + base
                valid = (cols < n_cols) & live
                eq = valid & (keys[c] == thr)
                pruned = (valid & (keys[c] < thr)) | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) + seen <= need))
                pruned = pruned & (n_bad == 0)
                seen += tl.sum(eq.to(tl.int32), axis=0)
                if WRITE_W:
                    tl.store(out_ptr + row * stride_o + cols,
                             tl.zeros((CHUNK,), tl.float32).to(out_ptr.dtype.element_ty), mask=pruned)  # fmt: skip
                if WRITE_MASK:
                    _store_packed(pruned, packed_ptr + row * stride_p + c * (CHUNK // 8), n_cols - c * CHUNK, live,
                                  CHUNK)  # fmt: skip
            tl.store(bad_ptr + row, (n_bad > 0).to(tl.int32), mask=live)

    @triton.jit
    def _sym_nm_prune_kernel(
        w_ptr, g_ptr, x_ptr, r_ptr, v_ptr, out_ptr, packed_ptr, bad_ptr,
        n_rows, n_cols, stride_w, stride_g, stride_o, stride_p,
        SCORE: tl.constexpr, N_PRUNE: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_G: tl.constexpr,
        ROWS: tl.constexpr, HAS_G: tl.constexpr, HAS_X: tl.constexpr, WRITE_W: tl.constexpr,
        WRITE_MASK: tl.constexpr,
    ):  # fmt: skip
        gidx = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = tl.arange(0, MP)
        cols = gidx[:, None] * M + j[None, :]
        cmask = (j < M)[None, :] & (cols < n_cols)
        if HAS_X:
            x = tl.load(x_ptr + cols, mask=cmask, other=0.0)
        else:
            x = tl.zeros((BLOCK_G, MP), tl.float32)
        before_j = j[None, None, :] < j[None, :, None]
        for r in range(ROWS):
            row = (tl.program_id(0) * ROWS + r).to(tl.int64)
            live = row < n_rows
            m = cmask & live
            a = tl.abs(tl.load(w_ptr + row * stride_w + cols, mask=m, other=0.0).to(tl.float32))
            if HAS_G:
                g = tl.load(g_ptr + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
            else:
                g = a
            s = SCORE(a, g, x, r_ptr, v_ptr, row, cols, n_rows, n_cols)
            bad = tl.sum(tl.sum((m & ((s != s) | (tl.abs(s) == float("inf")))).to(tl.int32), axis=1), axis=0)
            key = tl.where(cmask, _order_key(s), tl.full(s.shape, 0xFFFFFFFF, tl.uint32))
            kj = key[:, :, None]
            kl = key[:, None, :]
            rank = tl.sum(((kl < kj) | ((kl == kj) & before_j)).to(tl.int32), axis=2)
            pruned = m & (rank < N_PRUNE) & (bad == 0)
            if WRITE_W:
                tl.store(out_ptr + row * stride_o + cols, tl.zeros_like(a).to(out_ptr.dtype.element_ty),
                         mask=pruned)  # fmt: skip
            if WRITE_MASK:
                bit = pruned.to(tl.int32) << (cols % 32).to(tl.int32)
                tl.atomic_or(packed_ptr + row * stride_p + (cols // 32).to(tl.int64), bit, mask=pruned)
            tl.store(bad_ptr + row, 1, mask=live & (bad > 0))

    @triton.jit
    def _sym_reduce_kernel(
        w_ptr, g_ptr, x_ptr, r_ptr, part_ptr, n_rows, n_cols, stride_w, stride_g,
        STAGE: tl.constexpr, K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HAS_G: tl.constexpr,
        HAS_X: tl.constexpr,
    ):  # fmt: skip
        # One tile per program; partials per (tile, reduction): float64 sum, sum of squares, min, max.
        rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < n_cols
        m = (rows < n_rows)[:, None] & cm[None, :]
        a = tl.abs(tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=m, other=0.0).to(tl.float32))
        if HAS_G:
            g = tl.load(g_ptr + rows[:, None] * stride_g + cols[None, :], mask=m, other=0.0).to(tl.float32)
        else:
            g = a
        if HAS_X:
            x = tl.load(x_ptr + cols[None, :], mask=cm[None, :], other=0.0)
        else:
            x = a
        vals = STAGE(a, g, x, r_ptr)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        for i in tl.static_range(K):
            v = tl.broadcast_to(vals[i], (BLOCK_R, BLOCK_C))  # div(X, W) is [1, BLOCK_C] on the tile
            v64 = tl.where(m, v.to(tl.float64), 0.0)
            s1 = tl.sum(tl.sum(v64, axis=1), axis=0)
            s2 = tl.sum(tl.sum(v64 * v64, axis=1), axis=0)
            lo = tl.min(tl.min(tl.where(m, v, float("inf")), axis=1), axis=0)
            hi = tl.max(tl.max(tl.where(m, v, float("-inf")), axis=1), axis=0)
            base = part_ptr + (tile * K + i) * 4
            tl.store(base, s1)
            tl.store(base + 1, s2)
            tl.store(base + 2, lo.to(tl.float64))
            tl.store(base + 3, hi.to(tl.float64))


def sym_host_prepass(prog, w: torch.Tensor, g, x, r: torch.Tensor) -> torch.Tensor | None:
    """The reductions that run on the host, with the twin's own code (``TorchEvaluator``): those over X-only subtrees,
    or, for a tree with ``rsn``/``csn``/``rcn``, every reduction and the row and column sums. Fills ``r`` and returns
    the float32 sums buffer (``SymbolicProgram.vector_span`` layout), or None if the tree has no sums."""
    from .expr import VECTOR_KINDS, TorchEvaluator

    vectors = prog.vectors
    rows, cols = w.shape
    host = TorchEvaluator(w if vectors else None, g if vectors else None, x, shape=(rows, cols))
    for red in prog.reductions:
        if red.stage == 0 and red.kind not in VECTOR_KINDS:
            params = host.reduction(red.kind, red.node, red.broadcast)
            r[red.slot : red.slot + len(params)] = torch.stack(params).to(r.device)
    if not vectors:
        return None
    v = torch.empty(prog.n_col_vectors * cols + prog.n_row_vectors * rows, dtype=torch.float32, device=w.device)
    for red in vectors:  # row sums are [rows, 1] ([1, 1] for an X-only argument), column sums [1, cols]
        at, n = prog.vector_span(red, rows, cols)
        d = host.sums(red.kind, red.node)
        v[at : at + n] = d.expand(n, 1).reshape(-1) if red.kind == "rowsum" else d.reshape(-1)
    return v


def sym_reduce_triton(prog, stage: int, w: torch.Tensor, g, x, r: torch.Tensor) -> None:
    """Run pre-pass level ``stage`` (1-based) of ``prog`` and write its reductions' parameters into ``r``."""
    from .expr import finalize

    members = prog.stage_members[stage - 1]
    rows, cols = w.shape
    run = L.sym_reduce(rows, cols, prog.stages[stage - 1], len(members), g is not None, x is not None)
    n_tiles = run.grid[0] * run.grid[1]
    part = torch.empty(n_tiles, len(members), 4, dtype=torch.float64, device=w.device)
    run.spec.kernel()[run.grid](
        w_ptr=w, g_ptr=g if g is not None else w, x_ptr=x if x is not None else r, r_ptr=r, part_ptr=part,
        n_rows=rows, n_cols=cols, stride_w=w.stride(0), stride_g=g.stride(0) if g is not None else 0,
        **run.options(),
    )  # fmt: skip
    for i, idx in enumerate(members):
        red = prog.reductions[idx]
        p = part[:, i]
        lo, hi = p[:, 2].min().to(torch.float32), p[:, 3].max().to(torch.float32)
        try:
            params = finalize(red.kind, p[:, 0].sum(), p[:, 1].sum(), lo, hi, rows * cols)
        except FloatingPointError as err:
            raise FloatingPointError(f"NaN or inf in {red.node.text}, the argument of a whole-tensor reduction") \
                from err  # fmt: skip
        for j, value in enumerate(params):
            r[red.slot + j] = value


def sym_prune_triton(prog, w: torch.Tensor, g, x, r: torch.Tensor, out: torch.Tensor, packed, *, k: int | None,
                     nm: tuple[int, int] | None, write_w: bool, write_mask: bool,
                     v: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Launch the row, long-row or N:M symbolic kernel; returns the int32 ``[out]`` flags of non-finite rows.

    Args:
        prog: the ``SymbolicProgram``; r: its float32 parameters (pre-pass done); v: its float32 divisor vectors
            (``rsn``/``csn``: column ones, ``in`` each, then row ones, ``out`` each), or None if it has none.
        w: ``[out, in]`` weight, unit column stride; g: ``[out, in]`` (unit column stride) or None; x: ``[in]``
            float32 or None.
        out: the weight to zero (holds W already) or a dummy; packed: uint8 ``[out, ceil(in/8)]`` (row select), or
            int32 words ``[out, ceil(in/32)]`` zeroed (N:M), or a dummy.
        k: weights pruned per row (unstructured); nm: (n, m) otherwise.
    """
    rows, cols = w.shape
    bad = torch.zeros(rows, dtype=torch.int32, device=w.device)
    v = r if v is None else v
    has_g, has_x = g is not None, x is not None
    common = dict(w_ptr=w, g_ptr=g if has_g else w, x_ptr=x if has_x else r, r_ptr=r, v_ptr=v, out_ptr=out,
                  packed_ptr=packed, bad_ptr=bad, n_rows=rows, n_cols=cols, stride_w=w.stride(0),
                  stride_g=g.stride(0) if has_g else 0, stride_o=out.stride(0) if write_w else 0,
                  stride_p=packed.stride(0) if write_mask else 0)  # fmt: skip
    flags = dict(has_g=has_g, has_x=has_x, write_w=write_w, write_mask=write_mask)
    if nm is not None:
        run = L.sym_nm_prune(rows, cols, nm[0], nm[1], prog.score, **flags)
        run.spec.kernel()[run.grid](**common, **run.options())
    else:
        run = (L.sym_long_row_prune(rows, cols, prog.score, **flags) if cols > L.LONG_ROW
               else L.sym_row_prune(rows, cols, prog.score, **flags))  # fmt: skip
        run.spec.kernel()[run.grid](**common, k=k, **run.options())
    return bad


__all__ = ["sym_prune_triton", "sym_reduce_triton", "sym_host_prepass"]
