"""Triton kernels against their torch twins, on CPU in Triton's interpreter (TRITON_INTERPRET=1)."""

import os
import random

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)",
                allow_module_level=True)  # fmt: skip

from optishear_kernels import MetricConfig, act_norm_update, all_configs  # noqa: E402
from optishear_kernels.act_norm import act_norm_update_torch, act_norm_update_triton  # noqa: E402
from optishear_kernels.prune import fused_prune_torch, fused_prune_triton  # noqa: E402

pytestmark = pytest.mark.interpreter

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(shape, dtype, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if ties:  # Q4-like: 16 levels per row scale, so equal magnitudes within a row are common
        w = torch.round(w * 4) / 4
    w[torch.rand(shape, generator=g) < 0.1] = 0.0
    w = w.to(dtype)
    x = torch.rand(shape[1], generator=g) * 4
    x[torch.rand(shape[1], generator=g) < 0.05] = 0.0
    return w, x


def _canonical_configs():
    """Every option of every choice, one at a time around Wanda, plus a seeded sample of full points."""
    cfgs = {MetricConfig(0, 0, 0, 0)}
    for cw in range(8):
        cfgs.add(MetricConfig(cw, 0, 0, 0))
    for uw in range(7):
        cfgs.add(MetricConfig(0, uw, 0, 0))
    for cx in range(7):
        cfgs.add(MetricConfig(0, 0, cx, 0))
    for ux in range(7):
        cfgs.add(MetricConfig(0, 0, 0, ux))
    cfgs.update(random.Random(0).sample(all_configs(), 12))
    return sorted(cfgs, key=lambda c: c.as_tuple())


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every buffer the launchers allocate starts as NaN (floats) or all ones (integers), so an element a
    kernel forgets to write fails the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1 if t.dtype != torch.uint8 else 255)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))


def _check_equal(a, b, label):
    assert torch.equal(a.packed_mask, b.packed_mask), f"{label}: masks differ"
    assert torch.equal(a.weight.view(torch.uint8) if a.weight.dtype != torch.float32 else a.weight.view(torch.int32),
                       b.weight.view(torch.uint8) if b.weight.dtype != torch.float32 else b.weight.view(torch.int32)), (
        f"{label}: pruned weights differ")  # fmt: skip


@pytest.mark.parametrize("cfg", _canonical_configs(), ids=lambda c: c.spec)
def test_row_prune_every_canonical_config(cfg):
    w, x = _inputs((5, 123), torch.float32, hash(cfg.as_tuple()) % 1000)
    a = fused_prune_torch(w, x, cfg, sparsity=0.5, write_mask=True)
    b = fused_prune_triton(w, x, cfg, sparsity=0.5, write_mask=True)
    _check_equal(a, b, cfg.spec)


