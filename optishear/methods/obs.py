"""The optimal-brain-surgeon weight update of SparseGPT (Frantar & Alistarh, 2023), one routine for two uses:

- SparseGPT's own pruning: the mask is chosen as the update goes (unstructured: once per block of 128 columns over
  all rows; N:M: per group of M columns, from the already updated weights), ``obs_prune(w, inv, sparsity=...)``;
- the reconstruction after any other method's mask (``--update sparsegpt``): the same column-by-column update with
  the mask fixed, ``obs_prune(w, inv, mask=...)``.

Both follow IST-DASLab/sparsegpt ``SparseGPT.fasterprune``: H = 2/n sum x x^T, dead inputs (H_jj = 0) get
H_jj = 1 and their weights are zeroed, 1% of the mean diagonal is added as dampening, and the update uses the
upper Cholesky factor U of H^-1 (H^-1 = U^T U), with lazy updates of 128-column blocks. Where it deviates, it says
so: a Cholesky that fails is retried with ten times the dampening (logged, and recorded in the returned
``HessianInverse``), never replaced by the identity; sparsity 0 prunes nothing (the reference's ``<=`` threshold
would prune one weight per block).

Precision: the walk accumulates sum x x^T in float64 (``calibrate.collectors``: sums in float32 depend on the
CPU's vector width and the batch size). The inverse and the update run in float64 too by default: on CPU it costs
little at these sizes, and w^2 / [H^-1]_jj^2 near-ties then do not flip between machines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

BLOCKSIZE = 128  # the reference's lazy-update block (and unstructured mask block)
PERCDAMP = 0.01  # dampening: this fraction of the mean diagonal of H
MAX_DAMP_TRIES = 6  # 0.01, 0.1, 1, 10, 100, 1000 times the mean diagonal


@dataclass
class HessianInverse:
    """What the update needs of one layer input's Hessian.

    Attributes:
        upper: U [in, in], upper triangular with U^T U = (H + damp I)^-1.
        dead: [in] bool, inputs that were zero on every calibration token (their weights are zeroed).
        percdamp: the dampening that worked (``PERCDAMP`` unless a Cholesky failed).
    """

    upper: torch.Tensor
    dead: torch.Tensor
    percdamp: float


def hessian_matrix(stat: dict, name: str = "layer", dtype=torch.float64) -> torch.Tensor:
    """H = 2 / count * sum x x^T from the walk's ``hessian`` statistic ``{"sum": [in, in], "count": tokens}``.

    Raises:
        FloatingPointError: the sum holds NaN or inf.
        ValueError: no tokens were folded in.
    """
    total, count = stat["sum"], stat["count"]
    if not torch.isfinite(total).all():
        raise FloatingPointError(f"the Hessian of {name} contains NaN or inf")
    if count < 1:
        raise ValueError(f"the Hessian of {name} was collected over no tokens")
    return total.to(dtype) * (2.0 / count)


def inverse_hessian(stat: dict, name: str = "layer", *, percdamp: float = PERCDAMP, dtype=torch.float64,
                    max_tries: int = MAX_DAMP_TRIES) -> HessianInverse:  # fmt: skip
    """The upper Cholesky factor of the dampened inverse Hessian, as ``fasterprune`` computes it.

    A failed Cholesky (H not positive definite even with the dampening) is retried with ten times the dampening,
    with a warning naming the layer; after ``max_tries`` it raises.

    Raises:
        FloatingPointError: NaN/inf in the Hessian, or no dampening made it positive definite.
    """
    H = hessian_matrix(stat, name, dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    diag = torch.arange(H.shape[0])
    mean_diag = torch.mean(torch.diag(H))
    p = percdamp
    for attempt in range(max_tries):
        Hd = H.clone()
        Hd[diag, diag] += p * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                if attempt:
                    logger.warning("%s: Cholesky succeeded with dampening %g of the mean diagonal", name, p)
                return HessianInverse(U, dead, p)
        logger.warning("%s: Cholesky of the Hessian failed with dampening %g of the mean diagonal; retrying with %g",
                       name, p, p * 10)  # fmt: skip
        p *= 10
    raise FloatingPointError(f"the Hessian of {name} is not positive definite even with dampening {p / 10:g}")


def cached_inverse(stat: dict, name: str = "layer", *, percdamp: float = PERCDAMP) -> HessianInverse:
    """``inverse_hessian``, kept in the statistic's own dict (q/k/v share one statistic object, and a search's dense
    statistics live across trials), so every distinct input is factored once."""
    key = f"_inverse_{percdamp!r}"
    inv = stat.get(key)
    if inv is None:
        inv = stat[key] = inverse_hessian(stat, name, percdamp=percdamp)
    return inv


def _block(W1: torch.Tensor, Hinv1: torch.Tensor, d1: torch.Tensor, mask1: torch.Tensor, prune_n: int = 0,
           m: int = 0):  # fmt: skip
    """One block of columns, as the reference: column by column, each column's error propagated to the block's later
    columns; with ``prune_n`` each group of ``m`` columns gets its mask when the update reaches it (``mask1`` is
    filled in). ``W1`` is updated in place. Returns (Q1, Err1, mask1).

    The reference's arithmetic in three ops per column instead of six (5-10% faster on CPU): ``col - q`` with ``q``
    the masked column is ``col`` where pruned and exactly 0 elsewhere, so the error is ``where(mask, col, 0) / d``;
    a column is final once its turn has passed, so ``Q1`` is the updated block with the mask applied (the kept
    weights are ``col`` exactly), and the update skips the column itself. Same bits as the column-by-column form."""
    Err1 = torch.empty_like(W1)
    zero = W1.new_zeros(())
    ncols = W1.shape[1]
    for i in range(ncols):
        if prune_n and i % m == 0:
            tmp = W1[:, i : i + m] ** 2 / d1[i : i + m].reshape(1, -1) ** 2
            mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
        err1 = Err1[:, i]
        torch.div(torch.where(mask1[:, i], W1[:, i], zero), Hinv1[i, i], out=err1)
        if i + 1 < ncols:
            W1[:, i + 1 :].addr_(err1, Hinv1[i, i + 1 :], alpha=-1)
    return W1.masked_fill_(mask1, 0), Err1, mask1


def obs_prune(w: torch.Tensor, inv: HessianInverse, *, sparsity: float | None = None,
              nm: tuple[int, int] | None = None, mask: torch.Tensor | None = None,
              blocksize: int = BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Prune ``w`` and update the remaining weights column by column (SparseGPT's lazy-batch OBS).

    Exactly one of ``sparsity`` (unstructured: in each block of ``blocksize`` columns the weights with the smallest
    w^2 / [H^-1]_jj^2 over all rows, ``int(numel * sparsity)`` of them plus ties at the threshold, as the reference
    does), ``nm`` (N kept of every M columns, chosen per row when the update reaches the group) or ``mask`` (fixed)
    is given.

    Args:
        w: [out, in] weights (not modified).
        inv: the layer input's ``HessianInverse`` (its dtype is the computation's).
        mask: [out, in] bool, True where a weight is pruned.

    Returns:
        (new weights [out, in] in ``inv.upper``'s dtype, the pruned mask [out, in] bool).
    """
    args = _checked(w, inv, sparsity, nm, mask, blocksize)
    with _one_thread():
        return _obs(*args)


