"""Canonical forms of symbolic metrics: trees that prune every row identically get one form.

Masks depend only on the order of scores within each row (the k smallest are pruned, ties to the lower column),
so ``mul(W,sqrt(X))``, ``mul(sqr(W),X)``, ``div(mul(W,sqrt(X)),G)`` and ``skp(mms(mul(W,sqrt(X))))`` are all Wanda.
``canonical(tree)`` rewrites a tree with rules that provably keep every row's ranking, so that a search evaluates
each ranking class once (trials still dedupe by mask digest afterwards).

Every rule is exact in real arithmetic on every input (W, G, X >= 0 are the only assumptions), and each is named, so
that a test can check each one for equal masks on random data. A rule's licence depends on where the subtree sits,
its *context*:

- ``V`` (the value must be kept): under add, sub, exp, log, tanh; the numerator of a kept div.
- ``N`` (only the Frobenius norm matters: ``div``'s divisor): a sign flip is free, ``neg`` and ``abs`` on top go.
- ``S`` (the value up to a positive scalar factor, and its shape, ``[1, in]`` or ``[out, in]``): under ``mms`` and
  ``zsn`` (scale-invariant), under ``mul``, ``neg``, ``abs``, ``sqr``, ``sqrt`` in an ``S`` context.
- ``S*`` (up to a positive scalar, shape free since the result is broadcast anyway): under a ``mul`` whose other
  factor is ``[out, in]``, and under the root's ``mul``.
- ``R`` (the ranking of every row): the root, and below a root ``neg``.

The rules (names as the trace records them):

- exact, anywhere: ``skp`` (``skp(a) = a``), ``pow`` (``pow = sqr``), ``neg-neg``, ``abs-abs``, ``abs-neg``,
  ``abs-nonneg`` (``abs(a) = a`` for ``a >= 0``), ``sqr-sign``/``sqrt-sign``/``log-sign`` (``sqr``, ``sqrt`` and
  ``log`` read ``|a|`` or ``a^2``: an inner ``neg``/``abs`` goes), ``sqrt-sqr`` and ``sqr-sqrt`` (``sqrt(sqr a) =
  sqr(sqrt a) = |a|``: the opposing pair), ``mul-self`` (``mul(a,a) = sqr(a)``), ``neg-out`` (``neg`` moves above
  ``mul``, ``div``, ``tanh``, ``zsn``, ``sub``, ``add``, where it cancels or stays once), ``commute`` (``add`` and
  ``mul`` arguments in text order);
- norm context: ``norm-sign`` (``||neg a|| = ||abs a|| = ||a||``);
- scale contexts: ``div-scale`` (``div(a,b) = a / ||b||`` is ``a`` times a positive scalar: the whole-tensor norm
  goes), ``add-self`` (``add(a,a) = 2a``), and the scale-invariance of ``mms`` and ``zsn``
  (``mms(c a) = mms(a)``: their argument is in an ``S`` context);
- row and column relative importance (``rsn``, ``csn``, ``rcn``): ``row-factor`` (``rsn(a)`` is ``a`` times a
  positive factor per row: at the root, or as a factor of the root's product, it goes, since every row keeps its
  ranking, N:M groups included), ``rsn-scalar`` (``rsn`` of an X-only ``[1, in]`` argument divides by one scalar: it
  goes in a scale context), ``rsn-rsn``/``csn-csn`` (normalising twice is normalising once), ``neg-out``
  (``rsn(neg a) = neg(rsn a)``, likewise ``csn`` and ``rcn``), and all three are scale-invariant (their argument is
  in an ``S`` context). ``csn`` and ``rcn`` at the root stay: a factor per column or per element changes a row's
  ranking;
- rank context: ``root-monotone`` (a strictly increasing function at the root goes: ``skp``, ``mms``, ``zsn``
  (positive affine maps of the whole tensor), ``div`` (a positive factor), and ``sqr``, ``pow``, ``sqrt``, ``abs``
  of a non-negative argument), ``root-power`` (a root product of non-negative factors with powers,
  ``prod f_i^e_i``, ranks like any positive power of itself: the exponents are scaled by a power of two so that
  the largest lies in (1/2, 1], and rebuilt with ``sqrt`` levels, ``mul(sqr(W),X)`` -> ``mul(W,sqrt(X))``).

Not simplified, on purpose:

- ``exp``/``log`` are not opposing under Pruner-Zero's definitions: ``exp(log a) = min(|a| + 0.001, e^88)`` and
  ``log(exp a) = log(e^min(a, 88) + 0.001)``; neither is ``a`` in value or (beyond 88, or 1.65e38) in rank.
- ``exp``, ``log`` and ``tanh`` at the root are strictly increasing in real numbers but merge whole ranges of
  float32 scores: ``tanh`` is 1.0 for every argument above 9.01, ``exp`` clamps at 88 and is 1.0 for every
  argument below 6e-8, ``log``'s ``+ 0.001`` absorbs differences below 1e-10. Dropping them would rank scores the
  original tree ties, so they stay. (Rules above differ from the original at most in the rounding of single
  scores: a near-tie within an ulp can flip, as it can between any two float evaluation orders.)
"""

