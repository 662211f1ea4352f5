import pytest
import torch
from optishear_kernels import nm_mask, pack_mask, row_topk_mask, unpack_mask


def sort_reference(score, k):
    """Wanda's selection: stable ascending sort, the first k indices pruned."""
    idx = torch.sort(score, dim=-1, stable=True)[1][:, :k]
    mask = torch.zeros_like(score, dtype=torch.bool)
    return mask.scatter_(1, idx, True)


@pytest.mark.parametrize("shape", [(5, 123), (7, 64), (300, 97), (1, 2)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("ties", [False, True])
def test_row_mask_is_exact_and_matches_stable_sort(shape, sparsity, ties):
    g = torch.Generator().manual_seed(hash((shape, sparsity, ties)) % 2**31)
    s = torch.rand(shape, generator=g)
    if ties:  # 16 levels, as Q4 weights give
        s = torch.floor(s * 16) / 16
    k = int(shape[1] * sparsity)
    m = row_topk_mask(s, k)
    assert (m.sum(1) == k).all()
    assert torch.equal(m, sort_reference(s, k))


def test_negative_zero_ties_with_positive_zero():
    s = torch.tensor([[0.0, -0.0, 0.0, -1.0, 1.0, -0.0]])
    assert row_topk_mask(s, 3).tolist() == [[True, True, False, True, False, False]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 7), (16, 32)])
def test_nm_mask_exact_per_group(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    s = torch.floor(torch.rand(9, m * 13, generator=g) * 8)  # many ties
    mask = nm_mask(s, n, m)
    groups = mask.reshape(9, 13, m)
    assert (groups.sum(-1) == m - n).all()
    ref = torch.zeros_like(groups)
    ref.scatter_(-1, torch.sort(s.reshape(9, 13, m), dim=-1, stable=True)[1][..., : m - n], True)
    assert torch.equal(groups, ref)


def test_nm_rejects_bad_patterns():
    s = torch.rand(3, 7)
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(s, 2, 4)
    with pytest.raises(ValueError, match="N < M"):
        nm_mask(torch.rand(3, 8), 4, 4)


@pytest.mark.parametrize("cols", [1, 8, 13, 64, 123])
def test_pack_round_trip(cols):
    m = torch.rand(6, cols, generator=torch.Generator().manual_seed(cols)) < 0.4
    p = pack_mask(m)
    assert p.dtype == torch.uint8 and p.shape == (6, (cols + 7) // 8)
    assert torch.equal(unpack_mask(p, cols), m)
    assert int(p[0, 0]) == sum(int(m[0, j]) << j for j in range(min(8, cols)))