def obs_prune_all(tasks: list[dict], threads: int | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``obs_prune`` of several layers (each task the keyword arguments of one call), yielding ``(task index, new
    weights, mask)`` as each layer is done, in no fixed order.

    On CPU the layers run side by side on ``threads`` Python threads (default: torch's intra-op thread count), each
    layer's column loop on one intra-op thread as in ``obs_prune``: the loop's ops release the GIL, so the cores the
    loop alone leaves idle do other layers (measured: the seven linears of a SmolLM2 block, 0.74 s one after another,
    0.44 s on two threads). Each layer is computed by one thread exactly as by ``obs_prune``, so every result is the
    same bit for bit; only the order they come in varies. The largest layers start first. On CUDA, and with one
    thread, the layers run one after another. All tasks are checked before any runs."""
    checked = [_checked(**task) for task in tasks]
    n = torch.get_num_threads() if threads is None else threads
    with _one_thread():
        if n <= 1 or len(checked) <= 1 or any(args[0].device.type != "cpu" for args in checked):
            for i, args in enumerate(checked):
                yield (i, *_obs(*args))
            return
        order = sorted(range(len(checked)), key=lambda i: -checked[i][0].numel())
        with ThreadPoolExecutor(min(n, len(checked)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(_obs, *checked[i]): i for i in order}
            try:
                for future in as_completed(futures):
                    yield (futures[future], *future.result())
            finally:
                for future in futures:
                    future.cancel()


def _checked(w: torch.Tensor, inv: HessianInverse, sparsity: float | None = None, nm: tuple[int, int] | None = None,
             mask: torch.Tensor | None = None, blocksize: int = BLOCKSIZE) -> tuple:  # fmt: skip
    """``obs_prune``'s arguments checked, in ``_obs``'s order."""
    if sum(v is not None for v in (sparsity, nm, mask)) != 1:
        raise ValueError("give exactly one of sparsity, nm or mask")
    rows, cols = w.shape
    if inv.upper.shape != (cols, cols):
        raise ValueError(f"the inverse Hessian is {tuple(inv.upper.shape)} but the weights have {cols} inputs")
    if nm is not None:
        keep, m = nm
        if cols % m or blocksize % m:
            raise ValueError(f"N:M {keep}:{m} needs input features divisible by {m}, got {cols}")
    if mask is not None:
        if mask.shape != w.shape:
            raise ValueError(f"mask is {tuple(mask.shape)} but the weights are {tuple(w.shape)}")
        mask = mask.to(device=w.device, dtype=torch.bool)
    return w, inv, sparsity, nm, mask, blocksize


@contextmanager
def _one_thread():
    """The column loop is hundreds of small ops per block: on CPU, intra-op threads only add their start-up cost,
    and on a loaded machine a lot of it (measured on 2 busy cores: 0.21 s on one thread against 1.6-8 s on two for
    a 576 x 576 layer)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _obs(w, inv, sparsity, nm, mask, blocksize):
    rows, cols = w.shape
    prune_n = nm[1] - nm[0] if nm is not None else 0
    Hinv = inv.upper.to(w.device)
    W = w.detach().to(Hinv.dtype).clone()
    W[:, inv.dead.to(w.device)] = 0
    full_mask = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2]
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        if mask is not None:
            mask1 = mask[:, i1:i2].clone()
        elif nm is None and sparsity > 0:
            tmp = W1**2 / d1.reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:  # N:M fills it group by group; sparsity 0 prunes nothing
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Q1, Err1, mask1 = _block(W1.clone(), Hinv1, d1, mask1, prune_n if mask is None and nm is not None else 0,
                                 nm[1] if nm is not None else 0)  # fmt: skip
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        full_mask[:, i1:i2] = mask1
    return W, full_mask


__all__ = ["HessianInverse", "hessian_matrix", "inverse_hessian", "cached_inverse", "obs_prune", "obs_prune_all",
           "BLOCKSIZE", "PERCDAMP"]  # fmt: skip
