"""What identifies a model and a tokenizer, for run manifests: a resume on another model must be refused."""

from __future__ import annotations

import hashlib
import json

import torch


def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A digest of every parameter's name, shape, dtype, float64 sum and sum of squares, and a strided sample
    of its values: any retrained, re-quantized or other checkpoint differs, and it costs one read of the
    weights (not a byte-level hash of them, which would cost as much again on a 7B model)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.state_dict().items()):
        t = p.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        if t.is_floating_point() and t.numel():
            flat = t.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].to("cpu", torch.float64)
            h.update(torch.stack([flat.sum(dtype=torch.float64).cpu(), flat.double().square().sum().cpu()]).numpy()
                     .tobytes())  # fmt: skip
            h.update(sample.numpy().tobytes())
        elif t.numel():
            h.update(t.reshape(-1)[:1024].cpu().numpy().tobytes())
    return h.hexdigest()


def model_identity(model) -> dict:
    """Name, architecture, a digest of the config (minus names and paths) and a fingerprint of the weights."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg = {k: v for k, v in cfg.items() if k not in ("_name_or_path", "name_or_path", "transformers_version")}
    return {"name_or_path": str(getattr(model, "name_or_path", "") or ""), "class": type(model).__name__,
            "config_digest": _digest(cfg), "weights": weights_fingerprint(model),
            "dtype": str(next(model.parameters()).dtype)}  # fmt: skip


def tokenizer_identity(tokenizer) -> dict | None:
    """Class and a digest of the vocabulary (None when there is no tokenizer: windows were given as tokens)."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return {"class": type(tokenizer).__name__, "vocab_size": len(vocab), "vocab_digest": _digest(sorted(vocab.items()))}


__all__ = ["model_identity", "tokenizer_identity", "weights_fingerprint"]
