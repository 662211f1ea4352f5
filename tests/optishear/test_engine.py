import copy

import pytest
import torch
from optishear import PruneConfig, find_blocks, model_linears, prune
from optishear_kernels import unpack_mask

from ..conftest import random_windows, tiny_gpt2, tiny_llama, tiny_opt


def _cfg(**kw):
    base = dict(metric="wanda", sparsity=0.5, nsamples=4, seqlen=32, batch_size=2)
    base.update(kw)
    return PruneConfig(**base)


def _weights(model):
    return {r.full_name: r.weight2d().clone() for refs in model_linears(model) for r in refs}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_opt], ids=["llama", "gpt2-conv1d", "opt"])
@pytest.mark.parametrize("metric", ["wanda", "ria", "magnitude-row", "w:row*sqrt,x:col*log"])
def test_every_row_has_exactly_int_in_times_s_zeros(build, metric):
    model = build()
    res = prune(model, plan=_cfg(metric=metric, sparsity=0.37), windows=random_windows(), progress=False)
    n_layers = 0
    for refs in model_linears(model):
        for r in refs:
            w = r.weight2d()
            assert ((w == 0).sum(1) == int(w.shape[1] * 0.37)).all(), r.full_name
            n_layers += 1
    assert len(res.layer_sparsity) == n_layers > 0


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_opt], ids=["llama", "gpt2-conv1d", "opt"])
def test_two_four_every_group_has_exactly_two_zeros(build):
    model = build()
    prune(model, plan=_cfg(structure="2:4"), windows=random_windows(), progress=False)
    for refs in model_linears(model):
        for r in refs:
            w = r.weight2d()
            groups = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert (groups == 2).all(), r.full_name


def test_embeddings_and_lm_head_are_never_pruned():
    model = tiny_llama()
    emb = model.get_input_embeddings().weight.clone()
    head = model.get_output_embeddings().weight.clone()
    prune(model, plan=_cfg(), windows=random_windows(), progress=False)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert torch.equal(model.get_output_embeddings().weight, head)


def test_whole_matrix_magnitude_prunes_exactly_int_numel_times_s():
    model = tiny_llama()
    prune(model, plan=_cfg(metric="magnitude", sparsity=0.5), progress=False)
    for refs in model_linears(model):
        for r in refs:
            w = r.weight2d()
            assert int((w == 0).sum()) == int(w.numel() * 0.5)
            kept_min = w[w != 0].abs().min()
            assert kept_min >= w.abs()[w == 0].max() if (w == 0).any() else True


def test_block_sparsity_per_block_and_targets():
    model = tiny_llama(layers=3)
    prune(model, plan=_cfg(block_sparsity=[0.2, 0.5, 0.7], targets=["mlp.*"]), windows=random_windows(),
          progress=False)  # fmt: skip
    _, blocks = find_blocks(model)
    for i, s in enumerate([0.2, 0.5, 0.7]):
        w = blocks[i].mlp.down_proj.weight
        assert ((w == 0).sum(1) == int(w.shape[1] * s)).all()
        assert (blocks[i].self_attn.q_proj.weight != 0).all()  # not a target


def test_ignore_patterns():
    model = tiny_llama()
    prune(model, plan=_cfg(ignore=["*down_proj", "0.self_attn.*"]), windows=random_windows(), progress=False)
    _, blocks = find_blocks(model)
    assert (blocks[0].mlp.down_proj.weight != 0).all()
    assert (blocks[0].self_attn.k_proj.weight != 0).all()
    assert (blocks[1].self_attn.k_proj.weight == 0).any()


def test_same_seed_gives_bit_identical_masks():
    results = []
    for _ in range(2):
        model = tiny_llama(seed=3)
        res = prune(model, plan=_cfg(), windows=random_windows(seed=5), keep_masks=True, progress=False)
        results.append(res.masks)
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_sequential_statistics_see_pruned_blocks():
    """Sequential protocol: block 1's statistics come from pruned block 0; dense mode: from the dense one."""
    windows = random_windows()
    seq, dense = tiny_llama(), tiny_llama()
    r1 = prune(seq, plan=_cfg(stats="sequential"), windows=windows, keep_masks=True, progress=False)
    r2 = prune(dense, plan=_cfg(stats="dense"), windows=windows, keep_masks=True, progress=False)
    assert torch.equal(r1.masks["0.self_attn.q_proj"], r2.masks["0.self_attn.q_proj"])
    assert not all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks if k.startswith("1."))


