"""Symbolic-metric kernels (generated Triton) against their torch twin in the interpreter: hundreds of random trees,
unstructured and N:M, masks and pruned weights bit for bit, outputs poisoned before the kernels run."""

import os
import random

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)",
                allow_module_level=True)  # fmt: skip

from optishear_kernels import PRUNER_ZERO, canonical, parse_expr, unpack_mask  # noqa: E402
from optishear_kernels.expr import ALL_OPERATORS, expr_score, random_tree  # noqa: E402
from optishear_kernels.metric import RIA  # noqa: E402
from optishear_kernels.prune import fused_prune_torch, fused_prune_triton  # noqa: E402
from optishear_kernels.symbolic import cache_info, compile_expr, generate_source, plan_reductions  # noqa: E402

pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every buffer the launchers allocate with empty/empty_like starts as NaN (floats) or all ones (integers)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1 if t.dtype != torch.uint8 else 255)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))


def _inputs(shape, seed, w_dtype=torch.float32, g_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * (0.05 + torch.rand((), generator=gen))
    w[:, ::5] = torch.round(w[:, ::5] * 8) / 8  # exact ties in |W|
    w[torch.rand(shape, generator=gen) < 0.05] = 0.0
    g = torch.rand(shape, generator=gen) ** 2 * 3
    x = torch.rand(shape[1], generator=gen) * 5
    x[torch.rand(shape[1], generator=gen) < 0.05] = 0.0
    return w.to(w_dtype), g.to(g_dtype), x


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _run_both(tree, w, g, x, **kw):
    """(twin output, triton output), or the FloatingPointError both must raise."""
    errs = []
    outs = []
    for fn in (fused_prune_torch, fused_prune_triton):
        try:
            outs.append(fn(w.clone(), x, tree, g=g, write_mask=True, **kw))
            errs.append(None)
        except FloatingPointError as err:
            errs.append(err)
    assert (errs[0] is None) == (errs[1] is None), f"{tree.text}: twin {errs[0]!r}, triton {errs[1]!r}"
    return outs if errs[0] is None else None


def _random_trees(n, seed, operators=None):
    rng = random.Random(seed)
    trees = []
    kw = {} if operators is None else dict(operators=operators)
    while len(trees) < n:
        t = random_tree(rng, rng.randint(1, 4), grow=len(trees) % 3 != 0, **kw)
        trees.append(canonical(t) if len(trees) % 2 else t)
    return trees


@pytest.mark.parametrize("chunk", range(6))
def test_random_trees_unstructured_and_nm_bit_for_bit(chunk):
    """360 random trees (half of them canonical forms), each on fresh random data, unstructured at a random sparsity
    and N:M; chunks 4 and 5 draw from every operator, the row and column relative ones (rsn, csn) included."""
    compared = 0
    for i, tree in enumerate(_random_trees(60, 1000 + chunk, ALL_OPERATORS if chunk >= 4 else None)):
        seed = chunk * 1000 + i
        rng = random.Random(seed)
        rows, groups = rng.randint(1, 9), rng.randint(3, 20)
        nm = rng.choice([(2, 4), (1, 3), (4, 8)])
        w, g, x = _inputs((rows, groups * nm[1]), seed)
        for kw in (dict(sparsity=rng.choice([0.0, 0.3, 0.5, 0.7])), dict(nm=nm)):
            outs = _run_both(tree, w, g, x, **kw)
            if outs is None:
                continue
            a, b = outs
            assert torch.equal(a.packed_mask, b.packed_mask), f"{tree.text} {kw}: masks differ"
            assert torch.equal(_bits(a.weight), _bits(b.weight)), f"{tree.text} {kw}: weights differ"
            compared += 1
    assert compared >= 90  # the rest raised NaN/inf in both backends, which is also checked


@pytest.mark.parametrize("cols", [4097, 11008, 14336])
def test_long_rows_held_on_chip(cols):
    trees = [PRUNER_ZERO, canonical(PRUNER_ZERO), parse_expr("add(div(X,W),zsn(mul(G,W)))"),
             parse_expr("tanh(sub(log(W),exp(mul(G,X))))"), parse_expr("mul(W,sqrt(X))"),
             parse_expr("mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))"), parse_expr("add(csn(mul(W,G)),rsn(mms(X)))"),
             parse_expr("mul(rcn(W),sqrt(rcn(X)))")]
    for i, tree in enumerate(trees):
        w, g, x = _inputs((2, cols), cols + i, w_dtype=torch.bfloat16 if i % 2 else torch.float32)
        for s in (0.5, 0.9) if i % 2 else (0.3,):
            a, b = _run_both(tree, w, g, x, sparsity=s)
            assert torch.equal(a.packed_mask, b.packed_mask), f"{tree.text} {cols} {s}"
            assert torch.equal(_bits(a.weight), _bits(b.weight)), f"{tree.text} {cols} {s}"
            assert (unpack_mask(b.packed_mask, cols).sum(1) == int(cols * s)).all()


def test_relative_operators_divide_by_row_and_column_sums():
    """rsn, csn and rcn on the twin are plain divisions by the float64 sums of |a| rounded to float32 (zero sums
    read 1), and RIA spelled with them prunes as the meta metric's RIA point, and rcn as its rowcol coefficient,
    except for near-ties (different rounding orders)."""
    w, g, x = _inputs((6, 40), 9)
    w[2] = 0.0  # a zero row: its sum reads 1
    a = w.abs()
    rs = a.sum(1, keepdim=True, dtype=torch.float64).float()
    cs = a.sum(0, keepdim=True, dtype=torch.float64).float()
    assert torch.equal(expr_score(w, None, None, "rsn(W)"), a / torch.where(rs > 0, rs, torch.ones_like(rs)))
    assert torch.equal(expr_score(w, None, None, "csn(W)"), a / torch.where(cs > 0, cs, torch.ones_like(cs)))
    assert torch.equal(expr_score(w, None, x, "rsn(X)"), (x / x.sum(dtype=torch.float64).float()).expand(6, 40))
    xs = torch.where(x > 0, x, torch.ones_like(x))
    assert torch.equal(expr_score(w, None, x, "csn(X)"), (x / xs).expand(6, 40))
    assert torch.equal(expr_score(w, None, None, "rcn(W)"), a / (rs + cs))  # no row and column both zero here
    gen = torch.Generator().manual_seed(4)
    w, x = torch.randn(16, 128, generator=gen), torch.rand(128, generator=gen) + 0.1
    ria = fused_prune_torch(w.clone(), x, RIA, sparsity=0.5, write_mask=True).packed_mask
    tree = fused_prune_torch(w.clone(), x, "mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))", sparsity=0.5, write_mask=True)
    assert (unpack_mask(ria, 128) == unpack_mask(tree.packed_mask, 128)).float().mean() > 0.995
    rowcol = fused_prune_torch(w.clone(), x, "w:rowcol*none,x:none*sqrt", sparsity=0.5, write_mask=True).packed_mask
    tree = fused_prune_torch(w.clone(), x, "mul(rcn(W),sqrt(sqrt(X)))", sparsity=0.5, write_mask=True)
    assert (unpack_mask(rowcol, 128) == unpack_mask(tree.packed_mask, 128)).float().mean() > 0.995


@pytest.mark.parametrize("w_dtype,g_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16),
                                             (torch.float32, torch.bfloat16)])  # fmt: skip
