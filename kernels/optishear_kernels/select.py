"""Mask selection twins: per-row k-smallest and N:M, with one tie rule, plus bit packing.

Tie rule (every backend obeys it): weights are pruned in ascending order of (score, column index).
Among equal scores the lower column index is pruned first, which is exactly what
``torch.sort(score, dim=-1, stable=True)`` followed by "prune the first k" does (Wanda's code).
``-0.0`` and ``+0.0`` are equal scores. Scores must be finite.

N:M means N weights kept out of every M consecutive input columns (NVIDIA's 2:4 convention), so
M - N are pruned per group, by the same rule inside the group.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_WORKERS = max(1, min(4, torch.get_num_threads()))
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS)
    return _POOL


def row_threshold(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest score of each row (k >= 1), as float32 [rows].

    On CPU this is numpy's introselect over row chunks in threads (measured here about 28x faster
    than a stable sort at 4096 x 11008, see bench/RESULTS.md); elsewhere ``torch.kthvalue``.
    """
    if score.device.type != "cpu":
        return torch.kthvalue(score, k, dim=1).values
    arr = score.numpy()
    rows = arr.shape[0]
    n_chunks = _WORKERS if rows >= 256 else 1
    if n_chunks <= 1:
        return torch.from_numpy(np.partition(arr, k - 1, axis=1)[:, k - 1].copy())
    bounds = np.linspace(0, rows, n_chunks + 1).astype(int)
    parts = _pool().map(lambda ab: np.partition(arr[ab[0] : ab[1]], k - 1, axis=1)[:, k - 1], zip(bounds, bounds[1:]))
    return torch.from_numpy(np.concatenate(list(parts)))


def row_topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask [rows, cols] with exactly ``k`` True (pruned) per row, by the tie rule.

    Args:
        score: [rows, cols] float32, finite.
        k: weights to prune per row, 0 <= k <= cols.
    """
    rows, cols = score.shape
    if not 0 <= k <= cols:
        raise ValueError(f"k must be in [0, {cols}], got {k}")
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k == cols:
        return torch.ones_like(score, dtype=torch.bool)
    score = score.contiguous()
    thr = row_threshold(score, k)
    mask = score <= thr[:, None]
    if mask.device.type == "cpu":  # numpy's count is ~9x faster than torch's bool sum here
        counts = torch.from_numpy(np.count_nonzero(mask.numpy(), axis=1))
    else:
        counts = mask.sum(dim=1)
    over = counts - k  # > 0 only where ties at the threshold cross the boundary
    bad = torch.nonzero(over > 0).flatten()
    if bad.numel():
        sub = score[bad]
        t = thr[bad][:, None]
        eq = sub == t
        n_lt = (sub < t).sum(dim=1, keepdim=True)
        keep_eq = eq & (torch.cumsum(eq, dim=1) <= (k - n_lt))
        mask[bad] = (sub < t) | keep_eq
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean pruned mask for N:M: in every group of M consecutive columns, M - N pruned.

    Args:
        score: [rows, cols] float32, cols divisible by m.
        n: kept per group, 0 <= n < m.
        m: group size, 1 <= m <= 32 for the kernels (any m here).
    """
    rows, cols = score.shape
    if m < 1 or not 0 <= n < m:
        raise ValueError(f"N:M needs 0 <= N < M, got {n}:{m}")
    if cols % m:
        raise ValueError(f"N:M with M={m} needs the column count to be a multiple of {m}, got {cols} columns")
    g = score.reshape(rows, cols // m, m)
    # Canonicalise -0.0 so that the stable sort sees it equal to +0.0, as the float compare does.
    g = torch.where(g == 0, torch.zeros_like(g), g)
    order = torch.sort(g, dim=-1, stable=True).indices[..., : m - n]
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(rows, cols)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask [rows, cols] into uint8 [rows, ceil(cols / 8)]; column j is bit j % 8 of byte j // 8."""
    rows, cols = mask.shape
    if mask.device.type == "cpu":  # numpy's packbits is ~35x faster than the torch arithmetic below
        return torch.from_numpy(np.packbits(mask.contiguous().numpy(), axis=1, bitorder="little"))
    pad = (-cols) % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).reshape(rows, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=mask.device)).to(torch.uint8)
    return (bits * weights).sum(dim=-1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of ``pack_mask``: uint8 [rows, ceil(cols / 8)] -> bool [rows, cols]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[..., None] >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :cols].bool()
