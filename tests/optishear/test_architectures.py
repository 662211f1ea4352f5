"""The engine, the search and the saved recipe on every architecture family we claim: Gemma 3 (sliding and full
attention layers), Qwen2, Mistral (sliding window), OPT, GPT-2 (Conv1D, transposed weights), LLaMA with GQA;
a bf16 model; and the calibration walk's statistics checked against plain float64 sums of the model's own
forward."""

import json

import pytest
import torch

from optishear import Plan, make_recipe, model_linears, prune, search
from optishear.calibrate import walk
from optishear.data import tokens_digest
from optishear.recipe import RECIPE_NAME, recipe_plan, save_pruned
from optishear.search import SearchConfig

from ..conftest import (assert_same_model, random_windows, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_mistral, tiny_opt,
                       tiny_qwen2)  # fmt: skip

# (builder, linears per decoder block: every projection must be found, none silently skipped)
ARCHS = [
    pytest.param(tiny_gemma3, 7, id="gemma3-sliding"),
    pytest.param(tiny_qwen2, 7, id="qwen2"),
    pytest.param(tiny_mistral, 7, id="mistral-sliding"),
    pytest.param(tiny_opt, 6, id="opt"),
    pytest.param(tiny_gpt2, 4, id="gpt2-conv1d"),
    pytest.param(tiny_llama, 7, id="llama-gqa"),
]

def _plan(**kw) -> Plan:
    base = {"metric": "wanda", "sparsity": 0.5, "stats": "sequential", "nsamples": 4, "seqlen": 32, "batch_size": 1}
    return Plan(**{**base, **kw})


def _windows(n: int = 4) -> torch.Tensor:
    return random_windows(n, 32, seed=11)


def _linear_weights(model) -> dict[str, torch.Tensor]:
    return {r.full_name: r.weight2d().clone() for refs in model_linears(model) for r in refs}


def _check_exact_row_counts(model, before: dict[str, torch.Tensor], sparsity: float) -> None:
    """Every row of every pruned linear has exactly int(in * s) zeros, and the kept weights are unchanged."""
    for refs in model_linears(model):
        for r in refs:
            w, w0 = r.weight2d(), before[r.full_name]
            zeros = (w == 0).sum(1)
            assert (zeros == int(r.in_features * sparsity)).all(), (r.full_name, zeros.tolist())
            assert torch.equal(w, torch.where(w == 0, torch.zeros_like(w0), w0)), r.full_name


def _search_config(**plan_kw) -> SearchConfig:
    plan = Plan(**{"nsamples": 4, "seqlen": 32, "batch_size": 2, "stats": "dense", "seed": 0, **plan_kw})
    return SearchConfig(plan=plan, space="metric", pop_size=4, generations=2, validate_top=0, objective_windows=0)


# ---- 1a. the Wanda protocol on every architecture ----


@pytest.mark.parametrize("build,per_block", ARCHS)
def test_sequential_wanda_prunes_exact_rows_and_masks_ignore_batch_size(build, per_block):
    windows = _windows()
    model = build()
    linears = model_linears(model)
    assert [len(refs) for refs in linears] == [per_block] * len(linears)
    if hasattr(model.config, "num_key_value_heads"):  # the GQA families: fewer k/v heads than query heads
        assert model.config.num_key_value_heads < model.config.num_attention_heads
    pruned = {id(r.module.weight) for refs in linears for r in refs}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in pruned}
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    before = _linear_weights(model)

    res = prune(model, plan=_plan(batch_size=1), windows=windows, progress=False)

    _check_exact_row_counts(model, before, 0.5)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert torch.equal(model.get_output_embeddings().weight, head)
    for n, p in model.named_parameters():  # norms, biases, position embeddings: nothing outside the linears moves
        if id(p) not in pruned:
            assert torch.equal(p, others[n]), n
    refs = [r for rs in linears for r in rs]
    assert set(res.layer_sparsity) == {r.full_name for r in refs}
    zeros = sum(r.weight2d().shape[0] * int(r.in_features * 0.5) for r in refs)
    expected = zeros / sum(w.numel() for w in before.values())
    assert res.sparsity == pytest.approx(expected, abs=1e-12) and res.sparsity == pytest.approx(0.5, abs=0.01)
    assert res.block_sparsity == [0.5] * len(linears)

    # Statistics accumulate in float64: 4 windows in batches of 3 + 1 give the masks of batches of 1.
    res3 = prune(build(), plan=_plan(batch_size=3), windows=windows, progress=False)
    assert res3.mask_digest == res.mask_digest


