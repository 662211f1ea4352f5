"""Symbolic pruning metrics: expression trees over W, G and X with Pruner-Zero's operators, and their torch twin.

A tree scores every weight of a matrix ``W: [out, in]`` from three terminals:

| terminal | value | shape |
|---|---|---|
| ``W`` | ``|W|`` (Pruner-Zero reads the magnitude) | ``[out, in]`` |
| ``G`` | gradient statistic, ``sqrt(sum over windows (100 dL/dW)^2)`` (>= 0) | ``[out, in]`` |
| ``X`` | activation statistic, mean of x^2 per input channel (>= 0) | ``[1, in]``, broadcast over rows |

Operators (Pruner-Zero's ``lib/gptree.py``; everything float32, elementwise unless said otherwise):

- ``add(a,b)``, ``sub(a,b)``, ``mul(a,b)``: ``a + b``, ``a - b``, ``a * b`` (broadcast).
- ``div(a,b)``: ``a / ||b||``, the Frobenius norm of ``b`` broadcast to the shape of the pair (as gptree); a zero
  norm is 1.
- ``sqr(a)``, ``pow(a)``: ``a * a`` (gptree's ``torch.pow(a, 2)`` is ``a * a`` bit for bit).
- ``neg(a)``, ``abs(a)``, ``skp(a)``: ``-a``, ``|a|``, ``a``.
- ``sqrt(a)``: ``sqrt(|a|)``, correctly rounded.
- ``log(a)``: ``log(|a| + 0.001)``: the sum in float32, the log in float64, rounded once.
- ``exp(a)``: ``exp(min(a, 88))`` in float64, rounded once. gptree clamps at 100, past float32's range
  (exp(88.73) overflows float32); 88 keeps every value finite.
- ``tanh(a)``: in float64, rounded once.
- ``mms(a)``: ``(a - min a) / (max a - min a)`` over the whole tensor ``a``; a zero range is 1.
- ``zsn(a)``: ``(a - mean a) / std a`` over the whole tensor ``a``, unbiased std; a zero std is 1.

Two more unary operators, not Pruner-Zero's, that its operators cannot express (``div``, ``mms`` and ``zsn`` only
reduce over the whole tensor): row and column relative importance, as RIA's normaliser ``|W_ij| / sum_j |W_ij| +
|W_ij| / sum_i |W_ij|`` needs. They parse everywhere; the GP search draws them only with ``--tree-operators
relative`` (``RELATIVE``), so a default search stays in Pruner-Zero's grammar.

- ``rsn(a)``: ``a / sum over its row of |a|`` (``[out, in]``: a per-row divisor; an X-only ``[1, in]`` argument is
  one row, so its divisor is one scalar); a zero sum is 1.
- ``csn(a)``: ``a / sum over its column of |a|`` (an X-only argument: ``a / |a|``, one row per column); a zero sum
  is 1.
- ``rcn(a)``: ``a / (row sum + column sum of |a|)``, the two sums added in float32 (the meta metric's ``rowcol``
  coefficient, ``|W_ij| / (sum_j |W_ij| + sum_i |W_ij|)``); a zero divisor is 1.

Each sum accumulates in float64 and is rounded to float32 once.

``mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))`` is RIA (X is the mean of x^2, so ``X^(1/4)`` is ``||x||_2^(1/2)`` up to a
constant factor).

"The whole tensor" is the subtree's own shape: ``[1, in]`` for a subtree over X alone, ``[out, in]`` as soon as it
involves W or G (``is_mat``). Reductions (min, max, sums for means, deviations and norms) accumulate in float64 and
are rounded to float32 once, as the meta metric's do. Transcendentals are evaluated in float64 and rounded to
float32 once: torch's own float32 ``exp`` differs from the correctly rounded value on about 1% of inputs, and the
Triton kernels (the interpreter and CUDA's libdevice) agree with the float64 route, so both backends give the same
bits. Scores that come out NaN or infinite (``mul`` overflowing, ``sub(exp(..), exp(..))`` of infinities) are an
error, never a mask.

Text form: ``mul(abs(mul(W,W)),mms(G))`` (``expr:`` prefix optional, spaces ignored); ``parse`` and ``Expr.text``
round-trip. ``PRUNER_ZERO`` is the metric the paper published (``data/best_tree.json``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property

import torch

TERMINALS = ("W", "G", "X")
UNARY = ("sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "pow", "skp", "mms", "zsn")
BINARY = ("add", "sub", "mul", "div")
OPERATORS = UNARY + BINARY  # Pruner-Zero's operators
RELATIVE = ("rsn", "csn", "rcn")  # row and column relative importance (the module docstring): an opt-in extension
ALL_OPERATORS = OPERATORS + RELATIVE
ARITY = {**{t: 0 for t in TERMINALS}, **{u: 1 for u in UNARY + RELATIVE}, **{b: 2 for b in BINARY}}
EXP_MAX = 88.0  # exp(88) = 1.65e38 < FLT_MAX = 3.40e38
LOG_EPS = 0.001
_LOG_EPS_F32 = torch.tensor(LOG_EPS, dtype=torch.float32)  # the float32 constant both backends add


@dataclass(frozen=True)
class Expr:
    """A node: an operator with its arguments, or a terminal (``W``, ``G``, ``X``) with none.

    Immutable and hashable (structural equality), so trees can key caches and sets.
    """

    op: str
    args: tuple[Expr, ...] = ()

    def __post_init__(self):
        if self.op not in ARITY:
            raise ValueError(f"unknown operator {self.op!r}; operators: {', '.join(ALL_OPERATORS)}; "
                             "terminals: W, G, X")  # fmt: skip
        if len(self.args) != ARITY[self.op]:
            raise ValueError(f"{self.op} takes {ARITY[self.op]} argument(s), got {len(self.args)}")
        if not all(isinstance(a, Expr) for a in self.args):
            raise ValueError(f"arguments of {self.op} must be Expr nodes")

    # -- text --------------------------------------------------------------------------------------------------
    @cached_property
    def text(self) -> str:
        """``op(arg,arg)`` with no spaces; terminals as ``W``, ``G``, ``X``."""
        if not self.args:
            return self.op
        return f"{self.op}({','.join(a.text for a in self.args)})"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    # -- shape and structure -----------------------------------------------------------------------------------
    @property
    def is_terminal(self) -> bool:
        return not self.args

    @cached_property
    def terminals(self) -> frozenset[str]:
        if not self.args:
            return frozenset({self.op})
        return frozenset().union(*(a.terminals for a in self.args))

    @property
    def uses_g(self) -> bool:
        return "G" in self.terminals

    @property
    def uses_x(self) -> bool:
        return "X" in self.terminals

    @property
    def is_mat(self) -> bool:
        """Whether the value is a full ``[out, in]`` tensor (W or G inside), not an X-only ``[1, in]`` row."""
        return bool(self.terminals & {"W", "G"})

    @cached_property
    def size(self) -> int:
        """Nodes in the tree."""
        return 1 + sum(a.size for a in self.args)

    @cached_property
    def depth(self) -> int:
        """Edges on the longest root-to-leaf path (a terminal has depth 0)."""
        return 1 + max(a.depth for a in self.args) if self.args else 0

    def nodes(self):
        """Every node, pre-order (root first)."""
        yield self
        for a in self.args:
            yield from a.nodes()

    @cached_property
    def nonneg(self) -> bool:
        """Provably >= 0 for every input (W, G, X are >= 0)."""
        op, a = self.op, self.args
        if not a:
            return True
        if op in ("abs", "sqr", "pow", "sqrt", "exp", "mms"):
            return True  # mms: (a - min) / range with range > 0, or (a - min) / 1
        if op in ("add", "mul"):
            return a[0].nonneg and a[1].nonneg
        if op in ("div", "skp", "tanh") + RELATIVE:
            return a[0].nonneg  # div: a / norm, norm > 0; rsn, csn, rcn: a / a positive sum
        return False  # neg, sub, log (log 0.001 < 0), zsn


def T(name: str) -> Expr:
    """A terminal."""
    return Expr(name.upper())


W, G, X = Expr("W"), Expr("G"), Expr("X")


# -- parsing ---------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z_0-9]*)|(\()|(\))|(,))")


def parse(text: str | Expr) -> Expr:
    """Parse the text form ``op(arg,...)`` (an ``expr:`` prefix and whitespace are allowed).

    Raises:
        ValueError: malformed text or an unknown operator, with the position (0-based) and the expected forms.
    """
    if isinstance(text, Expr):
        return text
    if not isinstance(text, str):
        raise ValueError(f"an expression must be text like 'mul(W,sqrt(X))', got {text!r}")
    src = text.strip()
    if src.lower().startswith("expr:"):
        src = src[5:]
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if m is None:
            j = len(src[pos:]) - len(src[pos:].lstrip()) + pos
            raise ValueError(f"malformed expression {text!r}: unexpected {src[j]!r} at position {j}")
        kind = "name" if m.group(1) else m.group(0).strip()
        tokens.append((kind, m.group(1) or kind, m.end() - len(m.group(1) or kind)))
        pos = m.end()
    if not tokens:
        raise ValueError(f"malformed expression {text!r}: it is empty")
    i = 0

    def expect(kind: str, after: str):
        nonlocal i
        if i >= len(tokens):
            raise ValueError(f"malformed expression {text!r}: expected {kind!r} after {after} at the end")
        if tokens[i][0] != kind:
            raise ValueError(f"malformed expression {text!r}: expected {kind!r} after {after}, got {tokens[i][1]!r} "
                             f"at position {tokens[i][2]}")  # fmt: skip
        i += 1

    def node() -> Expr:
        nonlocal i
        if i >= len(tokens):
            raise ValueError(f"malformed expression {text!r}: an argument is missing at the end")
        kind, value, at = tokens[i]
        if kind != "name":
            raise ValueError(f"malformed expression {text!r}: expected an operator or W, G, X at position {at}, "
                             f"got {value!r}")  # fmt: skip
        i += 1
        if value.upper() in TERMINALS and len(value) == 1:
            return Expr(value.upper())
        op = value.lower()
        if op not in ARITY:
            raise ValueError(f"unknown operator {value!r} at position {at} in {text!r}; operators: "
                             f"{', '.join(ALL_OPERATORS)}; terminals: W, G, X")  # fmt: skip
        expect("(", op)
        args = [node()]
        while i < len(tokens) and tokens[i][0] == ",":
            i += 1
            args.append(node())
        expect(")", f"the arguments of {op}")
        if len(args) != ARITY[op]:
            raise ValueError(f"malformed expression {text!r}: {op} at position {at} takes {ARITY[op]} argument(s), "
                             f"got {len(args)}")  # fmt: skip
        return Expr(op, tuple(args))

    tree = node()
    if i != len(tokens):
        raise ValueError(f"malformed expression {text!r}: unexpected {tokens[i][1]!r} at position {tokens[i][2]} "
                         "after a complete expression")  # fmt: skip
    return tree


def from_pruner_zero(data: dict) -> Expr:
    """A tree in Pruner-Zero's JSON form (``{"data": "mul", "left": {...}, "right": {...}}``, ``data/best_tree.json``).

    Raises:
        ValueError: an unknown label or a wrong number of children.
    """
    label = str(data.get("data"))
    children = [data[k] for k in ("left", "right") if k in data and data[k] is not None]
    name = label.upper() if label.upper() in TERMINALS else label.lower()
    if name not in ARITY:
        raise ValueError(f"unknown operator {label!r} in a Pruner-Zero tree; operators: {', '.join(ALL_OPERATORS)}")
    return Expr(name, tuple(from_pruner_zero(c) for c in children))


def looks_like_expr(metric) -> bool:
    """Whether a metric given as text is a symbolic tree (``expr:...``, ``op(...)`` or a bare terminal)."""
    if isinstance(metric, Expr):
        return True
    if not isinstance(metric, str):
        return False
    s = metric.strip()
    return s.lower().startswith("expr:") or "(" in s or s.upper() in TERMINALS


PRUNER_ZERO = parse("mul(abs(mul(W,W)),mms(G))")  # the published metric: |W|^2 * minmax(G)


def random_tree(rng: random.Random, max_depth: int, grow: bool, *, min_depth: int = 1,
                terminals: tuple[str, ...] = TERMINALS, operators: tuple[str, ...] = OPERATORS) -> Expr:  # fmt: skip
    """A random tree, Koza's way (as Pruner-Zero's ``random_tree``): operators above ``min_depth``, terminals at
    ``max_depth``; in between ``full`` takes operators, ``grow`` a terminal or an operator with even odds.

    Args:
        rng: the generator (a search seeds its own). max_depth: deepest level (a terminal alone is depth 0).
    """

    def build(depth: int) -> Expr:
        if depth >= max_depth or (depth >= min_depth and grow and rng.random() < 0.5):
            return Expr(rng.choice(terminals))
        op = rng.choice(operators)
        return Expr(op, tuple(build(depth + 1) for _ in range(ARITY[op])))

    return build(0)


# -- the torch twin --------------------------------------------------------------------------------------------

REDUCTION_KINDS = ("minmax", "moments", "sqsum")  # what mms, zsn and div's norm need from their argument
N_SLOTS = {"minmax": 2, "moments": 2, "sqsum": 1}  # float32 parameters each gives the kernel
VECTOR_KINDS = ("rowsum", "colsum")  # what rsn and csn need: a float32 divisor per row, per column


def abs_sums(v: torch.Tensor, kind: str) -> torch.Tensor:
    """The sums of ``|v|`` over each row (``rowsum``: ``[rows, 1]``) or column (``colsum``: ``[1, in]``) of a float32
    value in its own shape, accumulated in float64 and rounded to float32 once: what ``rsn``, ``csn`` and ``rcn``
    divide by (``divide`` puts a zero divisor to 1).

    Raises:
        FloatingPointError: a sum is NaN or infinite (the argument holds NaN or inf, or its sum overflows float32).
    """
    s = v.abs().sum(dim=1 if kind == "rowsum" else 0, keepdim=True, dtype=torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise FloatingPointError("NaN or inf in the sums of a row or column reduction")
    s = s.to(torch.float32)
    if not bool(torch.isfinite(s).all()):
        raise FloatingPointError("a row or column sum overflows float32")
    return s


def divide(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``a / d`` with a zero divisor read as 1 (``rsn``, ``csn``, ``rcn``)."""
    return a / torch.where(d > 0, d, torch.ones_like(d))


