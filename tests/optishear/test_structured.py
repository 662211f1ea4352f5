"""Structured pruning: surgery checked against the masked-but-unshrunk model on every family, the importance scores
against plain loops, the parameter budget, FLAP's compensation, restore, and bad input."""

import copy

import pytest
import torch

from optishear import Plan, prune
from optishear.methods.structured import (Budget, attention_levels, block_scores, read_layer_rates, select_channels,
                                          select_heads)
from optishear.models import WeightSnapshot, find_blocks
from optishear.models.surgery import Layout, NullAttention, current_shape, decoder_params, family_for

from ..conftest import random_windows, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_mistral, tiny_opt, tiny_qwen2

ARCHS = [
    pytest.param(tiny_llama, id="llama-gqa"),
    pytest.param(tiny_gemma3, id="gemma3"),
    pytest.param(tiny_opt, id="opt"),
    pytest.param(tiny_qwen2, id="qwen2"),
    pytest.param(tiny_mistral, id="mistral"),
    pytest.param(tiny_gpt2, id="gpt2"),
]


def _plan(**kw) -> Plan:
    return Plan(**{"structured": True, "rate": 0.4, "nsamples": 4, "seqlen": 32, "batch_size": 2, **kw})


def _logits(model, windows):
    with torch.no_grad():
        return model(input_ids=windows, use_cache=False).logits


def masked_reference(dense, pruned, masks):
    """The dense model with the removed heads' q/k/v rows and o columns and the removed channels' in-rows and down
    columns zeroed, and the pruned model's output biases: what the surgery must equal, computed without surgery."""
    ref = copy.deepcopy(dense)
    fam = family_for(ref)
    _, blocks = find_blocks(ref)
    _, pblocks = find_blocks(pruned)
    with torch.no_grad():
        for i, (block, pblock) in enumerate(zip(blocks, pblocks)):
            lay = fam.layout(block)
            kept = masks[f"{i}.attention"].tolist()
            cut = kept.index(-1)
            q_keep, kv_keep = set(kept[:cut]), set(kept[cut + 1 :])
            aw = fam.attn_weights(block)
            hd = lay.head_dim
            for h in range(lay.n_q):
                if h not in q_keep:
                    aw.q[h * hd : (h + 1) * hd] = 0
                    aw.o[:, h * hd : (h + 1) * hd] = 0
            for g in range(lay.n_kv):
                if g not in kv_keep:
                    aw.k[g * hd : (g + 1) * hd] = 0
                    aw.v[g * hd : (g + 1) * hd] = 0
            ch_keep = set(masks[f"{i}.mlp"].tolist())
            mw = fam.mlp_weights(block)
            for c in range(lay.channels):
                if c not in ch_keep:
                    for w in mw.ins:
                        w[c] = 0
                    mw.out[:, c] = 0
            pa = fam.attention(pblock)
            p_out = getattr(pa, pa.out_name) if isinstance(pa, NullAttention) else fam.attn_weights(pblock).o_module
            for mod, new in ((aw.o_module, p_out), (mw.out_module, fam.mlp_weights(pblock).out_module)):
                if getattr(new, "bias", None) is not None:
                    mod.bias = torch.nn.Parameter(new.bias.detach().clone())
    return ref


@pytest.mark.parametrize("build", ARCHS)
@pytest.mark.parametrize("importance,layer_rates", [("magnitude", None), ("wanda-sp", "adaptive"), ("flap", None),
                                                    ("flap", "adaptive")])  # fmt: skip
def test_surgery_gives_the_masked_models_logits(build, importance, layer_rates):
    windows = random_windows(4, 32, seed=3)
    model = build()
    dense = copy.deepcopy(model)
    res = prune(model, plan=_plan(importance=importance, layer_rates=layer_rates), windows=windows, keep_masks=True,
                progress=False)  # fmt: skip
    ref = masked_reference(dense, model, res.masks)
    got, want = _logits(model, windows), _logits(ref, windows)
    assert not torch.allclose(got, _logits(dense, windows), atol=1e-3)  # something was removed
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)  # float32, summation order only
    assert abs(res.sparsity - (1 - decoder_params(model) / decoder_params(dense))) < 1e-12
    for i, s in enumerate(res.structure["layers"]):
        assert s == current_shape(family_for(model), find_blocks(model)[1][i]).to_dict()


