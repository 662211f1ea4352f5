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

TARGETS = (80, 90)

_PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


@dataclass
class Variant:
    name: str
    kernel: str
    signature: dict
    constexprs: dict
    num_warps: int


def variants() -> list[Variant]:
    """The compiled configurations: every kernel, at the row lengths of real models, with the heaviest
    operator mixes (softmax + per-element coefficient), every weight dtype on some variant."""
    from .prune import _warps

    def row(dtype, block, coef, uw, ww, wm):
        sig = {"w_ptr": _PTR[dtype], "xp_ptr": "*fp32", "out_ptr": _PTR[dtype], "packed_ptr": "*u8",
               "rv_ptr": "*fp32", "cv_ptr": "*fp32", "sc_ptr": "*fp32", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32",
               "n_rows": "i32", "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"}
        ce = {"BLOCK": block, "ROWS": 32, "COEF": coef, "UW": uw, "WRITE_W": ww, "WRITE_MASK": wm}
        return Variant(f"row {dtype} cols<={block} coef{coef} u{uw} w{int(ww)}m{int(wm)}", "_row_prune_kernel",
                       sig, ce, _warps(block))  # fmt: skip

    def nm(dtype, n, m, coef, uw):
        mp = 1 << (m - 1).bit_length()
        sig = {"w_ptr": _PTR[dtype], "xp_ptr": "*fp32", "out_ptr": _PTR[dtype], "packed_ptr": "*i32",
               "rv_ptr": "*fp32", "cv_ptr": "*fp32", "sc_ptr": "*fp32", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32",
               "n_rows": "i32", "n_cols": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"}
        ce = {"N_PRUNE": m - n, "M": m, "MP": mp, "BLOCK_G": max(1, 4096 // (mp * mp)), "ROWS": 16, "COEF": coef,
              "UW": uw, "WRITE_W": True, "WRITE_MASK": True}
        return Variant(f"nm {n}:{m} {dtype} coef{coef} u{uw}", "_nm_prune_kernel", sig, ce, 4)

    def long_row(dtype, coef, uw, ww, wm):
        sig = {"w_ptr": _PTR[dtype], "xp_ptr": "*fp32", "out_ptr": _PTR[dtype], "packed_ptr": "*u8",
               "rv_ptr": "*fp32", "cv_ptr": "*fp32", "sc_ptr": "*fp32", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32",
               "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"}
        ce = {"CHUNK": 2048, "COEF": coef, "UW": uw, "WRITE_W": ww, "WRITE_MASK": wm}
        return Variant(f"long row {dtype} cols>4096 coef{coef} u{uw} w{int(ww)}m{int(wm)}", "_long_row_prune_kernel",
                       sig, ce, 8)  # fmt: skip

    pop_sig = {"w_ptr": "*bf16", "xp_ptr": "*fp32", "mode_ptr": "*i32", "uw_ptr": "*i32", "k_ptr": "*i32",
               "sc_ptr": "*fp32", "packed_ptr": "*u8", "rsum_ptr": "*fp32", "rrec_ptr": "*fp32", "csum_ptr": "*fp32",
               "crec_ptr": "*fp32", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32",
               "n_members": "i32", "stride_w": "i32", "stride_xp": "i32", "stride_pm": "i32", "stride_pr": "i32"}
    stats_sig = {"w_ptr": "*bf16", "rsum_ptr": "*fp64", "rsq_ptr": "*fp64", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32",
                 "n_cols": "i32", "stride_w": "i32"}
    col_sig = {"w_ptr": "*fp32", "csum_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_w": "i32"}
    act_sig = {"x_ptr": "*bf16", "acc_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32"}
    return [
        row("fp32", 4096, 0, 0, True, False),  # Wanda, Llama-2-7B q/k/v/o/gate/up rows
        row("bf16", 4096, 3, 6, True, True),  # heaviest operator mix
        row("fp16", 2048, 7, 4, False, True),  # mask only
        long_row("fp32", 0, 0, True, False),  # 11008 / 14336 / 28672 columns (down_proj)
        long_row("bf16", 3, 6, True, True),
        long_row("fp16", 7, 4, False, True),
        nm("fp32", 2, 4, 0, 0),
        nm("bf16", 16, 32, 3, 6),
        Variant("population bf16 cols<=4096", "_population_kernel", pop_sig, {"BLOCK": 4096, "ROWS": 16}, 8),
        Variant("row stats bf16", "_row_stats_kernel", stats_sig, {"BLOCK": 4096, "NEED_EXP": False}, 8),
        Variant("row stats fp32", "_row_stats_kernel", {**stats_sig, "w_ptr": "*fp32"},
                {"BLOCK": 4096, "NEED_EXP": True}, 8),  # fmt: skip
        Variant("col sums fp32", "_col_sum_kernel", col_sig, {"BLOCK_R": 64, "BLOCK_C": 128}, 4),
        Variant("act-norm bf16", "_act_norm_kernel", act_sig, {"BLOCK_R": 64, "BLOCK_C": 128}, 4),
    ]


def _kernel(name: str):
    from . import act_norm, prune

    return getattr(prune, name, None) or getattr(act_norm, name)


def cubin_resources(cubin: bytes, arch: int) -> dict:
    """Registers, stack (spill) bytes and shared memory of the cubin Triton built, by the bundled cuobjdump."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = os.path.join(os.path.dirname(get_ptxas(arch).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True)
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
    src = ASTSource(_kernel(v.kernel), v.signature, v.constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
    rep = cubin_resources(k.asm["cubin"], arch)
    rep["shared_bytes"] = max(rep["shared_bytes"], k.metadata.shared)  # dynamic shared memory counts too
    return {"variant": v.name, "arch": f"sm_{arch}", "warps": v.num_warps, **rep}


def main(argv=None) -> int:
    """Print the compile report; exit 1 if any variant spills registers (a compile error raises)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of a Markdown table")
    args = ap.parse_args(argv)
    if not args.json:
        print("| variant | target | warps | registers/thread | spill bytes | shared memory (bytes) |")
        print("|---|---|---|---|---|---|")
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
                      f"{r['shared_bytes']} |", flush=True)  # fmt: skip
    return 1 if spills else 0


if __name__ == "__main__":
    raise SystemExit(main())
