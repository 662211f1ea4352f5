"""Canonical forms of symbolic metrics: every rewrite rule keeps every row's mask, rule by rule, on random data."""

import random
import zlib

import pytest
import torch
from optishear_kernels import PRUNER_ZERO, canonical, parse_expr
from optishear_kernels.canonical import RULES
from optishear_kernels.expr import ALL_OPERATORS, Expr, expr_score, random_tree
from optishear_kernels.prune import fused_prune_torch


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 64, generator=g)
    w[:, ::7] = torch.round(w[:, ::7] * 4) / 4  # some exact ties in |W|
    grad = torch.rand(8, 64, generator=g) * 2
    x = torch.rand(64, generator=g) * 4
    return w, grad, x


def _masks(tree, data):
    w, g, x = data
    out = []
    for kw in (dict(sparsity=0.5), dict(sparsity=0.2), dict(nm=(2, 4))):
        out.append(fused_prune_torch(w, x, tree, g=g, write_weight=False, write_mask=True, **kw).packed_mask)
    return out


def _distinct_per_row(tree, data):
    w, g, x = data
    s = expr_score(w, g, x, tree)
    return [len(torch.unique(row)) for row in s]


def _same_masks(a, b, seeds=(0, 1, 2)):
    """Masks of ``a`` and ``b`` equal on random data.

    Skipped samples: those where ``a`` itself is not finite, and those where float32 rounding merged scores that one
    tree keeps apart (a row with fewer distinct scores under one tree than under the other: ``zsn(exp(exp(W)))``
    maps many distinct values to one). The rules are exact in real arithmetic; a tie that rounding creates is
    broken by position, which no rank-preserving rewrite can promise to keep."""
    checked = 0
    for seed in seeds:
        data = _data(seed)
        try:
            ma = _masks(a, data)
        except FloatingPointError:
            continue
        if _distinct_per_row(a, data) != _distinct_per_row(b, data):
            continue
        mb = _masks(b, data)
        assert all(torch.equal(p, q) for p, q in zip(ma, mb)), f"{a.text} -> {b.text}: masks differ (seed {seed})"
        checked += 1
    return checked


def _sub(rng, depth=2):
    return random_tree(rng, rng.randint(0, depth), grow=True)


def _nonneg(rng):
    while True:
        t = _sub(rng)
        if t.nonneg:
            return t


def _signed(rng):
    while True:
        t = _sub(rng)
        if not t.nonneg:
            return t


def P(text, **subs):
    """A pattern: the text with {a}, {b}, {c}, {d} filled by subtrees' text."""
    return parse_expr(text.format(**{k: v.text for k, v in subs.items()}))


# rule -> patterns (a, b: random subtrees; c: a provably non-negative one; d: one that is not), placed where the rule
# applies.
PATTERNS = {
    "skp": ["add(skp({a}),{b})", "skp({a})", "mul(skp({a}),{b})"],
    "pow": ["add(pow({a}),{b})"],
    "neg-neg": ["add(neg(neg({a})),{b})"],
    "abs-abs": ["add(abs(abs({d})),{b})"],
    "abs-neg": ["add(abs(neg({a})),{b})"],
    "abs-nonneg": ["add(abs({c}),{b})"],
    "sqr-sign": ["add(sqr(neg({a})),{b})", "add(sqr(abs({d})),{b})"],
    "sqrt-sign": ["add(sqrt(neg({a})),{b})", "add(sqrt(abs({d})),{b})"],
    "log-sign": ["add(log(neg({a})),{b})", "add(log(abs({d})),{b})"],
    "sqrt-sqr": ["add(sqrt(sqr({a})),{b})"],
    "sqr-sqrt": ["add(sqr(sqrt({a})),{b})"],
    "mul-self": ["add(mul({a},{a}),{b})"],
    "neg-out": ["add(mul(neg({a}),{b}),{c})", "add(tanh(neg({a})),{b})", "add(zsn(neg({a})),{b})",
                "add(sub({a},neg({b})),{c})", "add(sub(neg({a}),{b}),{c})", "add(add(neg({a}),{b}),{c})",
                "add(neg(sub({a},{b})),{c})", "add(div(neg({a}),{b}),{c})", "add(rsn(neg({a})),{b})",
                "add(csn(neg({a})),{b})", "add(rcn(neg({a})),{b})"],
    "commute": ["add(add(X,W),{a})", "sub(mul(X,G),{a})"],
    "norm-sign": ["add(div({a},neg({b})),{c})", "add(div({a},abs({b})),{c})"],
    "div-scale": ["mul(div({a},{b}),W)", "add(zsn(div(mul({a},W),{b})),{c})", "div({a},{b})",
                  "add(mms(mul(div({a},{b}),G)),{c})"],
    "add-self": ["mul(add({a},{a}),G)", "add({a},{a})"],
    "root-monotone": ["mms({a})", "zsn({a})", "sqr({c})", "sqrt({c})", "neg(sqr({c}))", "pow({c})",
                      "mms(zsn(mul({a},{b})))"],
    "root-power": ["mul(sqr(W),X)", "mul(mul(W,W),{c})", "mul(sqrt(W),sqrt(sqrt({c})))", "mul(sqr({c}),sqr(G))",
                   "mul(mul(W,X),mul(W,G))", "mul(W,sqr(sqr(G)))"],
    "row-factor": ["rsn({a})", "mul(rsn({a}),{b})", "mul(mul({b},rsn({a})),{c})", "neg(mul(rsn({a}),{b}))",
                   "mul(rsn(mul({a},G)),csn(W))"],
    "rsn-scalar": ["add(mms(mul(rsn(sqrt(X)),{a})),{b})", "add(zsn(mul(W,rsn(X))),{b})",
                   "add(csn(mul(rsn(mms(X)),{a})),{b})", "add(rcn(mul(rsn(X),{a})),{b})"],
    "rsn-rsn": ["add(rsn(rsn({a})),{b})"],
    "csn-csn": ["add(csn(csn({a})),{b})"],
}