@pytest.mark.parametrize("build", ARCHS)
def test_all_heads_and_all_channels_of_a_block_become_no_ops(build):
    """Block 0 loses its attention and block 1 its MLP: explicit no-ops, equal to the fully masked blocks."""
    windows = random_windows(2, 24, seed=4)
    model = build()
    dense = copy.deepcopy(model)
    n = len(find_blocks(model)[1])
    rates = {"attention": [1.0] + [0.0] * (n - 1), "mlp": [0.0, 1.0] + [0.0] * (n - 2)}
    res = prune(model, plan=_plan(importance="magnitude", layer_rates=rates), windows=windows, keep_masks=True,
                progress=False)  # fmt: skip
    _, blocks = find_blocks(model)
    assert isinstance(family_for(model).attention(blocks[0]), NullAttention)
    assert current_shape(family_for(model), blocks[1]).channels == 0
    torch.testing.assert_close(_logits(model, windows), _logits(masked_reference(dense, model, res.masks), windows),
                               atol=2e-5, rtol=1e-4)  # fmt: skip


def test_generation_with_kv_cache_runs_through_a_null_attention():
    model = tiny_llama(layers=3)
    rates = {"attention": [0.0, 1.0, 0.5], "mlp": [0.25, 0.5, 0.0]}
    prune(model, plan=_plan(importance="magnitude", layer_rates=rates), progress=False)
    ids = random_windows(1, 8, seed=1)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True,
                             pad_token_id=0)  # fmt: skip
        step = ids
        for _ in range(6):  # the same tokens without a cache
            nxt = model(input_ids=step, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            step = torch.cat([step, nxt], dim=1)
    assert torch.equal(out, step)


@pytest.mark.parametrize("build", ARCHS)
def test_restore_puts_the_dense_modules_back(build):
    windows = random_windows(2, 24, seed=5)
    model = build()
    want = _logits(model, windows)
    params = {n: p for n, p in model.named_parameters()}
    config = model.config.to_dict()
    snap = WeightSnapshot()
    prune(model, plan=_plan(importance="flap", layer_rates="adaptive"), windows=windows, snapshot=snap, progress=False)
    assert decoder_params(model) < sum(p.numel() for n, p in params.items() if ".layers." in n or ".h." in n)
    snap.restore()
    assert torch.equal(_logits(model, windows), want)
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())  # the very same tensors, untouched
    assert model.config.to_dict() == config
    assert not hasattr(model.config, "optishear_structure")


