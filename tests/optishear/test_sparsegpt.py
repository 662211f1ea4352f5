"""SparseGPT and the OBS update after any mask, against a plain re-implementation of the reference algorithm.

The reference (``_plain_sparsegpt``) is written from the paper and IST-DASLab/sparsegpt ``fasterprune`` without its
speed tricks: the inverse by ``torch.linalg.inv``, no lazy batching (every column's error goes to all later columns
at once), float64 throughout. The plain sequential protocol (``_plain_sequential``) runs the whole model once per
block with hooks on that block's linears, as the reference's ``llama_sequential`` does. Tolerances: in float64 the
two orders of summation differ by ~1e-12 relative; after the weights are stored in float32 and fed through the next
blocks the difference stays below 1e-5 of the weights' scale, far below any weight the mask could flip on.
"""

import json

import pytest
import torch

from optishear import Plan, prune
from optishear.calibrate import HESSIAN
from optishear.methods import SparseGPTUpdate, method_for
from optishear.methods.obs import inverse_hessian, obs_prune, obs_prune_all
from optishear.models import model_linears
from tests.conftest import plain_sequential, random_windows, tiny_gpt2, tiny_llama


def _plain_sparsegpt(W, H, *, sparsity=None, prune_n=0, m=0, mask=None, blocksize=128, percdamp=0.01):
    """The reference algorithm, plainly. W [out, in], H [in, in] (2/n sum x x^T), float64. Returns (W, mask)."""
    W = W.clone().double()
    H = H.clone().double()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H = H + percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool) if mask is None else mask.clone()
    for j in range(cols):
        if mask is None and prune_n == 0 and j % blocksize == 0:  # unstructured: choose this block's mask now
            j2 = min(j + blocksize, cols)
            score = W[:, j:j2] ** 2 / torch.diag(U)[j:j2] ** 2
            thresh = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
            pruned[:, j:j2] = score <= thresh
        if mask is None and prune_n and j % m == 0:  # N:M: prune_n smallest of the group, from updated weights
            score = W[:, j : j + m] ** 2 / torch.diag(U)[j : j + m] ** 2
            for r in range(rows):
                pruned[r, j + torch.argsort(score[r])[:prune_n]] = True
        err = torch.where(pruned[:, j], W[:, j], torch.zeros_like(W[:, j])) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
        W[pruned[:, j], j] = 0
    return W, pruned


def _hessian(x):
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 / x.shape[0] * x.T @ x, {"sum": x.T @ x, "count": x.shape[0]}


@pytest.mark.parametrize("case", ["unstructured", "2:4", "1:4", "mask"])
def test_obs_prune_equals_plain_reference(case):
    g = torch.Generator().manual_seed(3)
    rows, cols = 37, 300  # three column blocks, the last one short
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    X = torch.randn(900, cols, generator=g, dtype=torch.float64) * torch.rand(cols, generator=g, dtype=torch.float64)
    X[:, 7] = 0  # a dead input
    H, stat = _hessian(X)
    inv = inverse_hessian(stat)
    if case == "unstructured":
        ours = obs_prune(W, inv, sparsity=0.5)
        ref = _plain_sparsegpt(W, H, sparsity=0.5)
    elif case == "mask":
        fixed = torch.rand(rows, cols, generator=g) < 0.6
        ours = obs_prune(W, inv, mask=fixed)
        ref = _plain_sparsegpt(W, H, mask=fixed)
    else:
        n, m = map(int, case.split(":"))
        ours = obs_prune(W, inv, nm=(n, m))
        ref = _plain_sparsegpt(W, H, prune_n=m - n, m=m)
        assert (ours[1].reshape(rows, -1, m).sum(-1) == m - n).all()
    assert torch.equal(ours[1], ref[1])
    assert (ours[0][ours[1]] == 0).all()
    assert (ours[0][:, 7] == 0).all()
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-10)
    if case == "unstructured":  # the reference's <= threshold: int(n * s) + ties per 128-column block
        assert int(ours[1][:, :128].sum()) == int(rows * 128 * 0.5) + 1


