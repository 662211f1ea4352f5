"""The ADMM update and gradual pruning (Boža 2024), against a plain re-implementation of the paper's algorithm.

The reference (``_plain_admm``) is written from the paper without speed tricks: a fresh ``torch.linalg.solve`` of
(H + rho I) every iteration instead of one shared inverse, masks by a full stable sort (unstructured: over the
layer; N:M: each group's M - N smallest, then the smallest of those up to the schedule's sparsity), float64
throughout. Tolerance: the two differ by the order of summation of one solve (~1e-12 relative in float64); masks
must be equal. The plain sequential protocol runs the whole model once per block with hooks on its linears.
"""

import pytest
import torch

from optishear_kernels import RIA, WANDA, meta_score

from optishear import Plan, prune
from optishear.calibrate import HESSIAN, walk
from optishear.methods import AdmmMethod, SparseGPTUpdate, method_for
from optishear.methods.admm import AdmmSolver, admm_prune
from optishear.methods.obs import inverse_hessian, obs_prune
from optishear.models import model_linears
from tests.conftest import plain_sequential, random_windows, tiny_llama


def _plain_mask(v, frac, nm, score_fn=None, norm=None):
    """ADMM's own choice (|v| over the layer) or, with ``score_fn``, the metric's per row of v / norm."""
    score = v.abs().clone() if score_fn is None else score_fn((v / norm).float()).double()
    if nm is not None:
        keep, m = nm
        groups = score.reshape(score.shape[0], -1, m)  # a view: each group's N largest become inf
        groups.scatter_(2, torch.sort(groups, dim=2, stable=True)[1][..., m - keep :], float("inf"))
    if score_fn is not None:
        mask = torch.zeros(score.shape, dtype=torch.bool)
        for r in range(score.shape[0]):
            mask[r, torch.sort(score[r], stable=True)[1][: int(score.shape[1] * frac)]] = True
        return mask
    k = int(score.numel() * frac)
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[torch.sort(score.flatten(), stable=True)[1][:k]] = True
    return mask.reshape(score.shape)


def _plain_admm(W, H, *, sparsity=None, nm=None, mask=None, iters=20, mask_iters=15, rho=1.0, percdamp=0.1,
                score=None):
    """The paper's ADMM with gradual pruning, plainly. W [out, in], H [in, in]. Returns (W, mask)."""
    W, H = W.double().clone(), H.double().clone()
    cols = W.shape[1]
    d = torch.diag(H).clone()
    dead = d == 0
    d[dead] = 1
    norm = d.sqrt()
    Hn = H / torch.outer(norm, norm)
    Hn = Hn + percdamp * torch.diag(Hn).mean() * torch.eye(cols, dtype=H.dtype)
    W0 = W * norm
    W0[:, dead] = 0
    s = sparsity if nm is None else (nm[1] - nm[0]) / nm[1]
    pruned = mask.clone() if mask is not None else _plain_mask(W0, s if mask_iters == 0 else 0.0, nm, score, norm)
    Wk, U = W0.clone(), torch.zeros_like(W0)
    A = Hn + rho * torch.eye(cols, dtype=H.dtype)
    for t in range(iters):
        if mask is None and t < mask_iters:
            pruned = _plain_mask(Wk + U, s - s * (1 - (t + 1) / mask_iters) ** 3, nm, score, norm)
        Z = torch.where(pruned, 0.0, Wk + U)
        U = U + Wk - Z
        Wk = torch.linalg.solve(A, (W0 @ Hn + rho * (Z - U)).T).T  # A symmetric: W A = B
    out = torch.where(pruned, 0.0, Wk + U) / norm
    out[:, dead] = 0
    return out, pruned


def _layer(seed=3, rows=37, cols=96, n=400):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g, dtype=torch.float64) * torch.rand(cols, generator=g, dtype=torch.float64)
    X[:, 5] = 0  # a dead input
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return W, X, {"sum": X.T @ X, "count": n}


def _ria(x_sq):
    """A row-scoped metric for the ``score`` cases: RIA's score through the kernels' scoring twin."""
    return lambda v: meta_score(v, x_sq, RIA)


@pytest.mark.parametrize("case", ["unstructured", "2:4", "1:4", "mask", "no-gradual", "metric", "metric-2:4"])
def test_admm_equals_plain_reference(case):
    W, X, stat = _layer()
    H = 2.0 / stat["count"] * stat["sum"]
    solver = AdmmSolver(stat)
    score = _ria((X.float() ** 2).mean(0))
    kw = {"unstructured": {"sparsity": 0.6}, "2:4": {"nm": (2, 4)}, "1:4": {"nm": (1, 4)},
          "no-gradual": {"sparsity": 0.5, "mask_iters": 0}, "metric": {"sparsity": 0.6, "score": score},
          "metric-2:4": {"nm": (2, 4), "score": score},
          "mask": {"mask": torch.rand(W.shape, generator=torch.Generator().manual_seed(9)) < 0.5}}[case]  # fmt: skip
    new, mask = admm_prune(W, solver, **kw)
    ref, ref_mask = _plain_admm(W, H, **kw)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new, ref, rtol=0, atol=1e-9 * float(ref.abs().max()))
    assert torch.equal(new[:, 5], torch.zeros_like(new[:, 5]))  # the dead input's weights
    assert bool((new[mask] == 0).all())
    if case == "unstructured":
        assert int(mask.sum()) == int(W.numel() * 0.6)
    if case == "metric":
        assert bool((mask.sum(1) == int(W.shape[1] * 0.6)).all())  # per row
    if case in ("2:4", "1:4", "metric-2:4"):
        m, keep = 4, kw["nm"][0]
        assert bool((mask.reshape(W.shape[0], -1, m).sum(-1) == m - keep).all())


