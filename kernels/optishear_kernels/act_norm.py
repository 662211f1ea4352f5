"""act-norm: streaming per-input-channel sum of x^2, accumulated in float64; the statistic behind ||X|| in Wanda.

``x`` of any leading shape ``[..., C]`` and dtype fp32/bf16/fp16 is folded into ``acc: [C] float64``
by ``acc += sum over rows of x.double() ** 2``; call it once per calibration batch. ``ActNorm`` wraps
the accumulator as a forward (pre-)hook for a linear layer and gives the mean ``X = acc / rows``, rounded
to float32 once.

Why float64: a float32 accumulator's result depends on the order the rows are added in, which depends on
the batch split and on the CPU's vector width; measured on our machines, AVX2 against AVX-512 flipped
near-ties in Wanda masks and moved a perplexity from 60.618 to 60.445. In float64, x * x is exact for
fp32/bf16/fp16 inputs and the order-dependent rounding of the sum is about 2^-29 of a float32 ulp, so the
float32 mean comes out the same for any order except in the rare case that the float64 mean lies within
that distance of a float32 rounding boundary. (A bf16 square has 16 significant bits: for bf16 inputs
whose squares span at most 37 - log2(rows) binades the float64 sums are exact, and no case is left.)
With float64 the masks were the same on both machines.
"""

from __future__ import annotations

import torch

from . import backend
from . import launch as L
from ._triton import tl, triton

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if triton is not None:

    @triton.jit
    def _act_norm_kernel(x_ptr, acc_ptr, n_rows, n_cols, stride_x, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program owns BLOCK_C columns and walks all rows: no atomics, so the result is deterministic.
        pid = tl.program_id(0)
        cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < n_cols
        total = tl.zeros((BLOCK_C,), dtype=tl.float64)
        for r0 in range(0, n_rows, BLOCK_R):
            rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            m = (rows < n_rows)[:, None] & cmask[None, :]
            # Upcast right after the load (the interpreter does bf16 math on raw bits); x * x is exact in fp64.
            x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
            x = x.to(tl.float64)
            total += tl.sum(x * x, axis=0)
        old = tl.load(acc_ptr + cols, mask=cmask, other=0.0)
        tl.store(acc_ptr + cols, old + total, mask=cmask)


def _check(x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    if x.dtype not in _DTYPES:
        raise ValueError(f"act_norm: x must be float32, bfloat16 or float16, got {x.dtype}")
    if acc.dim() != 1 or x.shape[-1] != acc.shape[0]:
        raise ValueError(f"act_norm: x has {x.shape[-1]} channels but acc has shape {tuple(acc.shape)}")
    if acc.dtype != torch.float64:
        raise ValueError(
            f"act_norm: acc must be float64 (the sum of squares is accumulated in float64 so that the float32 "
            f"mean does not depend on the order rows were added in), got {acc.dtype}"
        )
    if x.device != acc.device:
        raise ValueError(f"act_norm: x is on {x.device} but acc on {acc.device}")
    return x.reshape(-1, x.shape[-1])


def act_norm_update_torch(x: torch.Tensor, acc: torch.Tensor) -> int:
    """Twin: ``acc += (x.double() ** 2).sum(rows)``; returns the number of rows folded in."""
    x2 = _check(x, acc)
    acc += x2.double().square().sum(dim=0)
    return x2.shape[0]


def act_norm_update_triton(x: torch.Tensor, acc: torch.Tensor) -> int:
    """Triton launcher for ``act_norm_update``."""
    x2 = _check(x, acc)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n_rows, n_cols = x2.shape
    if n_rows == 0:
        return 0
    run = L.act_norm(n_rows, n_cols)
    _act_norm_kernel[run.grid](x_ptr=x2, acc_ptr=acc, n_rows=n_rows, n_cols=n_cols, stride_x=x2.stride(0),
                               **run.options())  # fmt: skip
    return n_rows


def act_norm_update(x: torch.Tensor, acc: torch.Tensor, *, backend_name: str | None = None) -> int:
    """Fold activations into a per-channel sum of squares.

    Args:
        x: [..., C] activations, float32/bfloat16/float16.
        acc: [C] float64 accumulator, updated in place (a float32 one is refused with a ValueError).
        backend_name: "auto" | "torch" | "triton" (default: ``OPTISHEAR_KERNELS_BACKEND`` or auto).

    Returns:
        The number of rows (tokens) folded in.
    """
    if backend.choose(x, backend_name) == "triton":
        return act_norm_update_triton(x, acc)
    return act_norm_update_torch(x, acc)


class ActNorm:
    """Running mean of x^2 per input channel of one linear layer, usable as a forward pre-hook.

    ``sum`` is the float64 [C] accumulator and ``rows`` the number of rows folded in.

    Example:
        >>> stats = ActNorm(layer.in_features)
        >>> handle = layer.register_forward_pre_hook(stats.hook)
        >>> model(**batch); handle.remove()
        >>> x_sq = stats.mean()   # [in] float32
    """

    def __init__(self, n_channels: int, device: torch.device | str = "cpu", *, backend_name: str | None = None):
        self.sum = torch.zeros(n_channels, dtype=torch.float64, device=device)
        self.rows = 0
        self.backend_name = backend_name

    def update(self, x: torch.Tensor) -> None:
        self.rows += act_norm_update(x.detach(), self.sum, backend_name=self.backend_name)

    def hook(self, module, inputs, *rest) -> None:
        """Forward pre-hook (``rest`` empty) or forward hook (``rest`` is the output): reads input 0."""
        self.update(inputs[0])

    def mean(self) -> torch.Tensor:
        """X: [C] float32 mean of x^2 over every row seen, rounded once from the float64 mean."""
        if self.rows == 0:
            raise ValueError("ActNorm.mean: no activations were recorded")
        return (self.sum / self.rows).to(torch.float32)
