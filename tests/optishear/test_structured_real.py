"""Structured pruning on the real SmolLM2-135M (9 query heads in 3 KV groups, 30 blocks) and real WikiText-2 text:
the saved model's file shrinks with its parameters and reloads with identical weights and the same logits; scores with
data beat magnitude; the LLM operator reads its own prompt."""

import json

import pytest
import torch

from optishear import CalibSpec, Plan, calibration_windows, eval_tokens, load_model, make_recipe, perplexity, prune
from optishear import save_pruned
from optishear.models.surgery import decoder_params

from ..conftest import assert_same_model, need_wikitext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(smollm2_dir):
    wiki = need_wikitext()
    model, tok = load_model(smollm2_dir)
    windows = calibration_windows(CalibSpec(str(wiki / "wiki.valid.raw"), 8, 128, 0), tok)
    return smollm2_dir, tok, windows, wiki


def test_real_model_saves_smaller_and_reloads_identically(real, tmp_path):
    path, tok, windows, wiki = real
    model, _ = load_model(path)
    n_dense = sum(p.numel() for p in model.parameters())
    plan = Plan(structured=True, rate=0.3, importance="flap", layer_rates="adaptive", stats="dense", batch_size=4)
    res = prune(model, tok, plan, windows=windows, progress=False)
    assert abs(res.sparsity - 0.3) < 2e-5  # one MLP channel of SmolLM2 is 1,728 of 106M decoder parameters
    out = save_pruned(model, tok, tmp_path / "pruned", make_recipe(plan, res, model))
    n = sum(p.numel() for p in model.parameters())
    size = (out / "model.safetensors").stat().st_size
    dense_size = (path / "model.safetensors").stat().st_size
    assert size / dense_size == pytest.approx(n / n_dense, rel=0.005)
    again, _ = load_model(out)
    ids = windows[:2]
    with torch.no_grad():
        assert_same_model(again.state_dict(), again(input_ids=ids, use_cache=False).logits, model, ids)
    assert json.loads((out / "config.json").read_text())["optishear_structure"]["family"] == "llama"


def test_data_aware_scores_beat_magnitude_on_real_text(real):
    path, tok, windows, wiki = real
    test = eval_tokens(wiki / "wiki.test.raw", tok)
    ppl = {}
    for imp in ("magnitude", "flap"):
        model, _ = load_model(path)
        prune(model, tok, Plan(structured=True, rate=0.2, importance=imp, stats="dense", batch_size=4), windows=windows,
              progress=False)  # fmt: skip
        ppl[imp] = perplexity(model, test, 256, 4, progress=False)[0]
    assert ppl["flap"] < ppl["magnitude"], ppl


def test_uniform_rate_on_gqa_rounds_the_attention_down_to_a_reachable_level(real):
    path, tok, windows, _ = real
    model, _ = load_model(path)
    before = decoder_params(model)
    res = prune(model, tok, Plan(structured=True, rate=0.3, importance="magnitude"), progress=False)
    # 0.3 of the attention is not reachable evenly over 3 KV groups: the level below removes a query head per group
    assert res.structure["layers"][0]["kv_heads"] == 3 and res.structure["layers"][0]["q_per_kv"] == 2
    assert res.structure["plain_loadable"] and abs(res.sparsity - 0.3) < 0.002
    assert model.config.num_attention_heads == 6 and model.config.num_key_value_heads == 3
    assert decoder_params(model) < before
