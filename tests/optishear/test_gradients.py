"""Gradient statistics G against a plain autograd computation, their cache, and the errors a user can hit."""

import pytest
import torch
from optishear.calibrate.gradients import compute_gradients, gradient_key, gradient_statistics
from optishear.models import model_linears

from ..conftest import random_windows, tiny_gpt2, tiny_llama


def plain_autograd(model, windows, scale=100.0):
    """Pruner-Zero's gradient_computation.py, plainly: every parameter trainable, one window per backward,
    (grad * scale)^2 summed in float32 per linear, then sqrt."""
    model.train(False)
    acc = {}
    for i in range(windows.shape[0]):
        model.zero_grad(set_to_none=True)
        ids = windows[i : i + 1]
        model(input_ids=ids, labels=ids).loss.backward()
        for refs in model_linears(model):
            for r in refs:
                g = r.module.weight.grad.detach().to(torch.float32)
                acc[r.full_name] = acc.get(r.full_name, 0) + (g * scale) ** 2
    model.zero_grad(set_to_none=True)
    return {k: torch.sqrt(v) for k, v in acc.items()}


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_gradient_statistics_equal_plain_autograd(make):
    model = make()
    windows = random_windows(3, 24)
    want = plain_autograd(model, windows)
    got, info = compute_gradients(model, windows, progress=False)
    for refs in model_linears(model):
        for r in refs:
            g = got[r.block][r.name]
            expect = want[r.full_name].t() if r.transposed else want[r.full_name]
            assert g.shape == r.weight2d().shape and g.dtype == torch.float32
            assert torch.equal(g, expect), r.full_name
    assert info["accumulator_bytes"] == sum(r.weight2d().numel() * 4 for refs in model_linears(model) for r in refs)
    assert info["seconds"] > 0 and info["peak_bytes"] > 0
    # the pass leaves the model as it was: no gradients, the same requires_grad flags, eval mode
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and not model.training


def test_cache_is_reloaded_not_recomputed_and_checked(tmp_path, monkeypatch):
    import optishear.calibrate.gradients as gm

    model, windows = tiny_llama(), random_windows(2, 16)
    first = gradient_statistics(model, windows, cache_dir=tmp_path, progress=False)
    assert not first.loaded and first.seconds > 0 and (tmp_path / f"gradients-{first.key}.pt").is_file()
    monkeypatch.setattr(gm, "compute_gradients", lambda *a, **k: pytest.fail("recomputed instead of reloaded"))
    again = gradient_statistics(model, windows, cache_dir=tmp_path, progress=False)
    assert again.loaded and again.digest == first.digest and again.key == first.key
    # another window set or another model has another key: a file under a wrong name is refused, not used
    other = gradient_key(model, random_windows(2, 16, seed=5))
    (tmp_path / f"gradients-{first.key}.pt").rename(tmp_path / f"gradients-{other}.pt")
    with pytest.raises(ValueError, match="computed for another model, calibration windows or dtype"):
        gradient_statistics(model, random_windows(2, 16, seed=5), cache_dir=tmp_path, progress=False)
    assert gradient_key(tiny_llama(seed=1), windows) != first.key


def test_bfloat16_cache_halves_the_size(tmp_path):
    model, windows = tiny_llama(), random_windows(2, 16)
    f32 = gradient_statistics(model, windows, cache_dir=tmp_path / "a", progress=False)
    bf16 = gradient_statistics(model, windows, dtype="bfloat16", cache_dir=tmp_path / "b", progress=False)
    assert bf16.key != f32.key and all(t.dtype == torch.bfloat16 for b in bf16.per_block for t in b.values())
    assert torch.equal(bf16.per_block[0]["mlp.up_proj"], f32.per_block[0]["mlp.up_proj"].to(torch.bfloat16))
    size = lambda d: sum(p.stat().st_size for p in d.iterdir())  # noqa: E731
    assert size(tmp_path / "b") < 0.6 * size(tmp_path / "a")


def test_a_layer_without_gradient_is_named():
    model = tiny_llama()
    model.model.layers[1].mlp.unused = torch.nn.Linear(64, 64)  # inside a block, never called
    with pytest.raises(ValueError, match=r"layer 1\.mlp\.unused received no gradient"):
        compute_gradients(model, random_windows(1, 8), progress=False)


def test_an_all_zero_gradient_is_named():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()  # q, k and v reach the loss only through o_proj
    with pytest.raises(ValueError, match=r"gradient of layer 0\.self_attn\.q_proj is zero on every calibration"):
        compute_gradients(model, random_windows(2, 8), progress=False)


def test_a_model_that_cannot_produce_gradients_is_an_error():
    with torch.inference_mode():
        model = tiny_llama()
    with pytest.raises(ValueError, match="the model cannot produce gradients"):
        compute_gradients(model, random_windows(1, 8), progress=False)
