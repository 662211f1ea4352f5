"""Count the bytes a kernel moves: Triton kernels in the interpreter, torch pipelines op by op.

Triton: every ``tl.load``/``tl.store``/atomic the interpreter executes is counted by its mask (bytes
actually moved), and the distinct addresses are kept too, so a re-read of the same bytes (an L1/L2 hit
on a GPU) can be told from DRAM traffic. Torch: a ``TorchDispatchMode`` adds up the bytes of every
tensor each aten op reads and writes (views are free). Both are reported per weight, against the minimum
a fused prune needs: read W and the statistics once, write the output once.

    TRITON_INTERPRET=1 python bench/traffic.py            # writes the Markdown table to stdout
    TRITON_INTERPRET=1 python bench/traffic.py --symbolic # the symbolic-metric kernels' table
    TRITON_INTERPRET=1 python bench/traffic.py --relative # symbolic trees with row/column sums (rsn, csn, rcn)
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


@dataclass
class Traffic:
    load_bytes: int = 0
    store_bytes: int = 0
    load_addrs: set = field(default_factory=set)
    store_addrs: set = field(default_factory=set)
    unique_load_bytes: int = 0
    unique_store_bytes: int = 0

    @property
    def total(self) -> int:
        return self.load_bytes + self.store_bytes

    @property
    def unique_total(self) -> int:
        return self.unique_load_bytes + self.unique_store_bytes


@contextlib.contextmanager
def count_triton(track_unique: bool = True):
    """Count bytes moved by Triton kernels launched inside the block (interpreter only)."""
    from triton.runtime import interpreter as interp

    b = interp.interpreter_builder
    t = Traffic()
    orig_load, orig_store, orig_rmw = b.create_masked_load, b.create_masked_store, b.create_atomic_rmw

    def _itemsize(ptrs):
        return np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize

    def _record(ptrs, mask, is_load):
        size = _itemsize(ptrs)
        m = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.data.shape)
        n = int(m.sum()) * size
        addrs = ptrs.data[m]
        if is_load:
            t.load_bytes += n
        else:
            t.store_bytes += n
        if track_unique:
            s = t.load_addrs if is_load else t.store_addrs
            before = len(s)
            s.update(addrs.ravel().tolist())
            added = (len(s) - before) * size
            if is_load:
                t.unique_load_bytes += added
            else:
                t.unique_store_bytes += added

    def load(ptrs, mask, other, *a, **k):
        _record(ptrs, mask, True)
        return orig_load(ptrs, mask, other, *a, **k)

    def store(ptrs, value, mask, *a, **k):
        _record(ptrs, mask, False)
        return orig_store(ptrs, value, mask, *a, **k)

    def rmw(op, ptr, val, mask, *a, **k):  # an atomic reads and writes its word
        _record(ptr, mask, True)
        _record(ptr, mask, False)
        return orig_rmw(op, ptr, val, mask, *a, **k)

    b.create_masked_load, b.create_masked_store, b.create_atomic_rmw = load, store, rmw
    try:
        yield t
    finally:
        b.create_masked_load, b.create_masked_store, b.create_atomic_rmw = orig_load, orig_store, orig_rmw


class CountTorch(TorchDispatchMode):
    """Bytes each aten op reads (tensor arguments) and writes (tensor results); views move nothing."""

    def __init__(self):
        super().__init__()
        self.read = 0
        self.written = 0
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._schema.returns and any(r.alias_info is not None and not r.alias_info.is_write
                                        for r in func._schema.returns):  # fmt: skip
            return out  # a view
        flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        flat_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        r = sum(a.numel() * a.element_size() for a in flat_in)
        w = sum(o.numel() * o.element_size() for o in flat_out)
        self.read += r
        self.written += w
        self.ops.append((str(func), r, w))
        return out

    @property
    def total(self) -> int:
        return self.read + self.written


def wanda_unfused(w: torch.Tensor, x_sq: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's own pipeline: score tensor, stable sort, take k, scatter a mask, zero the weights."""
    w_metric = torch.abs(w) * torch.sqrt(x_sq.reshape((1, -1)))
    indices = torch.sort(w_metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * sparsity)]
    w_mask = torch.zeros_like(w_metric) == 1
    w_mask.scatter_(1, indices, True)
    w[w_mask] = 0
    return w


