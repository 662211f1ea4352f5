"""Our selection is Wanda's selection, ties included, on every backend.

Wanda's code scores ``|W| * sqrt(X)``, sorts each row with a stable sort and prunes the first k. The
benchmark (bench/test_select_speed.py) checks that at Llama-2-7B shapes before timing; these run the same
check on small shapes in CI, through the twin's building blocks, ``fused_prune_torch`` and the Triton
kernels in the interpreter (row, long row).
"""

import os

import pytest
import torch
from optishear_kernels import WANDA, meta_score, row_topk_mask, unpack_mask
from optishear_kernels.prune import _workspace, fused_prune_torch

SPARSITY = 0.5


def wanda_sort_mask(w, x_sq, sparsity):
    """Wanda's code (prune_wanda in lib/prune.py): stable sort per row, first k indices, scatter_."""
    w_metric = torch.abs(w) * torch.sqrt(x_sq.reshape((1, -1)))
    indices = torch.sort(w_metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * sparsity)]
    mask = torch.zeros_like(w_metric, dtype=torch.bool)
    return mask.scatter_(1, indices, True)


def _inputs(shape, dtype, seed=0):
    """Quantized-like weights (multiples of 1/8: many ties), exact zeros of both signs, a dead channel."""
    g = torch.Generator().manual_seed(seed)
    w = torch.round(torch.randn(shape, generator=g) * 8) / 8
    w[:, 1] = -0.0
    x = torch.rand(shape[1], generator=g)
    x[2] = 0.0  # a dead channel: its whole column scores 0 and ties with the zero weights
    return w.to(dtype), x


# (300, 97): more than 256 rows, so the CPU threshold runs in parallel row chunks.
SHAPES = [(5, 123), (64, 256), (300, 97)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_twin_selection_equals_wandas_stable_sort(shape, dtype):
    """The exact path the benchmark times: the score into the reused workspace, then the k-th smallest."""
    w, x = _inputs(shape, dtype, seed=shape[0])
    ref = wanda_sort_mask(w, x, SPARSITY)
    score = meta_score(w, x, WANDA, out=_workspace(w.shape, w.device))
    ours = row_topk_mask(score, int(shape[1] * SPARSITY))
    assert torch.equal(ours, ref)
    out = fused_prune_torch(w, x, WANDA, sparsity=SPARSITY, write_mask=True)
    assert torch.equal(unpack_mask(out.packed_mask, shape[1]), ref)
    assert torch.equal(out.weight, w.masked_fill(ref, 0))


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 123), (33, 256), (2, 4097)], ids=str)  # (2, 4097): the long-row kernel
def test_triton_selection_equals_wandas_stable_sort(shape, dtype):
    pytest.importorskip("triton", reason="triton is not installed")
    if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
        pytest.skip("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)")
    from optishear_kernels.prune import fused_prune_triton

    w, x = _inputs(shape, dtype, seed=shape[1])
    ref = wanda_sort_mask(w, x, SPARSITY)
    out = fused_prune_triton(w, x, WANDA, sparsity=SPARSITY, write_mask=True)
    assert torch.equal(unpack_mask(out.packed_mask, shape[1]), ref)
    assert torch.equal(out.weight, w.masked_fill(ref, 0))
