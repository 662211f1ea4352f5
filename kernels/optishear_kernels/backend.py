"""Backend choice: Triton on CUDA, the torch twin elsewhere.

``OPTISHEAR_KERNELS_BACKEND`` = ``auto`` (default) | ``torch`` | ``triton``. A forced ``triton`` that
cannot run (no triton, or a CPU tensor without ``TRITON_INTERPRET=1``) raises; ``auto`` falls back to
the twin, warning once when triton was expected but is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

logger = logging.getLogger(__name__)
ENV = "OPTISHEAR_KERNELS_BACKEND"
_warned = False


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose(t: torch.Tensor, backend: str | None = None) -> str:
    """Return ``"triton"`` or ``"torch"`` for work on tensor ``t``."""
    global _warned
    want = (backend or os.environ.get(ENV, "auto")).lower()
    if want not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV} / backend must be auto, torch or triton, got {want!r}")
    if want == "torch":
        return "torch"
    can_device = t.is_cuda or (interpreting() and t.device.type == "cpu")
    if want == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' was forced but triton is not installed (pip install triton)")
        if not can_device:
            raise RuntimeError(
                f"backend 'triton' was forced for a {t.device.type} tensor: Triton needs CUDA, or "
                "TRITON_INTERPRET=1 set before triton is imported to run on CPU"
            )
        return "triton"
    if t.is_cuda:
        if triton_available():
            return "triton"
        if not _warned:
            logger.warning("triton is not installed: using the torch twins on CUDA")
            _warned = True
    return "torch"
