"""Compiling a symbolic metric to Triton: generated scoring functions, whole-tensor reductions, and the plan that
runs them.

A tree becomes a ``SymbolicProgram`` once per expression text (the search hands over canonical forms, so one
program serves a whole ranking class):

- its whole-tensor reductions (``mms``: min and range; ``zsn``: mean and std; ``div``: the divisor's norm), in the
  order they depend on each other, and its row and column sums (``rsn``, ``csn``, ``rcn``: float32 vectors the
  scoring function loads per row and per column). Reductions over X-only subtrees (``[1, in]``) run on the host
  with the twin's own code; those over W/G subtrees run in Triton pre-passes, one launch per nesting level (a
  reduction whose argument holds another reduction waits for it), each reading W and G once and returning per-tile
  float64 sums and float32 extremes that ``expr.finalize`` turns into the float32 parameters. A tree with ``rsn``,
  ``csn`` or ``rcn`` computes all its reductions and sums on the host with the twin's code (``TorchEvaluator``: one
  torch evaluation of each reduced subtree, so such trees move more bytes than the minimum), and the prune kernel
  stays one pass;
- generated Triton source: ``score_<digest>(a, g, x, r_ptr, v_ptr, row, cols, n_rows, n_cols)`` (the tree on
  tiles: ``a = |W|``, ``g = G``, ``x = X``, the reductions' parameters at ``r_ptr``, the sum vectors at ``v_ptr``:
  column sums first, ``n_cols`` each, then row sums, ``n_rows`` each) and, per pre-pass level,
  ``stage<s>_<digest>`` returning the tuple of the level's reduction arguments. The prune kernels
  (``prune_symbolic``) take these functions as constexprs.

The source is deterministic (a function of the expression text only: post-order with shared subtrees computed once),
registered with ``linecache`` under ``<optishear-symbolic:digest>`` so that Triton (compiler and interpreter) can
read it, and kept in ``SymbolicProgram.source`` for inspection.

Arithmetic is the twin's, operation for operation (``expr``): float32 add, sub, mul and correctly rounded division
(``div_rn``) and ``sqrt_rn``; ``exp``, ``log`` and ``tanh`` in float64 (``tl.exp``/``tl.log`` on float64 lower to
libdevice's ``__nv_exp``/``__nv_log`` when compiled for CUDA, to numpy in the interpreter), rounded to float32 once.
The prune kernels are launched with ``enable_fp_fusion=False``: otherwise LLVM contracts ``a * b + c`` into one
fused multiply-add, whose single rounding the twin does not do.
"""

from __future__ import annotations

import hashlib
import linecache
import threading
from dataclasses import dataclass, field

from .expr import N_SLOTS, VECTOR_KINDS, Expr, parse


@dataclass(frozen=True)
class Reduction:
    """One whole-tensor reduction the tree needs.

    Attributes:
        kind: ``minmax`` (mms), ``moments`` (zsn), ``sqsum`` (div's norm), or the vectors ``rowsum`` (rsn),
            ``colsum`` (csn).
        node: the subtree it reduces over.
        broadcast: ``sqsum`` of an X-only divisor next to a W/G numerator: the norm of the row repeated over rows.
        slot: index of its first float32 parameter in the parameter vector; for a vector, its index among the
            vectors of its kind.
        stage: 0 for X-only arguments and for every reduction of a tree with vectors (host), s >= 1 for the s-th
            Triton pre-pass.
    """

    kind: str
    node: Expr
    broadcast: bool
    slot: int
    stage: int


@dataclass
class SymbolicProgram:
    """Everything the symbolic kernels need for one expression (see the module docstring)."""

    expr: Expr
    digest: str
    source: str
    reductions: list[Reduction]
    n_slots: int
    score: object = None  # the generated @triton.jit scoring function (None without triton)
    stages: list = field(default_factory=list)  # stages[s - 1]: generated pre-pass function of level s
    stage_members: list[list[int]] = field(default_factory=list)  # reductions computed by each level

    @property
    def text(self) -> str:
        return self.expr.text

    @property
    def n_stages(self) -> int:
        return len(self.stage_members)

    @property
    def vectors(self) -> list[Reduction]:
        return [r for r in self.reductions if r.kind in VECTOR_KINDS]

    @property
    def n_col_vectors(self) -> int:
        return sum(r.kind == "colsum" for r in self.reductions)

    @property
    def n_row_vectors(self) -> int:
        return sum(r.kind == "rowsum" for r in self.reductions)

    def vector_span(self, red: Reduction, rows: int, cols: int) -> tuple[int, int]:
        """(offset, length) of a ``rowsum``/``colsum`` vector in the sums buffer: column sums first, ``cols`` each,
        then row sums, ``rows`` each (the layout the generated ``_Codegen.sums`` loads)."""
        if red.kind == "colsum":
            return red.slot * cols, cols
        return self.n_col_vectors * cols + red.slot * rows, rows

    def slots(self, red: Reduction) -> list[int]:
        return list(range(red.slot, red.slot + N_SLOTS.get(red.kind, 0)))


