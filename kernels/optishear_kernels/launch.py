"""Launch settings of every kernel, in one place.

Two things live here, so that what is launched and what the compile report (``aot.py``) compiles can
never drift apart:

- ``KernelSpec``: each kernel's runtime arguments with their Triton types (the signature ``triton.compile``
  needs) and the names of its constexprs. A test checks them against the ``@triton.jit`` definitions.
- the heuristics (block size, warps, rows per program, grid) as functions returning a ``Launch``; the
  launchers call them with the real shapes, ``aot.variants()`` with Llama-2-7B's.

Pure Python: importable without triton.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .operators import CoefMode, Transform

LONG_ROW = 4096  # rows longer than this take the chunked multi-pass kernel
LONG_CHUNK = 2048  # its chunk: 4096 spilled 20 bytes on sm_90 with the softmax + rowcol mix (bench/RESULTS.md)
LONG_ROW_WARPS = 8
MAX_M = 32  # N:M group size limit of the Triton path
MAX_ROWS_PER_PROGRAM = 32
NM_ROWS_PER_PROGRAM = 16
NM_RANK_TILE = 4096  # BLOCK_G * MP * MP: the pairwise-rank tile of the N:M kernel
NM_WARPS = 4
SWEEP_BLOCK_R, SWEEP_BLOCK_C = 64, 128  # column-owning sweeps over rows: column sums, act-norm
SWEEP_WARPS = 4
SYM_LONG_CHUNK = 2048  # symbolic long rows: the row on chip as chunks of this many keys
# Warps of the symbolic long-row kernel. Its keys take 14336 / threads registers per thread, and the X chunks it keeps
# for its rows as many again. At 16 warps (128 registers at most) at 14336 columns on sm_80, trees over X spilled 16
# bytes and float64 transcendentals 16-32; at 8 warps (255 at most) neither spills (bench/RESULTS.md). 32 warps (64
# at most) spilled 160.
SYM_LONG_WARPS = 8
SYM_LONG_ROWS = 8  # rows per program sharing the X chunks: X costs 4 / 8 bytes per weight
SYM_REDUCE_R, SYM_REDUCE_C = 32, 128  # symbolic pre-pass tiles
SYM_REDUCE_WARPS = 4


def next_power_of_2(n: int) -> int:
    """Same as ``triton.next_power_of_2`` for n >= 1."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def warps(block: int) -> int:
    """Warps for a one-row tile of ``block`` columns: 4 up to 2,048 columns, then one per 512 columns."""
    return max(4, min(32, block // 512))


@dataclass(frozen=True)
class KernelSpec:
    """One ``@triton.jit`` kernel: where it lives, its runtime arguments and its constexprs.

    Attributes:
        module: module of this package that defines the kernel.
        name: the kernel function's name.
        args: runtime argument -> Triton type, in definition order. ``"*W"`` is a pointer to the weight's
            dtype and ``"*X"`` to the activation's, filled in by ``signature``.
        constexprs: names of the ``tl.constexpr`` parameters, in definition order (after ``args``).
    """

    module: str
    name: str
    args: dict[str, str] = field(hash=False)
    constexprs: tuple[str, ...]

    def signature(self, dtype: str = "fp32", g_dtype: str = "fp32") -> dict[str, str]:
        """The ``triton.compile`` signature with ``*W``/``*X`` set to ``dtype`` ("fp32", "bf16", "fp16") and ``*G``
        (the gradient statistic of symbolic metrics) to ``g_dtype``."""
        return {k: f"*{dtype}" if v in ("*W", "*X") else f"*{g_dtype}" if v == "*G" else v
                for k, v in self.args.items()}  # fmt: skip

    def kernel(self):
        """The ``@triton.jit`` function (needs triton)."""
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.name)

    def launch(self, grid: tuple[int, ...], num_warps: int, *, fp_fusion: bool = True, **constexprs) -> Launch:
        if tuple(constexprs) != self.constexprs:
            raise ValueError(f"{self.name}: constexprs {tuple(constexprs)} but the kernel takes {self.constexprs}")
        return Launch(self, tuple(grid), num_warps, constexprs, fp_fusion)


@dataclass(frozen=True)
class Launch:
    """Everything a launcher passes besides the tensors: ``spec.kernel()[grid](**tensors, **launch.options())``."""

    spec: KernelSpec
    grid: tuple[int, ...]
    num_warps: int
    constexprs: dict = field(hash=False)
    fp_fusion: bool = True  # False: no a * b + c -> fma contraction (the symbolic kernels round like the twin)

    def options(self) -> dict:
        extra = {} if self.fp_fusion else {"enable_fp_fusion": False}
        return {**self.constexprs, "num_warps": self.num_warps, **extra}

    def compile_options(self) -> dict:
        """The options of ``triton.compile`` (the AOT report) for this launch."""
        return {"num_warps": self.num_warps, "enable_fp_fusion": self.fp_fusion}


_PRUNE_OPERANDS = {"rv_ptr": "*fp32", "cv_ptr": "*fp32", "sc_ptr": "*fp32", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32"}

ROW_PRUNE = KernelSpec(
    "prune_row", "_row_prune_kernel",
    {"w_ptr": "*W", "xp_ptr": "*fp32", "out_ptr": "*W", "packed_ptr": "*u8", **_PRUNE_OPERANDS,
     "n_rows": "i32", "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"},
    ("BLOCK", "ROWS", "COEF_MODE", "W_TRANSFORM", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
LONG_ROW_PRUNE = KernelSpec(
    "prune_long_row", "_long_row_prune_kernel",
    {"w_ptr": "*W", "xp_ptr": "*fp32", "out_ptr": "*W", "packed_ptr": "*u8", **_PRUNE_OPERANDS,
     "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"},
    ("CHUNK", "COEF_MODE", "W_TRANSFORM", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
NM_PRUNE = KernelSpec(
    "prune_nm", "_nm_prune_kernel",
    {"w_ptr": "*W", "xp_ptr": "*fp32", "out_ptr": "*W", "packed_ptr": "*i32", **_PRUNE_OPERANDS,
     "n_rows": "i32", "n_cols": "i32", "stride_w": "i32", "stride_o": "i32", "stride_p": "i32"},
    ("N_PRUNE", "M", "MP", "BLOCK_G", "ROWS", "COEF_MODE", "W_TRANSFORM", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
POPULATION = KernelSpec(
    "prune_population", "_population_kernel",
    {"w_ptr": "*W", "xp_ptr": "*fp32", "mode_ptr": "*i32", "uw_ptr": "*i32", "k_ptr": "*i32", "sc_ptr": "*fp32",
     "packed_ptr": "*u8", "rsum_ptr": "*fp32", "rrec_ptr": "*fp32", "csum_ptr": "*fp32", "crec_ptr": "*fp32",
     "rmax_ptr": "*fp32", "rexp_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "n_members": "i32",
     "stride_w": "i32", "stride_xp": "i32", "stride_pm": "i32", "stride_pr": "i32"},
    ("BLOCK", "ROWS"),
)  # fmt: skip
ROW_STATS = KernelSpec(
    "w_stats", "_row_stats_kernel",
    {"w_ptr": "*W", "rsum_ptr": "*fp64", "rsq_ptr": "*fp64", "rmax_ptr": "*fp32", "rexp_ptr": "*fp32",
     "n_cols": "i32", "stride_w": "i32"},
    ("BLOCK", "NEED_EXP"),
)  # fmt: skip
COL_SUM = KernelSpec(
    "w_stats", "_col_sum_kernel",
    {"w_ptr": "*W", "csum_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_w": "i32"},
    ("BLOCK_R", "BLOCK_C"),
)  # fmt: skip
ACT_NORM = KernelSpec(
    "act_norm", "_act_norm_kernel",
    {"x_ptr": "*X", "acc_ptr": "*fp64", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32"},
    ("BLOCK_R", "BLOCK_C"),
)  # fmt: skip
_SYM_IO = {"w_ptr": "*W", "g_ptr": "*G", "x_ptr": "*fp32", "r_ptr": "*fp32", "v_ptr": "*fp32", "out_ptr": "*W",
           "packed_ptr": "*u8", "bad_ptr": "*i32"}  # fmt: skip
SYM_ROW_PRUNE = KernelSpec(
    "prune_symbolic", "_sym_row_prune_kernel",
    {**_SYM_IO, "n_rows": "i32", "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_g": "i32", "stride_o": "i32",
     "stride_p": "i32"},
    ("SCORE", "BLOCK", "ROWS", "HAS_G", "HAS_X", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
SYM_LONG_ROW_PRUNE = KernelSpec(
    "prune_symbolic", "_sym_long_row_prune_kernel",
    {**_SYM_IO, "n_rows": "i32", "n_cols": "i32", "k": "i32", "stride_w": "i32", "stride_g": "i32", "stride_o": "i32",
     "stride_p": "i32"},
    ("SCORE", "CHUNK", "NCH", "ROWS", "HAS_G", "HAS_X", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
SYM_NM_PRUNE = KernelSpec(
    "prune_symbolic", "_sym_nm_prune_kernel",
    {**_SYM_IO, "packed_ptr": "*i32", "n_rows": "i32", "n_cols": "i32", "stride_w": "i32", "stride_g": "i32",
     "stride_o": "i32", "stride_p": "i32"},
    ("SCORE", "N_PRUNE", "M", "MP", "BLOCK_G", "ROWS", "HAS_G", "HAS_X", "WRITE_W", "WRITE_MASK"),
)  # fmt: skip
SYM_REDUCE = KernelSpec(
    "prune_symbolic", "_sym_reduce_kernel",
    {"w_ptr": "*W", "g_ptr": "*G", "x_ptr": "*fp32", "r_ptr": "*fp32", "part_ptr": "*fp64", "n_rows": "i32",
     "n_cols": "i32", "stride_w": "i32", "stride_g": "i32"},
    ("STAGE", "K", "BLOCK_R", "BLOCK_C", "HAS_G", "HAS_X"),
)  # fmt: skip
KERNELS = (ROW_PRUNE, LONG_ROW_PRUNE, NM_PRUNE, POPULATION, ROW_STATS, COL_SUM, ACT_NORM, SYM_ROW_PRUNE,
           SYM_LONG_ROW_PRUNE, SYM_NM_PRUNE, SYM_REDUCE)


def row_block(cols: int) -> int:
    """Columns of the one-row register tile (a power of two, at least 8 for the bit packing)."""
    return max(8, next_power_of_2(cols))


def rows_per_program(rows: int) -> int:
    # Enough rows per program that the column operands (read once per program) cost <= 1/16 of W's bytes,
    # but no more than there are rows (rows past the end would still run the select).
    return max(1, min(MAX_ROWS_PER_PROGRAM, rows))


def row_prune(rows: int, cols: int, *, coef_mode: CoefMode, w_transform: Transform, write_w: bool,
              write_mask: bool) -> Launch:  # fmt: skip
    """Rows of up to ``LONG_ROW`` columns, each wholly on chip, several rows per program."""
    block = row_block(cols)
    n = rows_per_program(rows)
    return ROW_PRUNE.launch(
        (cdiv(rows, n),), warps(block), BLOCK=block, ROWS=n, COEF_MODE=int(coef_mode),
        W_TRANSFORM=int(w_transform), WRITE_W=bool(write_w), WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def long_row_prune(rows: int, *, coef_mode: CoefMode, w_transform: Transform, write_w: bool,
                   write_mask: bool) -> Launch:  # fmt: skip
    """Rows longer than ``LONG_ROW``: one program per row, walked in ``LONG_CHUNK`` chunks."""
    return LONG_ROW_PRUNE.launch(
        (rows,), LONG_ROW_WARPS, CHUNK=LONG_CHUNK, COEF_MODE=int(coef_mode), W_TRANSFORM=int(w_transform),
        WRITE_W=bool(write_w), WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def nm_prune(rows: int, cols: int, n: int, m: int, *, coef_mode: CoefMode, w_transform: Transform, write_w: bool,
             write_mask: bool) -> Launch:  # fmt: skip
    """N:M: programs of (row block, group block); M padded to the power of two MP."""
    mp = next_power_of_2(m)
    block_g = max(1, min(next_power_of_2(cols // m), NM_RANK_TILE // (mp * mp) or 1))
    n_rows = max(1, min(NM_ROWS_PER_PROGRAM, rows))
    return NM_PRUNE.launch(
        (cdiv(rows, n_rows), cdiv(cols // m, block_g)), NM_WARPS, N_PRUNE=m - n, M=m, MP=mp, BLOCK_G=block_g,
        ROWS=n_rows, COEF_MODE=int(coef_mode), W_TRANSFORM=int(w_transform), WRITE_W=bool(write_w),
        WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def population(rows: int, cols: int) -> Launch:
    """P members over rows of up to ``LONG_ROW`` columns: the row tile of ``row_prune``."""
    block = row_block(cols)
    n = rows_per_program(rows)
    return POPULATION.launch((cdiv(rows, n),), warps(block), BLOCK=block, ROWS=n)


def row_stats(rows: int, cols: int, *, need_exp: bool) -> Launch:
    """Pre-pass per row (sums, max, softmax sum), one program per row in chunks of up to ``LONG_ROW``."""
    block = min(LONG_ROW, next_power_of_2(cols))
    return ROW_STATS.launch((rows,), warps(block), BLOCK=block, NEED_EXP=bool(need_exp))


def col_sum(rows: int, cols: int) -> Launch:
    """Pre-pass column sums: each program owns ``BLOCK_C`` columns and sweeps every row (no atomics)."""
    block_c = min(SWEEP_BLOCK_C, next_power_of_2(cols))
    return COL_SUM.launch((cdiv(cols, block_c),), SWEEP_WARPS, BLOCK_R=min(SWEEP_BLOCK_R, next_power_of_2(rows)),
                          BLOCK_C=block_c)  # fmt: skip


def act_norm(rows: int, cols: int) -> Launch:
    """act-norm: each program owns ``BLOCK_C`` channels and sweeps every row (no atomics: deterministic)."""
    block_c = min(SWEEP_BLOCK_C, next_power_of_2(cols))
    return ACT_NORM.launch((cdiv(cols, block_c),), SWEEP_WARPS, BLOCK_R=min(SWEEP_BLOCK_R, next_power_of_2(rows)),
                           BLOCK_C=block_c)  # fmt: skip


def sym_row_prune(rows: int, cols: int, score, *, has_g: bool, has_x: bool, write_w: bool, write_mask: bool) -> Launch:
    """Symbolic metric, rows of up to ``LONG_ROW`` columns: the meta metric's row tile and rows per program."""
    block = row_block(cols)
    n = rows_per_program(rows)
    return SYM_ROW_PRUNE.launch(
        (cdiv(rows, n),), warps(block), fp_fusion=False, SCORE=score, BLOCK=block, ROWS=n, HAS_G=bool(has_g),
        HAS_X=bool(has_x), WRITE_W=bool(write_w), WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def sym_long_row_prune(rows: int, cols: int, score, *, has_g: bool, has_x: bool, write_w: bool,
                       write_mask: bool) -> Launch:  # fmt: skip
    """Symbolic metric, rows longer than ``LONG_ROW``: the row on chip in ``SYM_LONG_CHUNK`` chunks, 8 rows per
    program (11008 columns: 6 chunks, 14336: 7)."""
    n = max(1, min(SYM_LONG_ROWS, rows))
    return SYM_LONG_ROW_PRUNE.launch(
        (cdiv(rows, n),), SYM_LONG_WARPS, fp_fusion=False, SCORE=score, CHUNK=SYM_LONG_CHUNK,
        NCH=cdiv(cols, SYM_LONG_CHUNK), ROWS=n, HAS_G=bool(has_g), HAS_X=bool(has_x), WRITE_W=bool(write_w),
        WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def sym_nm_prune(rows: int, cols: int, n: int, m: int, score, *, has_g: bool, has_x: bool, write_w: bool,
                 write_mask: bool) -> Launch:  # fmt: skip
    """Symbolic metric, N:M: the meta metric's (row block, group block) tiles."""
    mp = next_power_of_2(m)
    block_g = max(1, min(next_power_of_2(cols // m), NM_RANK_TILE // (mp * mp) or 1))
    n_rows = max(1, min(NM_ROWS_PER_PROGRAM, rows))
    return SYM_NM_PRUNE.launch(
        (cdiv(rows, n_rows), cdiv(cols // m, block_g)), NM_WARPS, fp_fusion=False, SCORE=score, N_PRUNE=m - n, M=m,
        MP=mp, BLOCK_G=block_g, ROWS=n_rows, HAS_G=bool(has_g), HAS_X=bool(has_x), WRITE_W=bool(write_w),
        WRITE_MASK=bool(write_mask),
    )  # fmt: skip


def sym_reduce(rows: int, cols: int, stage, k: int, has_g: bool, has_x: bool) -> Launch:
    """Symbolic pre-pass level: one ``SYM_REDUCE_R x SYM_REDUCE_C`` tile per program, ``k`` reductions."""
    block_r = min(SYM_REDUCE_R, next_power_of_2(rows))
    block_c = min(SYM_REDUCE_C, next_power_of_2(cols))
    return SYM_REDUCE.launch(
        (cdiv(rows, block_r), cdiv(cols, block_c)), SYM_REDUCE_WARPS, fp_fusion=False, STAGE=stage, K=int(k),
        BLOCK_R=block_r, BLOCK_C=block_c, HAS_G=bool(has_g), HAS_X=bool(has_x),
    )  # fmt: skip
