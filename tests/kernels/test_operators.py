"""Operator enums, their Triton mirrors, and the launch settings shared by the launchers and the AOT report."""

import re
from pathlib import Path

import pytest
from optishear_kernels import COEFFICIENT_NAMES, COEFFICIENTS, RIA, TRANSFORMS, MetricConfig, all_configs
from optishear_kernels import launch as L
from optishear_kernels.metric import w_coef_operands, w_stats
from optishear_kernels.operators import COEF_MODE, Coefficient, CoefMode, Transform

PACKAGE = Path(L.__file__).resolve().parent


def test_user_facing_indices_never_change():
    """Recipes and search logs store these indices and names: they are a file format."""
    assert TRANSFORMS == ("none", "sqrt", "square", "exp", "log", "sigmoid", "softmax")
    assert COEFFICIENTS == ("none", "row", "col", "rowcol", "total", "mean", "fro")
    assert COEFFICIENT_NAMES == COEFFICIENTS + ("ria",)
    assert [int(t) for t in Transform] == list(range(7)) and int(Coefficient.RIA) == 7
    assert RIA.as_tuple() == (7, 0, 0, 1) and RIA.spec == "w:ria*none,x:none*sqrt"
    c = MetricConfig(Coefficient.ROWCOL, Transform.SOFTMAX, Coefficient.COL, Transform.SQRT)
    assert c == MetricConfig(3, 6, 2, 1) and type(c.cw) is int and c.as_tuple() == (3, 6, 2, 1)
    assert (c.w_coef, c.w_transform, c.x_coef, c.x_transform) == (
        Coefficient.ROWCOL, Transform.SOFTMAX, Coefficient.COL, Transform.SQRT)  # fmt: skip


def test_every_coefficient_has_a_kernel_mode_and_the_twin_agrees():
    assert set(COEF_MODE) == set(Coefficient) and set(COEF_MODE.values()) == set(CoefMode)
    import torch

    w = torch.randn(4, 8)
    for cw in Coefficient:
        cfg = MetricConfig(int(cw), 0, 0, 0)
        *_, mode = w_coef_operands(w_stats(w, cfg), cfg, w.numel())
        assert mode is COEF_MODE[cw]


def test_triton_mirrors_match_the_enums():
    pytest.importorskip("triton", reason="triton is not installed")
    from optishear_kernels import operators as ops

    for enum, prefix in ((Transform, "T_"), (CoefMode, "MODE_")):
        for member in enum:
            mirror = getattr(ops, prefix + member.name)
            assert type(mirror).__name__ == "constexpr" and mirror.value == member.value and type(mirror.value) is int


def test_kernel_specs_match_the_kernel_definitions():
    """The signatures the AOT report compiles with are the kernels' own parameters, in order."""
    pytest.importorskip("triton", reason="triton is not installed")
    for spec in L.KERNELS:
        assert spec.kernel().arg_names == list(spec.args) + list(spec.constexprs), spec.name


def test_launch_heuristics():
    ops = {"coef_mode": CoefMode.NONE, "w_transform": Transform.NONE, "write_w": True, "write_mask": False}
    run = L.row_prune(4096, 4096, **ops)
    assert run.grid == (128,) and run.num_warps == 8 and run.constexprs["BLOCK"] == 4096
    assert run.constexprs["ROWS"] == 32
    small = L.row_prune(5, 123, **ops)
    assert small.grid == (1,) and small.constexprs["BLOCK"] == 128 and small.constexprs["ROWS"] == 5
    assert small.num_warps == 4
    assert L.long_row_prune(4096, **ops).grid == (4096,)
    nm = L.nm_prune(11008, 4096, 2, 4, **ops)
    assert nm.constexprs["MP"] == 4 and nm.constexprs["BLOCK_G"] == 256 and nm.grid == (688, 4)
    assert L.nm_prune(4, 21, 3, 7, **ops).constexprs["MP"] == 8
    assert L.act_norm(2048, 11008).grid == (86,) and L.act_norm(3, 5).constexprs == {"BLOCK_R": 4, "BLOCK_C": 8}
    with pytest.raises(ValueError, match="constexprs"):
        L.ROW_PRUNE.launch((1,), 4, BLOCK=8)
    assert L.ROW_PRUNE.signature("bf16")["w_ptr"] == "*bf16" and L.ACT_NORM.signature("fp16")["x_ptr"] == "*fp16"


def test_aot_variants_are_built_from_the_launch_settings():
    from optishear_kernels.aot import variants

    vs = variants()
    assert {v.kernel for v in vs} == {s.name for s in L.KERNELS}
    for v in vs:
        assert set(v.signature) == set(v.run.spec.args) and tuple(v.constexprs) == v.run.spec.constexprs


def test_kernels_compare_operator_choices_by_name_only():
    """No ``W_TRANSFORM == 3`` or ``mode == 4`` in the kernels: the named T_* / MODE_* globals say what is meant."""
    literal = re.compile(r"\b(COEF_MODE|W_TRANSFORM|UW|COEF|mode|uw)\s*(==|!=)\s*\d")
    hits = [f"{p.name}:{i}" for p in sorted(PACKAGE.glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]  # fmt: skip
    assert not hits, hits


@pytest.mark.parametrize("cfg", all_configs()[::97] + [RIA], ids=lambda c: c.spec)
def test_parse_round_trip_keeps_plain_ints(cfg):
    again = MetricConfig.parse(cfg.spec)
    assert again == cfg and all(type(v) is int for v in again.as_tuple())