@pytest.mark.parametrize("cfg", _canonical_configs()[::3], ids=lambda c: c.spec)
@pytest.mark.parametrize("nm", [(2, 4), (1, 3), (4, 8)])
def test_nm_prune_canonical_configs(cfg, nm):
    w, x = _inputs((6, 24 * nm[1]), torch.float32, 7)
    a = fused_prune_torch(w, x, cfg, nm=nm, write_mask=True)
    b = fused_prune_triton(w, x, cfg, nm=nm, write_mask=True)
    _check_equal(a, b, f"{cfg.spec} {nm}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 123), (3, 257), (8, 64), (2, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75])
def test_row_prune_shapes_dtypes(dtype, shape, sparsity):
    w, x = _inputs(shape, dtype, shape[0] * shape[1])
    for cfg in (MetricConfig(0, 0, 0, 0), MetricConfig(3, 6, 2, 1)):
        a = fused_prune_torch(w, x, cfg, sparsity=sparsity, write_mask=True)
        b = fused_prune_triton(w, x, cfg, sparsity=sparsity, write_mask=True)
        _check_equal(a, b, f"{cfg.spec} {dtype} {shape} {sparsity}")
        k = int(shape[1] * sparsity)
        from optishear_kernels import unpack_mask

        assert (unpack_mask(b.packed_mask, shape[1]).sum(1) == k).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nm", [(2, 4), (16, 32), (3, 5)])
def test_nm_prune_dtypes(dtype, nm):
    w, x = _inputs((4, nm[1] * 7), dtype, 11)
    a = fused_prune_torch(w, x, MetricConfig(0, 0, 0, 0), nm=nm, write_mask=True)
    b = fused_prune_triton(w, x, MetricConfig(0, 0, 0, 0), nm=nm, write_mask=True)
    _check_equal(a, b, f"{dtype} {nm}")


@pytest.mark.parametrize("cols", [4097, 11008])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_long_rows_chunked_radix_select(cols, dtype):
    """Rows longer than one register tile: four histogram passes + a writing pass over 2048-column chunks."""
    w, x = _inputs((3, cols), dtype, cols)
    for cfg, s in ((MetricConfig(0, 0, 0, 0), 0.5), (MetricConfig(3, 6, 2, 1), 0.7), (MetricConfig(7, 4, 0, 4), 0.0)):
        a = fused_prune_torch(w, x, cfg, sparsity=s, write_mask=True)
        b = fused_prune_triton(w, x, cfg, sparsity=s, write_mask=True)
        _check_equal(a, b, f"{cfg.spec} {cols} {s}")


@pytest.mark.parametrize("structure", [None, (2, 4)])
def test_in_place_writes_only_zeros_and_matches(structure):
    w, x = _inputs((9, 64), torch.float32, 2)
    kw = dict(nm=structure) if structure else dict(sparsity=0.5)
    ref = fused_prune_torch(w.clone(), x, MetricConfig(1, 1, 2, 0), **kw).weight
    target = w.clone()
    out = fused_prune_triton(target, x, MetricConfig(1, 1, 2, 0), inplace=True, **kw)
    assert out.weight is target and torch.equal(target, ref)
    storage = w.t().contiguous()  # [in, out], as GPT-2's Conv1D stores it
    view = storage.t()  # a non-contiguous [out, in] view
    assert view.stride(1) != 1
    fused_prune_triton(view, x, MetricConfig(1, 1, 2, 0), inplace=True, **kw)
    assert torch.equal(storage.t(), ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 123), (70, 64), (1, 1, 7)])
def test_act_norm_matches_twin(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    acc_a = torch.rand(shape[-1], generator=g, dtype=torch.float64)
    acc_b = acc_a.clone()
    rows = 0
    for _ in range(3):  # streaming over several calls
        x = (torch.randn(shape, generator=g) * 3).to(dtype)
        ra = act_norm_update_torch(x, acc_a)
        rb = act_norm_update_triton(x, acc_b)
        assert ra == rb
        rows += ra
    # The float32 means, rounded once from float64: equal to the bit.
    assert torch.equal((acc_b / rows).to(torch.float32), (acc_a / rows).to(torch.float32))
    # The float64 sums may differ in the last bits (the twin and the kernel add in different orders): a sum
    # of n >= 0 terms in any order is within (n - 1) * 2^-53 relative of the exact one (n <= 211 here), so
    # the two are within twice that of each other.
    torch.testing.assert_close(acc_b, acc_a, rtol=2 * 210 * 2**-53, atol=0)


def test_forced_triton_backend_runs_in_interpreter(monkeypatch):
    monkeypatch.setenv("OPTISHEAR_KERNELS_BACKEND", "triton")
    acc = torch.zeros(4, dtype=torch.float64)
    assert act_norm_update(torch.ones(2, 4), acc) == 2
    assert torch.equal(acc, torch.full((4,), 2.0, dtype=torch.float64))


def test_population_one_launch_matches_twin():
    from optishear_kernels.prune import population_prune_torch, population_prune_triton

    w, x = _inputs((7, 123), torch.float32, 21)
    cfgs = _canonical_configs()
    sparsities = [0.1 + 0.8 * i / len(cfgs) for i in range(len(cfgs))]
    a = population_prune_torch(w, x, cfgs, sparsities)
    b = population_prune_triton(w, x, cfgs, sparsities)
    assert a.shape == (len(cfgs), 7, 16)
    for i, c in enumerate(cfgs):
        assert torch.equal(a[i], b[i]), c.spec
    # one metric at several sparsity levels
    a = population_prune_torch(w, x, cfgs[3], [0.2, 0.5, 0.7])
    b = population_prune_triton(w, x, cfgs[3], [0.2, 0.5, 0.7])
    assert torch.equal(a, b)
