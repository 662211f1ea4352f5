"""The GPU suite's harness (tests/gpu/compiled_checks.py) runs, here on CPU in the interpreter at small shapes.

This keeps the GPU suite from rotting on machines without a GPU; it says nothing about compiled kernels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = pytest.mark.interpreter

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_checks_harness_runs_in_the_interpreter(tmp_path):
    out, timings = tmp_path / "checks.json", tmp_path / "timings.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "tests.gpu.compiled_checks", "--smoke", "--out", str(out),
                          "--timings", str(timings)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    checks = json.loads(out.read_text())
    assert checks["interpreted"] is True and checks["device"] == "cpu"
    fused = [r for records in checks["fused"].values() for r in records]
    assert {r["kernel"] for r in fused} == {"row", "long row", "N:M"}
    assert all(r["mask_equal"] and r["weight_equal"] for r in fused), [r for r in fused if not r["mask_equal"]]
    assert all(r["mask_equal"] and r["pruned_per_row_ok"] for rs in checks["population"].values() for r in rs)
    assert all(r["mean_equal"] and r["sum_max_rel_diff"] <= r["sum_rel_bound"] for r in checks["act_norm"])
    data = json.loads(timings.read_text())
    assert {r["provider"] for r in data["select_wanda_50pct_mask"]} == {"triton", "torch", "sort"}
