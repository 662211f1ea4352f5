"""GPU suite: the COMPILED Triton kernels against their torch twins, bit for bit, at Llama-2-7B shapes.

    python -m pytest -m gpu tests/gpu

The checks run in one subprocess (``tests/gpu/compiled_checks.py``) whose environment has no
TRITON_INTERPRET, so Triton compiles for the device; the rest of the suite runs the interpreter
(tests/conftest.py). Timings of select and act-norm (``torch.cuda.synchronize`` around each call, median)
go to ``bench/gpu_timings.json``, or to ``$OPTISHEAR_GPU_TIMINGS``. Without CUDA every test here is
skipped, with the reason.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .compiled_checks import SHAPES, STRUCTURES

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = Path(os.environ.get("OPTISHEAR_GPU_TIMINGS", ROOT / "bench" / "gpu_timings.json"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: the GPU suite compares compiled Triton kernels on a real GPU"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "checks.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler
    res = subprocess.run([sys.executable, "-m", "tests.gpu.compiled_checks", "--out", str(out), "--timings",
                          str(TIMINGS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
                         check=False)  # fmt: skip
    assert res.returncode == 0, f"the GPU checks failed to run:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return json.loads(out.read_text())


def _failures(records, *keys):
    return [r for r in records if not all(r[k] for k in keys)]


def test_the_kernels_ran_compiled_on_cuda(checks):
    assert checks["interpreted"] is False and checks["device"].startswith("cuda"), checks


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_fused_prune_is_bit_identical_to_the_twin(checks, structure, shape):
    records = checks["fused"][f"{structure} {shape}"]
    assert records
    bad = _failures(records, "mask_equal", "weight_equal")
    assert not bad, "compiled kernel differs from the twin:\n" + "\n".join(
        f"  {r['kernel']} {r['dtype']} {r['config']}: {r['rows_differing']} of {r['rows']} rows" for r in bad
    )


@pytest.mark.parametrize("shape", list(SHAPES))
def test_population_is_bit_identical_to_the_twin(checks, shape):
    records = checks["population"][shape]
    assert records and all(r["pruned_per_row_ok"] for r in records)
    bad = _failures(records, "mask_equal")
    assert not bad, "\n".join(f"  {r['config']} s={r['sparsity']:.2f}: {r['rows_differing']} rows" for r in bad)


def test_act_norm_matches_the_twin(checks):
    """fp32 and bf16 activations: float32 means equal to the bit; float64 sums within the order bound."""
    records = checks["act_norm"]
    assert {r["dtype"] for r in records} == {"fp32", "bf16"}
    assert not _failures(records, "mean_equal"), records
    assert all(r["sum_max_rel_diff"] <= r["sum_rel_bound"] for r in records), records


def test_timings_were_written(checks):
    data = json.loads(TIMINGS.read_text())
    assert data["device"].startswith("cuda") and data["device_name"]
    for key in ("select_wanda_50pct_mask", "act_norm"):
        assert data[key] and all(r["median_ms"] > 0 for r in data[key])