def test_a_failure_midway_leaves_the_dense_model(monkeypatch):
    import optishear.methods.structured as st

    model = tiny_llama(layers=3)
    windows = random_windows(2, 24)
    want = _logits(model, windows)
    real, calls = st.StructuredMethod._cut, {"n": 0}

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(self, *a, **kw)

    monkeypatch.setattr(st.StructuredMethod, "_cut", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prune(model, plan=_plan(importance="wanda-sp"), windows=windows, progress=False)
    assert torch.equal(_logits(model, windows), want)
    assert not hasattr(model.config, "optishear_structure")


# ---- levels, budget, allocations ---------------------------------------------------------------------------------


def test_attention_levels_under_gqa():
    lay = Layout(n_q=9, n_kv=3, head_dim=64, hidden=576, channels=1536)  # SmolLM2
    levels = attention_levels(lay)
    assert [(lv.kv, lv.q) for lv in levels] == [(3, 3), (3, 2), (2, 3), (2, 2), (1, 3), (1, 2), (1, 1), (0, 0)]
    assert [round(lv.rate, 4) for lv in levels] == [0, 0.25, 0.3333, 0.5, 0.6667, 0.75, 0.8333, 1]
    mha = attention_levels(Layout(4, 4, 16, 64, 128))
    assert [(lv.kv, lv.q) for lv in mha] == [(4, 1), (3, 1), (2, 1), (1, 1), (0, 0)]
    assert [lv.rate for lv in mha] == [0, 0.25, 0.5, 0.75, 1]


def test_parameter_accounting_matches_the_pruned_model():
    """The budget's prediction of removed parameters equals the count after surgery, for many allocations."""
    gen = torch.Generator().manual_seed(0)
    for build, imp in ((tiny_llama, "magnitude"), (tiny_qwen2, "flap"), (tiny_gpt2, "flap"), (tiny_opt, "wanda-sp")):
        for _ in range(3):
            model = build()
            before = decoder_params(model)
            budget = Budget(model, family_for(model), compensate=imp == "flap")
            n = budget.n
            att = [budget.levels[i][int(torch.randint(len(budget.levels[i]), (1,), generator=gen))].rate
                   for i in range(n)]  # fmt: skip
            mlp = [float(torch.randint(0, 129, (1,), generator=gen)) / 128 for _ in range(n)]
            rates = {"attention": att, "mlp": mlp}
            alloc = budget.from_rates(rates)
            prune(model, plan=_plan(importance=imp, layer_rates=rates), windows=random_windows(2, 16), progress=False)
            assert before - decoder_params(model) == budget.total_removed(alloc)


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("importance", ["magnitude", "flap"])
def test_adaptive_reaches_the_target_to_one_channel(rate, importance):
    model = tiny_llama(layers=4, hidden=64, inter=256)
    budget = Budget(model, family_for(model), compensate=importance == "flap")
    before = decoder_params(model)
    res = prune(model, plan=_plan(importance=importance, layer_rates="adaptive", rate=rate),
                windows=random_windows(2, 16), progress=False)  # fmt: skip
    removed = before - decoder_params(model)
    assert abs(removed - budget.target(rate)) <= budget.mlp[0]["ch_unit"] / 2
    assert abs(res.sparsity - rate) <= budget.mlp[0]["ch_unit"] / 2 / before


def test_uniform_gives_every_block_the_same_shape():
    model = tiny_llama(layers=4, inter=256)
    res = prune(model, plan=_plan(importance="magnitude", rate=0.3), progress=False)
    shapes = res.structure["layers"]
    assert all(s == shapes[0] for s in shapes) and shapes[0]["channels"] < 256
    assert abs(res.sparsity - 0.3) < 0.01
    assert res.structure["plain_loadable"]


# ---- importance against plain loops ------------------------------------------------------------------------------


def _loop_scores(model, stats, importance):
    """Wanda-sp / magnitude scores by explicit sums over every weight of each structure (slow, obvious)."""
    fam = family_for(model)
    block = find_blocks(model)[1][0]
    lay, aw, mw = fam.layout(block), fam.attn_weights(block), fam.mlp_weights(block)
    hd = lay.head_dim

    def s(name, j):
        return 1.0 if importance == "magnitude" else float(stats[name]["act_norm"][j]) ** 0.5

    q = []
    for h in range(lay.n_q):
        tot = 0.0
        for r in range(h * hd, (h + 1) * hd):
            for j in range(lay.hidden):
                tot += abs(float(aw.q[r, j])) * s(aw.in_name, j)
            for o in range(lay.hidden):
                tot += abs(float(aw.o[o, r])) * s(aw.out_name, r)
        q.append(tot)
    ch = []
    for c in range(lay.channels):
        tot = sum(abs(float(w[c, j])) * s(mw.in_name, j) for w in mw.ins for j in range(lay.hidden))
        tot += sum(abs(float(mw.out[o, c])) * s(mw.out_name, c) for o in range(lay.hidden))
        ch.append(tot)
    return torch.tensor(q, dtype=torch.float64), torch.tensor(ch, dtype=torch.float64)


@pytest.mark.parametrize("importance", ["magnitude", "wanda-sp"])
def test_scores_equal_plain_sums(importance):
    from optishear.calibrate import walk
    from optishear.models import model_linears

    model = tiny_llama(hidden=32, inter=24, heads=4)
    stats = walk(model, random_windows(2, 16), model_linears(model), ("act_norm",), progress=False)[0]
    sc = block_scores(family_for(model), find_blocks(model)[1][0], stats, importance)
    q, ch = _loop_scores(model, stats, importance)
    torch.testing.assert_close(sc.q, q, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sc.channels, ch, rtol=1e-9, atol=1e-9)


def test_flap_scores_and_compensation_keep_the_mean_output():
    """FLAP: head score = sum over its o columns of (var_c * ||W_o[:, c]||^2)^2; after cutting, the o and down
    projections' mean outputs over the calibration tokens equal the dense ones (what the compensation is for)."""
    from optishear.calibrate import walk
    from optishear.models import model_linears

    windows = random_windows(4, 32, seed=9)
    model = tiny_llama(layers=1)
    stats = walk(model, windows, model_linears(model), ("moments",), progress=False)[0]
    block = find_blocks(model)[1][0]
    fam = family_for(model)
    sc = block_scores(fam, block, stats, "flap")
    o, var = block.self_attn.o_proj.weight.detach().double(), stats["self_attn.o_proj"]["moments"]["var"]
    col = [(float(var[c]) * float(o[:, c].square().sum())) ** 2 for c in range(o.shape[1])]
    want = torch.tensor([sum(col[h * 16 : (h + 1) * 16]) for h in range(4)], dtype=torch.float64)
    torch.testing.assert_close(sc.q, want)

    outs = {}

    def grab(name):
        def hook(mod, args, out):
            outs.setdefault(name, []).append(out.detach().double().reshape(-1, out.shape[-1]))
        return hook

    def mean_outputs(m):
        outs.clear()
        b = find_blocks(m)[1][0]
        hs = [b.self_attn.o_proj.register_forward_hook(grab("o")), b.mlp.down_proj.register_forward_hook(grab("d"))]
        _logits(m, windows)
        for h in hs:
            h.remove()
        return {k: torch.cat(v).mean(0) for k, v in outs.items()}

    dense = mean_outputs(model)
    pruned = copy.deepcopy(model)
    # attention cut, MLP whole: the o projection's inputs are the dense ones, its mean output must not move
    prune(pruned, plan=_plan(importance="flap", stats="dense", layer_rates={"attention": [0.5], "mlp": [0.0]}),
          windows=windows, progress=False)  # fmt: skip
    torch.testing.assert_close(mean_outputs(pruned)["o"], dense["o"], atol=1e-5, rtol=1e-5)
    # MLP cut, attention whole: the same for the down projection
    pruned = copy.deepcopy(model)
    prune(pruned, plan=_plan(importance="flap", stats="dense", layer_rates={"attention": [0.0], "mlp": [0.5]}),
          windows=windows, progress=False)  # fmt: skip
    assert find_blocks(pruned)[1][0].mlp.down_proj.weight.shape[1] == 64
    torch.testing.assert_close(mean_outputs(pruned)["d"], dense["d"], atol=1e-5, rtol=1e-5)


def test_head_selection_respects_groups_and_scores():
    from optishear.methods.structured import AttnLevel, BlockScores

    lay = Layout(6, 2, 4, 8, 4)
    q = torch.tensor([5.0, 1.0, 3.0, 9.0, 8.0, 0.5], dtype=torch.float64)
    sc = BlockScores(q, torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 3.0, 2.0, 0.0]), q, q)
    assert select_heads(sc, lay, AttnLevel(2, 2, 2, 8)) == ([0, 2, 3, 4], [0, 1])
    assert select_heads(sc, lay, AttnLevel(1, 3, 4, 8)) == ([3, 4, 5], [1])  # group 1 sums 17.5 > 9
    assert select_heads(sc, lay, AttnLevel(0, 0, 8, 8)) == ([], [])
    assert select_channels(sc, 2).tolist() == [1, 2]


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(rate=1.0), r"rate must be a number in \[0, 1\)"),
        (dict(rate=-0.2), r"rate must be a number in \[0, 1\)"),
        (dict(importance="fisher"), "importance must be one of"),
        (dict(layer_rates={"attention": [0.25, 0.0], "mlp": [0.1, 0.1]}),
         r"block 0: attention rate 0.25 cannot be reached with 4 query heads in 2 KV groups.*reachable rates: 0, "
         r"0.333333, 0.5, 0.666667, 1"),
        (dict(layer_rates={"attention": [0.0, 0.0, 0.0], "mlp": [0.1, 0.1, 0.1]}),
         "'attention' has 3 values but the model has 2 decoder blocks"),
        (dict(layer_rates={"attention": [0.0], "mlp": [0.1, 0.1]}), "'attention' has 1 values but 'mlp' has 2"),
        (dict(layer_rates={"attention": [0.0, 1.5], "mlp": [0.1, 0.1]}),
         r"attention\[1\] must be a number in \[0, 1\]"),
        (dict(layer_rates="sometimes"), "layer_rates must be 'uniform', 'adaptive'"),
        (dict(structure="2:4"), "structure must be 'unstructured'"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_the_model_is_untouched(kw, match):
    model = tiny_llama()
    windows = random_windows(2, 16)
    want = _logits(model, windows)
    with pytest.raises(ValueError, match=match):
        prune(model, plan=_plan(**{"importance": "magnitude", **kw}), windows=windows, progress=False)
    assert torch.equal(_logits(model, windows), want)
    assert not hasattr(model.config, "optishear_structure")


def test_unknown_architecture_is_named():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=2)).eval()
    with pytest.raises(ValueError, match=r"not know the architecture 'bloom' \(BloomForCausalLM\); it knows llama"):
        prune(model, plan=_plan(importance="magnitude"), progress=False)


def test_layer_rates_files(tmp_path):
    good = tmp_path / "rates.json"
    good.write_text('{"attention": [0, 0.5], "mlp": [0.25, 0.125]}')
    assert read_layer_rates(str(good)) == {"attention": [0.0, 0.5], "mlp": [0.25, 0.125]}
    recipe = tmp_path / "run"
    recipe.mkdir()
    (recipe / "optishear_recipe.json").write_text('{"plan": {"layer_rates": {"attention": [0.5], "mlp": [0.5]}}}')
    assert read_layer_rates(str(recipe)) == {"attention": [0.5], "mlp": [0.5]}
    assert read_layer_rates("adaptive") == "adaptive"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_layer_rates(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text('{"attention": [0.1]}')
    with pytest.raises(ValueError, match="exactly the lists 'attention' and 'mlp'"):
        read_layer_rates(str(tmp_path / "bad.json"))
