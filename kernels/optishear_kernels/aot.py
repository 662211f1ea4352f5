"""Ahead-of-time compilation of every kernel variant for real NVIDIA targets, with no GPU and no driver.

``triton.compile`` runs the whole pipeline to a cubin with the ptxas bundled in the triton wheel;
the bundled ``cuobjdump --dump-resource-usage`` then reads registers, stack (spills) and shared memory
from that very cubin.
Run ``python -m optishear_kernels.aot`` (without TRITON_INTERPRET) for the report table.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from . import launch as L
from .operators import CoefMode, Transform

TARGETS = (80, 90)
LLAMA2_7B_ROWS = 4096  # the row counts only set the grid; every variant compiles for any row count


@dataclass
class Variant:
    """One compiled configuration: a kernel, the dtype of its weight/activation pointers, and the ``Launch``
    the launchers would make for a real shape (so the constexprs and warps are theirs, not re-declared)."""

    name: str
    run: L.Launch
    dtype: str
    g_dtype: str = "fp32"  # the gradient statistic's dtype (symbolic kernels)

    @property
    def kernel(self) -> str:
        return self.run.spec.name

    @property
    def signature(self) -> dict:
        return self.run.spec.signature(self.dtype, self.g_dtype)

    @property
    def constexprs(self) -> dict:
        return self.run.constexprs

    @property
    def num_warps(self) -> int:
        return self.run.num_warps


def _ops(mode: CoefMode, uw: Transform) -> str:
    return f"{mode.name.lower()} {uw.name.lower()}"


def variants() -> list[Variant]:
    """The compiled configurations: every kernel, at the row lengths of real models, with the heaviest
    operator mixes (softmax + per-element coefficient), every weight dtype on some variant."""
    rows = LLAMA2_7B_ROWS

    def row(dtype, cols, mode, uw, ww, wm):
        run = L.row_prune(rows, cols, coef_mode=mode, w_transform=uw, write_w=ww, write_mask=wm)
        return Variant(f"row {dtype} cols<={run.constexprs['BLOCK']} {_ops(mode, uw)} w{int(ww)}m{int(wm)}", run, dtype)

    def long_row(dtype, mode, uw, ww, wm):
        run = L.long_row_prune(rows, coef_mode=mode, w_transform=uw, write_w=ww, write_mask=wm)
        return Variant(f"long row {dtype} cols>{L.LONG_ROW} {_ops(mode, uw)} w{int(ww)}m{int(wm)}", run, dtype)

    def nm(dtype, n, m, mode, uw):
        run = L.nm_prune(rows, 4096, n, m, coef_mode=mode, w_transform=uw, write_w=True, write_mask=True)
        return Variant(f"nm {n}:{m} {dtype} {_ops(mode, uw)}", run, dtype)

    M, T = CoefMode, Transform
    return [
        row("fp32", 4096, M.NONE, T.NONE, True, False),  # Wanda, Llama-2-7B q/k/v/o/gate/up rows
        row("bf16", 4096, M.INV_ROW_PLUS_COL, T.SOFTMAX, True, True),  # heaviest operator mix
        row("fp16", 2048, M.ROW_PLUS_COL, T.LOG, False, True),  # mask only
        long_row("fp32", M.NONE, T.NONE, True, False),  # 11008 / 14336 / 28672 columns (down_proj)
        long_row("bf16", M.INV_ROW_PLUS_COL, T.SOFTMAX, True, True),
        long_row("fp16", M.ROW_PLUS_COL, T.LOG, False, True),
        nm("fp32", 2, 4, M.NONE, T.NONE),
        nm("bf16", 16, 32, M.INV_ROW_PLUS_COL, T.SOFTMAX),
        Variant("population bf16 cols<=4096", L.population(rows, 4096), "bf16"),
        Variant("row stats bf16", L.row_stats(rows, 4096, need_exp=False), "bf16"),
        Variant("row stats fp32", L.row_stats(rows, 4096, need_exp=True), "fp32"),
        Variant("col sums fp32", L.col_sum(rows, 4096), "fp32"),
        Variant("act-norm bf16", L.act_norm(2048, 4096), "bf16"),
        Variant("act-norm fp32", L.act_norm(2048, 11008), "fp32"),
    ] + symbolic_variants()


# Representative symbolic metrics for the compile report (``symbolic_variants``): the published Pruner-Zero metric in
# its canonical form (a pre-pass min/max over G), a mix of X, G, a norm and a z-score (two reductions in one pre-pass
# level), and one with float64 transcendentals (libdevice's exp and log, our tanh).
SYMBOLIC_TREES = {"pruner-zero": "mul(W,sqrt(mms(G)))", "mix": "add(div(X,W),zsn(mul(G,W)))",
                  "transcendental": "tanh(sub(log(W),exp(G)))"}  # fmt: skip


def symbolic_variants() -> list[Variant]:
    """The symbolic kernels with generated scoring functions for ``SYMBOLIC_TREES`` (empty without triton)."""
    from ._triton import triton

    if triton is None:
        return []
    from .symbolic import compile_expr

    rows, out = LLAMA2_7B_ROWS, []
    progs = {name: compile_expr(text) for name, text in SYMBOLIC_TREES.items()}

    def flags(p, ww, wm):
        return dict(has_g=p.expr.uses_g, has_x=p.expr.uses_x, write_w=ww, write_mask=wm)

    def row(name, dtype, g_dtype, cols, ww, wm):
        p = progs[name]
        run = L.sym_row_prune(rows, cols, p.score, **flags(p, ww, wm))
        out.append(Variant(f"sym row {dtype}/G {g_dtype} cols<={run.constexprs['BLOCK']} {name} w{int(ww)}m{int(wm)}",
                           run, dtype, g_dtype))  # fmt: skip

    def long_row(name, dtype, g_dtype, cols, ww, wm):
        p = progs[name]
        run = L.sym_long_row_prune(rows, cols, p.score, **flags(p, ww, wm))
        out.append(Variant(f"sym long row {dtype}/G {g_dtype} cols={cols} {name} w{int(ww)}m{int(wm)}", run, dtype,
                           g_dtype))  # fmt: skip

    row("pruner-zero", "fp32", "fp32", 4096, True, False)
    row("mix", "bf16", "bf16", 4096, True, True)
    row("transcendental", "fp16", "fp32", 4096, False, True)
    long_row("pruner-zero", "fp32", "fp32", 11008, True, False)
    long_row("pruner-zero", "bf16", "bf16", 14336, True, True)
    long_row("mix", "bf16", "fp32", 14336, True, True)
    long_row("transcendental", "fp32", "fp32", 11008, False, True)
    p = progs["mix"]
    out.append(Variant("sym nm 2:4 bf16/G bf16 mix", L.sym_nm_prune(rows, 4096, 2, 4, p.score, **flags(p, True, True)),
                       "bf16", "bf16"))  # fmt: skip
    p = progs["transcendental"]
    out.append(Variant("sym nm 2:4 fp32/G fp32 transcendental",
                       L.sym_nm_prune(rows, 4096, 2, 4, p.score, **flags(p, True, True)), "fp32", "fp32"))  # fmt: skip
    p = progs["mix"]
    out.append(Variant("sym pre-pass bf16/G bf16 mix (2 reductions)",
                       L.sym_reduce(rows, 4096, p.stages[0], len(p.stage_members[0]), True, True), "bf16", "bf16"))
    return out


def cubin_resources(cubin: bytes, arch: int) -> dict:
    """Registers, stack (spill) bytes and shared memory of the cubin Triton built, by the bundled cuobjdump."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = os.path.join(os.path.dirname(get_ptxas(arch).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"cuobjdump failed: {res.stderr[-2000:]}")
    got = {key: int(val) for key, val in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout)}
    return {"registers": got["REG"], "spill_bytes": got.get("STACK", 0) + got.get("LOCAL", 0),
            "shared_bytes": got.get("SHARED", 0)}  # fmt: skip