# ---- 1b. a small search; its recipe replays ----


@pytest.mark.parametrize("build,per_block", ARCHS)
def test_search_writes_its_run_and_the_recipe_replays(build, per_block, tmp_path):
    windows = _windows()
    out = tmp_path / "run"
    res = search(build(), None, _search_config(), out, windows=windows, progress=False)

    for name in ("trials.jsonl", "manifest.json", RECIPE_NAME):
        assert (out / name).is_file(), name
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert 1 <= len(trials) <= res.trials == 8 and all(t["status"] == "ok" for t in trials)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["windows"]["statistics"]["digest"] == tokens_digest(windows)
    recipe = json.loads((out / RECIPE_NAME).read_text())
    assert recipe["mask_digest"] and recipe["windows_digest"] == tokens_digest(windows)
    assert recipe["metric_spec"] == res.metric and recipe["mask_digest"] in {t["mask_hash"] for t in trials}

    plan = recipe_plan(recipe)
    fresh = build()
    before = _linear_weights(fresh)
    replay = prune(fresh, plan=plan, windows=windows, progress=False)
    assert replay.mask_digest == recipe["mask_digest"]
    _check_exact_row_counts(fresh, before, plan.sparsity)


# ---- 1c. save, reload, same logits ----


@pytest.mark.parametrize("build,per_block", ARCHS)
def test_saved_pruned_model_reloads_with_the_same_weights_and_logits(build, per_block, tmp_path):
    from transformers import AutoModelForCausalLM

    model, plan = build(), _plan()
    result = prune(model, plan=plan, windows=_windows(), progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", make_recipe(plan, result, model))

    assert (out / RECIPE_NAME).is_file()
    assert json.loads((out / RECIPE_NAME).read_text())["mask_digest"] == result.mask_digest
    assert recipe_plan(out) == plan
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is type(model)
    tokens = random_windows(2, 16, seed=3)
    with torch.no_grad():
        got = loaded(input_ids=tokens, use_cache=False).logits
    assert_same_model(loaded.state_dict(), got, model, tokens)  # every weight bit for bit, logits to rounding
    dense = build()
    with torch.no_grad():
        assert not torch.equal(dense(input_ids=tokens, use_cache=False).logits, got)  # the pruning was saved


# ---- 2. bf16 ----


@pytest.mark.parametrize("stats", ["sequential", "dense"])
def test_bf16_prune_keeps_dtype_and_exact_rows(stats):
    model = tiny_llama().to(torch.bfloat16)
    before = _linear_weights(model)
    res = prune(model, plan=_plan(stats=stats, batch_size=2), windows=_windows(), progress=False)
    for refs in model_linears(model):
        for r in refs:
            assert r.module.weight.dtype == torch.bfloat16, r.full_name
    _check_exact_row_counts(model, before, 0.5)
    assert res.sparsity == pytest.approx(0.5, abs=1e-12)
    again = prune(tiny_llama().to(torch.bfloat16), plan=_plan(stats=stats, batch_size=4), windows=_windows(),
                  progress=False)  # fmt: skip
    assert again.mask_digest == res.mask_digest


def test_bf16_search_completes_and_its_recipe_replays(tmp_path):
    windows = _windows()
    model = tiny_llama().to(torch.bfloat16)
    res = search(model, None, _search_config(), tmp_path / "run", windows=windows, progress=False)
    assert res.trials == 8 and res.objective >= 0 and res.recipe is not None
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # restored dense, still bf16
    fresh = tiny_llama().to(torch.bfloat16)
    before = _linear_weights(fresh)
    replay = prune(fresh, plan=recipe_plan(tmp_path / "run" / RECIPE_NAME), windows=windows, progress=False)
    assert replay.mask_digest == res.recipe["mask_digest"]
    _check_exact_row_counts(fresh, before, 0.5)
    assert all(r.module.weight.dtype == torch.bfloat16 for refs in model_linears(fresh) for r in refs)


# ---- 3. the walk: one collector per distinct input, sums equal to plain float64 ----


def _forward_inputs(model, windows, batch_size, block=None) -> dict[str, torch.Tensor]:
    """Every linear's inputs [tokens, in] from forward pre-hooks on the dense model, batched like the walk."""
    got: dict[str, list[torch.Tensor]] = {}

    def recorder(name):
        def hook(module, args):
            got.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())

        return hook

    handles = [r.module.register_forward_pre_hook(recorder(r.full_name))
               for refs in model_linears(model) for r in refs if block is None or r.block == block]  # fmt: skip
    try:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                model(input_ids=windows[start : start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in got.items()}


def test_walk_shares_one_result_per_distinct_input_and_matches_float64_sums():
    model, windows = tiny_llama(), _windows(6)
    stats = walk(model, windows, model_linears(model), needs={"act_norm", "hessian"}, batch_size=2, progress=False)
    assert len(stats) == 2
    for b in stats:
        qkv = [b[f"self_attn.{n}_proj"] for n in "qkv"]
        assert qkv[0] is qkv[1] is qkv[2]
        assert b["mlp.gate_proj"] is b["mlp.up_proj"]
        own = [b["self_attn.o_proj"], b["mlp.down_proj"]]
        groups = [qkv[0], b["mlp.gate_proj"], *own]
        assert len({id(g) for g in groups}) == 4  # o_proj and down_proj have their own
        assert len({id(g["hessian"]["sum"]) for g in groups}) == 4

    xs = _forward_inputs(model, windows, batch_size=2, block=0)
    for name, x in xs.items():
        s = stats[0][name.split(".", 1)[1]]
        x64 = x.to(torch.float64)
        h = s["hessian"]
        assert h["count"] == x.shape[0] == 6 * 32
        assert h["sum"].dtype == torch.float64
        # A product of two float32 is exact in float64; only the float64 additions round (at most n * 2^-53
        # relative to sum |x_i x_j| over n = 192 tokens), so 1e-13 of that bound is a safe, tight tolerance.
        bound = 1e-13 * (x64.abs().T @ x64.abs())
        assert ((h["sum"] - x64.T @ x64).abs() <= bound).all(), name
        # float64 mean of x^2, rounded once to float32: the float64 error is far below float32's half ulp.
        assert torch.equal(s["act_norm"], x64.square().mean(0).to(torch.float32)), name


# ---- the walk's statistics are the model's own forward's, on every architecture ----


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(tiny_gemma3, id="gemma3-sliding"),
        pytest.param(lambda: tiny_qwen2(sliding_from=1), id="qwen2-mixed-sliding"),
        pytest.param(tiny_qwen2, id="qwen2"),
        pytest.param(tiny_mistral, id="mistral-sliding"),
        pytest.param(tiny_opt, id="opt"),
        pytest.param(tiny_gpt2, id="gpt2-conv1d"),
        pytest.param(tiny_llama, id="llama-gqa"),
    ],
)  # fmt: skip
def test_dense_walk_statistics_and_masks_are_the_forwards(build):
    """Dense statistics of every block from the walk equal mean(x^2) of each linear's inputs in one ordinary
    forward of the model, and pruning with either gives the same masks."""
    model, windows = build(), _windows()
    linears = model_linears(model)
    stats = walk(model, windows, linears, needs={"act_norm"}, batch_size=4, progress=False)
    xs = _forward_inputs(model, windows, batch_size=4)
    ref = [{r.name: {"act_norm": xs[r.full_name].to(torch.float64).square().mean(0).to(torch.float32)} for r in refs}
           for refs in linears]  # fmt: skip
    # Both see the same float32 inputs when the walk reproduces the forward; then their float64 means agree.
    wrong = [r.full_name for refs in linears for r in refs
             if not torch.equal(stats[r.block][r.name]["act_norm"], ref[r.block][r.name]["act_norm"])]  # fmt: skip
    plan = _plan(stats="dense", batch_size=4)
    from_walk = prune(build(), plan=plan, windows=windows, progress=False).mask_digest
    from_forward = prune(build(), plan=plan, windows=windows, stats=ref, progress=False).mask_digest
    assert not wrong, f"walk statistics differ from the forward's for {wrong}"
    assert from_walk == from_forward
