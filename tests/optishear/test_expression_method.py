"""Symbolic metrics through the engine: the published Pruner-Zero metric against its formula, statistics declared by
the tree's terminals, and the errors that name the layer."""

import json

import pytest
import torch
from optishear import Plan, prune
from optishear.cli import main
from optishear.methods import method_for
from optishear.models import model_linears
from optishear_kernels import pack_mask

from ..conftest import random_windows, tiny_llama
from .test_gradients import plain_autograd


def _prune(model, metric, windows, **kw):
    plan = Plan(metric=metric, sparsity=kw.pop("sparsity", 0.5), **{"batch_size": 2, **kw})
    return prune(model, plan=plan, windows=windows, keep_masks=True, progress=False, grad_cache=False)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_published_metric_equals_its_formula_with_plain_autograd_gradients(structure):
    windows = random_windows(4, 32)
    dense = tiny_llama(layers=3)
    G = plain_autograd(dense, windows)
    res = _prune(tiny_llama(layers=3), "pruner-zero", windows, structure=structure)
    for refs in model_linears(dense):
        for r in refs:
            w, g = r.weight2d().abs(), G[r.full_name]
            score = torch.abs(w * w) * ((g - g.min()) / (g.max() - g.min()))  # mul(abs(mul(W,W)),mms(G))
            if structure == "2:4":
                grp = score.reshape(score.shape[0], -1, 4)
                idx = torch.sort(grp, dim=-1, stable=True)[1][..., :2]
                mask = torch.zeros_like(grp, dtype=torch.bool).scatter_(2, idx, True).reshape(score.shape)
            else:
                idx = torch.sort(score, dim=-1, stable=True)[1][:, : score.shape[1] // 2]
                mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
            assert torch.equal(res.masks[r.full_name], pack_mask(mask)), r.full_name
    assert res.gradient_seconds > 0


def test_statistics_follow_the_terminals():
    assert method_for(Plan(metric="pruner-zero")).needs() == {"grad"}
    assert method_for(Plan(metric="expr:mul(W,sqrt(X))")).needs() == {"act_norm"}
    assert method_for(Plan(metric="expr:add(mms(G),X)")).needs() == {"grad", "act_norm"}
    assert method_for(Plan(metric="expr:sqr(W)")).needs() == frozenset()


def test_expression_without_g_matches_the_meta_metric_point():
    """mul(W,sqrt(X)) is Wanda: the same masks as the meta metric's Wanda, sequential and dense statistics."""
    windows = random_windows(4, 32)
    for stats in ("sequential", "dense"):
        a = _prune(tiny_llama(layers=3), "expr:mul(W,sqrt(X))", windows, stats=stats)
        b = _prune(tiny_llama(layers=3), "wanda", windows, stats=stats)
        assert a.mask_digest == b.mask_digest, stats


def test_gradients_and_activations_together_sequential_and_dense_differ_only_through_x():
    windows = random_windows(4, 32)
    seq = _prune(tiny_llama(layers=3), "expr:mul(G,sqrt(X))", windows, stats="sequential")
    den = _prune(tiny_llama(layers=3), "expr:mul(G,sqrt(X))", windows, stats="dense")
    assert seq.sparsity == pytest.approx(0.5, abs=0.01) and den.sparsity == pytest.approx(0.5, abs=0.01)
    g_only = [_prune(tiny_llama(layers=3), "expr:G", windows, stats=s).mask_digest for s in ("sequential", "dense")]
    assert g_only[0] == g_only[1]  # G comes from the dense model in both modes


def test_nonfinite_scores_name_the_layer_and_leave_the_model_dense():
    model = tiny_llama(layers=3)
    before = {r.full_name: r.weight2d().clone() for refs in model_linears(model) for r in refs}
    with pytest.raises(FloatingPointError, match=r"layer 0\.self_attn\.[qkv]_proj: metric .* gives NaN or infinite"):
        _prune(model, "expr:mul(exp(exp(exp(exp(W)))),exp(exp(exp(exp(G)))))", random_windows(2, 16))
    assert all(torch.equal(r.weight2d(), before[r.full_name]) for refs in model_linears(model) for r in refs)


@pytest.mark.parametrize("metric,message", [("expr:mul(W,", "an argument is missing"),
                                            ("expr:cube(W)", "unknown operator 'cube'"),
                                            ("sqrt(W,X)", "sqrt at position 0 takes 1 argument")])  # fmt: skip
def test_bad_expressions_are_refused_before_the_model_is_touched(metric, message):
    with pytest.raises(ValueError, match=message):
        Plan(metric=metric).validate()


def test_cli_prunes_with_the_published_metric_and_reuses_the_gradient_cache(tiny_model_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the pruning of weights is a search over metrics"] * 400))
    argv = ["prune", "--model", str(tiny_model_dir), "--metric", "pruner-zero", "--sparsity", "0.5", "--calib",
            str(calib), "--nsamples", "2", "--seqlen", "32", "--grad-cache", str(tmp_path / "g"), "--json", "--quiet"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["gradient_seconds"] > 0 and len(list((tmp_path / "g").iterdir())) == 1
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "gradient_seconds" not in second and second["mask_digest"] == first["mask_digest"]  # loaded, not computed
    assert main(["prune", "--model", str(tiny_model_dir), "--metric", "expr:mul(W,frob(G))", "--quiet"]) == 2
    assert "unknown operator 'frob'" in capsys.readouterr().err
