"""What identifies a model and a tokenizer, for run manifests: a resume on another model must be refused."""

from __future__ import annotations

import hashlib
import json

import torch


def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 24


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A digest of every parameter's name, shape, dtype, two integer checksums of its bits and a strided sample of
    its values: any retrained, re-quantized or other checkpoint differs, and it costs one read of the weights (not
    a byte-level hash of them, which would cost as much again on a 7B model).

    The checksums are sums of the values' bit patterns (and of their squares) as int64, which wrap modulo 2^64:
    integer addition does not depend on the order of the terms, so the digest is the same on any number of threads
    and any CPU (a float64 sum is not: one thread and two gave different digests of the same weights, and a Ray
    worker or a resume with another thread count would have been refused as "another model")."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.state_dict().items()):
        t = p.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        if not t.numel():
            continue
        flat = t.reshape(-1)
        if t.is_floating_point() and t.element_size() in _INT_VIEW:
            ints = flat.contiguous().view(_INT_VIEW[t.element_size()])
            sums = torch.zeros(2, dtype=torch.int64, device=t.device)
            for i in range(0, ints.numel(), _CHUNK):  # int64 copies of a chunk at a time, not of a whole embedding
                bits = ints[i : i + _CHUNK].to(torch.int64)
                sums += torch.stack([bits.sum(), (bits * bits).sum()])  # int64, wrapping: order-independent
            h.update(sums.cpu().numpy().tobytes())
            h.update(flat[:: max(1, flat.numel() // 1024)][:1024].to("cpu", torch.float64).numpy().tobytes())
        else:
            h.update(flat[:1024].cpu().numpy().tobytes())
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
