"""Perplexity by the Wanda/SparseGPT protocol (WikiText-2 test split, non-overlapping windows)."""

from __future__ import annotations

import logging
import math

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