def test_layers_side_by_side_equal_one_after_another_bit_for_bit():
    """``obs_prune_all`` on two threads gives each layer exactly ``obs_prune``'s result (every mode, two inputs of
    different widths), yields every task once, leaves torch's thread count as it was, and checks every task before
    running any."""
    g = torch.Generator().manual_seed(4)
    invs = {}
    for cols in (256, 384):
        X = torch.randn(600, cols, generator=g, dtype=torch.float64)
        X *= torch.rand(cols, generator=g, dtype=torch.float64)
        invs[cols] = inverse_hessian(_hessian(X)[1])
    tasks = []
    for rows, cols, mode in [(40, 256, "sparsity"), (96, 384, "nm"), (17, 256, "mask"), (64, 384, "sparsity"),
                             (33, 384, "mask")]:  # fmt: skip
        task = {"w": torch.randn(rows, cols, generator=g), "inv": invs[cols]}
        task.update({"sparsity": {"sparsity": 0.6}, "nm": {"nm": (2, 4)},
                     "mask": {"mask": torch.rand(rows, cols, generator=g) < 0.5}}[mode])  # fmt: skip
        tasks.append(task)
    threads = torch.get_num_threads()
    got = {i: (new, mask) for i, new, mask in obs_prune_all(tasks, threads=2)}
    assert torch.get_num_threads() == threads
    assert sorted(got) == list(range(len(tasks)))
    for i, task in enumerate(tasks):
        want = obs_prune(**task)
        assert torch.equal(got[i][0], want[0]) and torch.equal(got[i][1], want[1]), i
    bad = [*tasks[:2], {"w": torch.randn(8, 100), "inv": invs[256], "sparsity": 0.5}]
    ran = []
    with pytest.raises(ValueError, match="inverse Hessian is \\(256, 256\\) but the weights have 100 inputs"):
        for i, *_ in obs_prune_all(bad, threads=2):
            ran.append(i)
    assert ran == []


def test_update_lowers_the_layer_error_for_any_mask():
    """With the mask fixed and correlated inputs (as real activations are), the OBS update cuts the layer's output
    error on the calibration inputs well below zeroing alone."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 128, generator=g, dtype=torch.float64)
    mix = torch.randn(32, 128, generator=g, dtype=torch.float64)  # inputs near a 32-dimensional subspace
    X = torch.randn(2000, 32, generator=g, dtype=torch.float64) @ mix
    X += 0.1 * torch.randn(2000, 128, generator=g, dtype=torch.float64)
    _, stat = _hessian(X)
    mask = torch.rand(24, 128, generator=g) < 0.5
    new, _ = obs_prune(W, inverse_hessian(stat), mask=mask)
    zeroed = W.masked_fill(mask, 0)
    err_zero = ((X @ (W - zeroed).T) ** 2).sum()
    err_obs = ((X @ (W - new).T) ** 2).sum()
    assert err_obs < 0.6 * err_zero  # measured 0.52


def _plain_sequential(model, windows, sparsity=None, nm=None):
    """SparseGPT's sequential protocol, plainly (``plain_sequential``), each linear pruned by ``_plain_sparsegpt``."""

    def one(r, x):
        H, _ = _hessian(x)
        w = r.weight2d()
        if nm is None:
            new, mask = _plain_sparsegpt(w, H, sparsity=sparsity)
        else:
            new, mask = _plain_sparsegpt(w, H, prune_n=nm[1] - nm[0], m=nm[1])
        w.copy_(new.to(w.dtype))

    plain_sequential(model, windows, one)
    return model


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_sparsegpt_engine_equals_plain_sequential(structure):
    windows = random_windows(6, 24, seed=1)
    ours = tiny_llama(seed=2, hidden=160, inter=320)
    ref = tiny_llama(seed=2, hidden=160, inter=320)
    res = prune(ours, plan=Plan(metric="sparsegpt", sparsity=0.5, structure=structure, batch_size=4),
                windows=windows, keep_masks=True, progress=False)  # fmt: skip
    _plain_sequential(ref, windows, sparsity=0.5, nm=(2, 4) if structure == "2:4" else None)
    for a, b in zip(model_linears(ours), model_linears(ref)):
        for ra, rb in zip(a, b):
            wa, wb = ra.weight2d(), rb.weight2d()
            assert torch.equal(wa == 0, wb == 0), ra.full_name
            torch.testing.assert_close(wa, wb, rtol=0, atol=1e-5 * float(wb.abs().max()))
    assert 0.49 < res.sparsity < 0.52