def test_every_rule_has_patterns():
    assert set(PATTERNS) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_keeps_every_rows_mask(rule):
    rng = random.Random(zlib.crc32(rule.encode()))  # hash() of a str changes per process
    fired = checked = 0
    for pattern in PATTERNS[rule]:
        for _ in range(12):
            tree = P(pattern, a=_sub(rng), b=_sub(rng), c=_nonneg(rng), d=_signed(rng))
            trace = []
            canon = canonical(tree, trace=trace)
            fired += rule in trace
            checked += _same_masks(tree, canon, seeds=(rng.randrange(10**6),))
    assert fired >= len(PATTERNS[rule]) * 4, f"{rule} fired {fired} times"
    assert checked >= len(PATTERNS[rule]) * 6


def test_random_trees_keep_their_masks_and_canonical_forms_are_fixed_points():
    rng = random.Random(7)
    n = 0
    for i in range(300):
        tree = random_tree(rng, rng.randint(1, 4), grow=bool(i % 2))
        canon = canonical(tree)
        assert canonical(canon) == canon
        assert canon.size <= tree.size + 2  # root-power may spell x^(3/4) with two sqrt levels
        n += _same_masks(tree, canon, seeds=(i,))
    assert n > 200


def test_random_trees_with_relative_operators_keep_their_masks():
    rng = random.Random(11)
    n = 0
    for i in range(150):
        tree = random_tree(rng, rng.randint(1, 4), grow=bool(i % 2), operators=ALL_OPERATORS)
        canon = canonical(tree)
        assert canonical(canon) == canon
        n += _same_masks(tree, canon, seeds=(i,))
    assert n > 100


def test_known_classes():
    wanda = parse_expr("mul(W,sqrt(X))")
    for t in ["mul(sqr(W),X)", "div(mul(W,sqrt(X)),G)", "skp(mms(mul(W,sqrt(X))))", "mul(sqrt(X),abs(W))",
              "zsn(sqr(mul(sqrt(X),W)))", "mul(div(W,G),sqrt(X))", "mul(mul(W,W),X)", "neg(neg(mul(X,sqr(W))))"]:
        assert canonical(t) == wanda, t
    assert canonical(PRUNER_ZERO).text == "mul(W,sqrt(mms(G)))"
    assert canonical("W") == canonical("sqr(W)") == canonical("mms(sqrt(W))") == Expr("W")
    # not the same class: kept apart
    assert canonical("mul(W,X)") != wanda
    assert canonical("tanh(mul(W,X))").text == "tanh(mul(W,X))"  # tanh saturates in float32: not dropped
    assert canonical("exp(log(W))").text == "exp(log(W))"  # not inverses under Pruner-Zero's definitions
    assert canonical("add(div(W,G),X)").text == "add(X,div(W,G))"  # the scale matters under add
    # dropping div would make zsn's argument [1, in]: another std (n - 1 of in, not of out * in)
    assert canonical("add(zsn(div(X,W)),W)").text == "add(W,zsn(div(X,W)))"
    assert canonical("zsn(div(X,W))").text == "X"  # at the root zsn and div both go
    # a factor per row keeps every row's ranking; one per column does not
    assert canonical("mul(rsn(W),sqrt(X))") == canonical("rsn(mul(sqr(W),X))") == wanda
    assert canonical("mul(sqrt(sqrt(X)),add(rsn(W),csn(W)))").text == "mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))"
    assert canonical("mul(csn(W),sqrt(X))").text == "mul(csn(W),sqrt(X))"
    assert canonical("mul(rcn(mul(W,G)),sqrt(X))").text == "mul(rcn(mul(G,W)),sqrt(X))"


def test_canonical_forms_are_deterministic_text():
    rng = random.Random(3)
    trees = [random_tree(rng, 4, grow=True) for _ in range(50)]
    first = [canonical(t).text for t in trees]
    assert [canonical(parse_expr(t.text)).text for t in trees] == first
