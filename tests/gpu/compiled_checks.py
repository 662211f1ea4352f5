"""Compiled Triton kernels against their torch twins on a CUDA device, bit for bit, and their timings.

Run by ``tests/gpu/test_compiled_kernels.py`` in a subprocess whose environment has no TRITON_INTERPRET,
so that Triton compiles the kernels for the device (tests/conftest.py turns the interpreter on for the
rest of the suite); it refuses to run with the interpreter on. By hand, from the repository root:

    python -m tests.gpu.compiled_checks --out /tmp/checks.json --timings bench/gpu_timings.json

``--smoke`` (with ``TRITON_INTERPRET=1``) runs the same code on CPU in Triton's interpreter at small
shapes: ``tests/kernels/test_gpu_suite_smoke.py`` uses it to keep this file working on machines without
a GPU. It says nothing about compiled kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch
from optishear_kernels import MetricConfig, unpack_mask
from optishear_kernels.act_norm import act_norm_update_torch, act_norm_update_triton
from optishear_kernels.backend import interpreting
from optishear_kernels.launch import LONG_ROW
from optishear_kernels.operators import Coefficient as C
from optishear_kernels.operators import Transform as T
from optishear_kernels.prune import (
    fused_prune_torch,
    fused_prune_triton,
    population_prune_torch,
    population_prune_triton,
)

# Llama-2-7B linears [out, in]: q/k/v/o, gate/up, down. The smoke run keeps the kernel family of each.
SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}
SMOKE_SHAPES = {"4096x4096": (6, 256), "11008x4096": (10, 128), "4096x11008": (1, 4160)}
STRUCTURES = {"unstructured": None, "2:4": (2, 4)}
# Every W transform and every kernel coefficient mode at least once (X-side choices are computed by the
# shared torch code, so they matter less here).
CONFIGS = [
    MetricConfig(C.NONE, T.NONE, C.NONE, T.NONE),  # Wanda
    MetricConfig(C.COL, T.SQRT, C.NONE, T.NONE),
    MetricConfig(C.ROWCOL, T.SQUARE, C.COL, T.SQRT),
    MetricConfig(C.ROW, T.EXP, C.NONE, T.NONE),
    MetricConfig(C.TOTAL, T.LOG, C.NONE, T.LOG),
    MetricConfig(C.MEAN, T.SIGMOID, C.NONE, T.NONE),
    MetricConfig(C.ROWCOL, T.SOFTMAX, C.COL, T.SQRT),  # the heaviest operator mix
    MetricConfig(C.RIA, T.NONE, C.NONE, T.SQRT),  # RIA
]
SMOKE_CONFIGS = [CONFIGS[0], CONFIGS[6]]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ACT_SHAPES = {"2048x4096": (2048, 4096), "2048x11008": (2048, 11008)}  # tokens x channels
SMOKE_ACT_SHAPES = {"2048x4096": (40, 96), "2048x11008": (33, 200)}


def _weights(shape, dtype, device, seed):
    """Quantized-like weights (many ties within a row), some exact zeros; statistics with a dead channel."""
    g = torch.Generator().manual_seed(seed)
    w = torch.round(torch.randn(shape, generator=g) * 8) / 8
    w[torch.rand(shape, generator=g) < 0.05] = 0.0
    x = torch.rand(shape[1], generator=g) * 4
    x[torch.randint(shape[1], (1,), generator=g)] = 0.0
    return w.to(dtype).to(device), x.to(device)


@contextlib.contextmanager
def poisoned_outputs():
    """Buffers allocated inside start as NaN (floats) or all ones (integers): an unwritten element shows."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1 if t.dtype != torch.uint8 else 255)

    torch.empty = lambda *a, **k: fill(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: fill(real_empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def check_fused(shapes, configs, device, dtypes=DTYPES) -> dict:
    out = {}
    for structure, nm in STRUCTURES.items():
        for label, shape in shapes.items():
            records = []
            for dname, dtype in dtypes.items():
                w, x = _weights(shape, dtype, device, seed=shape[0] + shape[1])
                for cfg in configs:
                    kw = {"nm": nm} if nm else {"sparsity": 0.5}
                    a = fused_prune_torch(w, x, cfg, write_mask=True, **kw)
                    with poisoned_outputs():
                        b = fused_prune_triton(w, x, cfg, write_mask=True, **kw)
                    rows = (a.packed_mask != b.packed_mask).any(dim=1) | (_bits(a.weight) != _bits(b.weight)).any(dim=1)
                    records.append({
                        "config": cfg.spec, "dtype": dname, "mask_equal": torch.equal(a.packed_mask, b.packed_mask),
                        "weight_equal": torch.equal(_bits(a.weight), _bits(b.weight)),
                        "rows_differing": int(rows.sum()), "rows": shape[0],
                        "kernel": "N:M" if nm else ("long row" if shape[1] > LONG_ROW else "row"),
                    })  # fmt: skip
            out[f"{structure} {label}"] = records
    return out


def check_population(shapes, configs, device) -> dict:
    out = {}
    sparsities = [0.2 + 0.6 * i / max(1, len(configs) - 1) for i in range(len(configs))]
    for label, shape in shapes.items():
        w, x = _weights(shape, torch.bfloat16, device, seed=7 + shape[0])
        a = population_prune_torch(w, x, configs, sparsities)
        with poisoned_outputs():
            b = population_prune_triton(w, x, configs, sparsities)
        out[label] = [{"config": c.spec, "sparsity": s, "mask_equal": torch.equal(a[i], b[i]),
                       "rows_differing": int((a[i] != b[i]).any(dim=1).sum()),
                       "pruned_per_row_ok": bool((unpack_mask(b[i], shape[1]).sum(1) == int(shape[1] * s)).all())}
                      for i, (c, s) in enumerate(zip(configs, sparsities))]  # fmt: skip
    return out


def _activations(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(2 * torch.randn(shape[1], generator=g))  # outlier channels, as in LLM activations
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(device)


def check_act_norm(shapes, device) -> list:
    records = []
    for label, shape in shapes.items():
        for dname, dtype in DTYPES.items():
            acc_a = torch.zeros(shape[1], dtype=torch.float64, device=device)
            acc_b = acc_a.clone()
            rows = 0
            for step in range(3):  # streaming over calls
                x = _activations(shape, dtype, device, seed=step + shape[1])
                rows += act_norm_update_torch(x, acc_a)
                act_norm_update_triton(x, acc_b)
            rel = ((acc_a - acc_b).abs() / acc_a.abs().clamp_min(1e-300)).max().item()
            records.append({
                "shape": label, "dtype": dname, "rows": rows,
                "mean_equal": torch.equal((acc_a / rows).to(torch.float32), (acc_b / rows).to(torch.float32)),
                "sum_equal": torch.equal(acc_a, acc_b), "sum_max_rel_diff": rel,
                # a sum of n >= 0 terms in any order is within (n - 1) * 2^-53 of the exact one
                "sum_rel_bound": 2 * rows * 2**-53,
            })  # fmt: skip
    return records


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(fn, reps):
    fn()  # compile / warm up
    _sync()
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def wanda_sort_mask(w, x_sq, sparsity):
    """Wanda's code: stable sort per row, first k indices, scatter_ (the reference the bench compares to)."""
    w_metric = torch.abs(w) * torch.sqrt(x_sq.reshape((1, -1)))
    indices = torch.sort(w_metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * sparsity)]
    return torch.zeros_like(w_metric, dtype=torch.bool).scatter_(1, indices, True)


MASK_ONLY = {"sparsity": 0.5, "write_weight": False, "write_mask": True}


def timings(shapes, act_shapes, device, reps, dtypes=DTYPES) -> dict:
    wanda = CONFIGS[0]
    select = []
    for label, shape in shapes.items():
        for dname, dtype in dtypes.items():
            w, x = _weights(shape, dtype, device, seed=1)
            providers = {
                "triton": lambda w=w, x=x: fused_prune_triton(w, x, wanda, **MASK_ONLY),
                "torch": lambda w=w, x=x: fused_prune_torch(w, x, wanda, **MASK_ONLY),
                "sort": lambda w=w, x=x: wanda_sort_mask(w, x, 0.5),
            }
            for name, fn in providers.items():
                select.append({"shape": label, "dtype": dname, "provider": name, "median_ms": _median_ms(fn, reps)})
    act = []
    for label, shape in act_shapes.items():
        for dname, dtype in DTYPES.items():
            x = _activations(shape, dtype, device, seed=2)
            acc = torch.zeros(shape[1], dtype=torch.float64, device=device)
            for name, fn in (("triton", act_norm_update_triton), ("torch", act_norm_update_torch)):
                act.append({"shape": label, "dtype": dname, "provider": name,
                            "median_ms": _median_ms(lambda fn=fn, x=x, acc=acc: fn(x, acc), reps)})  # fmt: skip
    return {"select_wanda_50pct_mask": select, "act_norm": act}


def environment(device) -> dict:
    import triton

    info = {"device": str(device), "interpreted": interpreting(), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cuda"] = torch.version.cuda
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="where to write the check results (JSON)")
    ap.add_argument("--timings", required=True, help="where to write the timings (JSON)")
    ap.add_argument("--smoke", action="store_true", help="CPU + interpreter at small shapes (tests the harness)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per case (median reported)")
    args = ap.parse_args(argv)
    if args.smoke:
        if not interpreting():
            raise SystemExit("--smoke runs on CPU in the interpreter: set TRITON_INTERPRET=1")
        device, shapes, act_shapes, configs = torch.device("cpu"), SMOKE_SHAPES, SMOKE_ACT_SHAPES, SMOKE_CONFIGS
        reps, dtypes = 1, {"fp32": torch.float32}  # the harness, not the numerics: one dtype is enough
    else:
        if interpreting():
            raise SystemExit("TRITON_INTERPRET is set: the GPU checks must run the compiled kernels (unset it)")
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available")
        device, shapes, act_shapes, configs = torch.device("cuda"), SHAPES, ACT_SHAPES, CONFIGS
        reps, dtypes = args.reps, DTYPES
    env = environment(device)
    results = {**env, "fused": check_fused(shapes, configs, device, dtypes),
               "population": check_population(shapes, configs, device),
               "act_norm": check_act_norm(act_shapes, device)}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    with open(args.timings, "w") as f:
        json.dump({**env, **timings(shapes, act_shapes, device, reps, dtypes)}, f, indent=1)
    print(f"wrote {args.out} and {args.timings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
