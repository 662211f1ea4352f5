"""The one optional import of triton: every kernel module takes ``triton`` and ``tl`` from here.

Both are None when triton is not installed; the kernel modules then define no kernels and the package
runs on its torch twins.
"""

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by the no-triton import test
    triton = None
    tl = None

__all__ = ["tl", "triton"]