from __future__ import annotations

from fractions import Fraction

from .expr import Expr, parse

_SCALE = ("S", "S*")
_HOMOGENEOUS = ("neg", "abs", "sqr", "pow", "sqrt")  # f(c a) = c^p f(a) for c > 0
_ROOT_MONOTONE_NONNEG = ("sqr", "pow", "sqrt", "abs")  # strictly increasing on a >= 0
_ROOT_MONOTONE = ("skp", "mms", "zsn")  # strictly increasing on any argument (positive affine, or constant)


def canonical(expr: Expr | str, *, trace: list[str] | None = None) -> Expr:
    """The canonical form of ``expr``: same ranking of every row, as few operations as the rules reach.

    Args:
        expr: a tree or its text.
        trace: if given, the name of every rule applied is appended (tests check each rule separately).

    Returns:
        The canonical tree; ``canonical(canonical(t)) == canonical(t)``.
    """
    tree = parse(expr)
    for _ in range(100):
        new = _canon(tree, "R", trace)
        if new == tree:
            return new
        tree = new
    return tree  # pragma: no cover - the rules shrink or reorder; a fixed point comes long before


def _note(trace, name):
    if trace is not None:
        trace.append(name)


def _canon(node: Expr, ctx: str, trace) -> Expr:
    op, args = node.op, node.args
    if not args:
        return node
    # 1. context rules that remove the node itself
    if ctx == "R" and (op == "rsn" or op == "mul"):
        stripped = _strip_row_factors(node)
        if stripped != node:
            _note(trace, "row-factor")
            return _canon(stripped, "R", trace)
    if ctx in _SCALE and op == "rsn" and not args[0].is_mat:
        _note(trace, "rsn-scalar")
        return _canon(args[0], ctx, trace)
    if ctx == "R":
        if op in _ROOT_MONOTONE or op == "div" or (op in _ROOT_MONOTONE_NONNEG and args[0].nonneg):
            _note(trace, "root-monotone" if op != "skp" else "skp")
            return _canon(args[0], "R", trace)
    if ctx == "R" or ctx in _SCALE:
        if op == "skp":
            _note(trace, "skp")
            return _canon(args[0], ctx, trace)
        if op == "div" and (ctx != "S" or args[0].is_mat == node.is_mat):
            _note(trace, "div-scale")
            return _canon(args[0], ctx, trace)
        if op == "add" and args[0] == args[1]:
            _note(trace, "add-self")
            return _canon(args[0], ctx, trace)
    # 2. children in their contexts
    if op == "mul":
        if ctx in ("R", "S*"):
            kids = [_canon(a, "S*", trace) for a in args]
        elif ctx == "S":
            kids = [_canon(a, "S*" if args[1 - i].is_mat else "S", trace) for i, a in enumerate(args)]
        else:
            kids = [_canon(a, "V", trace) for a in args]
    elif op == "div":
        kids = [_canon(args[0], "S" if ctx == "S" else "V", trace), _canon_norm(args[1], trace)]
    elif op in ("add", "sub", "exp", "log", "tanh"):
        kids = [_canon(a, "V", trace) for a in args]
    elif op in ("mms", "zsn", "rsn", "csn", "rcn"):
        kids = [_canon(args[0], "S", trace)]
    elif op == "neg":
        kids = [_canon(args[0], ctx if ctx in ("R", "S", "S*") else "V", trace)]
    elif op in _HOMOGENEOUS:
        kids = [_canon(args[0], "S*" if ctx == "R" else ctx if ctx in _SCALE else "V", trace)]
    else:  # skp in V / N
        kids = [_canon(args[0], ctx if ctx != "N" else "V", trace)]
    out = _exact(Expr(op, tuple(kids)), trace)
    if ctx == "R":
        out = _root_power(out, trace)
    return out