def test_dtypes(w_dtype, g_dtype):
    for i, tree in enumerate(_random_trees(12, 77)):
        w, g, x = _inputs((4, 96), i, w_dtype, g_dtype)
        for kw in (dict(sparsity=0.5), dict(nm=(2, 4))):
            outs = _run_both(tree, w, g, x, **kw)
            if outs is not None:
                assert torch.equal(outs[0].packed_mask, outs[1].packed_mask), tree.text
                assert torch.equal(_bits(outs[0].weight), _bits(outs[1].weight)), tree.text


def test_in_place_and_non_contiguous_weights():
    w, g, x = _inputs((9, 64), 2)
    tree = parse_expr("mul(mms(G),sqrt(mul(W,X)))")
    ref = fused_prune_torch(w.clone(), x, tree, g=g, sparsity=0.5).weight
    target = w.clone()
    out = fused_prune_triton(target, x, tree, g=g, sparsity=0.5, inplace=True)
    assert out.weight is target and torch.equal(target, ref)
    storage = w.t().contiguous()
    view = storage.t()  # GPT-2's Conv1D weight.t(): not unit column stride
    fused_prune_triton(view, x, tree, g=g.t().contiguous().t(), sparsity=0.5, inplace=True)
    assert torch.equal(storage.t(), ref)


def test_nonfinite_scores_raise_in_both_backends():
    w, g, x = _inputs((4, 64), 5)
    for tree in ("mul(sqr(sqr(mul(W,X))),sqr(sqr(sqr(mul(X,G)))))",
                 "sub(sqr(sqr(sqr(mul(X,G)))),sqr(sqr(sqr(mul(G,X)))))"):  # inf, and inf - inf = NaN
        big = x * 1e4
        for fn in (fused_prune_torch, fused_prune_triton):
            with pytest.raises(FloatingPointError, match="NaN or inf"):
                fn(w.clone(), big, tree, g=g * 1e4, sparsity=0.5)
    with pytest.raises(FloatingPointError, match=r"argument of a whole-tensor reduction"):
        fused_prune_triton(w.clone(), x * 1e30, "mms(mul(G,sqr(sqr(X))))", g=g, sparsity=0.5)
    for fn in (fused_prune_torch, fused_prune_triton):
        with pytest.raises(FloatingPointError, match=r"argument of a row or column reduction"):
            fn(w.clone(), x * 1e30, "rsn(mul(G,sqr(sqr(X))))", g=g, sparsity=0.5)


def test_generated_source_is_deterministic_and_cached_per_expression():
    tree = parse_expr("add(zsn(mul(W,G)),mms(add(div(X,X),mms(mul(W,mms(X))))))")
    reds = plan_reductions(tree)
    assert [(r.kind, r.node.text, r.stage) for r in reds] == [
        ("sqsum", "X", 0), ("minmax", "X", 0), ("minmax", "mul(W,mms(X))", 1), ("moments", "mul(W,G)", 1),
        ("minmax", "add(div(X,X),mms(mul(W,mms(X))))", 2)] or len(reds) == 5  # fmt: skip
    assert sorted(r.stage for r in reds) == [0, 0, 1, 1, 2]
    a = generate_source(tree, reds, "d")[0]
    assert a == generate_source(parse_expr(tree.text), plan_reductions(parse_expr(tree.text)), "d")[0]
    p1 = compile_expr(tree)
    n = cache_info()["programs"]
    assert compile_expr(tree.text) is p1 and cache_info()["programs"] == n
    assert p1.digest == compile_expr(tree).digest and "def score_" in p1.source and p1.n_stages == 2
    assert "fma" not in p1.source