def finalize(kind: str, s1: torch.Tensor, s2: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int,
             rep: int = 1) -> list[torch.Tensor]:  # fmt: skip
    """The float32 parameters of one reduction from its float64 sums and float32 extremes; shared by the twin and
    the Triton pre-pass, so that both apply the same operations.

    Args:
        kind: ``minmax`` (mms: lo, range), ``moments`` (zsn: mean, std), ``sqsum`` (div: norm).
        s1, s2: float64 sum and sum of squares of the argument over its own shape; lo, hi: its float32 min and max.
        n: elements in the argument's shape; rep: how many times a ``[1, in]`` argument is repeated by the
            broadcast (``div``'s norm of an X-only divisor under a W or G numerator: the number of rows).

    Raises:
        FloatingPointError: the argument holds NaN or inf (seen in the statistics the kind uses: a NaN or an inf
            element makes its min or max, or its sums, non-finite).
    """
    used = {"minmax": (lo, hi), "moments": (s1, s2), "sqsum": (s2,)}.get(kind)
    if used is None:
        raise ValueError(f"unknown reduction kind {kind!r}")
    if not all(bool(torch.isfinite(t)) for t in used):
        raise FloatingPointError("NaN or inf in the argument of a whole-tensor reduction")
    one = torch.ones((), dtype=torch.float32, device=lo.device if kind == "minmax" else s2.device)
    if kind == "minmax":
        rng = (hi - lo).to(torch.float32)
        return [lo.to(torch.float32), torch.where(rng > 0, rng, one)]
    if kind == "moments":
        mean = s1 / n
        var = torch.clamp_min(s2 - s1 * mean, 0.0) / max(n - 1, 1)
        std = torch.sqrt(var).to(torch.float32)
        return [mean.to(torch.float32), torch.where(std > 0, std, one)]
    if kind == "sqsum":
        nrm = torch.sqrt(s2 * rep).to(torch.float32)
        return [torch.where(nrm > 0, nrm, one)]
    raise ValueError(f"unknown reduction kind {kind!r}")


