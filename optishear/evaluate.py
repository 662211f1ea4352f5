"""Evaluation: WikiText-2 perplexity (Wanda/SparseGPT protocol) and model-wise reconstruction error."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@torch.no_grad()
def perplexity(
    model, tokens: torch.Tensor, seqlen: int = 2048, windows: int | None = None, *, batch_size: int = 4,
    progress: bool = True,
) -> tuple[float, int]:  # fmt: skip
    """Perplexity over non-overlapping windows of ``seqlen`` tokens, the remainder dropped.

    Exactly the Wanda/SparseGPT protocol: per window the mean next-token loss times ``seqlen``,
    summed, divided by ``n_windows * seqlen``, exponentiated.

    Args:
        tokens: [1, N] the evaluation text tokenized once (``data.eval_tokens``).
        windows: evaluate only the first ``windows`` windows (quick runs); None for all.

    Returns:
        (perplexity, number of windows evaluated).
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    n = tokens.shape[1] // seqlen
    if windows is not None:
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        n = min(n, windows)
    if n == 0:
        raise ValueError(f"the evaluation text has {tokens.shape[1]} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    nll = 0.0
    bar = tqdm(total=n, desc="evaluating", disable=not progress, leave=False)
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        ids = tokens[0, i * seqlen : (i + b) * seqlen].reshape(b, seqlen).to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        nll += float(loss.reshape(b, -1).mean(dim=1).double().sum()) * seqlen
        bar.update(b)
    bar.close()
    ppl = math.exp(nll / (n * seqlen))
    logger.info("perplexity %.3f over %d windows of %d tokens", ppl, n, seqlen)
    return ppl, n


class DenseOutputs:
    """The dense model's logits on calibration windows, computed once, held in memory or streamed from disk.

    Args:
        model: the dense model (call before pruning).
        windows: [n, seqlen] calibration tokens.
        batch_size: windows per forward.
        max_memory_bytes: above this the logits go to files in ``spill_dir`` (one per batch).
    """

    @torch.no_grad()
    def __init__(self, model, windows: torch.Tensor, *, batch_size: int = 4, max_memory_bytes: int = 2 << 30,
                 spill_dir: str | os.PathLike | None = None, progress: bool = False):  # fmt: skip
        self.windows = windows
        self.batch_size = batch_size
        self._mem: list[torch.Tensor] = []
        self._files: list[Path] = []
        self._tmp = None
        device = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        on_disk = windows.numel() * vocab * 4 > max_memory_bytes
        if on_disk:
            self._tmp = tempfile.TemporaryDirectory(prefix="optishear-dense-", dir=spill_dir)
        for j, i in enumerate(tqdm(range(0, windows.shape[0], batch_size), desc="dense outputs", disable=not progress)):
            logits = model(input_ids=windows[i : i + batch_size].to(device), use_cache=False).logits.float().cpu()
            if on_disk:
                path = Path(self._tmp.name) / f"batch{j}.pt"
                torch.save(logits, path)
                self._files.append(path)
            else:
                self._mem.append(logits)

    def __len__(self) -> int:
        return len(self._files) or len(self._mem)

    def batch(self, j: int) -> torch.Tensor:
        return torch.load(self._files[j]) if self._files else self._mem[j]


@torch.no_grad()
def reconstruction_error(model, dense: DenseOutputs, kind: str = "fro") -> float:
    """Model-wise error between ``dense`` outputs and ``model``'s on the same windows, batch by batch.

    kind:
        ``"fro"``: Frobenius norm of the logits difference over all windows (OptiShear v1);
        ``"kl"``: mean over tokens of KL(dense || pruned) of next-token distributions.
    """
    if kind not in ("fro", "kl"):
        raise ValueError(f"objective kind must be 'fro' or 'kl', got {kind!r}")
    device = next(model.parameters()).device
    sq, kl, tokens = 0.0, 0.0, 0
    for j, i in enumerate(range(0, dense.windows.shape[0], dense.batch_size)):
        ref = dense.batch(j)
        logits = model(input_ids=dense.windows[i : i + dense.batch_size].to(device), use_cache=False).logits
        logits = logits.float().cpu()
        if kind == "fro":
            sq += float((logits - ref).double().square().sum())
        else:
            lp_ref = F.log_softmax(ref, dim=-1)
            lp = F.log_softmax(logits, dim=-1)
            kl += float((lp_ref.exp() * (lp_ref - lp)).sum(dtype=torch.float64))
            tokens += ref.shape[0] * ref.shape[1]
    value = math.sqrt(sq) if kind == "fro" else kl / tokens
    if not math.isfinite(value):
        raise FloatingPointError(f"reconstruction error ({kind}) is not finite")
    return value
