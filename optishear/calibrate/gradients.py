"""Gradient statistics G, as Pruner-Zero computes them: per weight of every decoder-block linear,

    G = sqrt( sum over calibration windows of (scale * dL/dW)^2 ),   scale = 100,

from the model's own causal-LM loss (labels = the window's tokens, shifted inside the model), one window per
backward pass, accumulated in float32. It is a pass of its own over the whole model (a backward needs every block),
not part of the block-by-block walk; the engine runs it when a method declares ``GRADIENT``, on the dense model,
before anything is pruned.

Memory: one float32 accumulator per linear weight (4 bytes per weight: 0.42 GB for SmolLM2-135M's 106M block
weights, 26 GB for a 7B model's 6.5B) on the weights' device, plus one window's forward and backward. Only the block
linears' weights require gradients (embeddings, norms and the head stay frozen: no gradient buffers for them), and
each gradient is folded into its accumulator and freed as soon as autograd has produced it
(``register_post_accumulate_grad_hook``), so no second weight-sized buffer is kept. ``dtype="bfloat16"`` stores the
result (on disk and in memory while pruning or searching) in bfloat16, half the size; the accumulation is float32
either way.

Cached on disk: ``gradients-<key>.pt``, where the key digests the model's identity (config and weights fingerprint),
the calibration windows' tokens, the scale and the dtype. A cached file is reloaded, never recomputed; a file whose
recorded key differs from the expected one is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from optishear_kernels import all_finite
from tqdm.auto import tqdm

from ..models import LinearRef, model_identity, model_linears

logger = logging.getLogger(__name__)

GRAD_SCALE = 100.0
GRAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FORMAT = "optishear-gradients/1"


@dataclass
class GradientStats:
    """Gradient statistics of every decoder-block linear.

    Attributes:
        per_block: per block, ``{linear name: G}`` with ``G: [out, in]`` (the ``LinearRef.weight2d`` orientation).
        key: the cache key (model identity, windows, scale, dtype); digest: a digest of every G's bytes.
        seconds: wall time of the pass (0 when loaded; ``computed_seconds`` is the time it took when it was computed,
            as the cache records it); peak_bytes: peak memory during the pass (CUDA: allocated; CPU: the process's
            peak resident set); accumulator_bytes: the float32 accumulators' size.
        windows: calibration windows used; loaded: read from ``path`` rather than computed.
    """

    per_block: list[dict[str, torch.Tensor]]
    key: str
    digest: str
    dtype: str = "float32"
    seconds: float = 0.0
    peak_bytes: int = 0
    accumulator_bytes: int = 0
    windows: int = 0
    loaded: bool = False
    path: str | None = None
    computed_seconds: float = 0.0  # how long the pass took when it was computed (recorded in the cache file)

    def describe(self) -> dict:
        """What a run manifest records (a resume compares it)."""
        return {"key": self.key, "digest": self.digest, "dtype": self.dtype, "scale": GRAD_SCALE,
                "windows": self.windows}  # fmt: skip

    def block(self, i: int) -> dict[str, torch.Tensor]:
        return self.per_block[i]


def gradient_key(model, windows: torch.Tensor, dtype: str = "float32", scale: float = GRAD_SCALE) -> str:
    """The cache key: model identity, calibration tokens, scale, dtype and this file format."""
    from ..data import tokens_digest

    blob = json.dumps({"format": FORMAT, "model": model_identity(model), "windows": tokens_digest(windows),
                       "scale": scale, "dtype": dtype}, sort_keys=True)  # fmt: skip
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def _digest(per_block: list[dict[str, torch.Tensor]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i, block in enumerate(per_block):
        for name in sorted(block):
            t = block[name].detach().cpu().contiguous()
            h.update(f"{i}.{name}|{tuple(t.shape)}|{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def compute_gradients(model, windows: torch.Tensor, linears: list[list[LinearRef]] | None = None, *,
                      scale: float = GRAD_SCALE, progress: bool = True) -> tuple[list[dict], dict]:  # fmt: skip
    """The float32 statistics ``sqrt(sum_windows (scale * dL/dW)^2)`` of every listed linear, one window per backward.

    Args:
        model: a causal LM taking ``labels`` (Hugging Face); put in eval mode for the pass (no dropout: the same
            windows always give the same G) and restored after.
        windows: ``[n, seqlen]`` token ids.
        linears: per block, the linears (default: every linear of every decoder block).

    Returns:
        (per block ``{name: G [out, in] float32}``, ``{"seconds", "peak_bytes", "accumulator_bytes"}``).

    Raises:
        ValueError: the model cannot produce gradients, or a layer gets none or an all-zero one (named).
        FloatingPointError: a window's loss, or a layer's gradient, is NaN or infinite (named).
    """
    linears = linears if linears is not None else model_linears(model)
    refs = [r for block in linears for r in block]
    if not refs:
        raise ValueError("no linear layers in the decoder blocks: nothing to compute gradients for")
    device = next(model.parameters()).device
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    acc: dict[int, torch.Tensor] = {}
    seen: dict[int, int] = {}
    by_param = {}
    for r in refs:
        by_param[id(r.module.weight)] = r
        acc[id(r.module.weight)] = torch.zeros(r.module.weight.shape, dtype=torch.float32, device=device)
    acc_bytes = sum(a.numel() * 4 for a in acc.values())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def fold(p: torch.Tensor) -> None:
        # (g * scale)^2 added in float32, in place (no weight-sized temporaries: they cost more than the arithmetic
        # on CPU); the same roundings as acc + (g * scale) ** 2. NaN or inf would persist in the sum: checked once.
        key = id(p)
        t = p.grad.detach()
        t = t.mul_(scale) if t.dtype == torch.float32 else t.to(torch.float32).mul_(scale)
        acc[key].add_(t.mul_(t))
        seen[key] = seen.get(key, 0) + 1
        p.grad = None  # folded: free it now

    hooks = []
    t0 = time.perf_counter()
    try:
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for r in refs:
                r.module.weight.requires_grad_(True)
                hooks.append(r.module.weight.register_post_accumulate_grad_hook(fold))
        except RuntimeError as err:  # inference-mode tensors cannot require gradients
            raise ValueError(f"the model cannot produce gradients: {err}") from err
        model.eval()
        with torch.enable_grad():
            for i in tqdm(range(windows.shape[0]), desc="gradients", disable=not progress, leave=False):
                ids = windows[i : i + 1].to(device)
                try:
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                except TypeError as err:
                    raise ValueError(f"the model cannot produce gradients: its forward takes no labels ({err})") \
                        from err  # fmt: skip
                if loss is None or loss.grad_fn is None:
                    raise ValueError("the model cannot produce gradients: its loss is not differentiable with respect "
                                     "to its decoder-block weights (inference-mode weights, or no loss)")  # fmt: skip
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(f"the causal-LM loss of calibration window {i} is {float(loss)}")
                try:
                    loss.backward()
                except RuntimeError as err:
                    raise ValueError(f"the model cannot produce gradients: {err}") from err
    finally:
        for h in hooks:
            h.remove()
        for p, f in flags.items():
            if not p.is_inference():
                p.grad = None
                p.requires_grad_(f)
        model.train(was_training)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    out: list[dict[str, torch.Tensor]] = [{} for _ in linears]
    for r in refs:
        key = id(r.module.weight)
        if seen.get(key, 0) == 0:
            raise ValueError(f"layer {r.full_name} received no gradient: it is not on the path of the model's loss")
        if not all_finite(acc[key]):
            raise FloatingPointError(f"the gradient of layer {r.full_name} contains NaN or inf (or its square "
                                     "overflows float32)")  # fmt: skip
        g = acc[key].sqrt_()
        if not bool((g > 0).any()):
            raise ValueError(f"the gradient of layer {r.full_name} is zero on every calibration window")
        out[r.block][r.name] = g.t().contiguous() if r.transposed else g
    return out, {"seconds": seconds, "peak_bytes": int(peak), "accumulator_bytes": acc_bytes}


def _save(path: Path, key: str, per_block, dtype: str, windows: int, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    grads = {f"{i}.{n}": t.cpu() for i, b in enumerate(per_block) for n, t in b.items()}
    torch.save({"format": FORMAT, "key": key, "dtype": dtype, "scale": GRAD_SCALE, "windows": windows, "grads": grads,
                "info": {k: float(v) for k, v in info.items()}}, tmp)  # fmt: skip
    os.replace(tmp, path)


def _load(path: Path, key: str, n_blocks: int, device) -> tuple[list[dict[str, torch.Tensor]], dict]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an OptiShear gradient cache ({FORMAT})")
    if data.get("key") != key:
        raise ValueError(f"the gradient cache {path} was computed for another model, calibration windows or dtype "
                         f"(key {data.get('key')}, expected {key}): delete it or use another directory")  # fmt: skip
    per_block: list[dict[str, torch.Tensor]] = [{} for _ in range(n_blocks)]
    for full, t in data["grads"].items():
        i, name = full.split(".", 1)
        per_block[int(i)][name] = t.to(device)
    return per_block, data


def gradient_statistics(model, windows: torch.Tensor, *, dtype: str = "float32",
                        cache_dir: str | os.PathLike | None = None, progress: bool = True) -> GradientStats:
    """G for every decoder-block linear of ``model`` on ``windows``: loaded from ``cache_dir`` when cached there,
    otherwise computed (``compute_gradients``) and written there.

    Args:
        dtype: ``float32`` or ``bfloat16`` (what is stored and returned; the accumulation is float32).
        cache_dir: directory of ``gradients-<key>.pt`` files; None: no cache.
    """
    if dtype not in GRAD_DTYPES:
        raise ValueError(f"gradient dtype must be one of {sorted(GRAD_DTYPES)}, got {dtype!r}")
    linears = model_linears(model)
    key = gradient_key(model, windows, dtype)
    path = Path(cache_dir) / f"gradients-{key}.pt" if cache_dir is not None else None
    device = next(model.parameters()).device
    if path is not None and path.is_file():
        per_block, data = _load(path, key, len(linears), device)
        info = data.get("info", {})
        stats = GradientStats(per_block, key, _digest(per_block), dtype, windows=int(windows.shape[0]), loaded=True,
                              path=str(path), peak_bytes=int(info.get("peak_bytes", 0)),
                              accumulator_bytes=int(info.get("accumulator_bytes", 0)),
                              computed_seconds=float(info.get("seconds", 0.0)))  # fmt: skip
        logger.info("gradient statistics loaded from %s", path)
        return stats
    per_block, info = compute_gradients(model, windows, linears, progress=progress)
    if dtype != "float32":
        per_block = [{n: t.to(GRAD_DTYPES[dtype]) for n, t in b.items()} for b in per_block]
    stats = GradientStats(per_block, key, _digest(per_block), dtype, info["seconds"], info["peak_bytes"],
                          info["accumulator_bytes"], int(windows.shape[0]), path=str(path) if path else None,
                          computed_seconds=info["seconds"])  # fmt: skip
    logger.info("gradient statistics: %d windows in %.1f s, peak memory %.2f GB (accumulators %.2f GB)", stats.windows,
                stats.seconds, stats.peak_bytes / 1e9, stats.accumulator_bytes / 1e9)  # fmt: skip
    if path is not None:
        _save(path, key, per_block, dtype, stats.windows, info)
    return stats


def merge_gradients(block_stats: dict | None, refs: list[LinearRef], grads: GradientStats, name: str) -> dict:
    """``block_stats`` with each listed linear's G added under ``name`` (a new dict; shared sub-dicts are copied)."""
    out = {k: dict(v) for k, v in (block_stats or {}).items()}
    for r in refs:
        g = grads.per_block[r.block].get(r.name)
        if g is None:
            raise ValueError(f"no gradient statistics for layer {r.full_name}")
        out.setdefault(r.name, {})[name] = g
    return out


__all__ = ["GRAD_SCALE", "GRAD_DTYPES", "GradientStats", "gradient_key", "compute_gradients", "gradient_statistics",
           "merge_gradients"]  # fmt: skip
