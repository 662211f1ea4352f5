import pytest
import torch
from optishear_kernels import RIA, WANDA, MetricConfig, all_configs, meta_score, population_prune
from optishear_kernels.metric import COEFFICIENT_NAMES, TRANSFORMS, x_part


def _weights_with_zeros(seed=0, shape=(16, 48)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) < 0.3] = 0.0
    w[3] = 0.0  # a whole zero row: row sums are 0
    w[:, 5] = 0.0  # a whole zero column
    x = torch.rand(shape[1], generator=g) * 50
    x[7] = 0.0  # a dead channel
    return w, x


def test_space_has_2401_distinct_points():
    cfgs = all_configs()
    assert len(cfgs) == 2401
    assert len({c.as_tuple() for c in cfgs}) == 2401


def test_every_configuration_gives_finite_scores_on_exact_zeros():
    w, x = _weights_with_zeros()
    w[0, :] *= 1e4  # large magnitudes: a plain exp would overflow here
    bad = [c.spec for c in all_configs() if not torch.isfinite(meta_score(w, x, c)).all()]
    assert not bad, f"{len(bad)} configurations give non-finite scores, e.g. {bad[:5]}"


def test_wanda_is_its_meta_metric_point():
    w, x = _weights_with_zeros(1)
    expected = w.abs() * torch.sqrt(x)[None, :]
    assert torch.equal(meta_score(w, x, WANDA), expected)
    assert MetricConfig.parse("w:none*none,x:none*none") == WANDA


def test_ria_matches_its_formula():
    w, x = _weights_with_zeros(2)
    a = w.abs()
    rs, cs = a.sum(1, keepdim=True), a.sum(0, keepdim=True)
    rel = torch.where(rs > 0, 1 / rs, 1.0) + torch.where(cs > 0, 1 / cs, 1.0)
    expected = rel * a * torch.sqrt(torch.sqrt(x))[None, :]
    torch.testing.assert_close(meta_score(w, x, RIA), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("uw", range(7))
def test_transforms_follow_their_definition(uw):
    w, x = _weights_with_zeros(3)
    a = w.abs()
    got = meta_score(w, x, MetricConfig(0, uw, 0, 0)) / torch.sqrt(x).clamp_min(1e-30)[None, :]
    ref = {
        0: a, 1: a.sqrt(), 2: a * a, 3: torch.exp(a - a.amax(1, keepdim=True)),
        4: torch.log(a.clamp_min(torch.finfo(torch.float32).tiny)), 5: torch.sigmoid(a), 6: torch.softmax(a, dim=1),
    }[uw]  # fmt: skip
    live = x > 0
    torch.testing.assert_close(got[:, live], ref[:, live], rtol=1e-5, atol=1e-6)


def test_x_side_coefficients():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0])
    s = x.sqrt()
    torch.testing.assert_close(x_part(x, MetricConfig(0, 0, 1, 0)), s / 14)  # 1/row sum (whole vector)
    col = x_part(x, MetricConfig(0, 0, 2, 0))
    assert torch.equal(col, torch.tensor([0.0, 1.0, 0.5, 1 / 3]))  # 1/X_j, and 1 where X_j = 0
    torch.testing.assert_close(x_part(x, MetricConfig(0, 0, 6, 0)), s / torch.sqrt(torch.tensor(98.0)))


@pytest.mark.parametrize(
    "spec",
    ["w:none*none", "w:none*none,x:none", "w:rows*none,x:none*none", "w:none*cube,x:none*none", "1,2,3", "0,0,0,7",
     "w:ria*none,x:ria*none", 42],
)  # fmt: skip
def test_malformed_specs_are_rejected(spec):
    with pytest.raises(ValueError):
        MetricConfig.parse(spec)


def test_spec_round_trip():
    for c in all_configs()[::37] + [RIA]:
        assert MetricConfig.parse(c.spec) == c
        assert MetricConfig.parse(",".join(map(str, c.as_tuple()))) == c
    assert len(COEFFICIENT_NAMES) == 8 and len(TRANSFORMS) == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canonical_metric_ranks_every_row_exactly_like_the_original(seed):
    """The rewrite is exact algebra: on fresh random weights (with exact zeros) and statistics (with a dead
    channel), every one of the 2,401 configurations gives the same mask as its canonical form."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 160, generator=g) * torch.rand(12, 1, generator=g) * 0.2
    w[torch.rand(w.shape, generator=g) < 0.05] = 0.0
    x = torch.rand(160, generator=g) * torch.rand(1, generator=g) * 5
    x[int(torch.randint(160, (1,), generator=g))] = 0.0
    configs = all_configs()
    canon = [c.canonical() for c in configs]
    masks = population_prune(w, x, configs, [0.5] * len(configs))
    reps = sorted(set(canon), key=MetricConfig.as_tuple)
    rep_masks = dict(zip(reps, population_prune(w, x, reps, [0.5] * len(reps))))
    for c, k, m in zip(configs, canon, masks):
        assert torch.equal(m, rep_masks[k]), (c.spec, k.spec)


def test_canonical_forms():
    assert len({c.canonical() for c in all_configs()}) == 318
    assert all(c.canonical().canonical() == c.canonical() for c in all_configs())
    assert WANDA.canonical() == WANDA and RIA.canonical() == RIA
    same = {
        "w:fro*softmax,x:mean*softmax": "w:none*exp,x:none*exp",
        "w:none*square,x:none*square": "w:none*none,x:none*none",  # |W|^2 X ranks like |W| sqrt(X)
        "w:none*square,x:none*none": "w:none*none,x:none*sqrt",  # |W|^2 X^(1/2) like |W| X^(1/4)
        "w:none*square,x:col*square": "w:none*none,x:col*square",  # X^-1 X = 1: magnitude
        "w:row*log,x:total*sigmoid": "w:none*log,x:none*sigmoid",
    }
    for spec, rep in same.items():
        assert MetricConfig.parse(spec).canonical().spec == rep, spec
    for spec in ("w:col*none,x:none*none", "w:rowcol*sqrt,x:rowcol*none", "w:none*exp,x:col*none"):
        assert MetricConfig.parse(spec).canonical().spec == spec