def measure(rows: int, cols: int, dtype: torch.dtype, sparsity: float = 0.5, metric=(0, 0, 0, 0)) -> list[dict]:
    from optishear_kernels import MetricConfig
    from optishear_kernels.prune import fused_prune_triton
    from optishear_kernels.w_stats import w_stats_triton

    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    x = torch.rand(cols, generator=g)
    n = rows * cols
    es = w.element_size()
    cfg = MetricConfig.parse(metric)
    stats_bytes = cols * 4
    minimum = {"weight": n * es + stats_bytes + n * es, "mask": n * es + stats_bytes + (n + 7) // 8}
    out = []

    def row(name, total, unique, kind):
        out.append({"pipeline": name, "shape": f"{rows}x{cols}", "dtype": str(dtype).replace("torch.", ""),
                    "bytes_per_weight": total / n, "unique_bytes_per_weight": unique / n if unique else None,
                    "minimum_per_weight": minimum[kind] / n, "ratio": total / minimum[kind],
                    "unique_ratio": unique / minimum[kind] if unique else None})  # fmt: skip

    with count_triton() as pre:
        w_stats_triton(w, cfg)
    for kind, kw in (("weight", dict(write_weight=True, inplace=True)), ("mask", dict(write_weight=False,
                                                                                          write_mask=True))):
        with count_triton() as t:
            fused_prune_triton(w.clone(), x, cfg, sparsity=sparsity, **kw)
        label = "fused, in place" if kind == "weight" else "fused, bit-packed mask"
        row(f"{label} ({cfg.spec})", t.total - pre.total, t.unique_total - pre.unique_total, kind)
    w_copy = w.clone()
    with CountTorch() as c:
        wanda_unfused(w_copy, x, sparsity)
    row("unfused torch (Wanda's code)", c.total, None, "weight")
    return out


SYMBOLIC_TREES = ("mul(W,sqrt(mms(G)))", "mul(W,sqrt(X))", "add(div(X,W),zsn(mul(G,W)))")  # Pruner-Zero, Wanda, a mix
RELATIVE_TREES = ("mul(add(csn(W),rsn(W)),sqrt(sqrt(X)))", "mul(rcn(W),sqrt(X))")  # RIA; the meta metric's rowcol


def measure_symbolic(rows: int, cols: int, dtype: torch.dtype, g_dtype: torch.dtype, tree: str,
                     sparsity: float = 0.5) -> list[dict]:  # fmt: skip
    """Bytes per weight of the symbolic prune (its pre-pass levels counted apart) against the tree evaluated op by op
    in torch with Wanda's sort-based selection. Minimum: read W, G (if the tree reads it) and X (if it does) once, write
    the output once."""
    from optishear_kernels import parse_expr
    from optishear_kernels.expr import expr_score
    from optishear_kernels.prune_symbolic import sym_host_prepass, sym_prune_triton, sym_reduce_triton
    from optishear_kernels.symbolic import compile_expr

    t = parse_expr(tree)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=gen).to(dtype)
    g = (torch.rand(rows, cols, generator=gen) + 0.01).to(g_dtype)
    x = torch.rand(cols, generator=gen)
    n, es = rows * cols, w.element_size()
    reads = n * es + (n * g.element_size() if t.uses_g else 0) + (cols * 4 if t.uses_x else 0)
    minimum = {"weight": reads + n * es, "mask": reads + (n + 7) // 8}
    out = []

    def row(name, total, unique, kind):
        dtypes = f"W {str(dtype)[6:]}, G {str(g_dtype)[6:]}"
        out.append({"pipeline": name, "shape": f"{rows}x{cols}", "dtype": dtypes,
                    "bytes_per_weight": total / n, "unique_bytes_per_weight": unique / n if unique else None,
                    "minimum_per_weight": minimum[kind] / n, "ratio": total / minimum[kind],
                    "unique_ratio": unique / minimum[kind] if unique else None})  # fmt: skip

    prog = compile_expr(t)
    r = torch.zeros(max(prog.n_slots, 1))
    gg, xx = (g if t.uses_g else None), (x if t.uses_x else None)
    with CountTorch() as host_pre:  # X-only reductions, or (rsn/csn/rcn) all of them and the sums, in torch
        v = sym_host_prepass(prog, w, gg, xx, r)
    with count_triton() as pre:
        for stage in range(1, prog.n_stages + 1):
            sym_reduce_triton(prog, stage, w, gg, xx, r)
    for kind in ("weight", "mask"):
        ww = w.clone()
        dummy = torch.empty(1)
        out_w = ww if kind == "weight" else dummy
        packed = torch.empty(rows, (cols + 7) // 8, dtype=torch.uint8) if kind == "mask" else dummy
        with count_triton() as c:  # the prune kernel alone (the pre-pass filled r above)
            sym_prune_triton(prog, ww, gg, xx, r, out_w, packed, k=int(cols * sparsity), nm=None,
                             write_w=kind == "weight", write_mask=kind == "mask", v=v)  # fmt: skip
        label = "fused, in place" if kind == "weight" else "fused, bit-packed mask"
        row(f"{label} ({tree})", c.total, c.unique_total, kind)
    if prog.n_stages:
        row(f"  its pre-pass ({prog.n_stages} level{'s' if prog.n_stages > 1 else ''})", pre.total, pre.unique_total,
            "mask")  # fmt: skip
    if prog.vectors:
        row("  its host pre-pass (torch: the row and column sums)", host_pre.total, None, "mask")
    w_copy = w.clone()
    with CountTorch() as ct:
        score = expr_score(w_copy, gg, xx, t)
        idx = torch.sort(score, dim=-1, stable=True)[1][:, : int(cols * sparsity)]
        mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
        w_copy[mask] = 0
    row(f"unfused torch ({tree}, op by op, stable sort)", ct.total, None, "weight")
    return out


def _print(rows_: list[dict]) -> None:
    for r in rows_:
        u = f"{r['unique_bytes_per_weight']:.3f}" if r["unique_bytes_per_weight"] is not None else "-"
        ur = f"{r['unique_ratio']:.3f}" if r["unique_ratio"] is not None else "-"
        print(f"| {r['pipeline']} | {r['shape']} | {r['dtype']} | {r['bytes_per_weight']:.3f} | {u} | "
              f"{r['minimum_per_weight']:.3f} | {r['ratio']:.3f} | {ur} |", flush=True)  # fmt: skip


def main_symbolic() -> None:
    """The symbolic kernels' table: rows of 4096 columns, and the long rows (11008, 14336) held on chip."""
    print("| pipeline | shape (rows sampled) | dtypes | bytes/weight | distinct bytes/weight | minimum | ratio | "
          "distinct ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for rows, cols in ((64, 4096), (16, 11008), (16, 14336)):
        for dtype, g_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                               (torch.bfloat16, torch.float32)):  # fmt: skip
            for tree in SYMBOLIC_TREES:
                _print(measure_symbolic(rows, cols, dtype, g_dtype, tree))


def main() -> None:
    import sys

    if "--symbolic" in sys.argv:
        main_symbolic()
        return
    if "--relative" in sys.argv:  # trees with row/column sums (host pre-pass), rows of 4096 columns
        print("| pipeline | shape (rows sampled) | dtypes | bytes/weight | distinct bytes/weight | minimum | ratio | "
              "distinct ratio |\n|---|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
        for tree in RELATIVE_TREES:
            _print(measure_symbolic(64, 4096, torch.float32, torch.float32, tree))
        return
    shapes = [(128, 4096), (64, 11008)]
    print("| pipeline | shape (rows sampled) | dtype | bytes/weight | distinct bytes/weight | minimum | ratio | "
          "distinct ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for rows, cols in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for r in measure(rows, cols, dtype):
                u = f"{r['unique_bytes_per_weight']:.3f}" if r["unique_bytes_per_weight"] is not None else "-"
                ur = f"{r['unique_ratio']:.3f}" if r["unique_ratio"] is not None else "-"
                print(f"| {r['pipeline']} | {r['shape']} | {r['dtype']} | {r['bytes_per_weight']:.3f} | {u} | "
                      f"{r['minimum_per_weight']:.3f} | {r['ratio']:.3f} | {ur} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