def test_update_after_wanda_keeps_wanda_masks_and_lowers_error():
    windows = random_windows(6, 24, seed=1)
    wanda = tiny_llama(seed=2)
    updated = tiny_llama(seed=2)
    dense = tiny_llama(seed=2)
    base = Plan(metric="wanda", sparsity=0.5, stats="dense", batch_size=4)
    r1 = prune(wanda, plan=base, windows=windows, keep_masks=True, progress=False)
    r2 = prune(updated, plan=Plan(**{**base.to_dict(), "update": "sparsegpt"}), windows=windows, keep_masks=True,
               progress=False)  # fmt: skip
    assert r1.masks.keys() == r2.masks.keys()
    assert all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks)
    assert r1.mask_digest != r2.mask_digest  # equal masks, other weights: never one evaluation in a search
    changed = 0
    for a, b in zip(model_linears(wanda), model_linears(updated)):
        for ra, rb in zip(a, b):
            assert torch.equal(ra.weight2d() == 0, rb.weight2d() == 0) or (rb.weight2d() == 0).sum() >= (
                ra.weight2d() == 0).sum()  # fmt: skip
            changed += int(not torch.equal(ra.weight2d(), rb.weight2d()))
    assert changed == sum(len(refs) for refs in model_linears(wanda))
    with torch.no_grad():
        ref = dense(input_ids=windows).logits
        err_w = (wanda(input_ids=windows).logits - ref).pow(2).mean()
        err_u = (updated(input_ids=windows).logits - ref).pow(2).mean()
    assert err_u < err_w


def test_update_stacks_shared_inputs_like_one_pass_per_linear():
    """q/k/v (and gate/up) share a Hessian and are updated as stacked rows; equal to updating each alone."""
    windows = random_windows(4, 16, seed=5)
    model = tiny_llama(seed=4)
    plan = Plan(metric="magnitude-row", sparsity=0.5, stats="dense", update="sparsegpt", batch_size=4)
    refs0 = model_linears(model)[0]
    dense = {r.name: r.weight2d().clone() for r in refs0}
    from optishear.calibrate import walk

    stats = walk(model, windows, model_linears(model), {HESSIAN, "act_norm"}, progress=False)
    prune(model, plan=plan, windows=windows, stats=stats, progress=False)
    for r in refs0:
        mask = r.weight2d() == 0
        single, _ = obs_prune(dense[r.name], inverse_hessian(stats[0][r.name][HESSIAN]), mask=mask)
        torch.testing.assert_close(r.weight2d(), single.float(), rtol=0, atol=1e-6)


def test_sparsegpt_on_gpt2_conv1d_and_per_module_sparsity():
    model = tiny_gpt2()
    plan = Plan(metric="sparsegpt", sparsity=0.5, module_sparsity={"attn": [0.3, 0.3], "mlp": [0.6, 0.6]},
                batch_size=4)  # fmt: skip
    res = prune(model, plan=plan, windows=random_windows(4, 16), progress=False)
    attn = [v for k, v in res.layer_sparsity.items() if ".attn." in k]
    mlp = [v for k, v in res.layer_sparsity.items() if ".mlp." in k]
    assert all(abs(v - 0.3) < 0.02 for v in attn) and all(abs(v - 0.6) < 0.02 for v in mlp)


def test_plan_update_round_trips_and_method_names():
    plan = Plan(metric="wanda", update="sparsegpt", module_sparsity={"attn": [0.4], "mlp": [0.6]})
    again = Plan.from_json(plan.to_json())
    assert again == plan
    import argparse

    ap = argparse.ArgumentParser()
    Plan.add_arguments(ap)
    assert Plan.from_args(ap.parse_args(plan.to_argv())) == plan
    m = method_for(plan)
    assert isinstance(m, SparseGPTUpdate) and m.name == "metric+sparsegpt" and m.metric.name == "wanda"
    assert HESSIAN in m.needs() and "act_norm" in m.needs()
    assert method_for(Plan(metric="sparsegpt", update="sparsegpt")).name == "sparsegpt"


def test_bad_input_nonfinite_hessian_and_nm_width():
    stat = {"sum": torch.eye(8, dtype=torch.float64), "count": 10}
    stat["sum"][2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        inverse_hessian(stat, "0.mlp.up_proj")
    model = tiny_llama(hidden=64, inter=130)  # down_proj has 130 inputs: 2:4 does not divide
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="divisible by 4"):
        prune(model, plan=Plan(metric="wanda", structure="2:4", update="sparsegpt"), windows=random_windows(2, 16),
              progress=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="update"):
        Plan(update="obs").validate()
    with pytest.raises(ValueError, match="module_sparsity"):
        Plan(module_sparsity={"attn": [0.5]}).validate()


def test_cholesky_failure_retries_with_more_dampening(caplog):
    """A Hessian that is not positive definite at 1% dampening is retried with more, and says so."""
    s = torch.full((6, 6), 1.5, dtype=torch.float64)  # eigenvalues 8.5 and -0.5 (x5), diagonal 1
    s.diagonal().fill_(1.0)
    with caplog.at_level("WARNING"):
        inv = inverse_hessian({"sum": s, "count": 2}, "0.self_attn.q_proj")
    assert inv.percdamp == pytest.approx(1.0)
    assert "Cholesky" in caplog.text and "0.self_attn.q_proj" in caplog.text
    assert json.dumps(inv.percdamp)
