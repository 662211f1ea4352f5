"""Symbolic metrics: the text form, the operators' semantics (Pruner-Zero's, made safe), the published metric."""

import json
import math
import random

import pytest
import torch
from optishear_kernels import PRUNER_ZERO, Expr, expr_score, from_pruner_zero, parse_expr
from optishear_kernels.expr import ALL_OPERATORS, ARITY, OPERATORS, random_tree
from optishear_kernels.prune import fused_prune_torch

# data/best_tree.json of pprp/Pruner-Zero (commit db70134), the metric the paper published.
BEST_TREE = json.loads('{"data": "mul", "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"}, '
                       '"right": {"data": "W"}}}, "right": {"data": "mms", "left": {"data": "G"}}}')  # fmt: skip


def _data(rows=8, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    grad = torch.rand(rows, cols, generator=g) * 3
    x = torch.rand(cols, generator=g) * 4
    return w, grad, x


def test_text_round_trips_on_random_trees():
    rng = random.Random(0)
    for i in range(500):
        ops = ALL_OPERATORS if i % 3 == 0 else OPERATORS  # the row/column relative extension too
        tree = random_tree(rng, rng.randint(0, 5), grow=bool(i % 2), operators=ops)
        assert parse_expr(tree.text) == tree
        assert parse_expr(" expr: " + tree.text.replace(",", " , ").replace("(", "( ")) == tree
        assert parse_expr(tree.text).text == tree.text
    assert parse_expr("MUL(w, SQRT(x))").text == "mul(W,sqrt(X))"


def test_the_published_metric_is_pruner_zeros_best_tree():
    assert from_pruner_zero(BEST_TREE) == PRUNER_ZERO
    assert PRUNER_ZERO.text == "mul(abs(mul(W,W)),mms(G))"
    assert PRUNER_ZERO.uses_g and not PRUNER_ZERO.uses_x and PRUNER_ZERO.size == 7


@pytest.mark.parametrize("text,message", [
    ("mul(W,", "an argument is missing at the end"),
    ("mul(W G)", "expected ')' after the arguments of mul, got 'G' at position 6"),
    ("foo(W)", "unknown operator 'foo' at position 0"),
    ("sqrt(W,G)", "sqrt at position 0 takes 1 argument"),
    ("add(W)", "add at position 0 takes 2 argument"),
    ("W)", "unexpected ')' at position 1"),
    ("", "it is empty"),
    ("mul(W,$)", "unexpected '$' at position 6"),
    ("Y", "unknown operator 'Y'"),
])  # fmt: skip
def test_malformed_expressions_are_named_with_the_position(text, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        parse_expr(text)


def test_nodes_check_their_arity_and_operator():
    with pytest.raises(ValueError, match="unknown operator 'cube'"):
        Expr("cube", (Expr("W"),))
    with pytest.raises(ValueError, match="mul takes 2"):
        Expr("mul", (Expr("W"),))
    assert set(OPERATORS) == {"sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "pow", "skp", "mms", "zsn", "add",
                              "sub", "mul", "div"} and all(ARITY[o] in (1, 2) for o in OPERATORS)  # fmt: skip


def _reference(tree: Expr, W, G, X):
    """gptree.py's semantics, evaluated plainly in float64 (with the safety changes: exp clamps at 88, a zero
    range / std / norm is 1). W is |W|, X broadcast as [1, in]."""
    op, a = tree.op, tree.args
    if op == "W":
        return W.abs().double()
    if op == "G":
        return G.double()
    if op == "X":
        return X.double().reshape(1, -1)
    v = [_reference(t, W, G, X) for t in a]
    if op in ("add", "sub", "mul", "div"):
        x, y = torch.broadcast_tensors(v[0], v[1])
        if op == "div":
            n = torch.norm(y)
            return x / (n if n > 0 else 1.0)
        return {"add": x + y, "sub": x - y, "mul": x * y}[op]
    x = v[0]
    if op in ("sqr", "pow"):
        return x**2
    if op == "neg":
        return -x
    if op == "abs":
        return x.abs()
    if op == "log":
        return torch.log(x.abs() + 0.001)
    if op == "exp":
        return torch.exp(x.clamp(max=88))
    if op == "sqrt":
        return torch.sqrt(x.abs())
    if op == "tanh":
        return torch.tanh(x)
    if op == "skp":
        return x
    if op == "mms":
        rng = x.max() - x.min()
        return (x - x.min()) / (rng if rng > 0 else 1.0)
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


@pytest.mark.parametrize("text", ["add(W,X)", "sub(G,X)", "mul(W,G)", "div(W,G)", "div(X,W)", "div(W,X)", "div(X,X)",
                                  "sqr(sub(W,G))", "pow(G)", "neg(W)", "abs(sub(X,W))", "log(sub(W,G))",
                                  "exp(mul(X,W))", "sqrt(sub(G,W))", "tanh(sub(W,G))", "skp(G)", "mms(mul(W,G))",
                                  "mms(X)", "zsn(mul(W,X))", "zsn(X)", "zsn(div(X,W))", "exp(mul(X,X))"])  # fmt: skip
def test_each_operator_follows_gptree(text):
    w, g, x = _data(seed=len(text))
    x = x * 30  # exp(mul(X,X)) reaches the clamp
    got = expr_score(w, g, x, text).double()
    want = _reference(parse_expr(text), w, g, x).expand(w.shape)
    # float32 intermediates against a float64 reference: exp amplifies its argument's rounding (up to 88 * 2^-24),
    # zsn and log lose relative accuracy near their zeros: absolute slack of 1e-6 of the largest value.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_zero_range_std_and_norm_are_one():
    w = torch.ones(3, 8)
    g = torch.zeros(3, 8)
    x = torch.zeros(8)
    assert torch.equal(expr_score(w, g, x, "mms(W)"), torch.zeros(3, 8))  # (1 - 1) / 1
    assert torch.equal(expr_score(w, g, x, "zsn(W)"), torch.zeros(3, 8))
    assert torch.equal(expr_score(w, g, x, "div(W,G)"), torch.ones(3, 8))
    assert torch.equal(expr_score(w, g, x, "log(X)"), torch.full((3, 8), math.log(0.0010000000474974513),
                                                                  dtype=torch.float64).float())  # fmt: skip


def test_exp_is_finite_where_gptrees_clamp_at_100_overflows():
    x = torch.full((4,), 95.0)
    assert torch.isinf(torch.exp(x.clamp(max=100)).float()).all()  # what gptree gives in float32
    assert torch.isfinite(expr_score(torch.ones(2, 4), None, x, "exp(X)")).all()


def test_transcendentals_are_rounded_once_from_float64():
    w, g, x = _data(64, 512, seed=3)
    for op, fn in (("exp", torch.exp), ("tanh", torch.tanh)):
        got = expr_score(w, g, x, f"{op}(sub(W,G))")
        arg = w.abs() - g
        assert torch.equal(got, fn(arg.double()).float())
    assert torch.equal(expr_score(w, g, x, "log(sub(W,G))"),
                       torch.log(((w.abs() - g).abs() + torch.tensor(0.001)).double()).float())  # fmt: skip


def test_published_metric_masks_equal_a_direct_torch_evaluation_of_its_formula():
    """|W|^2 * minmax(G), Pruner-Zero's prune_pruner_zero: stable sort, the first k per row (and 2:4 by topk)."""
    for seed in range(5):
        w, g, x = _data(16, 96, seed)
        W = w.abs()
        direct = torch.abs(W * W) * ((g - g.min()) / (g.max() - g.min()))
        idx = torch.sort(direct, dim=-1, stable=True)[1][:, : int(96 * 0.5)]
        want = torch.zeros_like(direct, dtype=torch.bool).scatter_(1, idx, True)
        out = fused_prune_torch(w, None, PRUNER_ZERO, g=g, sparsity=0.5, write_mask=True)
        assert torch.equal(out.weight == 0, want | (w == 0))
        assert torch.equal(expr_score(w, g, None, PRUNER_ZERO), direct)
        # 2:4: in each group of 4, the 2 smallest (our tie rule: lower column first)
        grp = direct.reshape(16, -1, 4)
        order = torch.sort(grp, dim=-1, stable=True)[1][..., :2]
        want24 = torch.zeros_like(grp, dtype=torch.bool).scatter_(2, order, True).reshape(16, 96)
        out24 = fused_prune_torch(w, None, PRUNER_ZERO, g=g, nm=(2, 4), write_mask=True)
        assert torch.equal(out24.weight == 0, want24 | (w == 0))


def test_trees_that_need_missing_statistics_or_overflow_are_errors():
    w, g, x = _data()
    with pytest.raises(ValueError, match=r"uses G but no gradient statistics \(g\)"):
        fused_prune_torch(w, x, "mul(W,G)", sparsity=0.5)
    with pytest.raises(ValueError, match=r"uses X but no activation statistics \(x_sq\)"):
        fused_prune_torch(w, None, "mul(W,X)", g=g, sparsity=0.5)
    with pytest.raises(ValueError, match=r"g \(gradient statistics\) must have shape \[8, 64\]"):
        fused_prune_torch(w, x, "mul(W,G)", g=g[:, :10], sparsity=0.5)
    with pytest.raises(ValueError, match=r"g \(gradient statistics\) contains NaN"):
        fused_prune_torch(w, x, "mul(W,G)", g=g.masked_fill(g > 2, float("nan")), sparsity=0.5)
    big = w * 1e30
    target = big.clone()
    with pytest.raises(FloatingPointError, match=r"mul\(sqr\(W\),sqr\(W\)\) gives NaN or infinite scores in 8 row"):
        fused_prune_torch(target, x, "mul(sqr(W),sqr(W))", sparsity=0.5, inplace=True)
    assert torch.equal(target, big)  # nothing written
    with pytest.raises(FloatingPointError, match=r"sub\(exp\(X\),exp\(X\)\)|NaN or inf"):
        fused_prune_torch(w, x * 1e20, "mms(mul(W,sqr(sqr(mul(X,X)))))", sparsity=0.5)