@pytest.mark.parametrize("case", ["unstructured", "2:4", "mask"])
def test_float32_solver_keeps_the_float64_masks(case):
    """``AdmmSolver(dtype=torch.float32)`` (half the bytes, 2x the matmul rate; not the default until its masks are
    checked across machines): on this layer it chooses the float64 masks, and its weights are float32 within 1e-5 of
    float64's (measured 4-5e-7 relative), so its layer error is float64's to 1e-6 (measured 3e-9)."""
    W, X, stat = _layer()
    kw = {"unstructured": {"sparsity": 0.6}, "2:4": {"nm": (2, 4)},
          "mask": {"mask": torch.rand(W.shape, generator=torch.Generator().manual_seed(9)) < 0.5}}[case]  # fmt: skip
    new64, mask64 = admm_prune(W, AdmmSolver(stat), **kw)
    new32, mask32 = admm_prune(W, AdmmSolver(stat, dtype=torch.float32), **kw)
    assert new32.dtype == torch.float32 and new64.dtype == torch.float64
    assert torch.equal(mask32, mask64)
    assert bool((new32[mask32] == 0).all())
    assert float((new32.double() - new64).norm() / new64.norm()) < 1e-5

    def err(w):
        return float(((w.double() - W) @ X.T).pow(2).sum())

    assert abs(err(new32) / err(new64) - 1) < 1e-6


def test_fixed_mask_converges_to_the_least_squares_solution_and_beats_obs():
    """With the mask fixed, ADMM solves min ||(W - W0) Xn||^2 + damp ||W - W0||^2 over the kept weights: with enough
    iterations it equals each row's exact solve, and its layer error is below SparseGPT's update for the same mask."""
    W, X, stat = _layer(rows=12, cols=64)
    solver = AdmmSolver(stat, percdamp=1e-6)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(4)) < 0.5
    new, _ = admm_prune(W, solver, mask=mask, iters=400, mask_iters=0)
    H = stat["sum"].clone()
    H[5, 5] = 1.0  # the dead input: any value, its weight is zeroed
    exact = torch.zeros_like(W)
    for r in range(W.shape[0]):
        keep = torch.nonzero(~mask[r] & (torch.arange(64) != 5)).squeeze(1)
        w0 = torch.where(torch.arange(64) == 5, 0.0, W[r])
        Hd = H + 1e-6 * torch.diag(torch.diag(H))  # 1e-6 of the normalized unit diagonal
        exact[r, keep] = torch.linalg.solve(Hd[keep][:, keep], (Hd @ w0)[keep])
    rel = float((new - exact).norm() / exact.norm())
    assert rel < 1e-6, rel  # measured 2e-8 (4.6e-5 after the default 20 iterations)

    def err(w):
        return float(((w - W) @ X.T).pow(2).sum())

    obs, _ = obs_prune(W, inverse_hessian(stat), mask=mask)
    assert err(new) < err(obs)
    assert err(exact) <= err(new) * (1 + 1e-6)


def _plain_sequential(model, windows, metric=None, **kw):
    def one(r, x):
        extra = {"score": metric(x.pow(2).mean(0).float())} if metric is not None else {}
        new, _ = _plain_admm(r.weight2d(), 2.0 / x.shape[0] * x.T @ x, **kw, **extra)
        r.weight2d().copy_(new.float())

    plain_sequential(model, windows, one)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
@pytest.mark.parametrize("metric", ["admm", "wanda"])
def test_admm_engine_equals_plain_sequential(structure, metric):
    """``--metric admm``, and ``--metric wanda --update admm-gradual`` (Wanda choosing each gradual mask per row)."""
    windows = random_windows(6, 24, seed=1)
    ours = tiny_llama(seed=2, hidden=160, inter=320)
    ref = tiny_llama(seed=2, hidden=160, inter=320)
    plan = Plan(metric=metric, sparsity=0.5, structure=structure, batch_size=4,
                update="admm-gradual" if metric == "wanda" else "none")  # fmt: skip
    res = prune(ours, plan=plan, windows=windows, keep_masks=True, progress=False)
    wanda = (lambda x_sq: (lambda v: meta_score(v, x_sq, WANDA))) if metric == "wanda" else None
    _plain_sequential(ref, windows, wanda, **({"sparsity": 0.5} if structure == "unstructured" else {"nm": (2, 4)}))
    for a, b in zip(model_linears(ours), model_linears(ref)):
        for ra, rb in zip(a, b):
            wa, wb = ra.weight2d(), rb.weight2d()
            assert torch.equal(wa == 0, wb == 0), ra.full_name
            torch.testing.assert_close(wa, wb, rtol=0, atol=1e-5 * float(wb.abs().max()))
    assert abs(res.sparsity - 0.5) < 0.01