def _strip_row_factors(node: Expr) -> Expr:
    """The root's product with every ``rsn`` factor replaced by its argument (a positive factor per row each)."""
    if node.op == "rsn":
        return _strip_row_factors(node.args[0])
    if node.op == "mul":
        return Expr("mul", tuple(_strip_row_factors(a) for a in node.args))
    return node


def _canon_norm(node: Expr, trace) -> Expr:
    """``div``'s divisor: only its norm matters, so a sign flip on top goes."""
    out = _canon(node, "V", trace)
    while out.op in ("neg", "abs"):
        _note(trace, "norm-sign")
        out = out.args[0]
    return out


def _exact(node: Expr, trace) -> Expr:
    """Value-preserving rewrites of one node whose children are canonical, repeated until none applies."""
    while True:
        new = _exact_once(node, trace)
        if new is node:
            return node
        node = new


def _exact_once(node: Expr, trace) -> Expr:
    op, args = node.op, node.args
    if not args:
        return node
    a = args[0]
    if op == "skp":
        _note(trace, "skp")
        return a
    if op == "pow":
        _note(trace, "pow")
        return Expr("sqr", (a,))
    if op == "neg" and a.op == "neg":
        _note(trace, "neg-neg")
        return a.args[0]
    if op == "neg" and a.op == "sub":
        _note(trace, "neg-out")
        return Expr("sub", (a.args[1], a.args[0]))
    if op == "abs":
        if a.op == "abs":
            _note(trace, "abs-abs")
            return a
        if a.op == "neg":
            _note(trace, "abs-neg")
            return Expr("abs", (a.args[0],))
        if a.nonneg:
            _note(trace, "abs-nonneg")
            return a
    if op in ("sqr", "sqrt", "log") and a.op in ("neg", "abs"):
        _note(trace, f"{op}-sign")
        return Expr(op, (a.args[0],))
    if op == "sqrt" and a.op in ("sqr", "pow"):
        _note(trace, "sqrt-sqr")
        return Expr("abs", (a.args[0],))
    if op == "sqr" and a.op == "sqrt":
        _note(trace, "sqr-sqrt")
        return Expr("abs", (a.args[0],))
    if op in ("rsn", "csn") and a.op == op:
        _note(trace, f"{op}-{op}")
        return a
    if op in ("tanh", "zsn", "rsn", "csn", "rcn") and a.op == "neg":
        _note(trace, "neg-out")
        return Expr("neg", (Expr(op, (a.args[0],)),))
    if op in ("add", "sub", "mul", "div"):
        b = args[1]
        if op == "mul" and a == b:
            _note(trace, "mul-self")
            return Expr("sqr", (a,))
        if op == "mul" and (a.op == "neg" or b.op == "neg"):
            _note(trace, "neg-out")
            inner = Expr("mul", (a.args[0] if a.op == "neg" else a, b.args[0] if b.op == "neg" else b))
            return inner if a.op == b.op == "neg" else Expr("neg", (inner,))
        if op == "div" and a.op == "neg":
            _note(trace, "neg-out")
            return Expr("neg", (Expr("div", (a.args[0], b)),))
        if op == "sub" and b.op == "neg":  # a - (-b) = a + b
            _note(trace, "neg-out")
            return Expr("add", (a, b.args[0]))
        if op == "sub" and a.op == "neg":  # -a - b = -(a + b)
            _note(trace, "neg-out")
            return Expr("neg", (Expr("add", (a.args[0], b)),))
        if op == "add" and (a.op == "neg" or b.op == "neg"):
            _note(trace, "neg-out")
            if a.op == b.op == "neg":  # -a + -b = -(a + b)
                return Expr("neg", (Expr("add", (a.args[0], b.args[0])),))
            return Expr("sub", (a, b.args[0])) if b.op == "neg" else Expr("sub", (b, a.args[0]))
        if op in ("add", "mul") and b.text < a.text:
            _note(trace, "commute")
            return Expr(op, (b, a))
    return node


