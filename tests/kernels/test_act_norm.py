"""act-norm accumulates in float64: the float32 mean does not depend on how the rows were batched."""

import pytest
import torch
from optishear_kernels import ActNorm, act_norm_update
from optishear_kernels.backend import interpreting, triton_available

BACKENDS = ["torch", pytest.param("triton", marks=[
    pytest.mark.interpreter,
    pytest.mark.skipif(not (triton_available() and interpreting()),
                       reason="the Triton path on CPU needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it)"),
])]  # fmt: skip


def _activations(dtype, rows=192, cols=96, seed=0):
    """LLM-like activations: Gaussian rows, per-channel scales spread over e^-4..e^4 (outlier channels)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(2 * torch.randn(cols, generator=g))
    return (torch.randn(rows, cols, generator=g) * scale).to(dtype)


def _mean(x, batch, backend):
    stats = ActNorm(x.shape[-1], backend_name=backend)
    for i in range(0, x.shape[0], batch):
        stats.update(x[i : i + batch])
    assert stats.rows == x.shape[0] and stats.sum.dtype == torch.float64
    return stats.mean()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mean_is_the_same_to_the_bit_for_any_batch_split(backend, dtype):
    x = _activations(dtype)
    means = {batch: _mean(x, batch, backend) for batch in (1, 8, x.shape[0])}
    assert means[1].dtype == torch.float32
    assert torch.equal(means[1], means[8]) and torch.equal(means[1], means[x.shape[0]])
    # The same data through a float32 accumulator is split-dependent: that is what float64 fixes.
    if dtype == torch.float32:
        acc1 = torch.zeros(x.shape[1])
        for row in x:
            acc1 += row.square()
        assert not torch.equal(acc1 / x.shape[0], x.square().sum(0) / x.shape[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_is_rounded_once_from_the_float64_mean(backend):
    x = _activations(torch.float32, rows=40, cols=33, seed=1)
    stats = ActNorm(33, backend_name=backend)
    stats.update(x[:17])
    stats.update(x[17:].reshape(1, 23, 33))  # any leading shape
    exact = x.double().square().sum(0)
    # float64 sums of exact float64 squares: within (n - 1) * 2^-53 relative of the exact sum (n = 40).
    torch.testing.assert_close(stats.sum, exact, rtol=39 * 2**-53, atol=0)
    assert torch.equal(stats.mean(), (stats.sum / 40).to(torch.float32))


def test_accumulator_must_be_float64():
    with pytest.raises(ValueError, match="acc must be float64"):
        act_norm_update(torch.ones(2, 4), torch.zeros(4), backend_name="torch")
    with pytest.raises(ValueError, match="channels"):
        act_norm_update(torch.ones(2, 4), torch.zeros(5, dtype=torch.float64), backend_name="torch")
    with pytest.raises(ValueError, match="no activations"):
        ActNorm(4).mean()
