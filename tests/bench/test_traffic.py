"""The byte counter behind bench/RESULTS.md's traffic table counts what it should."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from bench.traffic import CountTorch, count_triton  # noqa: E402


def test_counts_act_norm_bytes_exactly():
    from optishear_kernels.act_norm import act_norm_update_triton

    x, acc = torch.randn(64, 100), torch.zeros(100, dtype=torch.float64)
    with count_triton() as t:
        act_norm_update_triton(x, acc)
    assert t.load_bytes == 64 * 100 * 4 + 100 * 8  # x once, the float64 accumulator once (masked lanes not counted)
    assert t.store_bytes == 100 * 8
    assert t.unique_total == t.total


def test_fused_mask_reads_w_once_for_short_rows():
    from optishear_kernels import MetricConfig
    from optishear_kernels.prune import fused_prune_triton

    w, x = torch.randn(64, 256), torch.rand(256)
    with count_triton() as t:
        fused_prune_triton(w, x, MetricConfig(), sparsity=0.5, write_weight=False, write_mask=True)
    minimum = 64 * 256 * 4 + 256 * 4 + 64 * 256 // 8
    assert t.unique_total == minimum
    assert t.total <= 1.1 * minimum


def test_torch_counter_skips_views():
    a = torch.ones(10, 10)
    with CountTorch() as c:
        b = a.t()[:, :5]  # views: nothing moves
        (b * 2).sum()
    assert c.read == 10 * 5 * 4 + 10 * 5 * 4 and c.written == 10 * 5 * 4 + 4