def _reduction_keys(node: Expr) -> list[tuple]:
    """Every reduction a node needs (``rcn``: its argument's row and column sums)."""
    if node.op == "rcn":
        return [("rowsum", node.args[0], False), ("colsum", node.args[0], False)]
    key = _reduction_key(node)
    return [] if key is None else [key]


def _reduction_key(node: Expr):
    """The reduction a node needs, as ``(kind, argument, broadcast)``, or None (``rcn``: see ``_reduction_keys``)."""
    if node.op == "mms":
        return ("minmax", node.args[0], False)
    if node.op == "zsn":
        return ("moments", node.args[0], False)
    if node.op == "div":
        return ("sqsum", node.args[1], node.is_mat and not node.args[1].is_mat)
    if node.op == "rsn":
        return ("rowsum", node.args[0], False)
    if node.op == "csn":
        return ("colsum", node.args[0], False)
    return None


def plan_reductions(expr: Expr) -> list[Reduction]:
    """The tree's reductions, inner ones first, each once, with their slots and stages."""
    order: list[tuple] = []
    stage_of: dict[tuple, int] = {}

    def visit(node: Expr) -> int:
        """Post-order; returns the highest stage of the reductions inside ``node`` (0: none or host only)."""
        inner = max((visit(a) for a in node.args), default=0)
        for key in _reduction_keys(node):
            if key not in stage_of:
                arg = key[1]
                stage_of[key] = 1 + _max_stage_inside(arg, stage_of) if arg.is_mat else 0
                order.append(key)
            inner = max(inner, stage_of[key])
        return inner

    visit(expr)
    host = any(key[0] in VECTOR_KINDS for key in order)  # divisors come from the twin: so does everything else
    out, slot, n_vec = [], 0, {k: 0 for k in VECTOR_KINDS}
    for kind, node, broadcast in order:
        stage = 0 if host else stage_of[(kind, node, broadcast)]
        if kind in VECTOR_KINDS:
            out.append(Reduction(kind, node, broadcast, n_vec[kind], stage))
            n_vec[kind] += 1
        else:
            out.append(Reduction(kind, node, broadcast, slot, stage))
            slot += N_SLOTS[kind]
    return out


def _max_stage_inside(node: Expr, stage_of: dict) -> int:
    best = 0
    for n in node.nodes():
        for key in _reduction_keys(n):
            if key in stage_of:
                best = max(best, stage_of[key])
    return best


class _Codegen:
    """Emits straight-line Triton code for subtrees, sharing repeated subtrees."""

    def __init__(self, reductions: list[Reduction]):
        self.slot = {(r.kind, r.node, r.broadcast): r.slot for r in reductions}
        self.n_col_vectors = sum(r.kind == "colsum" for r in reductions)
        self.lines: list[str] = []
        self.names: dict[Expr, str] = {}

    def param(self, node: Expr, i: int = 0) -> str:
        key = _reduction_key(node)
        return f"tl.load(r_ptr + {self.slot[key] + i})"

    def sums(self, kind: str, node: Expr) -> str:
        """Load the row (``rowsum``: after the column ones, ``n_rows`` each; a row past the end reads 1) or column
        (``colsum``: ``n_cols`` each; padding columns read 1) sums of ``node``'s argument."""
        i = self.slot[(kind, node.args[0], False)]
        if kind == "colsum":
            return f"tl.load(v_ptr + {i} * n_cols + cols, mask=cols < n_cols, other=1.0)"
        return f"tl.load(v_ptr + {self.n_col_vectors} * n_cols + {i} * n_rows + row, mask=row < n_rows, other=1.0)"

    def __call__(self, node: Expr) -> str:
        if node in self.names:
            return self.names[node]
        op = node.op
        if op in ("W", "G", "X"):
            return {"W": "a", "G": "g", "X": "x"}[op]
        args = [self(a) for a in node.args]
        a = args[0]
        if op == "add":
            code = f"{a} + {args[1]}"
        elif op == "sub":
            code = f"{a} - {args[1]}"
        elif op == "mul":
            code = f"{a} * {args[1]}"
        elif op == "div":
            code = f"tl.math.div_rn({a}, {self.param(node)} + tl.zeros_like({a}))"
        elif op in ("sqr", "pow"):
            code = f"{a} * {a}"
        elif op == "neg":
            code = f"-{a}"
        elif op == "abs":
            code = f"tl.abs({a})"
        elif op == "skp":
            code = a
        elif op == "sqrt":
            code = f"tl.sqrt_rn(tl.abs({a}))"
        elif op == "log":
            code = f"tl.log((tl.abs({a}) + LOG_EPS).to(tl.float64)).to(tl.float32)"
        elif op == "exp":
            code = f"tl.exp(tl.where({a} > EXP_MAX, EXP_MAX, {a}).to(tl.float64)).to(tl.float32)"
        elif op == "tanh":
            code = f"_tanh_f64({a}.to(tl.float64)).to(tl.float32)"
        elif op == "mms":
            code = f"tl.math.div_rn({a} - {self.param(node, 0)}, {self.param(node, 1)} + tl.zeros_like({a}))"
        elif op == "zsn":
            code = f"tl.math.div_rn({a} - {self.param(node, 0)}, {self.param(node, 1)} + tl.zeros_like({a}))"
        elif op in ("rsn", "csn", "rcn"):
            if op == "rcn":
                d = f"{self.sums('rowsum', node)} + {self.sums('colsum', node)}"
            else:
                d = self.sums("rowsum" if op == "rsn" else "colsum", node)
            dname = f"d{len(self.names)}"  # loaded once, tested and used
            self.lines.append(f"    {dname} = {d}")
            code = f"tl.math.div_rn({a}, tl.where({dname} > 0, {dname}, 1.0) + tl.zeros_like({a}))"
        else:  # pragma: no cover - Expr validates operators
            raise ValueError(f"unknown operator {op!r}")
        name = f"v{len(self.names)}"
        self.names[node] = name
        self.lines.append(f"    {name} = {code}")
        return name