# -- root-power: products of powers at the root ----------------------------------------------------------------


def _factors(node: Expr, e: Fraction, out: dict[Expr, Fraction]) -> bool:
    """Flatten ``node`` (taken to the power ``e``) into non-negative factors with exponents; False if a factor is
    not provably non-negative (then the product is left alone)."""
    if node.op == "mul" and node.args[0].nonneg and node.args[1].nonneg:
        return _factors(node.args[0], e, out) and _factors(node.args[1], e, out)
    if node.op in ("sqr", "pow") and node.args[0].nonneg:
        return _factors(node.args[0], 2 * e, out)
    if node.op == "sqrt" and node.args[0].nonneg:
        return _factors(node.args[0], e / 2, out)
    if not node.nonneg:
        return False
    out[node] = out.get(node, Fraction(0)) + e
    return True


def _sqrt_levels(f: Fraction) -> list[int] | None:
    """Levels k (f^(2^-k) factors) of an exponent in (0, 1] that is a sum of powers of 1/2; None otherwise."""
    levels, k = [], 0
    while f > 0 and k <= 12:
        step = Fraction(1, 2**k)
        if f >= step:
            levels.append(k)
            f -= step
        k += 1
    return levels if f == 0 else None


def _product(terms: list[Expr]) -> Expr:
    terms = sorted(terms, key=lambda t: t.text)
    out = terms[0]
    for t in terms[1:]:
        out = Expr("mul", tuple(sorted((out, t), key=lambda n: n.text)))
    return out


def _root_power(node: Expr, trace) -> Expr:
    """``prod f_i^e_i`` at the root -> the same product with exponents scaled by a power of two into (1/2, 1]."""
    if node.op not in ("mul", "sqr", "pow", "sqrt"):
        return node
    factors: dict[Expr, Fraction] = {}
    if not _factors(node, Fraction(1), factors):
        return node
    top = max(factors.values())
    scale = Fraction(1)
    while top * scale > 1:
        scale /= 2
    while top * scale <= Fraction(1, 2):
        scale *= 2
    by_level: dict[int, list[Expr]] = {}
    for f, e in factors.items():
        levels = _sqrt_levels(e * scale)
        if levels is None:
            return node
        for k in levels:
            by_level.setdefault(k, []).append(f)
    terms = []
    for k in sorted(by_level):
        t = _product(by_level[k])
        for _ in range(k):
            t = Expr("sqrt", (t,))
        terms.append(t)
    out = _product(terms)
    if out != node:
        _note(trace, "root-power")
    return out


RULES = ("skp", "pow", "neg-neg", "abs-abs", "abs-neg", "abs-nonneg", "sqr-sign", "sqrt-sign", "log-sign", "sqrt-sqr",
         "sqr-sqrt", "mul-self", "neg-out", "commute", "norm-sign", "div-scale", "add-self", "root-monotone",
         "root-power", "row-factor", "rsn-scalar", "rsn-rsn", "csn-csn")  # fmt: skip


__all__ = ["canonical", "RULES"]