def test_masks_returned_match_the_weights():
    model = tiny_llama()
    res = prune(model, plan=_cfg(), windows=random_windows(), keep_masks=True, progress=False)
    for refs in model_linears(model):
        for r in refs:
            m = unpack_mask(res.masks[r.full_name], r.in_features)
            assert torch.equal(m, r.weight2d() == 0)


# ---- bad input: a clear error naming the problem, and the model untouched ----


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sparsity=1.5), "sparsity must be a number in \\[0, 1\\)"),
        (dict(sparsity=-0.1), "sparsity must be"),
        (dict(structure="4:4"), "0 <= N < M"),
        (dict(structure="2-4"), "structure must be"),
        (dict(metric="wandaa"), "unknown metric 'wandaa'"),
        (dict(metric="w:none*none,x:none*nope"), "malformed metric spec"),
        (dict(block_sparsity=[0.5, 0.5, 0.5]), "block_sparsity has 3 values but the model has 2 decoder blocks"),
        (dict(block_sparsity=[0.5, 1.2]), "block_sparsity\\[1\\]"),
        (dict(targets=["nothing*"]), "no linear layers selected"),
    ],
)
def test_bad_config_is_rejected_before_any_change(kw, match):
    model = tiny_llama()
    before = _weights(model)
    with pytest.raises(ValueError, match=match):
        prune(model, plan=_cfg(**kw), windows=random_windows(), progress=False)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nm_that_does_not_divide_columns():
    model = tiny_llama(hidden=60, inter=120, heads=2)  # 60 is not a multiple of 8
    with pytest.raises(ValueError, match="divisible by 8.*has 60"):
        prune(model, plan=_cfg(structure="4:8"), windows=random_windows(), progress=False)


def test_nan_in_weights_is_named():
    model = tiny_llama()
    _, blocks = find_blocks(model)
    blocks[1].mlp.up_proj.weight.data[3, 4] = float("nan")
    before = _weights(model)
    with pytest.raises(ValueError, match="1.mlp.up_proj contain NaN"):
        prune(model, plan=_cfg(), windows=random_windows(), progress=False)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) or k == "1.mlp.up_proj" for k in before)


def test_nan_in_activations_restores_the_model():
    model = tiny_llama()
    _, blocks = find_blocks(model)
    # Block 1's post-attention norm weight is inf: the MLP inputs of block 1 become NaN/inf mid-walk,
    # after block 0 was already pruned. The error names the layer and block 0 is restored.
    blocks[1].post_attention_layernorm.weight.data[0] = float("inf")
    before = _weights(model)
    with pytest.raises(FloatingPointError, match="activations entering layer 1.mlp"):
        prune(model, plan=_cfg(), windows=random_windows(), progress=False)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_without_decoder_blocks():
    net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
    with pytest.raises(ValueError, match="no decoder blocks found in Sequential"):
        prune(net, plan=_cfg(), windows=random_windows(vocab=10), progress=False)


def test_missing_model_path(tmp_path):
    from optishear import load_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_fused_prune_two_four_on_seven_columns():
    from optishear_kernels import fused_prune

    with pytest.raises(ValueError, match="multiple of M=4"):
        fused_prune(torch.randn(3, 7), torch.ones(7), nm=(2, 4))
    with pytest.raises(ValueError, match="x_sq .* NaN"):
        fused_prune(torch.randn(3, 8), torch.tensor([1.0] * 7 + [float("nan")]), sparsity=0.5)


def test_deepcopy_independence_of_snapshot_restore():
    from optishear import WeightSnapshot

    model = tiny_llama()
    linears = model_linears(model)
    before = _weights(model)
    snap = WeightSnapshot().save_all(linears)
    prune(model, plan=_cfg(), windows=random_windows(), progress=False)
    assert not all(torch.equal(before[k], v) for k, v in _weights(model).items())
    snap.restore()
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())
    copy.deepcopy(snap)  # snapshots hold plain tensors