def tensor_stats(v: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 sum and sum of squares, float32 min and max of a float32 tensor: the ones reduction ``kind`` uses
    (the others are 0), in as few passes as torch allows."""
    zero = torch.zeros((), dtype=torch.float64, device=v.device)
    if kind == "minmax":
        lo, hi = torch.aminmax(v)
        return zero, zero, lo, hi
    v64 = v.reshape(-1).to(torch.float64)
    s2 = torch.dot(v64, v64)
    s1 = v64.sum() if kind == "moments" else zero
    return s1, s2, zero.float(), zero.float()


def _f64(fn, a: torch.Tensor) -> torch.Tensor:
    return fn(a.double()).to(torch.float32)


class TorchEvaluator:
    """Evaluates trees with torch on one matrix's inputs (the twin, and the host half of the Triton pre-pass).

    Args:
        w: ``[out, in]`` weight (any float dtype); its magnitude is the terminal W.
        g: ``[out, in]`` gradient statistic, or None if no tree uses G.
        x: ``[in]`` activation statistic, or None if no tree uses X.
        rows: the number of rows (for X-only subtrees under W/G ones); taken from ``w``.
    """

    def __init__(self, w: torch.Tensor | None, g: torch.Tensor | None, x: torch.Tensor | None, *,
                 shape: tuple[int, int] | None = None):  # fmt: skip
        self.w = w
        self.g = g
        self.x = x
        self.shape = tuple(shape if shape is not None else w.shape)
        self.memo: dict[Expr, torch.Tensor] = {}
        self.params: dict[tuple[str, Expr, bool], list[torch.Tensor]] = {}
        self.vectors: dict[tuple[str, Expr], torch.Tensor] = {}

    def full(self, node: Expr, v: torch.Tensor) -> torch.Tensor:
        """``v`` in the node's own shape: ``[out, in]`` for W/G subtrees, ``[1, in]`` for X-only ones."""
        return v.expand(self.shape) if node.is_mat else v.reshape(1, -1)

    def reduction(self, kind: str, node: Expr, broadcast: bool = False) -> list[torch.Tensor]:
        """The float32 parameters of reduction ``kind`` over ``node``'s value (computed once per node)."""
        key = (kind, node, broadcast)
        if key not in self.params:
            v = self.full(node, self(node))
            s1, s2, lo, hi = tensor_stats(v, kind)
            try:
                self.params[key] = finalize(kind, s1, s2, lo, hi, v.numel(), self.shape[0] if broadcast else 1)
            except FloatingPointError as err:
                raise FloatingPointError(f"NaN or inf in {node.text}, the argument of a whole-tensor reduction") \
                    from err  # fmt: skip
        return self.params[key]

    def sums(self, kind: str, node: Expr) -> torch.Tensor:
        """The per-row (``rowsum``: ``[rows, 1]``, or ``[1, 1]`` for an X-only node) or per-column (``colsum``:
        ``[1, in]``) sums of ``|node|`` that ``rsn``/``csn``/``rcn`` divide by (computed once per node)."""
        key = (kind, node)
        if key not in self.vectors:
            try:
                self.vectors[key] = abs_sums(self.full(node, self(node)), kind)
            except FloatingPointError as err:
                raise FloatingPointError(f"NaN or inf in {node.text}, the argument of a row or column reduction") \
                    from err  # fmt: skip
        return self.vectors[key]

    def __call__(self, node: Expr) -> torch.Tensor:
        """The float32 value of ``node`` (``[out, in]``, or ``[1, in]`` for X-only subtrees)."""
        got = self.memo.get(node)
        if got is not None:
            return got
        op, args = node.op, node.args
        if op == "W":
            v = self.w.detach().abs().to(torch.float32)
        elif op == "G":
            if self.g is None:
                raise ValueError("the metric uses G but no gradient statistics were given")
            v = self.g.detach().to(torch.float32)
        elif op == "X":
            if self.x is None:
                raise ValueError("the metric uses X but no activation statistics were given")
            v = self.x.detach().to(torch.float32).reshape(1, -1)
        elif op in BINARY:
            a, b = self(args[0]), self(args[1])
            if op == "add":
                v = a + b
            elif op == "sub":
                v = a - b
            elif op == "mul":
                v = a * b
            else:  # div: a / ||b broadcast to the shape of the pair||
                broadcast = node.is_mat and not args[1].is_mat
                (nrm,) = self.reduction("sqsum", args[1], broadcast)
                v = a / nrm
        else:
            a = self(args[0])
            if op in ("sqr", "pow"):
                v = a * a
            elif op == "neg":
                v = -a
            elif op == "abs":
                v = a.abs()
            elif op == "skp":
                v = a
            elif op == "sqrt":
                v = torch.sqrt(a.abs())
            elif op == "log":
                v = _f64(torch.log, a.abs() + _LOG_EPS_F32.to(a.device))
            elif op == "exp":
                v = _f64(torch.exp, torch.where(a > EXP_MAX, torch.full_like(a, EXP_MAX), a))
            elif op == "tanh":
                v = _f64(torch.tanh, a)
            elif op == "mms":
                lo, rng = self.reduction("minmax", args[0])
                v = (a - lo) / rng
            elif op == "rsn":
                v = divide(a, self.sums("rowsum", args[0]))
            elif op == "csn":
                v = divide(a, self.sums("colsum", args[0]))
            elif op == "rcn":
                v = divide(a, self.sums("rowsum", args[0]) + self.sums("colsum", args[0]))
            else:  # zsn
                mean, std = self.reduction("moments", args[0])
                v = (a - mean) / std
        self.memo[node] = v
        return v


def expr_score(w: torch.Tensor, g: torch.Tensor | None, x: torch.Tensor | None, expr: Expr | str, *,
               out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Score every weight of ``w`` by ``expr``: the torch twin of the symbolic kernels.

    Args:
        w: ``[out, in]`` weight. g: ``[out, in]`` gradient statistic (None if the tree has no G).
        x: ``[in]`` activation statistic (None if the tree has no X). expr: a tree or its text.
        out: optional float32 ``[out, in]`` buffer for the scores.

    Returns:
        float32 ``[out, in]`` scores (not checked for finiteness: see ``fused_prune``).
    """
    tree = parse(expr)
    ev = TorchEvaluator(w, g, x)
    v = ev(tree).expand(w.shape)
    if out is None:
        return v.contiguous() if v.data_ptr() != getattr(w, "data_ptr", lambda: None)() else v.clone()
    return out.copy_(v)


__all__ = ["Expr", "T", "W", "G", "X", "TERMINALS", "UNARY", "BINARY", "OPERATORS", "RELATIVE", "ALL_OPERATORS",
           "ARITY", "EXP_MAX", "LOG_EPS", "PRUNER_ZERO", "parse", "from_pruner_zero", "random_tree", "looks_like_expr",
           "expr_score", "TorchEvaluator", "finalize", "tensor_stats", "REDUCTION_KINDS", "N_SLOTS", "VECTOR_KINDS",
           "abs_sums", "divide"]  # fmt: skip
