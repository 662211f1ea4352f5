"""Mask selection speed at Llama-2-7B shapes: our torch twin against Wanda's sort-based selection.

    python -m pytest bench/test_select_speed.py --benchmark-enable --benchmark-json=bench/select.json
    python bench/report.py bench/select.json

Both providers compute Wanda's score from W and X and produce the boolean pruned mask; the masks are
checked identical before timing (CI runs the same check on small shapes, every backend:
tests/kernels/test_wanda_selection.py). On CUDA the Triton fused prune is timed too.
"""

import pytest
import torch
from optishear_kernels import WANDA, meta_score, row_topk_mask
from optishear_kernels.prune import _workspace, fused_prune

from .conftest import LLAMA2_7B

SPARSITY = 0.5


def wanda_sort_mask(w, x_sq, sparsity):
    """Wanda's code: stable sort per row, first k indices, scatter_."""
    w_metric = torch.abs(w) * torch.sqrt(x_sq.reshape((1, -1)))
    indices = torch.sort(w_metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * sparsity)]
    mask = torch.zeros_like(w_metric, dtype=torch.bool)
    return mask.scatter_(1, indices, True)


def ours_mask(w, x_sq, sparsity):
    """The torch twin's path inside fused_prune_torch: score into the reused workspace, then select."""
    score = meta_score(w, x_sq, WANDA, out=_workspace(w.shape, w.device))
    return row_topk_mask(score, int(w.shape[1] * sparsity))


def _inputs(shape, dtype, device="cpu"):
    g = torch.Generator().manual_seed(0)
    w = (torch.round(torch.randn(shape, generator=g) * 8) / 8).to(dtype)  # quantized-like: many ties
    x = torch.rand(shape[1], generator=g)
    return w.to(device), x.to(device)


PROVIDERS = ["sort", "torch"] + (["triton"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(LLAMA2_7B), ids=list(LLAMA2_7B))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_mask_selection(benchmark, machine_info, provider, shape, dtype):
    device = "cuda" if provider == "triton" else "cpu"
    w, x = _inputs(LLAMA2_7B[shape], dtype, device)
    machine_info(provider=provider, shape=shape, dtype=str(dtype), sparsity=SPARSITY)
    if provider == "triton":
        fn = lambda: fused_prune(w, x, WANDA, sparsity=SPARSITY, write_weight=False, write_mask=True,  # noqa: E731
                                 backend_name="triton")  # fmt: skip
    else:
        fn = (lambda: wanda_sort_mask(w, x, SPARSITY)) if provider == "sort" else (lambda: ours_mask(w, x, SPARSITY))
        if provider == "torch":  # identical masks, checked once before timing
            assert torch.equal(ours_mask(w, x, SPARSITY), wanda_sort_mask(w, x, SPARSITY))
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
