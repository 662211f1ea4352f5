"""``import optishear_kernels`` (and optishear) must work with no CUDA and no triton installed."""

import subprocess
import sys

CODE = """
import sys
sys.modules["triton"] = None  # as if not installed: import raises ImportError, find_spec returns None
import torch
assert not torch.cuda.is_available()
import optishear_kernels as k
from optishear_kernels import _triton, launch
assert _triton.triton is None and _triton.tl is None
assert launch.row_prune(8, 16, coef_mode=k.CoefMode.NONE, w_transform=k.Transform.NONE, write_w=True,
                        write_mask=False).grid == (1,)  # the launch settings need no triton
out = k.fused_prune(torch.randn(4, 16), torch.rand(16), sparsity=0.5)
assert int((out.weight == 0).sum()) == 32
import os
os.environ["OPTISHEAR_KERNELS_BACKEND"] = "triton"
try:
    k.fused_prune(torch.randn(4, 16), torch.rand(16), sparsity=0.5)
except RuntimeError as e:
    assert "triton is not installed" in str(e), e
else:
    raise SystemExit("a forced triton backend without triton must raise")
import optishear
print("ok")
"""


def test_import_without_triton_and_cuda():
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("ok")


def test_kernels_do_not_import_optishear_and_do_not_shadow_hf_kernels():
    code = ("import sys, optishear_kernels; assert 'optishear' not in sys.modules; "
            "import importlib.util; s = importlib.util.find_spec('kernels'); "
            "assert s is None or 'optishear' not in str(s.origin); print('ok')")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_kernels_import_neither_pymoo_nor_transformers_nor_optishear():
    """The kernels are a library of their own: importing them must not drag in the engine's dependencies."""
    code = ("import sys, optishear_kernels, optishear_kernels.aot, optishear_kernels.launch; "
            "bad = sorted(m for m in ('pymoo', 'transformers', 'optishear') if m in sys.modules); "
            "print('loaded:', bad)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "loaded: []", res.stdout