def compile_variant(v: Variant, arch: int) -> dict:
    """Compile one variant for ``sm_<arch>``; returns registers, spills, shared memory (bytes), warps."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs the real compiler: run without TRITON_INTERPRET=1")
    src = ASTSource(v.run.spec.kernel(), v.signature, v.constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=v.run.compile_options())
    rep = cubin_resources(k.asm["cubin"], arch)
    rep["shared_bytes"] = max(rep["shared_bytes"], k.metadata.shared)  # dynamic shared memory counts too
    rep["approx_ops"] = approx_ops(k.asm["ptx"])
    return {"variant": v.name, "arch": f"sm_{arch}", "warps": v.num_warps, **rep}


# PTX instructions that are not correctly rounded: where one is used, the compiled kernel can differ from
# the torch twin in the last bits (and so a mask at a near-tie).
_APPROX = re.compile(r"\b(?:ex2|lg2|rcp|rsqrt|sqrt|sin|cos|tanh)\.approx\.[\w.]*|\bdiv\.(?:full|approx)\.[\w.]*")


def approx_ops(ptx: str) -> list[str]:
    """The approximate PTX instructions in ``ptx`` (sorted, distinct)."""
    return sorted(set(_APPROX.findall(ptx)))


def main(argv=None) -> int:
    """Print the compile report; exit 1 if any variant spills registers (a compile error raises)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of a Markdown table")
    args = ap.parse_args(argv)
    if not args.json:
        print("| variant | target | warps | registers/thread | spill bytes | shared memory (bytes) | approximate ops |")
        print("|---|---|---|---|---|---|---|")
    spills = []
    for v in variants():
        for arch in TARGETS:
            r = compile_variant(v, arch)
            if r["spill_bytes"]:
                spills.append(r)
            if args.json:
                import json

                print(json.dumps(r), flush=True)
            else:
                print(f"| {r['variant']} | {r['arch']} | {r['warps']} | {r['registers']} | {r['spill_bytes']} | "
                      f"{r['shared_bytes']} | {', '.join(r['approx_ops']) or '-'} |", flush=True)  # fmt: skip
    return 1 if spills else 0


if __name__ == "__main__":
    raise SystemExit(main())