def test_update_admm_keeps_the_masks_and_stacks_shared_inputs():
    """``--update admm`` after Wanda: Wanda's masks, a digest of its own, every linear equal to ``admm_prune`` of that
    linear alone with the same mask (q/k/v and gate/up are solved as stacked rows), and a smaller output error than
    Wanda's and than SparseGPT's update with the same masks."""
    windows = random_windows(6, 24, seed=1)
    models = {u: tiny_llama(seed=2) for u in ("none", "sparsegpt", "admm")}
    dense = tiny_llama(seed=2)
    stats = walk(dense, windows, model_linears(dense), {HESSIAN, "act_norm"}, progress=False)
    res = {u: prune(m, plan=Plan(metric="wanda", sparsity=0.5, stats="dense", update=u, batch_size=4),
                    windows=windows, stats=stats, keep_masks=True, progress=False)
           for u, m in models.items()}  # fmt: skip
    assert all(torch.equal(res["none"].masks[k], res["admm"].masks[k]) for k in res["none"].masks)
    assert len({r.mask_digest for r in res.values()}) == 3
    dense_w = {r.full_name: r.weight2d() for refs in model_linears(dense) for r in refs}
    for i, refs in enumerate(model_linears(models["admm"])):
        for r in refs:
            single, _ = admm_prune(dense_w[r.full_name], AdmmSolver(stats[i][r.name][HESSIAN]),
                                   mask=r.weight2d() == 0)  # fmt: skip
            torch.testing.assert_close(r.weight2d(), single.float(), rtol=0, atol=1e-6)
    with torch.no_grad():
        ref = dense(input_ids=windows).logits
        err = {u: float((m(input_ids=windows).logits - ref).pow(2).mean()) for u, m in models.items()}
    assert err["admm"] < err["sparsegpt"] < err["none"], err


def test_plan_and_method_names_and_bad_input():
    plan = Plan(metric="wanda", update="admm")
    assert Plan.from_json(plan.to_json()) == plan
    m = method_for(plan)
    assert isinstance(m, SparseGPTUpdate) and m.name == "metric+admm" and HESSIAN in m.needs()
    assert isinstance(method_for(Plan(metric="admm")), AdmmMethod)
    assert isinstance(method_for(Plan(metric="admm", update="admm")), AdmmMethod)
    assert method_for(Plan(metric="sparsegpt", update="admm")).name == "sparsegpt+admm"
    with pytest.raises(ValueError, match="update must be"):
        Plan(update="lsq").validate()
    assert method_for(Plan(metric="ria", update="admm-gradual")).name == "metric+admm-gradual"
    for metric in ("magnitude", "sparsegpt", "expr:mul(W,X)"):
        with pytest.raises(ValueError, match="admm-gradual re-chooses the mask by a row-scoped metric"):
            Plan(metric=metric, update="admm-gradual").validate()
    stat = {"sum": torch.eye(8, dtype=torch.float64), "count": 10}
    stat["sum"][1, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        AdmmSolver(stat, "0.mlp.up_proj")
    W, _, stat = _layer(rows=4, cols=96)
    solver = AdmmSolver(stat)
    with pytest.raises(ValueError, match="exactly one"):
        admm_prune(W, solver, sparsity=0.5, mask=W > 0)
    with pytest.raises(ValueError, match="mask is"):
        admm_prune(W, solver, mask=torch.zeros(4, 95, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by 5"):
        admm_prune(W, solver, nm=(2, 5))
    model = tiny_llama(hidden=64, inter=130)  # down_proj has 130 inputs: 2:4 does not divide
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in (Plan(metric="admm", structure="2:4"), Plan(metric="wanda", structure="2:4", update="admm")):
        with pytest.raises(ValueError, match="divisible by 4"):
            prune(model, plan=p, windows=random_windows(2, 16), progress=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("ties", [False, True])
def test_selections_equal_a_stable_sort(ties):
    """The masks are chosen by selection (numpy's introselect on CPU), not by sorting: the same entries a stable sort
    would take, ties at the k-th value by position, over the layer and per row."""
    from optishear.methods.admm import _smallest, _smallest_rows

    g = torch.Generator().manual_seed(7)
    s = torch.randint(0, 5, (37, 96), generator=g).double() if ties else torch.randn(37, 96, generator=g).double()
    for k in (0, 1, 17, 48, 96):
        rows = torch.zeros_like(s, dtype=torch.bool)
        rows.scatter_(1, torch.sort(s, dim=1, stable=True)[1][:, :k], True)
        assert torch.equal(_smallest_rows(s, k), rows)
        flat = torch.zeros(s.numel(), dtype=torch.bool)
        flat[torch.sort(s.flatten(), stable=True)[1][: k * 37]] = True
        assert torch.equal(_smallest(s.flatten(), k * 37), flat)