def generate_source(expr: Expr, reductions: list[Reduction], digest: str) -> tuple[str, int]:
    """The generated module's source and its number of pre-pass levels."""
    head = [f"# Generated by optishear_kernels.symbolic for {expr.text}",
            "import triton",
            "import triton.language as tl",
            "",
            "from optishear_kernels.symbolic_common import EXP_MAX, LOG_EPS, _tanh_f64",
            ""]  # fmt: skip
    body = []
    n_stages = max((r.stage for r in reductions), default=0)
    for s in range(1, n_stages + 1):
        members = [r for r in reductions if r.stage == s]
        gen = _Codegen(reductions)
        outs = [gen(r.node) for r in members]
        body += ["", "@triton.jit", f"def stage{s}_{digest}(a, g, x, r_ptr):",
                 f'    """Pre-pass level {s}: {", ".join(r.node.text for r in members)}."""', *gen.lines,
                 f"    return ({', '.join(outs)},)"]  # fmt: skip
    gen = _Codegen(reductions)
    out = gen(expr)
    body += ["", "@triton.jit", f"def score_{digest}(a, g, x, r_ptr, v_ptr, row, cols, n_rows, n_cols):",
             f'    """{expr.text}"""', *gen.lines,
             f"    return {out}"]  # fmt: skip
    return "\n".join(head + body[1:]) + "\n", n_stages


def expr_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


_CACHE: dict[str, SymbolicProgram] = {}
_LOCK = threading.Lock()


def compile_expr(expr: Expr | str, *, with_triton: bool = True) -> SymbolicProgram:
    """The ``SymbolicProgram`` of ``expr`` (cached per expression text).

    Args:
        with_triton: build the ``@triton.jit`` functions (needs triton); False gives the plan and source only.
    """
    tree = parse(expr)
    key = tree.text
    with _LOCK:
        prog = _CACHE.get(key)
        if prog is not None and (prog.score is not None or not with_triton):
            return prog
        reductions = plan_reductions(tree)
        digest = expr_digest(key)
        source, n_stages = generate_source(tree, reductions, digest)
        members = [[i for i, r in enumerate(reductions) if r.stage == s] for s in range(1, n_stages + 1)]
        prog = SymbolicProgram(tree, digest, source, reductions, sum(N_SLOTS.get(r.kind, 0) for r in reductions),
                               stage_members=members)  # fmt: skip
        if with_triton:
            ns = _load(source, digest)
            prog.score = ns[f"score_{digest}"]
            prog.stages = [ns[f"stage{s}_{digest}"] for s in range(1, n_stages + 1)]
        _CACHE[key] = prog
        return prog


def _load(source: str, digest: str) -> dict:
    """Execute generated source as a module Triton can read the source of (``linecache``)."""
    filename = f"<optishear-symbolic:{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = {"__name__": f"optishear_kernels._generated_{digest}", "__file__": filename}
    exec(compile(source, filename, "exec"), ns)  # noqa: S102 - our own generated code, from a parsed tree
    return ns


def cache_info() -> dict[str, int]:
    """How many programs are cached (tests check that a tree compiles once)."""
    return {"programs": len(_CACHE)}


__all__ = ["Reduction", "SymbolicProgram", "plan_reductions", "generate_source", "compile_expr", "expr_digest",
           "cache_info"]  # fmt: skip
